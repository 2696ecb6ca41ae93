//! A condition's regex, with a fast path for App Gateway's idiom `^(.*)CORE(.*)$` /
//! `CORE(.*)$`.
//!
//! The regex crate answers captures for those patterns with a backtracking engine that walks
//! the whole value byte by byte (about 2 µs for a 100-byte `WWW-Authenticate`). Yet the groups
//! follow from where CORE matches: with a greedy `(.*)` in front, CORE starts at the rightmost
//! position where it can; without, at the leftmost; and a trailing `(.*)` takes the rest. That
//! position takes one DFA scan (a reverse one for the rightmost) when every CORE match has the
//! same length, as the host-and-path patterns of these rules do, and a few forward searches
//! otherwise. Both dot-stars match any byte of a header value (no `\n` there; with Unicode `.`,
//! any valid UTF-8), so the answer equals the backtracker's. Where that premise fails for a
//! value (a `\n`, invalid UTF-8, a group edge inside a character) the fast path declines and
//! the regex crate answers; a property test checks the two agree.

use regex::bytes::Regex;
use regex_automata::hybrid;
use regex_automata::nfa::thompson;
use regex_automata::util::pool::Pool;
use regex_automata::{meta, Anchored, Input};
use regex_syntax::hir::{Hir, HirKind, Look};

mod byteseq;

use byteseq::ByteSeq;

/// Group spans of one match, by group index (0 = the whole match). Patterns rarely have more
/// than three groups, and those spans live inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spans {
    Inline {
        len: u8,
        slots: [Option<(usize, usize)>; INLINE_GROUPS],
    },
    Heap(Vec<Option<(usize, usize)>>),
}

const INLINE_GROUPS: usize = 4;

impl Spans {
    fn new(groups: usize) -> Spans {
        match u8::try_from(groups) {
            Ok(len) if groups <= INLINE_GROUPS => Spans::Inline {
                len,
                slots: [None; INLINE_GROUPS],
            },
            _ => Spans::Heap(vec![None; groups]),
        }
    }

    pub(crate) fn as_slice(&self) -> &[Option<(usize, usize)>] {
        match self {
            Spans::Inline { len, slots } => &slots[..usize::from(*len)],
            Spans::Heap(slots) => slots,
        }
    }

    fn set(&mut self, group: usize, span: Option<(usize, usize)>) {
        let slot = match self {
            Spans::Inline { len, slots } => slots[..usize::from(*len)].get_mut(group),
            Spans::Heap(slots) => slots.get_mut(group),
        };
        if let Some(slot) = slot {
            *slot = span;
        }
    }

    pub(crate) fn get(&self, group: usize) -> Option<(usize, usize)> {
        self.as_slice().get(group).copied().flatten()
    }
}

#[derive(Debug)]
pub(crate) struct Matcher {
    regex: Regex,
    fast: Option<DotStar>,
}

impl Matcher {
    pub(crate) fn new(regex: Regex, case_sensitive: bool) -> Matcher {
        let fast = DotStar::new(regex.as_str(), case_sensitive);
        Matcher { regex, fast }
    }

    pub(crate) fn captures_len(&self) -> usize {
        self.regex.captures_len()
    }

    #[cfg(test)]
    pub(crate) fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    pub(crate) fn is_match(&self, haystack: &[u8]) -> bool {
        match self.fast.as_ref().and_then(|fast| fast.is_match(haystack)) {
            Some(found) => found,
            None => self.regex.is_match(haystack),
        }
    }

    /// The groups of the leftmost-first match, or `None` when there is no match.
    pub(crate) fn captures(&self, haystack: &[u8]) -> Option<Spans> {
        if let Some(fast) = &self.fast {
            if let Some(found) = fast.locate(haystack) {
                return found
                    .map(|located| fast.spans(&located, haystack.len(), self.captures_len()));
            }
        }
        let captures = self.regex.captures(haystack)?;
        let mut spans = Spans::new(captures.len());
        for i in 0..captures.len() {
            spans.set(i, captures.get(i).map(|m| (m.start(), m.end())));
        }
        Some(spans)
    }
}

