//! The cache token: what makes a data-host URL a proof that the registry has just authorized
//! its holder for one blob. When the registry answers a blob `GET` with a redirect to a data
//! endpoint, the edge appends `_rec=<digest>.<expiry>.<mac>` to the rewritten `Location`:
//! `mac` is HMAC-SHA256, under `blob_cache.key_file`, of the digest, the expiry and the request
//! target the client will send (the rewritten path and query, token excluded). Any replica with
//! the same key verifies it without state. A token expires after `authorization_ttl`, and never
//! after the SAS `se=` of the URL it rides on; an altered URL or token verifies as nothing.

use ring::hmac;

use super::Digest;

/// The query parameter that carries the token; always the last one.
pub const PARAM: &str = "_rec";

/// What signs and verifies tokens.
pub struct Signer {
    key: hmac::Key,
}

/// A token-shaped last parameter of a request target, as found (not yet verified).
struct Shape<'a> {
    /// Where the target without the token ends (the `&` or `?` before `_rec=`).
    end: usize,
    digest: Digest,
    expiry: &'a str,
    mac: &'a str,
}

/// The token-shaped last parameter of `target`: `[&?]_rec=<alg>-<hex>.<digits>.<64 hex>`.
fn shape(target: &str) -> Option<Shape<'_>> {
    let at = target.rfind(PARAM)?;
    let end = at.checked_sub(1)?;
    if !matches!(target.as_bytes()[end], b'&' | b'?') {
        return None;
    }
    let value = target[at..].strip_prefix(PARAM)?.strip_prefix('=')?;
    let mut parts = value.split('.');
    let (digest, expiry, mac) = (parts.next()?, parts.next()?, parts.next()?);
    let shaped = parts.next().is_none()
        && !expiry.is_empty()
        && expiry.bytes().all(|b| b.is_ascii_digit())
        && mac.len() == 64
        && mac.bytes().all(|b| b.is_ascii_hexdigit());
    shaped.then_some(())?;
    Some(Shape {
        end,
        digest: Digest::parse(&digest.replacen('-', ":", 1))?,
        expiry,
        mac,
    })
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn message(digest: &Digest, expiry: u64, target: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(96 + target.len());
        m.extend_from_slice(b"registry-edge blob-cache v1\n");
        m.extend_from_slice(digest.as_str().as_bytes());
        m.push(b'\n');
        m.extend_from_slice(expiry.to_string().as_bytes());
        m.push(b'\n');
        m.extend_from_slice(target.as_bytes());
        m
    }

    /// `location` (an absolute URL or an origin-form target) with the token for `digest`
    /// appended; it expires at `now + ttl`, or at the URL's SAS `se=` when that is earlier.
    /// `None` when the URL's SAS has already expired.
    pub fn sign(&self, location: &str, digest: &Digest, now: u64, ttl: u64) -> Option<String> {
        // A fragment never reaches the server: a token after it would never come back.
        if location.contains('#') {
            return None;
        }
        let target = target_of(location);
        let mut expiry = now.saturating_add(ttl);
        // A known expiry that does not parse signs nothing (fail closed).
        if let Some(until) = url_expiry(target).ok()? {
            if until <= now {
                return None;
            }
            expiry = expiry.min(until);
        }
        let tag = hmac::sign(&self.key, &Self::message(digest, expiry, target));
        let sep = if target.contains('?') { '&' } else { '?' };
        Some(format!(
            "{location}{sep}{PARAM}={}.{expiry}.{}",
            digest.as_str().replacen(':', "-", 1),
            hex(tag.as_ref())
        ))
    }

    /// The digest of the token at the end of `target` (a request's path and query), when it is
    /// intact, signed under this key for exactly this target, and not expired at `now`.
    pub fn verify(&self, target: &str, now: u64) -> Option<Digest> {
        let t = shape(target)?;
        // No leading zero (one spelling per expiry), a lower-case MAC (as signed).
        if t.expiry.len() > 1 && t.expiry.starts_with('0') {
            return None;
        }
        let expiry: u64 = t.expiry.parse().ok()?;
        if expiry <= now {
            return None;
        }
        let mac = unhex(t.mac)?;
        let bare = &target[..t.end];
        hmac::verify(&self.key, &Self::message(&t.digest, expiry, bare), &mac).ok()?;
        Some(t.digest)
    }
}

