//! The search tree flattened into sorted address ranges, for lookups that touch two or three
//! cache lines instead of walking one tree node per prefix bit.
//!
//! A binary trie of half a million networks spans several MB; a lookup walks 20 to 50
//! dependent nodes, the lower ones outside the CPU caches, and then decodes the record (a few
//! hundred ns to a µs in the bench). Here the leaves of the tree, visited in address order at
//! load, become runs of `(start, packed location)`: a lookup searches a small summary (every
//! [`BLOCK`]th start, a few hundred KB that stays in cache) and then one block of starts, and
//! reads the location from a parallel array. Nothing is decoded per request.

use std::net::IpAddr;

use crate::db::Location;

/// A location packed in 32 bits: country (two ASCII letters or 0) in the high half, continent
/// in the low half; `Location::default()` is 0.
pub(super) type Packed = u32;

/// No leaf covers this range (the tree's IPv4 aliases, such as 6to4's `2002::/16`, are
/// skipped when the leaves are visited): ask the tree itself. Never a packed location, whose
/// bytes are ASCII letters.
pub(super) const ASK_TREE: Packed = u32::MAX;

/// Starts per block: 16 IPv4 starts fill one 64-byte cache line, 16 IPv6 starts four.
const BLOCK: usize = 16;

pub(super) fn pack(location: Location) -> Packed {
    let half = |code: Option<[u8; 2]>| code.map_or(0, |[a, b]| u32::from(a) << 8 | u32::from(b));
    half(location.country) << 16 | half(location.continent)
}

pub(super) fn unpack(packed: Packed) -> Location {
    let half = |h: u32| {
        let [_, _, a, b] = h.to_be_bytes();
        (h != 0).then_some([a, b])
    };
    Location {
        country: half(packed >> 16),
        continent: half(packed & 0xffff),
    }
}

/// An address as a number: `u32` for IPv4, `u128` for IPv6.
pub(super) trait Addr: Copy + Ord {
    const ZERO: Self;
    fn succ(self) -> Option<Self>;
}