/// `[^] [(.*)] CORE (.*) [$]` with no group inside CORE.
#[derive(Debug)]
struct DotStar {
    lead: Lead,
    /// Group index of the trailing dot-star, when it is a group.
    trail_group: Option<usize>,
    core: meta::Regex,
    /// `.` excludes bytes that are not UTF-8 (Unicode mode), so values must be valid UTF-8.
    unicode_dot: bool,
    /// How many bytes of an ASCII value any CORE match spans, when that is fixed.
    ascii_len: Option<usize>,
    /// CORE as byte sets, when it is a plain sequence of characters.
    seq: Option<ByteSeq>,
}

/// Values longer than this get a prefiltered forward check before a reverse scan.
const LONG_VALUE: usize = 256;

#[derive(Debug)]
enum Lead {
    /// CORE may start anywhere: the leftmost match wins.
    None,
    /// `^CORE`.
    Start,
    /// `[^](.*)CORE`: CORE starts as far right as it can.
    DotStar {
        group: Option<usize>,
        reverse: Box<Reverse>,
    },
}

struct Reverse {
    dfa: hybrid::dfa::DFA,
    caches: CachePool,
}

type CachePool = Pool<hybrid::dfa::Cache, Box<dyn Fn() -> hybrid::dfa::Cache + Send + Sync>>;

impl std::fmt::Debug for Reverse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reverse")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Premise {
    /// ASCII without `\n`: every position is a character boundary.
    Ascii,
    /// No `\n`, and valid UTF-8 where `.` requires it: boundaries need checking.
    Checked,
}

/// Where the parts of a fast-path match lie.
struct Located {
    /// Start of the whole match.
    start: usize,
    core_start: usize,
    core_end: usize,
}

/// A dot-star recognised at an end of the pattern: `.*` or `(.*)`.
enum Edge {
    Bare,
    Group(usize),
}

impl DotStar {
    fn new(pattern: &str, case_sensitive: bool) -> Option<DotStar> {
        let parse = |text: &str| {
            regex_syntax::ParserBuilder::new()
                .utf8(false)
                .case_insensitive(!case_sensitive)
                .build()
                .parse(text)
                .ok()
        };
        let hir = parse(pattern)?;
        let dot = parse(".")?;
        let unicode_dot = matches!(
            dot.kind(),
            HirKind::Class(regex_syntax::hir::Class::Unicode(_))
        );
        let items: &[Hir] = match hir.kind() {
            HirKind::Concat(items) => items,
            _ => return None,
        };
        let edge = |item: &Hir| -> Option<Edge> {
            let (group, rep) = match item.kind() {
                HirKind::Capture(capture) => match capture.sub.kind() {
                    HirKind::Repetition(rep) => (Some(capture.index as usize), rep),
                    _ => return None,
                },
                HirKind::Repetition(rep) => (None, rep),
                _ => return None,
            };
            let dot_star = rep.min == 0 && rep.max.is_none() && rep.greedy && *rep.sub == dot;
            dot_star.then_some(match group {
                Some(index) => Edge::Group(index),
                None => Edge::Bare,
            })
        };

        let mut first = 0;
        let mut last = items.len();
        let anchored = matches!(items.first()?.kind(), HirKind::Look(Look::Start));
        if anchored {
            first += 1;
        }
        let lead_edge = items.get(first).and_then(edge);
        if lead_edge.is_some() {
            first += 1;
        }
        if last > first && matches!(items[last - 1].kind(), HirKind::Look(Look::End)) {
            last -= 1;
        }
        let trail_edge = if last > first {
            edge(&items[last - 1])?
        } else {
            return None;
        };
        last -= 1;
        if last <= first {
            return None;
        }
        let core = Hir::concat(items[first..last].to_vec());
        let props = core.properties();
        // Groups inside CORE would need numbering of their own; an empty CORE match could sit
        // inside a character. Both are left to the regex crate.
        if props.explicit_captures_len() > 0 || props.minimum_len().unwrap_or(0) == 0 {
            return None;
        }
        let trail_group = match trail_edge {
            Edge::Group(index) => Some(index),
            Edge::Bare => None,
        };
        let core_regex = meta::Builder::new()
            .configure(meta::Config::new().utf8_empty(false))
            .build_from_hir(&core)
            .ok()?;
        let lead = match (lead_edge, anchored) {
            (Some(edge), _) => {
                let nfa = thompson::Compiler::new()
                    .configure(
                        thompson::Config::new()
                            .reverse(true)
                            .utf8(false)
                            .which_captures(thompson::WhichCaptures::None),
                    )
                    .build_from_hir(&core)
                    .ok()?;
                let dfa = hybrid::dfa::DFA::builder().build_from_nfa(nfa).ok()?;
                let for_caches = dfa.clone();
                let caches: CachePool = Pool::new(Box::new(move || for_caches.create_cache()));
                Lead::DotStar {
                    group: match edge {
                        Edge::Group(index) => Some(index),
                        Edge::Bare => None,
                    },
                    reverse: Box::new(Reverse { dfa, caches }),
                }
            }
            (None, true) => Lead::Start,
            (None, false) => Lead::None,
        };
        Some(DotStar {
            lead,
            trail_group,
            ascii_len: ascii_len(&core),
            seq: ByteSeq::new(&core),
            core: core_regex,
            unicode_dot,
        })
    }

