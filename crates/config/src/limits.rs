//! Bounds on a configuration document, checked in linear time before serde_yaml sees it.
//!
//! libyaml (under serde_yaml) rescans its stack of open flow collections at every token, so a
//! deeply nested flow document costs time quadratic in its depth: `listeners: [[[[...]]]]`
//! 100 000 levels deep kept `registry-edge check` busy for 38 s. A configuration needs fewer
//! than ten levels; anything beyond [`MAX_DEPTH`] or [`MAX_BYTES`] is refused with its position
//! before that parser runs.
//!
//! The depth is counted on the events of yaml-rust2 (the parser [`crate::position`] uses),
//! which stops at the first collection past the limit; its scanner keeps no more than 255 flow
//! levels open and fails fast beyond them, so the pass is linear whatever the input.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use crate::error::ConfigError;
use crate::position::Position;

/// The largest configuration read: 4 MiB (the shipped example with every key is under 20 KB).
pub const MAX_BYTES: usize = 4 << 20;

/// The deepest nesting of mappings and sequences accepted (a configuration uses at most 6).
pub const MAX_DEPTH: usize = 64;

/// Refuses a document over [`MAX_BYTES`] or nested deeper than [`MAX_DEPTH`].
///
/// A syntax error that yaml-rust2 finds is left to serde_yaml to report (its messages are the
/// ones users know), unless the text holds more than [`MAX_DEPTH`] opening brackets: then the
/// pass could not rule out a deeper flow nesting after the error, and the error is reported
/// here instead.
pub(crate) fn check(text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_BYTES {
        return Err(too_large(&text.as_bytes()[..MAX_BYTES]));
    }
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => return Ok(()),
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), marker)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep(&marker));
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            Err(e) => {
                // yaml-rust2's own bound on open flow collections.
                if e.info().contains("recursion limit") {
                    return Err(too_deep(e.marker()));
                }
                let brackets = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
                if brackets <= MAX_DEPTH {
                    return Ok(());
                }
                return Err(ConfigError {
                    path: String::new(),
                    position: Some(position(e.marker())),
                    message: format!("not valid YAML: {}", e.info()),
                });
            }
        }
    }
}

fn position(marker: &Marker) -> Position {
    Position {
        line: marker.line(),
        col: marker.col() + 1,
    }
}

fn too_deep(marker: &Marker) -> ConfigError {
    ConfigError {
        path: String::new(),
        position: Some(position(marker)),
        message: format!(
            "nested deeper than {MAX_DEPTH} levels of mappings and sequences; a configuration needs fewer than 10"
        ),
    }
}

