//! User rules in App Gateway terms: conditions (regex on a header or variable), then set/delete
//! actions whose values are templates over the conditions' captures.

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::bytes::{Regex, RegexBuilder};

use crate::context::RequestContext;
use crate::error::{CompileError, ErrorAt};
use crate::spec::{ActionSpec, ConditionSpec, RuleSpec, Side, StatusRange, Subject, Var};
use crate::store::HeaderStore;
use crate::template::{self, Segment, Template};

mod matcher;

use matcher::{Matcher, Spans};

/// When a rule runs: on the request, or on the response (where it may still read the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Request,
    Response,
}

#[derive(Debug)]
pub(crate) struct UserRule {
    pub(crate) phase: Phase,
    /// The rule's only condition, when every action is a per-value rewrite driven by it: it
    /// then holds exactly when some value gets rewritten, so it is not searched twice.
    per_value_only: Option<usize>,
    statuses: Box<[StatusRange]>,
    conditions: Box<[Condition]>,
    actions: Box<[Action]>,
}

#[derive(Debug)]
struct Condition {
    subject: CompiledSubject,
    matcher: Matcher,
    negate: bool,
    /// Some template reads this condition's captures outside a per-value rewrite.
    captured: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CompiledSubject {
    Header { side: Side, name: HeaderName },
    Var(Var),
}

#[derive(Debug)]
enum Action {
    Set {
        name: HeaderName,
        template: Template,
        /// The condition on this same header whose matches are rewritten one value at a time.
        per_value: Option<usize>,
    },
    Delete {
        name: HeaderName,
    },
}

impl UserRule {
    /// Whether a condition or a template of this rule reads `var`.
    pub(crate) fn reads_var(&self, var: Var) -> bool {
        let in_conditions = self
            .conditions
            .iter()
            .any(|c| c.subject == CompiledSubject::Var(var));
        let in_templates = self.actions.iter().any(|a| match a {
            Action::Set { template, .. } => template
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Var(v) if *v == var)),
            Action::Delete { .. } => false,
        });
        in_conditions || in_templates
    }
}

enum Mutation {
    ReplaceOne(HeaderName, HeaderValue),
    Replace(HeaderName, Vec<HeaderValue>),
    Remove(HeaderName),
}

