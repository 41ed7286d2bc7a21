//! The screening policy engine: admin-edited rules over call [`Facts`].
//!
//! Text → spanned TOML tree → a compiled, validated, immutable
//! [`PolicySet`] (every problem of a file reported at once, as
//! `file:line:col` with a snippet and a `help:` line) → [`Engine`] (the
//! policy plus its loaded lists: the unit that is reloaded and swapped).
//! Evaluation is pure: [`Engine::decide`] returns the matching rule;
//! [`Engine::explain`] also says why every other rule did or did not match.
//! [`render`] turns a decision into the exact SIP response or the
//! annotations of a forwarded INVITE.

pub mod dno;
mod eval;
pub mod facts;
#[cfg(feature = "runtime")]
pub mod file;
mod lang;
pub mod lists;
pub mod render;

use std::fmt;
use std::sync::Arc;

pub use eval::{Explanation, RuleTrace};
pub use lang::{
    Action, Cond, Fact, Forward, ListDecl, PolicySet, Reject, RejectCode, Rule, Template, Test,
    VerstatPlace,
};

use crate::policy::facts::Facts;
use crate::policy::lists::List;

/// One problem in a policy, list or case file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// The source line with a caret under the column.
    pub snippet: String,
    pub help: String,
}

impl Diagnostic {
    /// A diagnostic at a byte offset of `text`.
    pub fn at(
        file: &str,
        text: &str,
        offset: usize,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Self::at_line(file, text, line, col, message, help)
    }

    /// A diagnostic at a 1-based line and column of `text`.
    pub fn at_line(
        file: &str,
        text: &str,
        line: usize,
        col: usize,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        let src = text
            .split('\n')
            .nth(line.saturating_sub(1))
            .unwrap_or_default()
            .trim_end_matches('\r');
        Diagnostic {
            file: file.to_owned(),
            line,
            col,
            message: message.into(),
            snippet: format!(
                "{line:>4} | {src}\n     | {}^",
                " ".repeat(col.saturating_sub(1))
            ),
            help: help.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}\n{}\nhelp: {}",
            self.file, self.line, self.col, self.message, self.snippet, self.help
        )
    }
}

/// A policy with its lists loaded: what the proxy evaluates and what a
/// reload replaces as a whole.
#[derive(Debug, Clone)]
pub struct Engine {
    pub policy: PolicySet,
    /// Aligned with `policy.lists`.
    pub lists: Vec<Arc<List>>,
}

/// The decision for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    /// The rule that matched; `None` when the default applied.
    pub rule: Option<&'p Rule>,
    pub action: &'p Action,
}

impl Decision<'_> {
    /// The rule id, or `default`.
    pub fn rule_id(&self) -> &str {
        self.rule.map_or("default", |r| r.id.as_str())
    }
}

impl Engine {
    /// Pairs a compiled policy with its loaded lists (in `policy.lists` order).
    pub fn new(policy: PolicySet, lists: Vec<Arc<List>>) -> Self {
        Engine { policy, lists }
    }

    /// First matching rule, or the default (the hot path).
    pub fn decide(&self, facts: &Facts) -> Decision<'_> {
        match self.policy.first_match(facts, &self.lists) {
            Some(r) => Decision {
                rule: Some(r),
                action: &r.action,
            },
            None => Decision {
                rule: None,
                action: &self.policy.default,
            },
        }
    }

    /// The decision and, for every rule in order, why it did or did not match.
    pub fn explain(&self, facts: &Facts) -> Explanation {
        eval::explain(&self.policy, &self.lists, facts)
    }
}