/// Bytes of a token-shaped last parameter (`&_rec=<alg>-<hex>.<digits>.<64 hex>`, or `?…`) at
/// the end of `target`, verified or not: what the edge removes from every data-host request,
/// so that the data endpoint gets its URL as signed even when a token has expired or the key
/// changed (a storage whose signature covers every query parameter would refuse it).
pub fn suffix_len(target: &str) -> Option<usize> {
    shape(target).map(|t| target.len() - t.end)
}

/// The origin-form target of a URL: from the first `/` after `scheme://authority`, or the whole
/// string when it already is one.
fn target_of(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

/// When a signed storage URL expires (Unix seconds), by the parameters of the storages
/// registries redirect to: Azure SAS `se=` (ISO 8601, `:` possibly percent-encoded), S3
/// `X-Amz-Date` + `X-Amz-Expires`, GCS `X-Goog-Date` + `X-Goog-Expires`, CloudFront and GCS v2
/// `Expires=` (Unix seconds); the earliest when several are present. `Ok(None)`: none of them;
/// `Err`: one is present and does not parse.
pub fn url_expiry(target: &str) -> Result<Option<u64>, ()> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(None);
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let mut found = Vec::new();
    if let Some(se) = param("se") {
        found.push(parse_iso8601(&se.replace("%3A", ":").replace("%3a", ":")).ok_or(())?);
    }
    for (date, expires) in [
        ("X-Amz-Date", "X-Amz-Expires"),
        ("X-Goog-Date", "X-Goog-Expires"),
    ] {
        match (param(date), param(expires)) {
            (None, None) => {}
            (Some(d), Some(e)) => {
                let start = parse_basic_iso8601(d).ok_or(())?;
                let secs: u64 = e.parse().map_err(|_| ())?;
                found.push(start.checked_add(secs).ok_or(())?);
            }
            _ => return Err(()),
        }
    }
    if let Some(e) = param("Expires") {
        found.push(e.parse().map_err(|_| ())?);
    }
    Ok(found.into_iter().min())
}

