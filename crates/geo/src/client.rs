//! Who the client is: the socket peer, or what trusted proxies say in X-Forwarded-For.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::{normalise, CidrSet};

/// Where a [`ClientAddr`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The socket peer itself.
    Socket,
    /// An X-Forwarded-For entry, `hops` entries from the right (1 = the rightmost, the one
    /// the peer added).
    ForwardedFor {
        /// The entry's position counted from the right, starting at 1.
        hops: usize,
    },
}

/// The client address a request is judged by, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// Normalised: never IPv4-mapped IPv6.
    pub ip: IpAddr,
    /// The socket or the X-Forwarded-For entry `ip` was taken from.
    pub via: Via,
}

/// The client address: the (normalised) socket peer, unless the peer is trusted; then the
/// X-Forwarded-For values (every header, in order, each a comma-separated list) are walked right
/// to left through trusted hops to the first untrusted address.
///
/// An entry is an address, optionally with the port some load balancers append:
/// `192.0.2.1`, `192.0.2.1:5678`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`; the
/// port is ignored. A malformed entry (garbage, a name, an empty entry, `unknown`, a port out
/// of range, a zone) ends the walk at the last address that could be trusted, the hop to its
/// right (the peer, when the rightmost entry is malformed): whatever stands left of it was
/// written by someone no trusted proxy vouches for, so it can never name the client.
/// Surrounding spaces and tabs are allowed. If every entry is trusted, the leftmost is the
/// client.
///
/// Nothing here allocates. The walk is computed in one left-to-right pass (headers arrive in
/// that order): the answer depends only on the rightmost entry that stops the walk, so the
/// pass remembers that entry and its right-hand neighbour.
pub fn client_address<'a, I: IntoIterator<Item = &'a [u8]>>(
    peer: IpAddr,
    forwarded_for: I,
    trusted: &CidrSet,
) -> ClientAddr {
    let peer = normalise(peer);
    let from_socket = ClientAddr {
        ip: peer,
        via: Via::Socket,
    };
    if !trusted.contains(peer) {
        return from_socket;
    }

    // Positions count from 1 at the left; `hops` is derived once the total is known.
    let mut count = 0usize;
    let mut leftmost: Option<IpAddr> = None;
    let mut stop: Option<Stop> = None;
    for header in forwarded_for {
        for raw in header.split(|b| *b == b',') {
            count += 1;
            match parse_entry(raw) {
                None => {
                    stop = Some(Stop::Malformed {
                        at: count,
                        next: None,
                    })
                }
                Some(ip) => {
                    if count == 1 {
                        leftmost = Some(ip);
                    }
                    if let Some(Stop::Malformed { at, next }) = &mut stop {
                        if *at + 1 == count {
                            *next = Some(ip);
                        }
                    }
                    if !trusted.contains(ip) {
                        stop = Some(Stop::Untrusted { at: count, ip });
                    }
                }
            }
        }
    }

    let entry = |ip: IpAddr, at: usize| ClientAddr {
        ip,
        via: Via::ForwardedFor {
            hops: count + 1 - at,
        },
    };
    match stop {
        None => leftmost.map_or(from_socket, |ip| entry(ip, 1)),
        Some(Stop::Untrusted { at, ip }) => entry(ip, at),
        // The entry right of a malformed one parsed (or it would be the rightmost stop) and
        // was trusted; when the malformed entry is the rightmost, the peer is the last hop.
        Some(Stop::Malformed { at, next }) => next.map_or(from_socket, |ip| entry(ip, at + 1)),
    }
}

/// The rightmost X-Forwarded-For entry, so far, at which a right-to-left walk would stop.
enum Stop {
    Untrusted { at: usize, ip: IpAddr },
    Malformed { at: usize, next: Option<IpAddr> },
}

