//! Explanations: for every rule in order, whether it matched and why.

use std::sync::Arc;

use super::lang::{Action, Cond, PolicySet, Test, cond_holds, show};
use crate::policy::facts::Facts;
use crate::policy::lists::List;

/// Why one rule did or did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    pub id: String,
    pub line: usize,
    /// `Some(true)` matched, `Some(false)` did not, `None` not evaluated
    /// (an earlier rule matched).
    pub matched: Option<bool>,
    /// One line per condition examined.
    pub reasons: Vec<String>,
}

/// The decision with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub rules: Vec<RuleTrace>,
    /// Index of the matching rule; `None` means the default applied.
    pub matched: Option<usize>,
}

fn describe(c: &Cond, facts: &Facts, policy: &PolicySet, holds: bool) -> String {
    let actual = show(c.fact, facts);
    let verdict = if holds { "holds" } else { "fails" };
    match &c.test {
        Test::Lists(ids) => {
            let names: Vec<&str> = ids
                .iter()
                .filter_map(|i| policy.lists.get(*i).map(|l| l.name.as_str()))
                .collect();
            format!(
                "{verdict}: `{}` ({} = {actual}; lists {})",
                c.text,
                c.fact.name(),
                names.join(", ")
            )
        }
        _ => format!("{verdict}: `{}` ({} is {actual})", c.text, c.fact.name()),
    }
}

/// Evaluates every rule in order, recording why each matched or not.
pub(super) fn explain(policy: &PolicySet, lists: &[Arc<List>], facts: &Facts) -> Explanation {
    let mut rules = Vec::with_capacity(policy.rules.len());
    let mut matched = None;
    for (i, r) in policy.rules.iter().enumerate() {
        if matched.is_some() {
            rules.push(RuleTrace {
                id: r.id.clone(),
                line: r.line,
                matched: None,
                reasons: vec!["not evaluated: an earlier rule matched".into()],
            });
            continue;
        }
        let mut reasons = Vec::new();
        let mut ok = true;
        for c in &r.when {
            let h = cond_holds(c, facts, lists);
            reasons.push(describe(c, facts, policy, h));
            if !h {
                ok = false;
                break;
            }
        }
        if ok && !r.unless.is_empty() {
            let all = r.unless.iter().all(|c| cond_holds(c, facts, lists));
            for c in &r.unless {
                let h = cond_holds(c, facts, lists);
                reasons.push(format!("unless {}", describe(c, facts, policy, h)));
            }
            if all {
                ok = false;
                reasons.push("every `unless` condition holds, so the rule does not apply".into());
            }
        }
        if r.when.is_empty() && r.unless.is_empty() {
            reasons.push("no conditions: matches every call".into());
        }
        if ok {
            matched = Some(i);
        }
        rules.push(RuleTrace {
            id: r.id.clone(),
            line: r.line,
            matched: Some(ok),
            reasons,
        });
    }
    Explanation { rules, matched }
}

impl Explanation {
    /// The action taken.
    pub fn action<'p>(&self, policy: &'p PolicySet) -> &'p Action {
        self.matched
            .and_then(|i| policy.rules.get(i))
            .map_or(&policy.default, |r| &r.action)
    }
}