/// `YYYYMMDDTHHMMSSZ` (S3, GCS) → Unix seconds.
fn parse_basic_iso8601(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !s.is_ascii() {
        return None;
    }
    parse_iso8601(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (seconds optional, as Azure writes `se=`) → Unix seconds.
fn parse_iso8601(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm) = (t.next()??, t.next()??);
    let ss = t.next().flatten().unwrap_or(0);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Lower-case hex digits as bytes (`None` for anything else, or an odd length).
pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn digest() -> Digest {
        Digest::parse(D).unwrap()
    }

    #[test]
    fn a_signed_location_verifies_for_its_target_only() {
        let s = Signer::new(&[7; 32]);
        let loc = "https://data.example:8443/_r/eastus/docker/registry/v2/blobs/sha256/01/x/data?sv=1&se=2030-01-01T00%3A00%3A00Z&sig=abc%2B";
        let signed = s.sign(loc, &digest(), 1_000, 600).unwrap();
        assert!(signed.starts_with(loc));
        let target = target_of(&signed);
        assert_eq!(s.verify(target, 1_000), Some(digest()));
        // What goes upstream is the target as the registry signed it, byte for byte.
        let n = suffix_len(target).unwrap();
        assert_eq!(&target[..target.len() - n], target_of(loc));
        // Expired, altered target, other key, other digest: nothing.
        assert!(s.verify(target, 1_600).is_none());
        let altered = target.replacen("sig=abc", "sig=abd", 1);
        assert!(s.verify(&altered, 1_000).is_none());
        assert!(Signer::new(&[8; 32]).verify(target, 1_000).is_none());
        let other = target.replacen("sha256-0123", "sha256-1123", 1);
        assert!(s.verify(&other, 1_000).is_none());
        // Moving the token away from the end, or doubling it, breaks it.
        assert!(s.verify(&format!("{target}&x=1"), 1_000).is_none());
        let twice = format!("{target}&{}", &target[target.rfind(PARAM).unwrap()..]);
        assert!(s.verify(&twice, 1_000).is_none());
    }

    #[test]
    fn the_token_never_outlives_the_sas() {
        let s = Signer::new(&[1; 32]);
        // se = 1970-01-01T00:20:00Z = 1200.
        let loc = "/blob?se=1970-01-01T00%3A20%3A00Z&sig=x";
        let signed = s.sign(loc, &digest(), 1_000, 3_600).unwrap();
        assert!(signed.contains(".1200."), "{signed}");
        assert!(s.verify(&signed, 1_199).is_some());
        assert!(s.verify(&signed, 1_200).is_none());
        // A SAS already expired gets no token.
        assert!(s.sign(loc, &digest(), 1_200, 3_600).is_none());
        // No SAS: the TTL alone; no query: `?` is the separator.
        let signed = s.sign("/blob", &digest(), 1_000, 60).unwrap();
        assert!(signed.starts_with("/blob?_rec=sha256-"), "{signed}");
        assert!(s.verify(&signed, 1_059).is_some());
    }

    #[test]
    fn token_shaped_suffixes_are_found_verified_or_not() {
        let s = Signer::new(&[1; 32]);
        let signed = s.sign("/b?sig=x", &digest(), 10, 100).unwrap();
        let n = suffix_len(&signed).unwrap();
        assert_eq!(&signed[..signed.len() - n], "/b?sig=x");
        // Expired, or under another key: still removed.
        assert!(s.verify(&signed, 110).is_none());
        assert!(Signer::new(&[2; 32]).verify(&signed, 10).is_none());
        assert_eq!(suffix_len(&signed), Some(n));
        for not in [
            "/b?sig=x",
            "/b?_rec=1",
            "/b?x=1&_rec=sha256-00.1.zz",
            "/b#_rec=a.b.c",
        ] {
            assert_eq!(suffix_len(not), None, "{not}");
        }
        assert_eq!(s.sign("/b?x=1#frag", &digest(), 10, 100), None);
    }

    #[test]
    fn expiry_and_mac_are_read_strictly() {
        let s = Signer::new(&[1; 32]);
        let signed = s.sign("/b?a=1", &digest(), 10, 100).unwrap();
        assert!(s
            .verify(&signed.replacen(".110.", ".0110.", 1), 10)
            .is_none());
        assert!(s
            .verify(&signed.replacen(".110.", ".+110.", 1), 10)
            .is_none());
        let upper = format!(
            "{}{}",
            &signed[..signed.len() - 64],
            signed[signed.len() - 64..].to_uppercase()
        );
        assert!(s.verify(&upper, 10).is_none());
        assert!(s.verify(&format!("{signed}0"), 10).is_none());
        assert!(s.verify("/b?a=1&_rec=", 10).is_none());
        assert!(s.verify("/b?a=1&x_rec=1.2.3", 10).is_none());
    }

    #[test]
    fn sas_expiries_in_azure_form() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso8601("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_iso8601("2026-12-05T12:30Z"), Some(1_796_473_800));
        assert_eq!(parse_iso8601("2026-13-05T12:30:00Z"), None);
        assert_eq!(parse_iso8601("2026-12-05 12:30:00Z"), None);
        assert_eq!(parse_iso8601("2026-12-05T12:30:00"), None);
        assert_eq!(
            url_expiry("/x?sv=1&se=2026-12-05T12%3A30%3A00Z&sig=y"),
            Ok(Some(1_796_473_800))
        );
        assert_eq!(url_expiry("/x?sv=1"), Ok(None));
        assert_eq!(url_expiry("/x"), Ok(None));
        // S3 and GCS: the signing time plus the lifetime; CloudFront: Unix seconds.
        assert_eq!(
            url_expiry("/x?X-Amz-Date=20261205T123000Z&X-Amz-Expires=1200&X-Amz-Signature=a"),
            Ok(Some(1_796_473_800 + 1200))
        );
        assert_eq!(
            url_expiry("/x?X-Goog-Date=20261205T123000Z&X-Goog-Expires=60"),
            Ok(Some(1_796_473_860))
        );
        assert_eq!(
            url_expiry("/x?Expires=1796473000&Signature=s"),
            Ok(Some(1_796_473_000))
        );
        // The earliest of several; a known parameter that does not parse: nothing signed.
        assert_eq!(
            url_expiry("/x?Expires=5&se=2026-12-05T12%3A30%3A00Z"),
            Ok(Some(5))
        );
        for bad in [
            "/x?se=tomorrow",
            "/x?X-Amz-Date=20261205T123000Z",
            "/x?Expires=soon",
        ] {
            assert_eq!(url_expiry(bad), Err(()), "{bad}");
        }
        let s = Signer::new(&[1; 32]);
        assert!(s.sign("/x?se=2026-12-05", &digest(), 10, 100).is_none());
    }
}
