//! `application/x-www-form-urlencoded`, as Go's `net/url.ParseQuery` reads it and
//! `url.QueryEscape` writes it: `+` is a space, `%XX` is a byte, a `%` not followed by two hex
//! digits is an error (Go drops the pair and reports it; the edge refuses the request), and `;`
//! is an error (Go ≥ 1.17). Values must be UTF-8 after decoding: a registry client never sends
//! anything else, and overlong or invalid sequences are a classic way to make two decoders
//! disagree.

/// Why a query or form body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A `;` separator (Go refuses it, older decoders split on it: two readings).
    Semicolon,
    /// Not UTF-8 once decoded.
    NotUtf8,
    /// A control character (0x00-0x1f, 0x7f) once decoded.
    Control,
}

impl FormError {
    pub fn message(self) -> &'static str {
        match self {
            FormError::BadEscape => "a `%` in the query is not followed by two hex digits",
            FormError::Semicolon => "`;` is not a query separator here; use `&`",
            FormError::NotUtf8 => "a query name or value is not UTF-8 once decoded",
            FormError::Control => "a query name or value holds a control character",
        }
    }
}

/// One component decoded (`+` → space, `%XX` → byte), checked for UTF-8 and control bytes.
pub fn decode(raw: &str) -> Result<String, FormError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = b.get(i + 1).and_then(|&c| hex(c));
                let lo = b.get(i + 2).and_then(|&c| hex(c));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(FormError::BadEscape),
                }
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    let s = String::from_utf8(out).map_err(|_| FormError::NotUtf8)?;
    if s.bytes().any(|c| c < 0x20 || c == 0x7f) {
        return Err(FormError::Control);
    }
    Ok(s)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Every `name=value` pair, both decoded; empty pairs (`a=1&&b=2`) are skipped as Go skips
/// them; a pair without `=` has an empty value.
pub fn pairs(raw: &str) -> Result<Vec<(String, String)>, FormError> {
    if raw.contains(';') {
        return Err(FormError::Semicolon);
    }
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `url.QueryEscape`: unreserved bytes as they are, a space as `+`, everything else `%XX`.
pub fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in s.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(c))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
    }
}

/// `name=value&...` from decoded pairs, each encoded by [`encode_into`].
pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_go_does() {
        assert_eq!(decode("sc%6fpe").as_deref(), Ok("scope"));
        assert_eq!(decode("a+b%20c").as_deref(), Ok("a b c"));
        assert_eq!(decode("%2Fx%2f").as_deref(), Ok("/x/"));
        assert_eq!(decode("%"), Err(FormError::BadEscape));
        assert_eq!(decode("%4"), Err(FormError::BadEscape));
        assert_eq!(decode("%zz"), Err(FormError::BadEscape));
        assert_eq!(decode("%c0%af"), Err(FormError::NotUtf8));
        assert_eq!(decode("a%00"), Err(FormError::Control));
        assert_eq!(decode("a%0d%0a"), Err(FormError::Control));
        assert_eq!(decode("é").as_deref(), Ok("é"));
        assert_eq!(pairs("a=1;b=2"), Err(FormError::Semicolon));
        assert_eq!(
            pairs("a=1&&b&c=%3D").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "=".into())
            ]
        );
    }

    #[test]
    fn encodes_as_go_query_escape() {
        assert_eq!(
            serialize([("scope", "repository:a/b:pull push"), ("x", "~._-é")]),
            "scope=repository%3Aa%2Fb%3Apull+push&x=~._-%C3%A9"
        );
    }

    proptest::proptest! {
        #[test]
        fn round_trip(k in "\\PC*", v in "\\PC*") {
            let s = serialize([(k.as_str(), v.as_str())]);
            let back = pairs(&s);
            if k.is_empty() && v.is_empty() {
                // "=" alone: one pair with empty name and value.
                proptest::prop_assert_eq!(back, Ok(vec![(String::new(), String::new())]));
            } else {
                proptest::prop_assert_eq!(back, Ok(vec![(k, v)]));
            }
        }
    }
}
