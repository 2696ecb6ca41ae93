//! The distribution specification's grammar (v1.1), written out by hand so that it runs in one
//! pass without backtracking and can be fuzzed:
//!
//! ```text
//! name       = component *("/" component)             ; at most 255 bytes in all
//! component  = alnum *(separator alnum)                 ; alnum = [a-z0-9]+
//! separator  = "." | "_" | "__" | "-"+
//! tag        = [a-zA-Z0-9_] [a-zA-Z0-9._-]{0,127}
//! digest     = algorithm ":" encoded
//! algorithm  = alg-component *([+._-] alg-component)   ; alg-component = [a-z0-9]+
//! encoded    = [a-zA-Z0-9=_-]+                          ; sha256: 64, sha512: 128 lower-case hex
//! ```

/// Longest repository name the spec (and distribution) accepts.
pub const MAX_NAME: usize = 255;
/// Longest tag.
pub const MAX_TAG: usize = 128;

/// A repository name: components of lower-case alphanumerics joined by `.`, `_`, `__` or dashes,
/// separated by `/`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or any number of "-".
        let start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: a word character first, then up to 127 of `[A-Za-z0-9._-]`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= MAX_TAG
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A digest `algorithm:encoded`; the registered algorithms (sha256, sha512) are held to their
/// length and lower-case hex.
pub fn is_digest(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        });
    if !alg_ok || enc.is_empty() || enc.len() > 1024 {
        return false;
    }
    let lower_hex = |n: usize| {
        enc.len() == n
            && enc
                .bytes()
                .all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x))
    };
    match alg {
        "sha256" => lower_hex(64),
        "sha512" => lower_hex(128),
        _ => enc
            .bytes()
            .all(|x| x.is_ascii_alphanumeric() || x == b'=' || x == b'_' || x == b'-'),
    }
}

/// A manifest reference: a tag or a digest.
pub fn is_reference(s: &str) -> bool {
    is_tag(s) || is_digest(s)
}

/// An upload session id as registries mint them (distribution: a UUID; ACR: a GUID, sometimes
/// with a suffix): `[A-Za-z0-9._=-]`, not a dot segment, at most 256 bytes.
pub fn is_upload_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'=' | b'-'))
}

/// A media type `type/subtype` of RFC 6838 restricted-name characters (`artifactType=`).
pub fn is_media_type(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 127
            && p.bytes().all(|x| {
                x.is_ascii_alphanumeric()
                    || matches!(
                        x,
                        b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-'
                    )
            })
    };
    matches!(s.split_once('/'), Some((t, sub)) if part(t) && part(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/ubuntu",
            "team/app",
            "a.b_c__d---e/f0",
            "x/blobs/y",
            "0",
        ] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "team/App", "a..b", "a___b", "-a", "a-", "a/", "/a", "a//b", "a/./b",
            "a/../b", "..", "a%2fb", "a b", "é", "a:b",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_name(&"a".repeat(255)));
        assert!(!is_name(&"a".repeat(256)));
    }

    #[test]
    fn tags_and_digests() {
        assert!(is_tag("latest") && is_tag("1.0") && is_tag("_x") && is_tag("V1-rc.2"));
        assert!(!is_tag(".x") && !is_tag("-x") && !is_tag("a/b") && !is_tag("a:b"));
        assert!(is_tag(&"a".repeat(128)) && !is_tag(&"a".repeat(129)));
        let hex = "a".repeat(64);
        assert!(is_digest(&format!("sha256:{hex}")));
        assert!(!is_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "a".repeat(63))));
        assert!(is_digest(&format!("sha512:{}", "0".repeat(128))));
        assert!(is_digest(
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
        ));
        assert!(!is_digest("sha256") && !is_digest(":abc") && !is_digest("SHA256:abc"));
        assert!(!is_digest("sha256:") && !is_digest("a..b:c"));
        assert!(is_reference("latest") && is_reference(&format!("sha256:{hex}")));
    }

    #[test]
    fn upload_ids_and_media_types() {
        assert!(is_upload_id("4bd3c6e0-3a5e-4c6f-9a4b-2f3c0d1e2f3a"));
        assert!(!is_upload_id("..") && !is_upload_id("a/b") && !is_upload_id("a%2f"));
        assert!(is_media_type("application/vnd.oci.image.manifest.v1+json"));
        assert!(
            !is_media_type("application") && !is_media_type("a/b/c") && !is_media_type("a/b c")
        );
    }
}