/// One X-Forwarded-For entry as an address: `1.2.3.4`, `2001:db8::1` or `[2001:db8::1]`,
/// each with optional spaces or tabs around it, and the first and last also with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`), which is dropped. Anything else (a port out of
/// range or with a sign, brackets around IPv4, zones, names, `unknown`, nothing) is `None`.
/// A bare IPv6 address cannot carry a port: `2001:db8::1:443` is that address.
fn parse_entry(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    let ip = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (inside, rest) = bracketed.split_once(']')?;
            if !rest.is_empty() {
                port(rest.strip_prefix(':')?)?;
            }
            IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)
        }
        None => match text.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let (host, p) = text.rsplit_once(':')?;
                port(p)?;
                IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
            }
        },
    };
    Some(normalise(ip))
}

/// A port: 1 to 5 ASCII digits, at most 65535 (no sign, no spaces).
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> CidrSet {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "2001:db8:ffff::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        CidrSet::new(&nets)
    }

    fn resolve(peer: &str, headers: &[&str]) -> ClientAddr {
        client_address(ip(peer), headers.iter().map(|h| h.as_bytes()), &trusted())
    }

    fn socket(s: &str) -> ClientAddr {
        ClientAddr {
            ip: ip(s),
            via: Via::Socket,
        }
    }

    fn forwarded(s: &str, hops: usize) -> ClientAddr {
        ClientAddr {
            ip: ip(s),
            via: Via::ForwardedFor { hops },
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(
            resolve("198.51.100.9", &["203.0.113.7"]),
            socket("198.51.100.9")
        );
        assert_eq!(
            resolve("198.51.100.9", &["10.0.0.1, 203.0.113.7", "garbage"]),
            socket("198.51.100.9")
        );
        assert_eq!(resolve("198.51.100.9", &[]), socket("198.51.100.9"));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        assert_eq!(resolve("10.0.0.1", &[]), socket("10.0.0.1"));
    }

    #[test]
    fn one_trusted_hop() {
        assert_eq!(
            resolve("10.0.0.1", &["203.0.113.7"]),
            forwarded("203.0.113.7", 1)
        );
    }

    #[test]
    fn chain_through_several_trusted_hops() {
        assert_eq!(
            resolve("10.0.0.4", &["203.0.113.7, 10.0.0.2, 10.0.0.3"]),
            forwarded("203.0.113.7", 3)
        );
        // Whatever the client wrote itself, left of the first untrusted hop, is ignored.
        assert_eq!(
            resolve("10.0.0.4", &["1.1.1.1, 10.9.9.9, 203.0.113.7, 10.0.0.2"]),
            forwarded("203.0.113.7", 2)
        );
    }

    #[test]
    fn multiple_headers_are_one_list_in_order() {
        assert_eq!(
            resolve("10.0.0.4", &["198.51.100.1, 10.0.0.2", "10.0.0.3"]),
            forwarded("198.51.100.1", 3)
        );
        assert_eq!(
            resolve("10.0.0.4", &["10.0.0.3", "198.51.100.1"]),
            forwarded("198.51.100.1", 1)
        );
        assert_eq!(
            resolve("10.0.0.4", &["198.51.100.1", "203.0.113.7, 10.0.0.2"]),
            forwarded("203.0.113.7", 2)
        );
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost() {
        assert_eq!(
            resolve("10.0.0.4", &["10.0.0.1, 10.0.0.2", "10.0.0.3"]),
            forwarded("10.0.0.1", 3)
        );
    }

    #[test]
    fn malformed_entry_stops_at_the_previous_hop() {
        for bad in [
            "unknown",
            "",
            "  ",
            "example.com",
            "1.2.3",
            "01.2.3.4",
            "fe80::1%eth0",
            "[1.2.3.4]",
            "[2001:db8::1",
            "2001:db8::1]",
            "1.2.3.4 5.6.7.8",
            "\u{fffd}",
            // Ports that are not one: empty, out of range, signed, spaced, doubled, or on
            // something that is not an address.
            "203.0.113.7:",
            "203.0.113.7:65536",
            "203.0.113.7:123456",
            "203.0.113.7:+80",
            "203.0.113.7:-1",
            "203.0.113.7:8o",
            "203.0.113.7 :80",
            "203.0.113.7: 80",
            "203.0.113.7:80:80",
            "01.2.3.4:80",
            "::ffff:203.0.113.7:80",
            "example.com:443",
            ":443",
            "[]:443",
            "[1.2.3.4]:80",
            "[2001:db8::1]:",
            "[2001:db8::1]443",
            "[2001:db8::1] :443",
            "[2001:db8::1]:443:1",
            "[2001:db8::1]:65536",
            "[fe80::1%eth0]:443",
            "[[2001:db8::1]]:443",
        ] {
            let header = format!("198.51.100.1, {bad}, 10.0.0.2");
            assert_eq!(
                resolve("10.0.0.4", &[&header]),
                forwarded("10.0.0.2", 1),
                "{bad:?}"
            );
            // Rightmost: the peer is the last hop that could be trusted.
            let header = format!("198.51.100.1, {bad}");
            assert_eq!(
                resolve("10.0.0.4", &[&header]),
                socket("10.0.0.4"),
                "{bad:?}"
            );
        }
        // A trailing comma is an empty entry.
        assert_eq!(resolve("10.0.0.4", &["203.0.113.7,"]), socket("10.0.0.4"));
        // An empty header is one empty entry.
        assert_eq!(
            resolve("10.0.0.4", &["203.0.113.7", ""]),
            socket("10.0.0.4")
        );
        // Left of an untrusted address a malformed entry does not matter.
        assert_eq!(
            resolve("10.0.0.4", &["junk, 203.0.113.7, 10.0.0.2"]),
            forwarded("203.0.113.7", 2)
        );
        // Invalid UTF-8.
        assert_eq!(
            client_address(ip("10.0.0.4"), [&b"\xff\xfe"[..]], &trusted()),
            socket("10.0.0.4")
        );
    }

    #[test]
    fn entries_with_a_port_are_their_address() {
        // As some load balancers write them: the port is dropped, the address judged.
        assert_eq!(
            resolve("10.0.0.4", &["203.0.113.7:5678"]),
            forwarded("203.0.113.7", 1)
        );
        assert_eq!(
            resolve("10.0.0.4", &["[2001:db8:1::7]:443"]),
            forwarded("2001:db8:1::7", 1)
        );
        assert_eq!(
            resolve("10.0.0.4", &["[2001:db8:1::7]"]),
            forwarded("2001:db8:1::7", 1)
        );
        assert_eq!(
            resolve(
                "10.0.0.4",
                &[" 203.0.113.7:0 ", "[::ffff:198.51.100.1]:65535"]
            ),
            forwarded("198.51.100.1", 1)
        );
        // Trusted hops with ports are walked through like any trusted hop.
        assert_eq!(
            resolve(
                "10.0.0.4",
                &["203.0.113.7:1234, 10.0.0.2:443, [2001:db8:ffff::2]:80"]
            ),
            forwarded("203.0.113.7", 3)
        );
        // What a client wrote left of the entry its proxy added still changes nothing.
        assert_eq!(
            resolve("10.0.0.4", &["10.0.0.3:1, 198.51.100.1, 203.0.113.7:443"]),
            forwarded("203.0.113.7", 1)
        );
        assert_eq!(parse_entry(b"1.2.3.4:5678"), Some(ip("1.2.3.4")));
        assert_eq!(parse_entry(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
        // A bare IPv6 address has no room for a port: this is the address ...:1:443.
        assert_eq!(parse_entry(b"2001:db8::1:443"), Some(ip("2001:db8::1:443")));
    }

    #[test]
    fn spaces_tabs_and_brackets_are_allowed() {
        assert_eq!(
            resolve("10.0.0.4", &[" \t203.0.113.7\t ,  10.0.0.2 "]),
            forwarded("203.0.113.7", 2)
        );
        assert_eq!(
            resolve("10.0.0.4", &["[2001:db8:1::7], [2001:db8:ffff::2]"]),
            forwarded("2001:db8:1::7", 2)
        );
        assert_eq!(
            resolve("10.0.0.4", &["2001:db8:1::7,2001:db8:ffff::2"]),
            forwarded("2001:db8:1::7", 2)
        );
    }

    #[test]
    fn ipv6_and_mapped_peers() {
        assert_eq!(
            resolve("2001:db8:ffff::1", &["203.0.113.7"]),
            forwarded("203.0.113.7", 1)
        );
        assert_eq!(
            resolve("2001:db8:1::1", &["203.0.113.7"]),
            socket("2001:db8:1::1")
        );
        // A mapped peer matches the IPv4 trusted network and is reported as IPv4.
        assert_eq!(
            resolve("::ffff:10.0.0.1", &["203.0.113.7"]),
            forwarded("203.0.113.7", 1)
        );
        assert_eq!(
            resolve("::ffff:198.51.100.9", &["203.0.113.7"]),
            socket("198.51.100.9")
        );
        // Mapped entries are normalised and trusted as IPv4.
        assert_eq!(
            resolve("10.0.0.4", &["::ffff:203.0.113.7, ::ffff:10.0.0.2"]),
            forwarded("203.0.113.7", 2)
        );
    }

    /// The walk as the contract states it, right to left over a collected list.
    fn reference(peer: IpAddr, headers: &[Vec<u8>], trusted: &CidrSet) -> ClientAddr {
        let peer = normalise(peer);
        let mut current = ClientAddr {
            ip: peer,
            via: Via::Socket,
        };
        if !trusted.contains(peer) {
            return current;
        }
        let entries: Vec<&[u8]> = headers
            .iter()
            .flat_map(|h| h.split(|b| *b == b','))
            .collect();
        for (from_right, raw) in entries.iter().rev().enumerate() {
            let Some(ip) = parse_entry(raw) else {
                return current;
            };
            current = ClientAddr {
                ip,
                via: Via::ForwardedFor {
                    hops: from_right + 1,
                },
            };
            if !trusted.contains(ip) {
                return current;
            }
        }
        current
    }

    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("10.0.0.1".to_string()),
            Just(" 10.0.0.2".to_string()),
            Just("[2001:db8:ffff::3]".to_string()),
            Just("::ffff:10.0.0.4".to_string()),
            Just("203.0.113.7".to_string()),
            Just("2001:db8:1::7 ".to_string()),
            Just("198.51.100.1:80".to_string()),
            Just("10.0.0.5:8080".to_string()),
            Just("[2001:db8:ffff::6]:443".to_string()),
            Just("[2001:db8:1::8]:1".to_string()),
            Just("203.0.113.9:99999".to_string()),
            Just("unknown".to_string()),
            Just(String::new()),
            "[ -~]{0,12}",
        ]
    }

    fn headers() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(
            proptest::collection::vec(entry(), 1..5).prop_map(|e| e.join(",").into_bytes()),
            0..4,
        )
    }

    fn peer() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            Just(ip("10.0.0.9")),
            Just(ip("::ffff:10.0.0.9")),
            Just(ip("2001:db8:ffff::9")),
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        ]
    }

    proptest! {
        #[test]
        fn untrusted_peer_never_depends_on_headers(
            peer in any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
            forged in headers(),
        ) {
            let trusted = trusted();
            prop_assume!(!trusted.contains(peer));
            let expected = ClientAddr { ip: peer, via: Via::Socket };
            prop_assert_eq!(client_address(peer, headers.iter().map(Vec::as_slice), &trusted), expected);
            prop_assert_eq!(client_address(peer, forged.iter().map(Vec::as_slice), &trusted), expected);
        }

        #[test]
        fn one_pass_agrees_with_the_right_to_left_walk(peer in peer(), headers in headers()) {
            let trusted = trusted();
            prop_assert_eq!(
                client_address(peer, headers.iter().map(Vec::as_slice), &trusted),
                reference(peer, &headers, &trusted)
            );
        }
    }
}