pub(crate) fn compile(
    index: usize,
    spec: &RuleSpec,
    errors: &mut Vec<CompileError>,
) -> Option<UserRule> {
    let before = errors.len();
    let mut error = |at: ErrorAt, message: String| {
        errors.push(CompileError::new(index, at, message));
    };

    for range in &spec.statuses {
        if range.from > range.to {
            error(
                ErrorAt::Rule,
                format!("status range {}-{} is empty", range.from, range.to),
            );
        }
    }
    if spec.actions.is_empty() {
        error(ErrorAt::Rule, "the rule has no actions".to_owned());
    }

    let response_side = |side: &Side| *side == Side::Response;
    let phase = if !spec.statuses.is_empty()
        || spec
            .conditions
            .iter()
            .any(|c| matches!(&c.subject, Subject::Header { side, .. } if response_side(side)))
        || spec.actions.iter().any(|a| match a {
            ActionSpec::Set { side, .. } | ActionSpec::Delete { side, .. } => response_side(side),
        }) {
        Phase::Response
    } else {
        Phase::Request
    };

    let mut conditions = Vec::with_capacity(spec.conditions.len());
    for (i, condition) in spec.conditions.iter().enumerate() {
        let subject = match &condition.subject {
            Subject::Header { side, name } => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(CompiledSubject::Header { side: *side, name }),
                Err(_) => {
                    error(
                        ErrorAt::Condition(i),
                        format!("{name:?} is not a valid header name"),
                    );
                    None
                }
            },
            Subject::Var(var) => Some(CompiledSubject::Var(*var)),
        };
        let regex = match build_regex(condition) {
            Ok(regex) => Some(Matcher::new(regex, condition.case_sensitive)),
            Err(message) => {
                error(ErrorAt::ConditionPattern(i), message);
                None
            }
        };
        conditions.push((subject, regex, condition.negate));
    }

    // Captures come from the first non-negated condition on the referenced header: a negated
    // condition holds precisely when there is nothing to capture.
    let capturing = |side: Side, name: &HeaderName| {
        conditions.iter().position(|(subject, _, negate)| {
            !negate
                && matches!(subject, Some(CompiledSubject::Header { side: s, name: n }) if *s == side && n == name)
        })
    };

    let mut captured = vec![false; conditions.len()];
    let mut actions = Vec::with_capacity(spec.actions.len());
    for (i, action) in spec.actions.iter().enumerate() {
        let (side, header) = match action {
            ActionSpec::Set { side, header, .. } | ActionSpec::Delete { side, header } => {
                (*side, header)
            }
        };
        if phase == Phase::Response && side == Side::Request {
            error(
                ErrorAt::Action(i),
                format!(
                    "request header {header:?} cannot be changed by this rule: its response-side \
                     conditions, actions or statuses make it run on the response, after the \
                     request has left"
                ),
            );
        }
        let name = match HeaderName::from_bytes(header.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                error(
                    ErrorAt::Action(i),
                    format!("{header:?} is not a valid header name"),
                );
                None
            }
        };
        match action {
            ActionSpec::Delete { .. } => {
                if let Some(name) = name {
                    actions.push(Action::Delete { name });
                }
            }
            ActionSpec::Set { value, .. } => {
                let per_value = name.as_ref().and_then(|name| capturing(side, name));
                let mut value_errors = Vec::new();
                let parsed = template::parse(value, |reference| {
                    let Some(condition) = capturing(reference.side, &reference.name) else {
                        return Err(format!(
                            "no condition of this rule matches {} header {:?} (negated conditions \
                             offer no captures)",
                            side_word(reference.side),
                            reference.written
                        ));
                    };
                    if let (_, Some(regex), _) = &conditions[condition] {
                        let groups = regex.captures_len().saturating_sub(1);
                        if reference.group > groups {
                            return Err(format!(
                                "the pattern of condition {condition} has {groups} capture \
                                 group(s), so there is no group {}",
                                reference.group
                            ));
                        }
                    }
                    Ok(condition)
                });
                match parsed {
                    Ok(template) => {
                        for segment in template.segments.iter() {
                            match segment {
                                Segment::Capture { condition, .. }
                                    if Some(*condition) != per_value =>
                                {
                                    captured[*condition] = true;
                                }
                                Segment::Header {
                                    side: Side::Response,
                                    name,
                                } if phase == Phase::Request => value_errors.push(format!(
                                    "`{{http_resp_{name}}}` refers to the response, which does not \
                                     exist yet when this request rule runs"
                                )),
                                _ => {}
                            }
                        }
                        if let Some(name) = name {
                            actions.push(Action::Set {
                                name,
                                template,
                                per_value,
                            });
                        }
                    }
                    Err(found) => value_errors.extend(found),
                }
                for message in value_errors {
                    error(ErrorAt::ActionValue(i), message);
                }
            }
        }
    }

    if errors.len() != before {
        return None;
    }
    let conditions: Box<[Condition]> = conditions
        .into_iter()
        .zip(captured)
        .filter_map(|((subject, regex, negate), captured)| {
            Some(Condition {
                subject: subject?,
                matcher: regex?,
                negate,
                captured,
            })
        })
        .collect();
    let per_value_only = (conditions.len() == 1
        && !actions.is_empty()
        && actions.iter().all(|a| {
            matches!(
                a,
                Action::Set {
                    per_value: Some(0),
                    ..
                }
            )
        }))
    .then_some(0);
    Some(UserRule {
        phase,
        per_value_only,
        statuses: spec.statuses.clone().into_boxed_slice(),
        conditions,
        actions: actions.into_boxed_slice(),
    })
}

