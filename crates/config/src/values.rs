//! Parsers for the value syntaxes of the file: durations, sizes, `host[:port]` authorities, public
//! host names, CIDRs, status ranges and ISO 3166-1 country codes. Each returns a message fit to show an
//! operator.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use registry_edge_rewrite::StatusRange;

/// `host[:port]` of an upstream. The host is lower case; an IPv6 literal is kept without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: String,
    pub port: u16,
    /// The port was written out in the file (it is then part of the Host header when it is not
    /// the scheme's default).
    pub explicit_port: bool,
}

impl Authority {
    pub fn parse(text: &str, tls: bool) -> Result<Authority, String> {
        if text.contains("://") {
            return Err(format!(
                "`{text}` has a scheme: write host[:port] (the scheme follows `tls`)"
            ));
        }
        if text.contains(['/', '?', '#', '@']) || text.trim() != text || text.is_empty() {
            return Err(format!("`{text}` is not a host[:port]"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err(format!("`{text}`: unclosed `[` in an IPv6 address"));
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(format!("`{text}`: `{v6}` is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{text}` is not a host[:port]"))?,
                ),
            };
            (v6.to_owned(), port)
        } else {
            match text.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(format!(
                        "`{text}`: write an IPv6 address in brackets, as [{text}]"
                    ))
                }
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (text.to_owned(), None),
            }
        };
        let host = host.to_ascii_lowercase();
        if host.parse::<IpAddr>().is_err() {
            check_dns_name(&host).map_err(|e| format!("`{text}`: {e}"))?;
        }
        let (port, explicit_port) = match port {
            None => (default_port, false),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => (n, true),
                _ => return Err(format!("`{text}`: `{p}` is not a port (1-65535)")),
            },
        };
        Ok(Authority {
            host,
            port,
            explicit_port,
        })
    }

    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The value of the Host header sent upstream: the port only when it is not the default.
    pub fn host_header(&self, tls: bool) -> String {
        let default_port = if tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name as clients type it: letters, digits and `-` in dot-separated labels.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must be 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!("`{name}` is not a valid host name"));
        }
    }
    Ok(())
}

/// A public host: a bare name, no port, no scheme (the edge answers it on every listener).
pub fn parse_public_host(text: &str) -> Result<String, String> {
    if text.contains("://") {
        return Err(format!("`{text}` has a scheme: write the bare host name"));
    }
    if text.contains(':') {
        return Err(format!(
            "`{text}` has a port: a public host is a bare name, answered on every listener"
        ));
    }
    let lower = text.to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "`{text}` is an IP address: a public host is a name (clients need it for TLS and routing)"
        ));
    }
    check_dns_name(&lower)?;
    Ok(lower)
}

/// `10s`, `500ms`, `1m30s`, `2h`, `1d`. Zero is allowed only where the caller says so.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration: write a number and a unit, such as 500ms, 10s, 5m, 1h")
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// `1048576`, `512MiB`, `10GB`: a whole number of bytes with an optional unit, `B`, `KB`, `MB`,
/// `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), written right after
/// the number. As with durations, spaces around the value are ignored and none may come between
/// the number and its unit; units are case-sensitive. Zero is allowed only where the caller says so.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{text}` is not a size: write a whole number of bytes with an optional unit \
             (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"
        )
    };
    let too_large = || format!("`{text}` is too large: a size is at most 2^64 - 1 bytes");
    let t = text.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(bad());
    }
    let multiplier: u64 = match &t[digits..] {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    // Only digits remain, so parsing fails on overflow alone.
    let n: u64 = t[..digits].parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not an IP address or CIDR"))
}

/// `302`, or a range `"200-399"`.
pub fn parse_status(code: Option<u64>, text: Option<&str>) -> Result<StatusRange, String> {
    let check = |n: u64| -> Result<u16, String> {
        if (100..=599).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("{n} is not an HTTP status (100-599)"))
        }
    };
    match (code, text) {
        (Some(n), _) => {
            let c = check(n)?;
            Ok(StatusRange { from: c, to: c })
        }
        (None, Some(t)) => {
            let bad = || format!("`{t}` is not a status or a range such as \"200-399\"");
            let (a, b) = match t.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (t.trim(), t.trim()),
            };
            let from = check(a.parse().map_err(|_| bad())?)?;
            let to = check(b.parse().map_err(|_| bad())?)?;
            if from > to {
                return Err(format!("`{t}`: the range is empty"));
            }
            Ok(StatusRange { from, to })
        }
        (None, None) => Err("empty status".into()),
    }
}