    /// `None` when the fast path cannot answer for this value.
    fn is_match(&self, haystack: &[u8]) -> Option<bool> {
        let premise = self.premise(haystack)?;
        let input = match self.lead {
            Lead::Start => Input::new(haystack).anchored(Anchored::Yes),
            Lead::None | Lead::DotStar { .. } => Input::new(haystack),
        };
        if premise == Premise::Ascii {
            if let Some(seq) = &self.seq {
                return Some(match self.lead {
                    Lead::Start => seq.matches_at(haystack, 0),
                    Lead::None | Lead::DotStar { .. } => seq.find(haystack, false).is_some(),
                });
            }
            return Some(self.core.is_match(input));
        }
        // Any CORE match with its edges on character boundaries makes the pattern match; the
        // leftmost one is the quickest to find.
        match self.core.search(&input) {
            None => Some(false),
            Some(m) => self
                .on_boundaries(haystack, m.start(), m.end())
                .then_some(true),
        }
    }

    /// Whether the dot-stars can take any part of this value, and how easily.
    fn premise(&self, haystack: &[u8]) -> Option<Premise> {
        // One pass, without early exit so that it vectorises, for the common case: ASCII
        // without a line feed, where every byte is a whole character that `.` matches.
        let ascii_line = haystack
            .iter()
            .fold(true, |ok, &b| ok & (b < 0x80) & (b != b'\n'));
        if ascii_line {
            return Some(Premise::Ascii);
        }
        let holds = !haystack.contains(&b'\n')
            && (!self.unicode_dot || std::str::from_utf8(haystack).is_ok());
        holds.then_some(Premise::Checked)
    }

    /// A Unicode dot-star cannot end or start inside a character.
    fn on_boundaries(&self, haystack: &[u8], start: usize, end: usize) -> bool {
        let boundary = |i: usize| haystack.get(i).is_none_or(|&b| (b as i8) >= -0x40);
        !self.unicode_dot || (boundary(start) && boundary(end))
    }