fn side_word(side: Side) -> &'static str {
    match side {
        Side::Request => "request",
        Side::Response => "response",
    }
}

fn build_regex(condition: &ConditionSpec) -> Result<Regex, String> {
    // Bytes, not str: header values may carry obs-text that is not UTF-8. Unicode stays on
    // (`.` is a character, `(?i)` folds as .NET does); `Matcher` parses the pattern the same way.
    RegexBuilder::new(&condition.pattern)
        .case_insensitive(!condition.case_sensitive)
        .build()
        .map_err(|error| format!("invalid pattern: {error}"))
}

/// What the templates of a fired rule read.
struct Env<'a> {
    own: &'a HeaderMap,
    ctx: &'a RequestContext<'a>,
    phase: Phase,
    /// By condition: the value its captures come from, and their spans. Empty unless some
    /// template reads captures outside a per-value rewrite.
    captures: Vec<Option<(&'a [u8], Spans)>>,
}

impl<'a> Env<'a> {
    fn source(&self, side: Side) -> &'a HeaderMap {
        match (self.phase, side) {
            (Phase::Response, Side::Request) => self.ctx.request_headers,
            _ => self.own,
        }
    }

    /// Whether headers on `side` are the ones being edited (per-value rewrites only ever edit
    /// the store's own side).
    fn is_own(&self, side: Side) -> bool {
        matches!(
            (self.phase, side),
            (Phase::Request, Side::Request) | (Phase::Response, Side::Response)
        )
    }
}

impl UserRule {
    /// Runs the rule; `true` when at least one action changed the headers.
    pub(crate) fn apply<H: HeaderStore + ?Sized>(
        &self,
        status: Option<u16>,
        store: &mut H,
        ctx: &RequestContext<'_>,
    ) -> bool {
        if let Some(status) = status {
            if !self.statuses.is_empty() && !self.statuses.iter().any(|r| r.contains(status)) {
                return false;
            }
        }
        // Most rules have one action: it needs no list.
        let (first, rest) = {
            let own = store.headers();
            let mut env = Env {
                own,
                ctx,
                phase: self.phase,
                captures: Vec::new(),
            };
            let searched_later = |i: usize| Some(i) == self.per_value_only;
            let holds = self
                .conditions
                .iter()
                .enumerate()
                .all(|(i, c)| searched_later(i) || self.holds(c, &env));
            if !holds {
                return false;
            }
            if self.conditions.iter().any(|c| c.captured) {
                env.captures = self
                    .conditions
                    .iter()
                    .map(|c| {
                        if c.captured {
                            first_captures(c, &env)
                        } else {
                            None
                        }
                    })
                    .collect();
            }
            let mut mutations = self
                .actions
                .iter()
                .filter_map(|action| self.mutation(action, &env));
            (mutations.next(), mutations.collect::<Vec<_>>())
        };
        let Some(first) = first else {
            return false;
        };
        for mutation in std::iter::once(first).chain(rest) {
            match mutation {
                Mutation::ReplaceOne(name, value) => store.replace_one(&name, value),
                Mutation::Replace(name, values) => store.replace_all(&name, values),
                Mutation::Remove(name) => store.remove_all(&name),
            }
        }
        true
    }

    fn holds(&self, condition: &Condition, env: &Env<'_>) -> bool {
        let found = match &condition.subject {
            CompiledSubject::Header { side, name } => env
                .source(*side)
                .get_all(name)
                .iter()
                .any(|value| condition.matcher.is_match(value.as_bytes())),
            CompiledSubject::Var(var) => condition.matcher.is_match(env.ctx.var(*var).as_bytes()),
        };
        found != condition.negate
    }

