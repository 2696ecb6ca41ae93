//! Compile errors, positioned so that the config crate can point at the offending YAML key.

/// Where in a [`RuleSpec`](crate::RuleSpec) an error sits. Indices are into `conditions` and
/// `actions` of the rule named by [`CompileError::rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorAt {
    /// The rule as a whole (no actions, an empty status range, the derived rules).
    Rule,
    /// A condition's subject (its header name).
    Condition(usize),
    /// A condition's regular expression.
    ConditionPattern(usize),
    /// An action's header name or side.
    Action(usize),
    /// An action's value template.
    ActionValue(usize),
}

/// One problem found by [`Engine::compile`](crate::Engine::compile); compilation reports all of
/// them at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    /// Index into the user rules, or [`CompileError::DERIVED`] for the derived registry rules.
    pub rule: usize,
    pub at: ErrorAt,
    pub message: String,
}

impl CompileError {
    /// The `rule` value of errors in the derived registry rules.
    pub const DERIVED: usize = usize::MAX;

    pub(crate) fn new(rule: usize, at: ErrorAt, message: impl Into<String>) -> CompileError {
        CompileError {
            rule,
            at,
            message: message.into(),
        }
    }
}