    /// `None` when the fast path cannot answer for this value; `Some(None)` for no match.
    fn locate(&self, haystack: &[u8]) -> Option<Option<Located>> {
        let premise = self.premise(haystack)?;
        if premise == Premise::Ascii {
            if let Some(seq) = &self.seq {
                return Some(self.locate_seq(haystack, seq));
            }
            if let Some(len) = self.ascii_len {
                return self.locate_fixed(haystack, len);
            }
        }
        let located = match &self.lead {
            Lead::None => self.core.search(&Input::new(haystack)).map(|m| Located {
                start: m.start(),
                core_start: m.start(),
                core_end: m.end(),
            }),
            Lead::Start => self
                .core
                .search(&Input::new(haystack).anchored(Anchored::Yes))
                .map(|m| Located {
                    start: 0,
                    core_start: 0,
                    core_end: m.end(),
                }),
            Lead::DotStar { reverse, .. } => match self.core.search(&Input::new(haystack)) {
                None => None,
                Some(leftmost) => {
                    let core_start = self.rightmost_start(haystack, leftmost.start(), reverse)?;
                    let m = if core_start == leftmost.start() {
                        leftmost
                    } else {
                        let input = Input::new(haystack)
                            .range(core_start..)
                            .anchored(Anchored::Yes);
                        self.core.search(&input)?
                    };
                    Some(Located {
                        start: 0,
                        core_start,
                        core_end: m.end(),
                    })
                }
            },
        };
        if let Some(located) = &located {
            if !self.on_boundaries(haystack, located.core_start, located.core_end) {
                return None;
            }
        }
        Some(located)
    }

    /// `locate` for an ASCII value and a CORE of byte sets.
    fn locate_seq(&self, haystack: &[u8], seq: &ByteSeq) -> Option<Located> {
        let (start, core_start) = match self.lead {
            Lead::None => {
                let at = seq.find(haystack, false)?;
                (at, at)
            }
            Lead::Start => (0, seq.matches_at(haystack, 0).then_some(0)?),
            Lead::DotStar { .. } => (0, seq.find(haystack, true)?),
        };
        Some(Located {
            start,
            core_start,
            core_end: core_start + seq.len(),
        })
    }

    /// `locate` for an ASCII value and a CORE that always spans `len` bytes of one: a match's
    /// start follows from its end and the other way round, so one DFA pass finds it.
    fn locate_fixed(&self, haystack: &[u8], len: usize) -> Option<Option<Located>> {
        // Outer `None`: let the general path answer (a DFA that gave up, an impossible span).
        let (start, core_start, core_end) = match &self.lead {
            Lead::None => match self.core.search_half(&Input::new(haystack)) {
                None => return Some(None),
                Some(end) => {
                    let start = end.offset().checked_sub(len)?;
                    (start, start, end.offset())
                }
            },
            Lead::Start => {
                let input = Input::new(haystack).anchored(Anchored::Yes);
                match self.core.search_half(&input) {
                    None => return Some(None),
                    Some(end) => (0, 0, end.offset()),
                }
            }
            Lead::DotStar { reverse, .. } => {
                // The reverse scan has no literal prefilter; on a long value a forward check,
                // which has one, rules out the common no-match case first.
                if haystack.len() > LONG_VALUE && !self.core.is_match(Input::new(haystack)) {
                    return Some(None);
                }
                let mut cache = reverse.caches.get();
                let input = Input::new(haystack).earliest(true);
                match reverse.dfa.try_search_rev(&mut cache, &input).ok()? {
                    None => return Some(None),
                    Some(found) => (0, found.offset(), found.offset().checked_add(len)?),
                }
            }
        };
        if core_end > haystack.len() {
            return None;
        }
        Some(Some(Located {
            start,
            core_start,
            core_end,
        }))
    }

    /// The rightmost position at or after `from` where CORE matches (`from` being one).
    ///
    /// A header value usually holds CORE once, so looking for a next match from one past the
    /// last (which the literal prefilter usually rules out at once) is cheapest; values with
    /// many matches switch to one reverse DFA scan, linear whatever the count.
    fn rightmost_start(&self, haystack: &[u8], from: usize, reverse: &Reverse) -> Option<usize> {
        let mut start = from;
        for _ in 0..4 {
            if start >= haystack.len() {
                return Some(start);
            }
            match self.core.search(&Input::new(haystack).range(start + 1..)) {
                Some(next) => start = next.start(),
                None => return Some(start),
            }
        }
        let mut cache = reverse.caches.get();
        let input = Input::new(haystack).range(start..).earliest(true);
        let found = reverse.dfa.try_search_rev(&mut cache, &input).ok()??;
        Some(found.offset())
    }