/// The error for a text longer than [`MAX_BYTES`], positioned where the limit falls; `head`
/// is the text's first [`MAX_BYTES`] bytes.
pub(crate) fn too_large(head: &[u8]) -> ConfigError {
    let line_start = head.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = 1 + head.iter().filter(|b| **b == b'\n').count();
    // Columns count characters: every byte that does not continue a UTF-8 sequence.
    let col = 1 + head[line_start..]
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count();
    ConfigError {
        path: String::new(),
        position: Some(Position { line, col }),
        message: format!(
            "the file is larger than {MAX_BYTES} bytes (4 MiB), the most a configuration may take; the limit falls here"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deep_flow(n: usize) -> String {
        format!(
            "version: 1\nlisteners: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        )
    }

    #[test]
    fn a_deep_flow_list_is_refused_where_it_goes_too_deep() {
        // The root mapping is one level: 64 brackets make 65.
        for n in [MAX_DEPTH, 200, 255, 256, 100_000] {
            let e = check(&deep_flow(n)).unwrap_err();
            assert!(e.message.contains("nested deeper than 64 levels"), "{e:?}");
            let p = e.position.unwrap();
            assert_eq!(p.line, 2, "{n}: {e:?}");
            // The error points into the run of brackets.
            assert!(p.col > 11, "{n}: {e:?}");
        }
        // At the limit: fine.
        check(&deep_flow(MAX_DEPTH - 1)).unwrap();
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        // `- - - - x`: one sequence per dash.
        let text = format!("version: 1\nlisteners:\n{}x\n", "- ".repeat(100_000));
        let e = check(&text).unwrap_err();
        assert!(e.message.contains("nested deeper than 64 levels"), "{e:?}");
        assert_eq!(e.position.map(|p| p.line), Some(3));

        // One level per line, by indentation.
        let mut text = String::from("version: 1\nlisteners:\n");
        for i in 1..200 {
            text.push_str(&" ".repeat(i));
            text.push_str("a:\n");
        }
        let e = check(&text).unwrap_err();
        assert!(e.message.contains("nested deeper than 64 levels"), "{e:?}");
        // Line n opens level n - 1.
        assert_eq!(e.position.map(|p| p.line), Some(MAX_DEPTH + 2));

        // Mixed: block sequences holding flow mappings.
        let text = format!(
            "version: 1\nlisteners:\n{}{}{}\n",
            "- ".repeat(40),
            "{a: ".repeat(40),
            "}".repeat(40)
        );
        assert!(check(&text).is_err());
    }

    #[test]
    fn parse_and_load_report_it_as_file_line_col() {
        let options = crate::Options { check_files: false };
        let base = std::path::Path::new(".");
        let e = crate::parse(&deep_flow(100_000), "edge.yaml", base, options).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        // yaml-rust2 holds a flow collection's events back until it knows whether the
        // collection is a key; it gives up at its 256th open bracket, and that is the position
        // (a document 64 to 255 brackets deep is refused at the 64th).
        assert!(
            e.to_string()
                .starts_with("edge.yaml:2:267: nested deeper than 64 levels"),
            "{e}"
        );
        let e = crate::parse(&deep_flow(100), "edge.yaml", base, options).unwrap_err();
        assert!(e.to_string().starts_with("edge.yaml:2:75: nested"), "{e}");
        let text = format!("version: 1\nlisteners:\n{}x\n", "- ".repeat(100_000));
        let e = crate::parse(&text, "edge.yaml", base, options).unwrap_err();
        // The 64th dash, at column 2 * 64 - 1, opens the 65th level.
        assert!(e.to_string().starts_with("edge.yaml:3:127: nested"), "{e}");

        // A file that never ends is read no further than the limit.
        let e = crate::load(std::path::Path::new("/dev/zero"), options).unwrap_err();
        assert!(e.to_string().contains("larger than 4194304 bytes"), "{e}");
    }

    #[test]
    fn ordinary_documents_pass() {
        check("version: 1\nlisteners: [{ address: \"127.0.0.1:8080\" }]\n").unwrap();
        check("").unwrap();
        check("a: [1, [2, {b: [3]}]]\n---\nc: d\n").unwrap();
        // Brackets inside scalars and comments are not nesting.
        let many = "[".repeat(1000);
        check(&format!(
            "a: '{many}'\nb: \"{many}\"\n# {many}\nc: |\n  {many}\n"
        ))
        .unwrap();
    }

    #[test]
    fn the_shipped_configurations_pass() {
        let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
        let mut seen = 0;
        for entry in std::fs::read_dir(conf).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                check(&text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn syntax_errors_are_left_to_serde_yaml_unless_brackets_abound() {
        // A few brackets: serde_yaml reports the error, as it always did.
        check("a: [1, 2\nb: :\n").unwrap();
        // yaml-rust2 fails before any depth is seen, and so many brackets follow that the
        // pass cannot vouch for what comes after: the error is reported here.
        let text = format!("a: \"unterminated\nb: {}\n", "[".repeat(100_000));
        let e = check(&text).unwrap_err();
        assert!(e.message.starts_with("not valid YAML"), "{e:?}");
        assert!(e.position.is_some());
    }

    #[test]
    fn the_size_limit_is_positioned_where_it_falls() {
        let line = "# a comment of forty characters, padded\n";
        assert_eq!(line.len(), 40);
        let mut text = line.repeat(MAX_BYTES / 40);
        text.push('é');
        text.push_str(&"x".repeat(40));
        text.push('\n');
        assert!(text.len() > MAX_BYTES);
        let e = check(&text).unwrap_err();
        assert!(e.message.contains("larger than 4194304 bytes"), "{e:?}");
        // 4 MiB is 104857 lines of 40 bytes and 24 bytes of the next: 'é' (2 bytes) and 22
        // more, 23 characters; the limit falls on the 24th.
        assert_eq!(
            e.position,
            Some(Position {
                line: 104_858,
                col: 24
            })
        );
        let at_limit = &text[..MAX_BYTES];
        check(at_limit).unwrap();
    }
}
