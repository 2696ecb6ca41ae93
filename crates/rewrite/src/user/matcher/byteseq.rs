//! CORE as one byte set per position, for ASCII values.
//!
//! Most App Gateway patterns are a host name and a path: literal characters, case-folded
//! letters and `.` wildcards, each taking exactly one byte of an ASCII value. Such a CORE
//! matches at `p` when each byte from `p` on is in its position's set, which a `memchr` for the
//! position with the fewest members and a short compare decide far faster than any automaton.
//! The answer is the same as the regex's on ASCII values: there is one possible match per start
//! and no alternation to prefer.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Longer COREs (a `.{5000}`) are left to the automata.
const MAX_LEN: usize = 1024;

#[derive(Debug)]
pub(super) struct ByteSeq {
    /// Byte `b` at position `i` fits when `b & masks[i] == values[i]`: exact for one byte,
    /// `0xDF` for an ASCII letter in either case, `0` (anything) where `others` decides.
    masks: Box<[u8]>,
    values: Box<[u8]>,
    /// Positions with wider sets (a `.`, a class), as 128-bit sets of ASCII bytes.
    others: Box<[(usize, u128)]>,
    /// The position searched for with `memchr`, and its members.
    needle: Option<(usize, Needle)>,
}

#[derive(Debug, Clone, Copy)]
enum Needle {
    One(u8),
    Two(u8, u8),
    Three(u8, u8, u8),
}

impl ByteSeq {
    pub(super) fn new(core: &Hir) -> Option<ByteSeq> {
        let mut sets = Vec::new();
        push(core, &mut sets)?;
        if sets.is_empty() || sets.len() > MAX_LEN {
            return None;
        }
        let needle = sets
            .iter()
            .enumerate()
            .filter(|(_, set)| set.count_ones() <= 3)
            .min_by_key(|(_, set)| set.count_ones())
            .and_then(|(i, &set)| {
                let members: Vec<u8> = (0u8..128).filter(|&b| set & (1u128 << b) != 0).collect();
                let needle = match members.as_slice() {
                    [a] => Needle::One(*a),
                    [a, b] => Needle::Two(*a, *b),
                    [a, b, c] => Needle::Three(*a, *b, *c),
                    _ => return None,
                };
                Some((i, needle))
            });
        let mut masks = Vec::with_capacity(sets.len());
        let mut values = Vec::with_capacity(sets.len());
        let mut others = Vec::new();
        for (i, &set) in sets.iter().enumerate() {
            let lowest = set.trailing_zeros();
            let (mask, value) = match (set.count_ones(), u8::try_from(lowest)) {
                (1, Ok(b)) => (0xFF, b),
                (2, Ok(b))
                    if b.is_ascii_uppercase() && set == (1u128 << b) | (1u128 << (b | 0x20)) =>
                {
                    (0xDF, b)
                }
                _ => {
                    others.push((i, set));
                    (0, 0)
                }
            };
            masks.push(mask);
            values.push(value);
        }
        Some(ByteSeq {
            masks: masks.into_boxed_slice(),
            values: values.into_boxed_slice(),
            others: others.into_boxed_slice(),
            needle,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.masks.len()
    }

    pub(super) fn matches_at(&self, haystack: &[u8], at: usize) -> bool {
        let Some(window) = haystack.get(at..at.saturating_add(self.masks.len())) else {
            return false;
        };
        // No early exit: the compiler turns this into a few vector compares.
        let simple = window
            .iter()
            .zip(self.masks.iter().zip(self.values.iter()))
            .fold(true, |fits, (&b, (&mask, &value))| {
                fits & (b & mask == value)
            });
        simple
            && self.others.iter().all(|&(i, set)| {
                window
                    .get(i)
                    .is_some_and(|&b| b < 128 && set & (1u128 << b) != 0)
            })
    }

    /// The leftmost (or, with `rightmost`, the rightmost) start of a match.
    pub(super) fn find(&self, haystack: &[u8], rightmost: bool) -> Option<usize> {
        let last_start = haystack.len().checked_sub(self.masks.len())?;
        let Some((offset, needle)) = self.needle else {
            let verify = |at: &usize| self.matches_at(haystack, *at);
            return if rightmost {
                (0..=last_start).rev().find(verify)
            } else {
                (0..=last_start).find(verify)
            };
        };
        // Where the needle position of every possible match lies.
        let window = haystack.get(offset..=last_start + offset)?;
        let verify = |at: &usize| self.matches_at(haystack, *at);
        match needle {
            Needle::One(a) => pick(memchr::memchr_iter(a, window), rightmost, verify),
            Needle::Two(a, b) => pick(memchr::memchr2_iter(a, b, window), rightmost, verify),
            Needle::Three(a, b, c) => {
                pick(memchr::memchr3_iter(a, b, c, window), rightmost, verify)
            }
        }
    }
}

/// Window positions are match starts: the window begins `offset` bytes into the haystack.
fn pick(
    mut candidates: impl DoubleEndedIterator<Item = usize>,
    rightmost: bool,
    verify: impl Fn(&usize) -> bool,
) -> Option<usize> {
    if rightmost {
        candidates.rfind(verify)
    } else {
        candidates.find(verify)
    }
}

/// Appends the sets of `hir`; `None` when it is not a fixed sequence of single characters.
fn push(hir: &Hir, sets: &mut Vec<u128>) -> Option<()> {
    match hir.kind() {
        HirKind::Empty => Some(()),
        // A non-ASCII byte never occurs in an ASCII value: its set stays empty.
        HirKind::Literal(literal) => {
            sets.extend(
                literal
                    .0
                    .iter()
                    .map(|&b| if b < 128 { 1u128 << b } else { 0 }),
            );
            Some(())
        }
        HirKind::Class(class) => {
            sets.push(ascii_set(class));
            Some(())
        }
        HirKind::Repetition(rep) if rep.max == Some(rep.min) => {
            let mut one = Vec::new();
            push(&rep.sub, &mut one)?;
            let times = usize::try_from(rep.min).ok()?;
            if one.len().checked_mul(times)? > MAX_LEN {
                return None;
            }
            for _ in 0..times {
                sets.extend_from_slice(&one);
            }
            Some(())
        }
        HirKind::Concat(items) => items.iter().try_for_each(|item| push(item, sets)),
        _ => None,
    }
}

fn ascii_set(class: &Class) -> u128 {
    let mut set = 0u128;
    let mut add = |start: u32, end: u32| {
        for b in start..=end.min(127) {
            set |= 1u128 << b;
        }
    };
    match class {
        Class::Unicode(class) => class
            .iter()
            .for_each(|range| add(u32::from(range.start()), u32::from(range.end()))),
        Class::Bytes(class) => class
            .iter()
            .for_each(|range| add(u32::from(range.start()), u32::from(range.end()))),
    }
    set
}