    fn spans(&self, located: &Located, len: usize, groups: usize) -> Spans {
        let mut spans = Spans::new(groups);
        spans.set(0, Some((located.start, len)));
        if let Lead::DotStar {
            group: Some(group), ..
        } = &self.lead
        {
            spans.set(*group, Some((0, located.core_start)));
        }
        if let Some(group) = self.trail_group {
            spans.set(group, Some((located.core_end, len)));
        }
        spans
    }
}

/// The length, in bytes of an ASCII haystack, of every match of `hir`, when all have one:
/// each class or character takes one byte there (a non-ASCII one never matches at all).
fn ascii_len(hir: &Hir) -> Option<usize> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(0),
        HirKind::Literal(literal) => std::str::from_utf8(&literal.0)
            .ok()
            .map(|text| text.chars().count()),
        HirKind::Class(_) => Some(1),
        HirKind::Repetition(rep) => match rep.max {
            Some(max) if max == rep.min => ascii_len(&rep.sub)?.checked_mul(max as usize),
            _ => None,
        },
        HirKind::Capture(capture) => ascii_len(&capture.sub),
        HirKind::Concat(items) => items
            .iter()
            .try_fold(0usize, |total, item| total.checked_add(ascii_len(item)?)),
        HirKind::Alternation(alternatives) => {
            let mut lengths = alternatives.iter().map(ascii_len);
            let first = lengths.next()??;
            lengths.all(|len| len == Some(first)).then_some(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::bytes::RegexBuilder;

    fn matcher(pattern: &str, case_sensitive: bool) -> Matcher {
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(!case_sensitive)
            .build()
            .unwrap();
        Matcher::new(regex, case_sensitive)
    }

    fn reference(
        pattern: &str,
        case_sensitive: bool,
        haystack: &[u8],
    ) -> Option<Vec<Option<(usize, usize)>>> {
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(!case_sensitive)
            .build()
            .unwrap();
        regex.captures(haystack).map(|c| {
            (0..c.len())
                .map(|i| c.get(i).map(|m| (m.start(), m.end())))
                .collect()
        })
    }

    #[test]
    fn recognises_the_app_gateway_idioms() {
        for pattern in [
            r"https:\/\/contososecurepublicacr.azurecr.io(.*)$",
            r"^(.*)https:\/\/contososecurepublicacr.azurecr.io\/oauth2\/token(.*)$",
            r"^https://x(.*)",
            r".*x.*",
            r"(?i)(.*)x(.*)$",
        ] {
            assert!(matcher(pattern, false).has_fast_path(), "{pattern}");
        }
        for pattern in [
            r"x",
            r"^(.*)x$",
            r"(.*)x|y(.*)",
            r"(.*)(x)(.*)",
            r"(.*)x*(.*)",
            r"(.*?)x(.*)",
            r"(?m)^(.*)x(.*)$",
            r"(?s)(.*)x(.*)",
            r"(.+)x(.*)",
        ] {
            assert!(!matcher(pattern, false).has_fast_path(), "{pattern}");
        }
    }

    #[test]
    fn host_and_path_patterns_take_byte_sets() {
        for pattern in [
            r"https:\/\/contososecurepublicacr.azurecr.io(.*)$",
            r"^(.*)https:\/\/contososecurepublicacr.azurecr.io\/oauth2\/token(.*)$",
            r"^(.*)x[0-9]{3}\.y(.*)$",
        ] {
            let m = matcher(pattern, false);
            assert!(
                m.fast.as_ref().is_some_and(|f| f.seq.is_some()),
                "{pattern}"
            );
        }
        let m = matcher(r"(.*)x(?:a|bc)(.*)", false);
        assert!(m.fast.as_ref().is_some_and(|f| f.seq.is_none()));
    }

    #[test]
    fn seed_realm_split() {
        let m = matcher(
            r"^(.*)https:\/\/contososecurepublicacr.azurecr.io\/oauth2\/token(.*)$",
            false,
        );
        let value = br#"Bearer realm="https://contososecurepublicacr.azurecr.io/oauth2/token",service="contososecurepublicacr.azurecr.io""#;
        let found = m.captures(value).map(|spans| spans.as_slice().to_vec());
        assert_eq!(found, reference(m.regex.as_str(), false, value));
        assert_eq!(found.map(|spans| spans[1]), Some(Some((0, 14))));
    }

    #[test]
    fn many_occurrences_take_the_reverse_scan() {
        for (pattern, haystack) in [
            ("^(.*)ab(.*)$", "abababababababababab x"),
            ("(.*)a(.*)", "aaaaaaaaaaaaaaaaaa"),
            ("(.*)(?:aa|a)b(.*)", "aabaabaabaabaabaabaab"),
        ] {
            let m = matcher(pattern, true);
            assert!(m.has_fast_path(), "{pattern}");
            let found = m
                .captures(haystack.as_bytes())
                .map(|s| s.as_slice().to_vec());
            assert_eq!(
                found,
                reference(pattern, true, haystack.as_bytes()),
                "{pattern}"
            );
        }
    }

    #[test]
    fn long_values_agree() {
        let pattern = r"^(.*)https://h(?:ab|cd)\.io/t(.*)$";
        let m = matcher(pattern, false);
        let filler = "x".repeat(300);
        for haystack in [
            format!("{filler}realm=\"https://h.ab.io/t\""),
            format!("a=\"https://hab.io/t\",b=\"HTTPS://HCD.IO/T\" {filler}"),
            format!("{filler}https://hab.io/tt https://hcd.io/t{filler}"),
        ] {
            let found = m
                .captures(haystack.as_bytes())
                .map(|s| s.as_slice().to_vec());
            assert_eq!(
                found,
                reference(pattern, false, haystack.as_bytes()),
                "{haystack}"
            );
        }
    }

    fn pattern() -> impl Strategy<Value = String> {
        let lead = prop::sample::select(vec!["", "^", "(.*)", "^(.*)", ".*", "^.*"]);
        let piece = prop::sample::select(vec![
            "a",
            "b",
            "ab",
            "[ab]",
            ".",
            "a*",
            "b+",
            "a?",
            "(?:a|ab)",
            "(?:ab|a)",
            "é",
            r"\xFF",
            r"(?-u:[\x80-\xFF])",
            r"\bb",
            "A",
        ]);
        let core = prop::collection::vec(piece, 1..4).prop_map(|p| p.concat());
        let trail = prop::sample::select(vec!["(.*)$", "(.*)", ".*$", ".*"]);
        (lead, core, trail).prop_map(|(l, c, t)| format!("{l}{c}{t}"))
    }

    fn haystack() -> impl Strategy<Value = Vec<u8>> {
        let unit = prop::sample::select(vec![
            &b"a"[..],
            b"b",
            b"A",
            b"B",
            b" ",
            "é".as_bytes(),
            b"\xFF",
            b"\xC3",
            b"\n",
        ]);
        prop::collection::vec(unit, 0..12).prop_map(|units| units.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The fast path answers exactly what the regex crate answers.
        #[test]
        fn agrees_with_the_regex_crate(pattern in pattern(), case_sensitive in any::<bool>(), haystack in haystack()) {
            let m = matcher(&pattern, case_sensitive);
            let expected = reference(&pattern, case_sensitive, &haystack);
            prop_assert_eq!(m.is_match(&haystack), expected.is_some());
            prop_assert_eq!(m.captures(&haystack).map(|s| s.as_slice().to_vec()), expected);
        }
    }
}
