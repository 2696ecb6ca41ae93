//! Finding the URL positions inside `Link` and `WWW-Authenticate` values. Both skip quoted
//! strings, so a URL-looking text inside some other parameter is never taken for a target.

use std::ops::Range;

/// Calls `found` with the range of each `<URI-Reference>` of a `Link` value (RFC 8288).
pub(super) fn link_targets(value: &[u8], mut found: impl FnMut(Range<usize>)) {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => i = after_quoted(value, i),
            b'<' => {
                let start = i + 1;
                let Some(len) = value[start..].iter().position(|&b| b == b'>') else {
                    return;
                };
                found(start..start + len);
                i = start + len + 1;
            }
            _ => i += 1,
        }
    }
}

/// Calls `found` with the range of the URL of each `realm` auth-param of a `WWW-Authenticate`
/// value (RFC 9110 §11.6.1), whichever challenge it belongs to. Quoted realms that use
/// backslash escapes are passed over: registries never write them, and splicing inside one
/// would need unescaping.
pub(super) fn realm_values(value: &[u8], mut found: impl FnMut(Range<usize>)) {
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'"' {
            i = after_quoted(value, i);
            continue;
        }
        if !is_tchar(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < value.len() && is_tchar(value[i]) {
            i += 1;
        }
        let token = &value[start..i];
        let mut j = skip_whitespace(value, i);
        if value.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        if value.get(j) == Some(&b'=') {
            // token68 padding (`Basic abc==`), not a parameter.
            i = j;
            continue;
        }
        j = skip_whitespace(value, j);
        if !token.eq_ignore_ascii_case(b"realm") {
            i = j;
            continue;
        }
        if value.get(j) == Some(&b'"') {
            let Some(close) = closing_quote(value, j) else {
                return;
            };
            let content = j + 1..close;
            if !content.is_empty() && !value[content.clone()].contains(&b'\\') {
                found(content);
            }
            i = close + 1;
        } else {
            // Some servers write the realm unquoted, which is not a token but is seen.
            let len = value[j..]
                .iter()
                .position(|&b| b == b',' || b == b' ' || b == b'\t')
                .unwrap_or(value.len() - j);
            if len > 0 {
                found(j..j + len);
            }
            i = j + len;
        }
    }
}

/// Index just past the quoted string opening at `open`, or the value's length if it never
/// closes.
fn after_quoted(value: &[u8], open: usize) -> usize {
    closing_quote(value, open).map_or(value.len(), |close| close + 1)
}

fn closing_quote(value: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < value.len() {
        match value[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_whitespace(value: &[u8], mut i: usize) -> usize {
    while i < value.len() && matches!(value[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// RFC 9110 `tchar`, as a table: the scanner asks for every byte of the value.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn links(value: &str) -> Vec<&str> {
        let mut out = Vec::new();
        link_targets(value.as_bytes(), |range| out.push(&value[range]));
        out
    }

    fn realms(value: &str) -> Vec<&str> {
        let mut out = Vec::new();
        realm_values(value.as_bytes(), |range| out.push(&value[range]));
        out
    }

    #[test]
    fn link_targets_skip_quoted_parameters() {
        assert_eq!(
            links(r#"</v2/_catalog?last=a&n=2>; rel="next", <https://h/x>; title="<not/this>""#),
            ["/v2/_catalog?last=a&n=2", "https://h/x"]
        );
        assert_eq!(links("<unterminated"), Vec::<&str>::new());
    }

    #[test]
    fn realm_of_every_challenge() {
        assert_eq!(
            realms(r#"Bearer realm="https://r/oauth2/token",service="r", Basic Realm = "x""#),
            ["https://r/oauth2/token", "x"]
        );
        assert_eq!(
            realms(
                r#"Bearer error_description="realm=\"https://no\"", xrealm="no", realm=https://yes/t,service=s"#
            ),
            ["https://yes/t"]
        );
        assert_eq!(
            realms(r#"Negotiate abc==, Bearer realm="a\"b""#),
            Vec::<&str>::new()
        );
        assert_eq!(realms(r#"Bearer realm=""#), Vec::<&str>::new());
        assert_eq!(realms(r#"Bearer realm="""#), Vec::<&str>::new());
        assert_eq!(realms("Bearer realm="), Vec::<&str>::new());
    }
}