/// An ISO 3166-1 alpha-2 code (upper case), or `XK` (Kosovo, used by the GeoIP vendors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn parse(text: &str) -> Result<CountryCode, String> {
        let upper = text.to_ascii_uppercase();
        let b = upper.as_bytes();
        if b.len() == 2 && (ISO_3166_ALPHA2.split(' ').any(|c| c == upper) || upper == "XK") {
            return Ok(CountryCode([b[0], b[1]]));
        }
        Err(format!(
            "`{text}` is not an ISO 3166-1 alpha-2 country code (such as US, DE, CU)"
        ))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Every code `parse` accepts: the ISO 3166-1 alpha-2 list and `XK`.
    pub fn all() -> impl Iterator<Item = CountryCode> {
        ISO_3166_ALPHA2
            .split(' ')
            .chain(std::iter::once("XK"))
            .map(|c| {
                let b = c.as_bytes();
                CountryCode([b[0], b[1]])
            })
    }

    pub fn bytes(&self) -> [u8; 2] {
        self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_list_is_complete() {
        assert_eq!(ISO_3166_ALPHA2.split(' ').count(), 249);
        assert!(CountryCode::parse("cu").is_ok());
        assert!(CountryCode::parse("XK").is_ok());
        assert!(CountryCode::parse("UK").is_err());
        assert!(CountryCode::parse("USA").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("2KB"), Ok(2_000));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("2KiB"), Ok(2_048));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("007MiB"), Ok(7 << 20));
        // Spaces around the value, as for durations; none inside.
        assert_eq!(parse_size(" 1MiB\t"), Ok(1 << 20));
        assert_eq!(parse_size("1 "), Ok(1));
        for bad in [
            "1 MiB",
            "",
            "   ",
            "-1",
            "-1MiB",
            "+1MiB",
            "1.5GiB",
            "1e9",
            "GiB",
            "1GiB512MiB",
            "1gib",
            "1mb",
            "1kB",
            "1K",
            "1M",
            "1Gi",
            "ten",
            "1MiB!",
            "0x10",
            "1_000",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad:?}: {e}");
        }
        // Overflow: of the number itself, or of the number times its unit.
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
        for big in [
            "18446744073709551616",
            "99999999999999999999999",
            "16777216TiB",
            "18446745TB",
        ] {
            assert_eq!(
                parse_size(big),
                Err(format!(
                    "`{big}` is too large: a size is at most 2^64 - 1 bytes"
                )),
            );
        }
    }

    #[test]
    fn authorities() {
        let a = Authority::parse("Reg.AzureCR.io", true).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("reg.azurecr.io", 443));
        assert_eq!(a.host_header(true), "reg.azurecr.io");
        let a = Authority::parse("127.0.0.1:5000", false).unwrap();
        assert_eq!(a.host_header(false), "127.0.0.1:5000");
        let a = Authority::parse("[::1]:8443", true).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 8443));
        assert_eq!(a.to_string(), "[::1]:8443");
        assert!(Authority::parse("https://reg.azurecr.io", true).is_err());
        assert!(Authority::parse("reg.azurecr.io/v2", true).is_err());
        assert!(Authority::parse("reg:0", true).is_err());
        assert!(Authority::parse("::1", true).is_err());
        assert!(Authority::parse("bad_host", true).is_err());
    }

    #[test]
    fn public_hosts_cidrs_statuses() {
        assert_eq!(
            parse_public_host("ACR.Contoso.com").unwrap(),
            "acr.contoso.com"
        );
        assert!(parse_public_host("acr.contoso.com:443").is_err());
        assert!(parse_public_host("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("10.0.0.1/8").is_err());
        assert_eq!(parse_cidr("192.0.2.1").unwrap().prefix_len(), 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert_eq!(
            parse_status(None, Some("200-399")).unwrap(),
            StatusRange { from: 200, to: 399 }
        );
        assert!(parse_status(Some(999), None).is_err());
        assert!(parse_status(None, Some("399-200")).is_err());
    }
}
