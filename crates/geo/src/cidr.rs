//! CIDR sets with IPv4-mapped IPv6 folded into IPv4.

use std::net::IpAddr;

use ipnet::IpNet;

/// `::ffff:0:0/96` as a `u128` range: the IPv4-mapped IPv6 addresses.
const MAPPED_START: u128 = 0xffff_u128 << 32;
const MAPPED_END: u128 = MAPPED_START | 0xffff_ffff;

/// `::ffff:a.b.c.d` → `a.b.c.d`; every other address unchanged.
///
/// A dual-stack listener reports IPv4 clients in this form; folding them back means one set
/// of IPv4 CIDRs and one IPv4 database subtree serve both. IPv4-compatible addresses
/// (`::a.b.c.d`, deprecated) are real IPv6 addresses here and stay as they are.
#[inline]
pub fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A set of CIDRs with fast membership; IPv4-mapped IPv6 addresses match IPv4 networks.
///
/// Membership is literal containment after [`normalise`]: `::ffff:10.0.0.1` is in
/// `10.0.0.0/8`, and an IPv6 network that covers part of `::ffff:0:0/96` (such as `::/0`)
/// also contains the IPv4 addresses of that part. The networks are kept as sorted, merged
/// address ranges, so a lookup is one binary search whatever the number of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// The set of addresses in any of `nets` (host bits are ignored, as in `10.1.2.3/8`).
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (start, end) = (u128::from(n.network()), u128::from(n.broadcast()));
                    v6.push((start, end));
                    let (lo, hi) = (start.max(MAPPED_START), end.min(MAPPED_END));
                    if lo <= hi {
                        // Both ends lie in the mapped /96: the low 32 bits are the IPv4 address.
                        v4.push(((lo & 0xffff_ffff) as u32, (hi & 0xffff_ffff) as u32));
                    }
                }
            }
        }
        CidrSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether `ip` (normalised first) lies in one of the set's networks.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match normalise(ip) {
            IpAddr::V4(v4) => in_ranges(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => in_ranges(&self.v6, u128::from(v6)),
        }
    }

    /// Whether the set holds no address at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Sorts inclusive ranges and merges the overlapping and adjacent ones.
fn merge<T: Copy + Ord + Bound>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.next_or_max() => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged.shrink_to_fit();
    merged
}

#[inline]
fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after > 0 && ranges[after - 1].1 >= x
}

/// The address after this one, saturating at the top of the space.
trait Bound {
    fn next_or_max(self) -> Self;
}

impl Bound for u32 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

impl Bound for u128 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(nets: &[&str]) -> CidrSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        CidrSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn normalise_folds_only_mapped_addresses() {
        assert_eq!(normalise(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(normalise(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(normalise(ip("::192.0.2.1")), ip("::192.0.2.1"));
        assert_eq!(normalise(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(normalise(ip("::1")), ip("::1"));
    }

    #[test]
    fn ipv4_and_ipv6_membership() {
        let s = set(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8:1::/48"]);
        assert!(s.contains(ip("10.255.255.255")));
        assert!(s.contains(ip("10.0.0.0")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8:1:ffff::1")));
        assert!(!s.contains(ip("2001:db8:2::1")));
        assert!(!s.is_empty());
    }

    #[test]
    fn mapped_addresses_match_ipv4_networks() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
        // IPv4-compatible is not mapped.
        assert!(!s.contains(ip("::10.1.2.3")));
    }

    #[test]
    fn ipv6_networks_over_the_mapped_range_match_ipv4_addresses() {
        let s = set(&["::ffff:10.0.0.0/104"]);
        assert!(s.contains(ip("10.9.9.9")));
        assert!(s.contains(ip("::ffff:10.9.9.9")));
        assert!(!s.contains(ip("11.0.0.0")));
        let all = set(&["::/0"]);
        assert!(all.contains(ip("203.0.113.1")));
        assert!(all.contains(ip("2001:db8::1")));
        let v6_only = set(&["2000::/3"]);
        assert!(!v6_only.contains(ip("203.0.113.1")));
    }

    #[test]
    fn host_bits_are_ignored_and_edges_hold() {
        let s = set(&["10.1.2.3/8", "255.255.255.255/32", "0.0.0.0/32"]);
        assert!(s.contains(ip("10.200.0.1")));
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("255.255.255.254")));
        let everything = set(&["0.0.0.0/0", "128.0.0.0/1"]);
        assert!(everything.contains(ip("255.255.255.255")));
        assert!(everything.contains(ip("0.0.0.0")));
    }

    #[test]
    fn empty_set_contains_nothing() {
        let s = CidrSet::new(&[]);
        assert!(s.is_empty());
        assert!(!s.contains(ip("10.0.0.1")));
        assert!(!s.contains(ip("::1")));
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), p).unwrap())),
            // Mostly near the mapped range and the small corner, so overlaps happen.
            (
                any::<u32>(),
                prop_oneof![Just(0u128), Just(MAPPED_START), any::<u128>()],
                64u8..=128
            )
                .prop_map(|(low, base, p)| IpNet::V6(
                    ipnet::Ipv6Net::new((base | u128::from(low)).into(), p).unwrap()
                )),
        ]
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u32>().prop_map(|a| IpAddr::V6((MAPPED_START | u128::from(a)).into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_naive_containment(
            nets in proptest::collection::vec(any_net(), 0..12),
            probes in proptest::collection::vec(any_ip(), 1..24),
        ) {
            let s = CidrSet::new(&nets);
            for probe in probes {
                let forms = match normalise(probe) {
                    IpAddr::V4(v4) => vec![IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())],
                    v6 => vec![v6],
                };
                let naive = nets.iter().any(|n| forms.iter().any(|f| n.contains(f)));
                prop_assert_eq!(s.contains(probe), naive, "{:?} in {:?}", probe, nets);
            }
        }
    }
}