    fn mutation(&self, action: &Action, env: &Env<'_>) -> Option<Mutation> {
        match action {
            Action::Delete { name } => env
                .own
                .contains_key(name)
                .then(|| Mutation::Remove(name.clone())),
            Action::Set {
                name,
                template,
                per_value: None,
            } => {
                let value = render(template, env, None)?;
                Some(Mutation::ReplaceOne(name.clone(), value))
            }
            Action::Set {
                name,
                template,
                per_value: Some(index),
            } => {
                let condition = self.conditions.get(*index)?;
                let rewrite = |value: &HeaderValue| {
                    let haystack = value.as_bytes();
                    let spans = condition.matcher.captures(haystack)?;
                    let current = Current {
                        condition: *index,
                        spans: &spans,
                        name,
                        value: haystack,
                    };
                    render(template, env, Some(&current))
                };
                let values = env.own.get_all(name);
                let mut iter = values.iter();
                if let (Some(only), None) = (iter.next(), iter.next()) {
                    return rewrite(only).map(|new| Mutation::ReplaceOne(name.clone(), new));
                }
                let mut changed = false;
                let values = values
                    .iter()
                    .map(|value| match rewrite(value) {
                        Some(new) => {
                            changed = true;
                            new
                        }
                        None => value.clone(),
                    })
                    .collect();
                changed.then(|| Mutation::Replace(name.clone(), values))
            }
        }
    }
}

fn first_captures<'a>(condition: &Condition, env: &Env<'a>) -> Option<(&'a [u8], Spans)> {
    if condition.negate {
        return None;
    }
    let search = |value: &'a [u8]| {
        condition
            .matcher
            .captures(value)
            .map(|spans| (value, spans))
    };
    match &condition.subject {
        CompiledSubject::Header { side, name } => env
            .source(*side)
            .get_all(name)
            .iter()
            .find_map(|value| search(value.as_bytes())),
        CompiledSubject::Var(var) => search(env.ctx.var(*var).as_bytes()),
    }
}

/// The value being rewritten by a per-value action.
struct Current<'c> {
    condition: usize,
    spans: &'c Spans,
    name: &'c HeaderName,
    value: &'c [u8],
}

/// Renders a template into a header value; `None` when the result is not one (a variable or
/// request header carrying bytes a header may not).
fn render(
    template: &Template,
    env: &Env<'_>,
    current: Option<&Current<'_>>,
) -> Option<HeaderValue> {
    // Measured first so that the buffer is handed to `HeaderValue` without reallocating.
    let mut len = 0;
    write(template, env, current, &mut |part: &[u8]| len += part.len());
    let mut out = Vec::with_capacity(len);
    write(template, env, current, &mut |part: &[u8]| {
        out.extend_from_slice(part)
    });
    HeaderValue::try_from(out).ok()
}

fn write(
    template: &Template,
    env: &Env<'_>,
    current: Option<&Current<'_>>,
    put: &mut dyn FnMut(&[u8]),
) {
    for segment in template.segments.iter() {
        match segment {
            Segment::Literal(text) => put(text),
            Segment::Capture { condition, group } => {
                let source = match current {
                    Some(current) if current.condition == *condition => {
                        Some((current.value, current.spans))
                    }
                    _ => env
                        .captures
                        .get(*condition)
                        .and_then(Option::as_ref)
                        .map(|(value, spans)| (*value, spans)),
                };
                // An optional group that did not take part in the match renders as nothing,
                // as an unmatched group does in App Gateway.
                if let Some((start, end)) = source.and_then(|(_, spans)| spans.get(*group)) {
                    let value = source.map_or(&b""[..], |(value, _)| value);
                    put(value.get(start..end).unwrap_or_default());
                }
            }
            Segment::Header { side, name } => match current {
                Some(current) if current.name == name && env.is_own(*side) => put(current.value),
                _ => {
                    // Several values read as one, joined as HTTP folds them.
                    for (i, value) in env.source(*side).get_all(name).iter().enumerate() {
                        if i > 0 {
                            put(b", ");
                        }
                        put(value.as_bytes());
                    }
                }
            },
            Segment::Var(var) => put(env.ctx.var(*var).as_bytes()),
        }
    }
}