impl Addr for u32 {
    const ZERO: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Addr for u128 {
    const ZERO: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// The whole address space as consecutive runs: run `i` covers `starts[i]` up to the next
/// start, with location `values[i]`.
#[derive(Debug, Default)]
pub(super) struct Ranges<T> {
    starts: Vec<T>,
    values: Vec<Packed>,
    summary: Vec<T>,
}

impl<T: Addr> Ranges<T> {
    #[inline]
    pub(super) fn get(&self, x: T) -> Packed {
        let block = self.summary.partition_point(|s| *s <= x);
        let Some(block) = block.checked_sub(1) else {
            return ASK_TREE;
        };
        let lo = block * BLOCK;
        let hi = (lo + BLOCK).min(self.starts.len());
        let Some(starts) = self.starts.get(lo..hi) else {
            return ASK_TREE;
        };
        (lo + starts.partition_point(|s| *s <= x))
            .checked_sub(1)
            .and_then(|i| self.values.get(i))
            .copied()
            .unwrap_or(ASK_TREE)
    }

    /// Runs in the table (memory: 8 bytes each for IPv4, 20 for IPv6).
    pub(super) fn len(&self) -> usize {
        self.starts.len()
    }
}

/// Collects leaves in ascending address order into [`Ranges`].
pub(super) struct Builder<T> {
    ranges: Ranges<T>,
    /// The first address not yet covered; `None` once the top of the space is reached.
    next: Option<T>,
}

impl<T: Addr> Builder<T> {
    pub(super) fn new() -> Builder<T> {
        Builder {
            ranges: Ranges {
                starts: Vec::new(),
                values: Vec::new(),
                summary: Vec::new(),
            },
            next: Some(T::ZERO),
        }
    }

    /// Adds the leaf `start..=end`; leaves must come in ascending order without overlap.
    pub(super) fn push(&mut self, start: T, end: T, value: Packed) -> Result<(), String> {
        let Some(next) = self.next else {
            return Err("a network after the end of the address space".to_owned());
        };
        if start < next || end < start {
            return Err("networks out of order or overlapping".to_owned());
        }
        if start > next {
            self.run(next, ASK_TREE);
        }
        self.run(start, value);
        self.next = end.succ();
        Ok(())
    }

    fn run(&mut self, start: T, value: Packed) {
        // Neighbours with the same location are one run.
        if self.ranges.values.last() != Some(&value) {
            self.ranges.starts.push(start);
            self.ranges.values.push(value);
        }
    }

    pub(super) fn finish(mut self) -> Ranges<T> {
        if let Some(next) = self.next {
            self.run(next, ASK_TREE);
        }
        let mut ranges = self.ranges;
        ranges.summary = ranges.starts.iter().step_by(BLOCK).copied().collect();
        ranges.starts.shrink_to_fit();
        ranges.values.shrink_to_fit();
        ranges
    }
}

/// A leaf of the tree as an inclusive range of tree addresses: IPv6 numbers in an IPv6
/// database (its IPv4 subtree at `::/96`), IPv4 numbers in an IPv4 one.
pub(super) fn tree_range(network: IpAddr, prefix: u8, ipv6_tree: bool) -> Option<(u128, u128)> {
    let (start, host_bits) = match network {
        IpAddr::V4(v4) => (
            u128::from(u32::from(v4)),
            32u32.checked_sub(u32::from(prefix))?,
        ),
        IpAddr::V6(v6) if ipv6_tree => (u128::from(v6), 128u32.checked_sub(u32::from(prefix))?),
        _ => return None,
    };
    let host_mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    Some((start, start | host_mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(leaves: &[(u32, u32, Packed)]) -> Ranges<u32> {
        let mut b = Builder::new();
        for (s, e, v) in leaves {
            b.push(*s, *e, *v).unwrap();
        }
        b.finish()
    }

    #[test]
    fn packing_round_trips() {
        for l in [
            Location::default(),
            Location {
                country: Some(*b"CU"),
                continent: Some(*b"NA"),
            },
            Location {
                country: None,
                continent: Some(*b"EU"),
            },
            Location {
                country: Some(*b"US"),
                continent: None,
            },
        ] {
            assert_eq!(unpack(pack(l)), l);
            assert_ne!(pack(l), ASK_TREE);
        }
    }

    #[test]
    fn gaps_ask_the_tree_and_neighbours_merge() {
        let t = table(&[(10, 19, 1), (20, 29, 1), (40, 49, 2)]);
        assert_eq!(t.get(0), ASK_TREE);
        assert_eq!(t.get(9), ASK_TREE);
        assert_eq!(t.get(10), 1);
        assert_eq!(t.get(29), 1);
        assert_eq!(t.get(30), ASK_TREE);
        assert_eq!(t.get(45), 2);
        assert_eq!(t.get(50), ASK_TREE);
        assert_eq!(t.get(u32::MAX), ASK_TREE);
        // 0..10 gap, 10..30 one run, gap, 40..50, gap.
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn the_whole_space_and_its_edges() {
        let t = table(&[(0, 7, 3), (8, u32::MAX, 4)]);
        assert_eq!(t.get(0), 3);
        assert_eq!(t.get(7), 3);
        assert_eq!(t.get(8), 4);
        assert_eq!(t.get(u32::MAX), 4);
        let mut b = Builder::<u32>::new();
        b.push(0, u32::MAX, 1).unwrap();
        assert!(b.push(0, 1, 1).is_err());
    }

    #[test]
    fn order_is_enforced() {
        let mut b = Builder::<u32>::new();
        b.push(10, 19, 1).unwrap();
        assert!(b.push(15, 30, 1).is_err());
        assert!(b.push(40, 39, 1).is_err());
    }

    #[test]
    fn many_blocks() {
        let leaves: Vec<(u32, u32, Packed)> = (0..1000u32)
            .map(|i| (i * 10, i * 10 + 4, i % 7 + 1))
            .collect();
        let t = table(&leaves);
        for (s, e, v) in &leaves {
            assert_eq!(t.get(*s), *v);
            assert_eq!(t.get(*e), *v);
            assert_eq!(t.get(e + 1), ASK_TREE);
        }
    }

    #[test]
    fn tree_ranges() {
        let v4: IpAddr = "192.0.2.0".parse().unwrap();
        assert_eq!(tree_range(v4, 24, true), Some((0xc000_0200, 0xc000_02ff)));
        assert_eq!(tree_range(v4, 24, false), Some((0xc000_0200, 0xc000_02ff)));
        assert_eq!(
            tree_range("0.0.0.0".parse().unwrap(), 0, true),
            Some((0, 0xffff_ffff))
        );
        assert_eq!(
            tree_range("::".parse().unwrap(), 0, true),
            Some((0, u128::MAX))
        );
        assert_eq!(
            tree_range("2001:db8::".parse().unwrap(), 128, true),
            Some((0x2001_0db8 << 96, 0x2001_0db8 << 96))
        );
        assert_eq!(tree_range("2001:db8::".parse().unwrap(), 32, false), None);
        assert_eq!(tree_range(v4, 33, true), None);
    }
}
