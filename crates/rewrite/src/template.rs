//! Value templates: literal text with `{http_resp_<Header>_<N>}`, `{http_req_<Header>}`,
//! `{var_<name>}` references, parsed once at compile time.

use http::{HeaderName, HeaderValue};

use crate::spec::{Side, Var};

/// A parsed template. References to captures are already resolved to the index of the
/// condition that provides them.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub(crate) segments: Box<[Segment]>,
}

#[derive(Debug, Clone)]
pub(crate) enum Segment {
    Literal(Box<[u8]>),
    /// Group `group` of condition `condition` (0 = the whole match).
    Capture {
        condition: usize,
        group: usize,
    },
    /// The whole current value of a header.
    Header {
        side: Side,
        name: HeaderName,
    },
    Var(Var),
}

/// A `{http_..._<Header>_<N>}` reference before it is tied to a condition.
pub(crate) struct CaptureRef<'t> {
    pub(crate) side: Side,
    pub(crate) name: HeaderName,
    /// As written, for messages.
    pub(crate) written: &'t str,
    pub(crate) group: usize,
}

/// Parses `text`; `resolve` maps a capture reference to its condition index or explains why it
/// cannot. Returns every problem found, not just the first.
pub(crate) fn parse(
    text: &str,
    mut resolve: impl FnMut(&CaptureRef<'_>) -> Result<usize, String>,
) -> Result<Template, Vec<String>> {
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find(['{', '}']) {
        literal.push_str(&rest[..pos]);
        if rest[pos..].starts_with('}') {
            errors.push(format!(
                "unbalanced `}}` at byte {} of the value",
                text.len() - rest.len() + pos
            ));
            rest = &rest[pos + 1..];
            continue;
        }
        let inner_start = pos + 1;
        let Some(len) = rest[inner_start..].find(['{', '}']) else {
            errors.push(format!(
                "unbalanced `{{` at byte {} of the value",
                text.len() - rest.len() + pos
            ));
            rest = "";
            break;
        };
        let close = inner_start + len;
        if rest[close..].starts_with('{') {
            errors.push(format!(
                "unbalanced `{{` at byte {} of the value",
                text.len() - rest.len() + pos
            ));
            rest = &rest[close..];
            continue;
        }
        let inner = &rest[inner_start..close];
        rest = &rest[close + 1..];
        match reference(inner, &mut resolve) {
            Ok(segment) => {
                flush_literal(&mut literal, &mut segments, &mut errors);
                segments.push(segment);
            }
            Err(message) => errors.push(message),
        }
    }
    literal.push_str(rest);
    flush_literal(&mut literal, &mut segments, &mut errors);
    if errors.is_empty() {
        Ok(Template {
            segments: segments.into_boxed_slice(),
        })
    } else {
        Err(errors)
    }
}

fn flush_literal(literal: &mut String, segments: &mut Vec<Segment>, errors: &mut Vec<String>) {
    if literal.is_empty() {
        return;
    }
    // Literal text that could never be a header value is a typo worth reporting now, rather
    // than a rule that silently never applies.
    if HeaderValue::from_str(literal).is_err() {
        errors.push(format!(
            "the text {literal:?} contains a character not allowed in a header value"
        ));
    }
    segments.push(Segment::Literal(
        std::mem::take(literal).into_bytes().into_boxed_slice(),
    ));
}

fn reference(
    inner: &str,
    resolve: &mut impl FnMut(&CaptureRef<'_>) -> Result<usize, String>,
) -> Result<Segment, String> {
    if let Some(name) = inner.strip_prefix("var_") {
        return Var::from_name(name).map(Segment::Var).ok_or_else(|| {
            format!(
                "unknown variable `{{{inner}}}` (known: {})",
                [
                    "client_ip",
                    "host",
                    "request_uri",
                    "scheme",
                    "public_origin"
                ]
                .map(|known| format!("{{var_{known}}}"))
                .join(", ")
            )
        });
    }
    let (side, rest) = if let Some(rest) = inner.strip_prefix("http_resp_") {
        (Side::Response, rest)
    } else if let Some(rest) = inner.strip_prefix("http_req_") {
        (Side::Request, rest)
    } else {
        return Err(format!(
            "unknown reference `{{{inner}}}`: expected {{http_resp_<Header>_<N>}}, \
             {{http_req_<Header>_<N>}}, {{http_resp_<Header>}}, {{http_req_<Header>}} or {{var_<name>}}"
        ));
    };
    // A trailing `_<digits>` is a capture number; header names ending that way cannot be
    // referenced whole, as in App Gateway.
    let capture = rest
        .rsplit_once('_')
        .filter(|(_, digits)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    let written = capture.map_or(rest, |(name, _)| name);
    let name = HeaderName::from_bytes(written.as_bytes())
        .map_err(|_| format!("`{{{inner}}}`: {written:?} is not a valid header name"))?;
    match capture {
        None => Ok(Segment::Header { side, name }),
        Some((_, digits)) => {
            let group = digits
                .parse::<usize>()
                .map_err(|_| format!("`{{{inner}}}`: capture number {digits} is too large"))?;
            let condition = resolve(&CaptureRef {
                side,
                name,
                written,
                group,
            })
            .map_err(|message| format!("`{{{inner}}}`: {message}"))?;
            Ok(Segment::Capture { condition, group })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Template {
        match parse(text, |reference| Ok(reference.group * 10)) {
            Ok(template) => template,
            Err(errors) => panic!("{text}: {errors:?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text, |_| Ok(0)) {
            Ok(template) => panic!("{text} parsed: {template:?}"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn splits_literals_and_references() {
        let template =
            parse_ok("{http_resp_WWW-Authenticate_1}https://x/y{http_resp_WWW-Authenticate_2}");
        let shapes: Vec<String> = template
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(text) => String::from_utf8_lossy(text).into_owned(),
                Segment::Capture { condition, group } => format!("<{condition}/{group}>"),
                Segment::Header { side, name } => format!("<{side:?} {name}>"),
                Segment::Var(var) => format!("<{}>", var.name()),
            })
            .collect();
        assert_eq!(shapes, ["<10/1>", "https://x/y", "<20/2>"]);
    }

    #[test]
    fn whole_header_and_variables() {
        let template = parse_ok("{http_req_X-Forwarded_For}{var_client_ip}{http_resp_x_1a}");
        assert!(matches!(
            &template.segments[..],
            [Segment::Header { side: Side::Request, name }, Segment::Var(Var::ClientIp), Segment::Header { side: Side::Response, name: second }]
                if name == "x-forwarded_for" && second == "x_1a"
        ));
    }

    #[test]
    fn reports_every_problem() {
        let found = errors("a}b{var_nope}{http_resp_bad header_1}{nothing}{open");
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[0].contains("unbalanced `}`"));
        assert!(found[1].contains("unknown variable"));
        assert!(found[2].contains("not a valid header name"));
        assert!(found[3].contains("unknown reference"));
        assert!(found[4].contains("unbalanced `{`"));
    }

    #[test]
    fn nested_brace_is_unbalanced() {
        let found = errors("{http_resp_{var_host}}");
        assert!(
            found.iter().any(|e| e.contains("unbalanced `{`")),
            "{found:?}"
        );
    }

    #[test]
    fn control_characters_in_literals_are_refused() {
        let found = errors("a\nb");
        assert!(found[0].contains("not allowed in a header value"));
    }
}
