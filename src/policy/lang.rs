//! The policy language: parsing a spanned TOML tree, validating it
//! completely, and compiling it into a [`PolicySet`] with a bit-set index.
//! The language reference is `policies/README.md`.

use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Diagnostic;
use crate::policy::facts::{
    AttestFact, Facts, FailureFact, IdentitySourceFact, PeerSpcFact, RcdFact, StateFact,
};
use crate::policy::lists::{List, ListKind};
use crate::stir::tn::Tn;
use crate::stir::verify::Verstat;

/// A fact a condition can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fact {
    Verstat,
    Attest,
    Failure,
    StirCode,
    Spc,
    IatAge,
    Orig,
    OrigVerified,
    OrigInvalid,
    OrigInvalidReason,
    Dest,
    DisplayName,
    Source,
    Method,
    Diversion,
    DivVerified,
    DivertedFrom,
    Rcd,
    RcdName,
    PeerSpc,
    IdentitySource,
    CalleeFlagged,
    OrigUnwantedReports,
    SpcUnwantedReports,
    OrigCallsPerMinute,
    State,
    OrigIn,
    DestIn,
    SpcIn,
}

/// Fact names as written in policy files.
pub const FACT_NAMES: [(&str, Fact); 29] = [
    ("verstat", Fact::Verstat),
    ("attest", Fact::Attest),
    ("failure", Fact::Failure),
    ("stir_code", Fact::StirCode),
    ("spc", Fact::Spc),
    ("iat_age", Fact::IatAge),
    ("orig", Fact::Orig),
    ("orig_verified", Fact::OrigVerified),
    ("orig_invalid", Fact::OrigInvalid),
    ("orig_invalid_reason", Fact::OrigInvalidReason),
    ("dest", Fact::Dest),
    ("display_name", Fact::DisplayName),
    ("source", Fact::Source),
    ("method", Fact::Method),
    ("diversion", Fact::Diversion),
    ("div_verified", Fact::DivVerified),
    ("diverted_from", Fact::DivertedFrom),
    ("rcd", Fact::Rcd),
    ("rcd_name", Fact::RcdName),
    ("peer_spc", Fact::PeerSpc),
    ("identity_source", Fact::IdentitySource),
    ("callee_flagged", Fact::CalleeFlagged),
    ("orig_unwanted_reports", Fact::OrigUnwantedReports),
    ("spc_unwanted_reports", Fact::SpcUnwantedReports),
    ("orig_calls_per_minute", Fact::OrigCallsPerMinute),
    ("state", Fact::State),
    ("orig_in", Fact::OrigIn),
    ("dest_in", Fact::DestIn),
    ("spc_in", Fact::SpcIn),
];

impl Fact {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        FACT_NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    fn kind(self) -> FactKind {
        match self {
            Fact::Verstat => FactKind::Enum(&Verstat::NAMES),
            Fact::Attest => FactKind::Enum(&AttestFact::NAMES),
            Fact::Failure => FactKind::Failure,
            Fact::State => FactKind::Enum(&StateFact::NAMES),
            Fact::Rcd => FactKind::Enum(&RcdFact::NAMES),
            Fact::PeerSpc => FactKind::Enum(&PeerSpcFact::NAMES),
            Fact::IdentitySource => FactKind::Enum(&IdentitySourceFact::NAMES),
            Fact::Diversion
            | Fact::CalleeFlagged
            | Fact::OrigVerified
            | Fact::OrigInvalid
            | Fact::DivVerified => FactKind::Bool,
            Fact::StirCode
            | Fact::IatAge
            | Fact::OrigUnwantedReports
            | Fact::SpcUnwantedReports
            | Fact::OrigCallsPerMinute => FactKind::Number,
            Fact::Spc
            | Fact::DisplayName
            | Fact::Source
            | Fact::Method
            | Fact::RcdName
            | Fact::OrigInvalidReason => FactKind::Text,
            Fact::Orig | Fact::Dest | Fact::DivertedFrom => FactKind::TelNumber,
            Fact::OrigIn | Fact::DestIn | Fact::SpcIn => FactKind::List,
        }
    }
}

enum FactKind {
    Enum(&'static [&'static str]),
    Failure,
    Bool,
    Number,
    Text,
    /// A telephone number (exact or `prefix*`).
    TelNumber,
    List,
}

/// Numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// What a condition checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// Enum-like facts (verstat, attest, failure, booleans): accepted value bits.
    Mask(u64),
    /// Numbers: all comparisons must hold (`{ ge = 3, lt = 10 }`), or any of a set.
    Num(Vec<(Cmp, i64)>),
    NumAny(Vec<i64>),
    /// Text: any of these values.
    Text(Vec<String>),
    /// Telephone numbers: any of these exact numbers or prefixes.
    Tn(Vec<(String, bool)>),
    /// List membership: in any of these lists (indexes into `PolicySet::lists`).
    Lists(Vec<usize>),
}

/// One condition: `fact` passes `test` (or fails it, when negated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub fact: Fact,
    pub test: Test,
    pub negate: bool,
    /// The condition as written, for explanations.
    pub text: String,
}

/// A declared list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDecl {
    pub name: String,
    /// As written (relative to the policy file's directory).
    pub file: PathBuf,
    pub kind: ListKind,
    pub column: usize,
    /// Offset of the `file` value, for diagnostics about the file.
    pub span: usize,
}

/// Where verstat is placed on a forwarded INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerstatPlace {
    pub pai: bool,
    pub from: bool,
}

/// Forward the call, annotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub verstat: VerstatPlace,
    /// `TN-Validation-Passed-A` instead of the standard value.
    pub attest_suffix: bool,
    pub p_attestation_indicator: bool,
    pub p_origination_id: bool,
    pub strip_identity: bool,
    /// When verification failed, carry its RFC 8224 code in a Reason header
    /// (`STIR`, RFC 9410) on the responses relayed upstream (ATIS-1000074
    /// §5.3.2).
    pub reason: bool,
}

impl Default for Forward {
    fn default() -> Self {
        Forward {
            verstat: VerstatPlace {
                pai: true,
                from: true,
            },
            attest_suffix: false,
            p_attestation_indicator: false,
            p_origination_id: false,
            strip_identity: false,
            reason: true,
        }
    }
}

/// The status of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    Fixed(u16),
    /// The call's own RFC 8224 code (403/428/436/437/438).
    Stir,
}

/// A piece of a guidance template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(&'static str),
}

/// Guidance text with `{placeholders}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Part>);

/// What is wrong with a guidance text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    Unclosed,
    Unknown(String),
}

impl Template {
    /// Splits text into literal parts and known placeholders; unknown or
    /// unclosed placeholders are reported (and left out).
    pub fn parse(s: &str) -> (Template, Vec<TemplateProblem>) {
        let mut parts = Vec::new();
        let mut problems = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if let Some(t) = rest.get(..open).filter(|t| !t.is_empty()) {
                parts.push(Part::Text(t.to_owned()));
            }
            let after = rest.get(open + 1..).unwrap_or_default();
            let Some(close) = after.find('}') else {
                problems.push(TemplateProblem::Unclosed);
                rest = "";
                break;
            };
            let name = after.get(..close).unwrap_or_default();
            match PLACEHOLDERS.iter().find(|p| **p == name) {
                Some(p) => parts.push(Part::Var(p)),
                None => problems.push(TemplateProblem::Unknown(name.to_owned())),
            }
            rest = after.get(close + 1..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        (Template(parts), problems)
    }
}

/// Placeholders a guidance template may use.
pub const PLACEHOLDERS: [&str; 11] = [
    "orig", "dest", "attest", "verstat", "failure", "code", "spc", "rule", "operator", "redress",
    "source",
];

/// Reject the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub reason_phrase: Option<String>,
    pub guidance: Template,
    /// 608/603: attach the operator's signed jCard when the caller verified.
    pub jcard: bool,
    /// 603 as ATIS-1000099 "603+" (Network Blocked).
    pub network_blocked: bool,
}

/// What happens to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Forward(Forward),
    Reject(Reject),
}

impl Action {
    /// `forward` or `reject NNN` for summaries.
    pub fn summary(&self) -> String {
        match self {
            Action::Forward(_) => "forward".into(),
            Action::Reject(r) => match r.code {
                RejectCode::Fixed(c) => format!("reject {c}"),
                RejectCode::Stir => "reject with the RFC 8224 code".into(),
            },
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub when: Vec<Cond>,
    pub unless: Vec<Cond>,
    pub action: Action,
    pub line: usize,
}

/// Bit sets over rules (see `first_match`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    words: usize,
    /// enum-like fact slot → value → bit set of rules whose `when` accepts it.
    sets: Vec<Vec<Vec<u64>>>,
    /// text fact slot → (rules without an equality test on it, value → rules
    /// whose equality test names it).
    text: Vec<TextIndex>,
}

/// (rules without an equality test on the fact, value → rules naming it).
type TextIndex = (Vec<u64>, std::collections::HashMap<String, Vec<u64>>);

const TEXT_INDEXED: [Fact; 3] = [Fact::Spc, Fact::Source, Fact::Method];

const INDEXED: [Fact; 5] = [
    Fact::Verstat,
    Fact::Attest,
    Fact::Failure,
    Fact::CalleeFlagged,
    Fact::Diversion,
];

fn value_count(f: Fact) -> usize {
    match f {
        Fact::Verstat => 3,
        Fact::Attest => 4,
        Fact::Failure => FailureFact::COUNT,
        _ => 2,
    }
}

fn enum_value(f: Fact, facts: &Facts) -> usize {
    match f {
        Fact::Verstat => facts.verstat.index(),
        Fact::Attest => facts.attest.index(),
        Fact::Failure => facts.failure.index(),
        Fact::CalleeFlagged => usize::from(facts.callee_flagged),
        Fact::Diversion => usize::from(facts.diversion),
        Fact::OrigVerified => usize::from(facts.orig_verified),
        Fact::OrigInvalid => usize::from(facts.orig_invalid),
        Fact::DivVerified => usize::from(facts.div_verified),
        Fact::State => facts.state.index(),
        Fact::Rcd => facts.rcd.index(),
        Fact::PeerSpc => facts.peer_spc.index(),
        Fact::IdentitySource => facts.identity_source.index(),
        _ => 0,
    }
}

/// A compiled, validated, immutable policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub name: String,
    pub rules: Vec<Rule>,
    pub default: Action,
    pub lists: Vec<ListDecl>,
    index: Index,
    /// Some rule tests `orig_calls_per_minute` (else calls are not counted).
    uses_rate: bool,
}

impl PolicySet {
    /// Whether any rule tests the caller's call rate: when none does, the
    /// screening state does not count calls (no work, no round trip).
    pub fn uses_rate(&self) -> bool {
        self.uses_rate
    }

    /// Parses and validates policy text; every problem is returned.
    pub fn compile(text: &str, file: &str) -> Result<PolicySet, Vec<Diagnostic>> {
        Self::compile_with_lists(text, file).0
    }

    /// Like [`PolicySet::compile`], also returning the list declarations
    /// that parsed, so that list files can be checked even when the policy
    /// has other problems (all problems of a file are reported at once).
    pub fn compile_with_lists(
        text: &str,
        file: &str,
    ) -> (Result<PolicySet, Vec<Diagnostic>>, Vec<ListDecl>) {
        let mut c = Compiler {
            text,
            file,
            diags: Vec::new(),
            lists: Vec::new(),
        };
        let set = c.policy();
        let lists = std::mem::take(&mut c.lists);
        if c.diags.is_empty() {
            (set.ok_or_else(Vec::new), lists)
        } else {
            c.diags.sort_by_key(|d| (d.line, d.col));
            (Err(c.diags), lists)
        }
    }

    /// The first rule that matches, using the bit-set index to skip rules
    /// whose enum-like conditions cannot hold.
    pub fn first_match<'p>(
        &'p self,
        facts: &Facts,
        lists: &[std::sync::Arc<List>],
    ) -> Option<&'p Rule> {
        let words = self.index.words;
        let mut cand = [u64::MAX; 16];
        let mut heap;
        let cand: &mut [u64] = if words <= 16 {
            cand.get_mut(..words)?
        } else {
            heap = vec![u64::MAX; words];
            &mut heap
        };
        for (slot, f) in INDEXED.iter().enumerate() {
            let v = enum_value(*f, facts);
            if let Some(set) = self.index.sets.get(slot).and_then(|s| s.get(v)) {
                for (c, s) in cand.iter_mut().zip(set) {
                    *c &= *s;
                }
            }
        }
        for (f, (without, by_value)) in TEXT_INDEXED.iter().zip(&self.index.text) {
            match by_value.get(text(*f, facts)) {
                Some(named) => {
                    for ((c, w), n) in cand.iter_mut().zip(without).zip(named) {
                        *c &= *w | *n;
                    }
                }
                None => {
                    for (c, w) in cand.iter_mut().zip(without) {
                        *c &= *w;
                    }
                }
            }
        }
        for (w, word) in cand.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let i = w * 64 + b;
                let rule = self.rules.get(i)?;
                if rule_matches(rule, facts, lists) {
                    return Some(rule);
                }
            }
        }
        None
    }

    fn build_index(&mut self) {
        let words = self.rules.len().div_ceil(64).max(1);
        let mut sets = Vec::new();
        for f in INDEXED {
            let mut per_value = vec![vec![0u64; words]; value_count(f)];
            for (i, rule) in self.rules.iter().enumerate() {
                for (v, set) in per_value.iter_mut().enumerate() {
                    let ok = rule
                        .when
                        .iter()
                        .filter(|c| c.fact == f)
                        .all(|c| match &c.test {
                            Test::Mask(m) => ((m >> v) & 1 == 1) != c.negate,
                            _ => true,
                        });
                    if ok && let Some(word) = set.get_mut(i / 64) {
                        *word |= 1 << (i % 64);
                    }
                }
            }
            sets.push(per_value);
        }
        let mut text_index = Vec::new();
        for f in TEXT_INDEXED {
            let mut without = vec![0u64; words];
            let mut by_value: std::collections::HashMap<String, Vec<u64>> =
                std::collections::HashMap::new();
            for (i, rule) in self.rules.iter().enumerate() {
                let eq = rule.when.iter().find_map(|c| match &c.test {
                    Test::Text(vs) if c.fact == f && !c.negate => Some(vs),
                    _ => None,
                });
                match eq {
                    Some(values) => {
                        for v in values {
                            let set = by_value
                                .entry(v.clone())
                                .or_insert_with(|| vec![0u64; words]);
                            if let Some(word) = set.get_mut(i / 64) {
                                *word |= 1 << (i % 64);
                            }
                        }
                    }
                    None => {
                        if let Some(word) = without.get_mut(i / 64) {
                            *word |= 1 << (i % 64);
                        }
                    }
                }
            }
            text_index.push((without, by_value));
        }
        self.index = Index {
            words,
            sets,
            text: text_index,
        };
    }
}

/// Does every `when` condition hold and not every `unless` condition?
pub(super) fn rule_matches(rule: &Rule, facts: &Facts, lists: &[std::sync::Arc<List>]) -> bool {
    rule.when.iter().all(|c| cond_holds(c, facts, lists))
        && (rule.unless.is_empty() || !rule.unless.iter().all(|c| cond_holds(c, facts, lists)))
}

/// Evaluates one condition.
pub(super) fn cond_holds(c: &Cond, facts: &Facts, lists: &[std::sync::Arc<List>]) -> bool {
    let raw = match &c.test {
        Test::Mask(m) => (m >> enum_value(c.fact, facts)) & 1 == 1,
        Test::Num(cmps) => match number(c.fact, facts) {
            Some(n) => cmps.iter().all(|(op, v)| match op {
                Cmp::Eq => n == *v,
                Cmp::Ne => n != *v,
                Cmp::Gt => n > *v,
                Cmp::Ge => n >= *v,
                Cmp::Lt => n < *v,
                Cmp::Le => n <= *v,
            }),
            None => false,
        },
        Test::NumAny(vs) => number(c.fact, facts).is_some_and(|n| vs.contains(&n)),
        Test::Text(vs) => {
            let t = text(c.fact, facts);
            vs.iter().any(|v| v == t)
        }
        Test::Tn(pats) => {
            let t = text(c.fact, facts);
            !t.is_empty()
                && pats.iter().any(|(p, prefix)| {
                    if *prefix {
                        t.starts_with(p.as_str())
                    } else {
                        t == p
                    }
                })
        }
        Test::Lists(ids) => {
            let t = text(c.fact, facts);
            !t.is_empty()
                && ids.iter().any(|i| {
                    lists.get(*i).is_some_and(|l| match c.fact {
                        Fact::SpcIn => l.contains_spc(t),
                        _ => l.contains_tn(t),
                    })
                })
        }
    };
    raw != c.negate
}

pub(super) fn number(f: Fact, facts: &Facts) -> Option<i64> {
    match f {
        Fact::StirCode => Some(i64::from(facts.stir_code)),
        Fact::IatAge => facts.iat_age,
        Fact::OrigUnwantedReports => Some(i64::from(facts.orig_unwanted_reports)),
        Fact::SpcUnwantedReports => Some(i64::from(facts.spc_unwanted_reports)),
        Fact::OrigCallsPerMinute => Some(i64::from(facts.orig_calls_per_minute)),
        _ => None,
    }
}

pub(super) fn text(f: Fact, facts: &Facts) -> &str {
    match f {
        Fact::Spc | Fact::SpcIn => &facts.spc,
        Fact::DisplayName => &facts.display_name,
        Fact::Source => &facts.source,
        Fact::Method => &facts.method,
        Fact::Orig | Fact::OrigIn => &facts.orig,
        Fact::Dest | Fact::DestIn => &facts.dest,
        Fact::DivertedFrom => &facts.diverted_from,
        Fact::RcdName => &facts.rcd_name,
        Fact::OrigInvalidReason => &facts.orig_invalid_reason,
        _ => "",
    }
}

/// The value of an enum-like or other fact as text, for explanations.
pub(super) fn show(f: Fact, facts: &Facts) -> String {
    match f {
        Fact::Verstat => facts.verstat.as_str().into(),
        Fact::Attest => facts.attest.as_str().into(),
        Fact::Failure => facts.failure.as_str().into(),
        Fact::CalleeFlagged => facts.callee_flagged.to_string(),
        Fact::OrigVerified => facts.orig_verified.to_string(),
        Fact::OrigInvalid => facts.orig_invalid.to_string(),
        Fact::DivVerified => facts.div_verified.to_string(),
        Fact::State => facts.state.as_str().into(),
        Fact::Rcd => RcdFact::NAMES
            .get(facts.rcd.index())
            .copied()
            .unwrap_or("none")
            .into(),
        Fact::PeerSpc => PeerSpcFact::NAMES
            .get(facts.peer_spc.index())
            .copied()
            .unwrap_or("none")
            .into(),
        Fact::IdentitySource => IdentitySourceFact::NAMES
            .get(facts.identity_source.index())
            .copied()
            .unwrap_or("none")
            .into(),
        Fact::Diversion => facts.diversion.to_string(),
        Fact::StirCode
        | Fact::IatAge
        | Fact::OrigUnwantedReports
        | Fact::SpcUnwantedReports
        | Fact::OrigCallsPerMinute => number(f, facts).map_or("(none)".into(), |n| n.to_string()),
        _ => {
            let t = text(f, facts);
            if t.is_empty() {
                "(empty)".into()
            } else {
                t.to_owned()
            }
        }
    }
}

type Table<'i> = DeTable<'i>;

struct Compiler<'t> {
    text: &'t str,
    file: &'t str,
    diags: Vec<Diagnostic>,
    /// List declarations seen (also when the policy has other problems).
    lists: Vec<ListDecl>,
}

fn kind_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn int(v: &DeValue<'_>) -> Option<i64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

/// The closest of `candidates` to `word` (edit distance ≤ 3).
fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
                let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
                let ins = cur.get(j).copied().unwrap_or(0) + 1;
                if let Some(c) = cur.get_mut(j + 1) {
                    *c = sub.min(del).min(ins);
                }
            }
            prev = cur;
        }
        prev.last().copied().unwrap_or(usize::MAX)
    }
    candidates
        .map(|c| (dist(word, c), c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

impl<'t> Compiler<'t> {
    fn err(&mut self, offset: usize, message: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.text, offset, message, help));
    }

    /// Reports keys of `t` not in `allowed`.
    fn known_keys(&mut self, t: &Table<'_>, allowed: &[&str], table: &str) {
        for (k, _) in t.iter() {
            let name = k.get_ref().as_ref();
            if !allowed.contains(&name) {
                let help = match suggest(name, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("keys allowed in {table}: {}", allowed.join(", ")),
                };
                self.err(
                    k.span().start,
                    format!("unknown key `{name}` in {table}"),
                    help,
                );
            }
        }
    }

    fn get<'a, 'i>(t: &'a Table<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        t.iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn string(&mut self, t: &Table<'_>, key: &str, table: &str) -> Option<String> {
        let v = Self::get(t, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.err(
                    v.span().start,
                    format!(
                        "`{key}` in {table} must be a string, not {}",
                        kind_name(other)
                    ),
                    "put the value in double quotes",
                );
                None
            }
        }
    }

    fn boolean(&mut self, t: &Table<'_>, key: &str, table: &str) -> Option<bool> {
        let v = Self::get(t, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.err(
                    v.span().start,
                    format!(
                        "`{key}` in {table} must be true or false, not {}",
                        kind_name(other)
                    ),
                    "write `true` or `false` without quotes",
                );
                None
            }
        }
    }

    fn policy(&mut self) -> Option<PolicySet> {
        let root = match DeTable::parse_recoverable(self.text) {
            (root, errors) if errors.is_empty() => root,
            (_, errors) => {
                for e in errors {
                    let at = e.span().map_or(0, |s| s.start);
                    let msg = e.message().trim().replace('\n', " ");
                    self.err(at, msg, "fix the TOML syntax");
                }
                return None;
            }
        };
        let root = root.get_ref();
        self.known_keys(root, &["name", "lists", "default", "rule"], "the policy");
        let name = self
            .string(root, "name", "the policy")
            .unwrap_or_else(|| "policy".into());

        let mut lists = Vec::new();
        if let Some(v) = Self::get(root, "lists") {
            match v.get_ref() {
                DeValue::Table(t) => {
                    for (k, lv) in t.iter() {
                        if let Some(d) = self.list_decl(k.get_ref(), lv) {
                            lists.push(d);
                        }
                    }
                }
                other => self.err(
                    v.span().start,
                    format!("`lists` must be a table, not {}", kind_name(other)),
                    "declare each list as `[lists.NAME]` with `file` and `kind`",
                ),
            }
        }

        let default = match Self::get(root, "default") {
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => self.action(t, v.span().start, "[default]"),
                other => {
                    self.err(
                        v.span().start,
                        format!("`default` must be a table, not {}", kind_name(other)),
                        "write `[default]` with `forward = true` or `reject = CODE`",
                    );
                    None
                }
            },
            None => Some(Action::Forward(Forward::default())),
        };

        let mut rules: Vec<Rule> = Vec::new();
        if let Some(v) = Self::get(root, "rule") {
            match v.get_ref() {
                DeValue::Array(arr) => {
                    for item in arr.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(r) = self.rule(t, item.span().start, &lists) {
                                    if let Some(prev) = rules.iter().find(|p| p.id == r.id) {
                                        let prev_line = prev.line;
                                        self.err(
                                            item.span().start,
                                            format!("rule id `{}` is used twice", r.id),
                                            format!("the first is at line {prev_line}; ids must be unique"),
                                        );
                                    }
                                    rules.push(r);
                                }
                            }
                            other => self.err(
                                item.span().start,
                                format!("a rule must be a table, not {}", kind_name(other)),
                                "write each rule as `[[rule]]`",
                            ),
                        }
                    }
                }
                other => self.err(
                    v.span().start,
                    format!(
                        "`rule` must be an array of tables, not {}",
                        kind_name(other)
                    ),
                    "write each rule as `[[rule]]`",
                ),
            }
        }
        self.shadowed(&rules);
        self.lists.clone_from(&lists);
        let uses_rate = rules.iter().any(|r| {
            r.when
                .iter()
                .chain(&r.unless)
                .any(|c| c.fact == Fact::OrigCallsPerMinute)
        });
        let mut set = PolicySet {
            name,
            rules,
            default: default?,
            lists,
            index: Index::default(),
            uses_rate,
        };
        set.build_index();
        Some(set)
    }

    fn list_decl(&mut self, name: &str, v: &Spanned<DeValue<'_>>) -> Option<ListDecl> {
        let table = format!("[lists.{name}]");
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                v.span().start,
                format!("list `{name}` must be a table"),
                "write `[lists.NAME]` with `file = \"lists/NAME.txt\"` and `kind = \"tn\"`",
            );
            return None;
        };
        self.known_keys(t, &["file", "kind", "column"], &table);
        let file = self.string(t, "file", &table);
        let span = Self::get(t, "file").map_or(v.span().start, |f| f.span().start);
        if file.is_none() && Self::get(t, "file").is_none() {
            self.err(
                v.span().start,
                format!("list `{name}` has no `file`"),
                "add `file = \"lists/NAME.txt\"`",
            );
        }
        let kind = match self.string(t, "kind", &table).as_deref() {
            None | Some("tn") => ListKind::Tn,
            Some("spc") => ListKind::Spc,
            Some(other) => {
                let at = Self::get(t, "kind").map_or(0, |k| k.span().start);
                self.err(
                    at,
                    format!("list kind `{other}` is not `tn` or `spc`"),
                    "use `kind = \"tn\"` for numbers and prefixes, `\"spc\"` for SPCs",
                );
                ListKind::Tn
            }
        };
        let column = match Self::get(t, "column") {
            None => 1,
            Some(c) => match int(c.get_ref())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n >= 1)
            {
                Some(n) => n,
                None => {
                    self.err(
                        c.span().start,
                        "`column` must be a positive integer",
                        "columns are counted from 1",
                    );
                    1
                }
            },
        };
        Some(ListDecl {
            name: name.to_owned(),
            file: PathBuf::from(file?),
            kind,
            column,
            span,
        })
    }

    fn rule(&mut self, t: &Table<'_>, at: usize, lists: &[ListDecl]) -> Option<Rule> {
        let line = self
            .text
            .get(..at)
            .map_or(1, |s| s.matches('\n').count() + 1);
        self.known_keys(
            t,
            &["id", "description", "when", "unless", "then"],
            "a rule",
        );
        let id = self.string(t, "id", "a rule");
        if id.is_none() && Self::get(t, "id").is_none() {
            self.err(
                at,
                "rule has no `id`",
                "give every rule a unique `id = \"...\"`",
            );
        }
        let description = self.string(t, "description", "a rule").unwrap_or_default();
        let rule_name = format!("rule `{}`", id.as_deref().unwrap_or("?"));
        let when = self.conds(t, "when", &rule_name, lists);
        let unless = self.conds(t, "unless", &rule_name, lists);
        let action = match Self::get(t, "then") {
            Some(v) => match v.get_ref() {
                DeValue::Table(tt) => {
                    self.action(tt, v.span().start, &format!("`then` of {rule_name}"))
                }
                other => {
                    self.err(
                        v.span().start,
                        format!("`then` must be a table, not {}", kind_name(other)),
                        "write `[rule.then]` with `forward = true` or `reject = CODE`",
                    );
                    None
                }
            },
            None => {
                self.err(
                    at,
                    format!("{rule_name} has no `then`"),
                    "add `[rule.then]` with `forward = true` or `reject = CODE`",
                );
                None
            }
        };
        Some(Rule {
            id: id?,
            description,
            when,
            unless,
            action: action?,
            line,
        })
    }

    fn conds(
        &mut self,
        t: &Table<'_>,
        key: &str,
        rule_name: &str,
        lists: &[ListDecl],
    ) -> Vec<Cond> {
        let mut out = Vec::new();
        let Some(v) = Self::get(t, key) else {
            return out;
        };
        let DeValue::Table(ct) = v.get_ref() else {
            self.err(
                v.span().start,
                format!("`{key}` of {rule_name} must be a table of conditions"),
                "write `[rule.when]` and one `fact = value` per line",
            );
            return out;
        };
        for (k, val) in ct.iter() {
            let name = k.get_ref().as_ref();
            let Some((_, fact)) = FACT_NAMES.iter().find(|(n, _)| *n == name) else {
                let help = match suggest(name, FACT_NAMES.iter().map(|(n, _)| *n)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "facts: {}",
                        FACT_NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.err(
                    k.span().start,
                    format!("unknown fact `{name}` in {rule_name}"),
                    help,
                );
                continue;
            };
            let text = self
                .text
                .get(k.span().start..val.span().end)
                .unwrap_or(name)
                .to_owned();
            if let Some((test, negate)) = self.test(*fact, val, lists) {
                out.push(Cond {
                    fact: *fact,
                    test,
                    negate,
                    text,
                });
            }
        }
        out
    }

    /// Compiles the matcher of one condition: a value, a list of values
    /// (any of), or a table with `not` / comparisons.
    fn test(
        &mut self,
        fact: Fact,
        v: &Spanned<DeValue<'_>>,
        lists: &[ListDecl],
    ) -> Option<(Test, bool)> {
        if let DeValue::Table(t) = v.get_ref() {
            if let Some(n) = Self::get(t, "not") {
                self.known_keys(t, &["not"], &format!("the `not` of `{}`", fact.name()));
                return self.test(fact, n, lists).map(|(test, neg)| (test, !neg));
            }
            if matches!(fact.kind(), FactKind::Number) {
                let ops = [
                    ("eq", Cmp::Eq),
                    ("ne", Cmp::Ne),
                    ("gt", Cmp::Gt),
                    ("ge", Cmp::Ge),
                    ("lt", Cmp::Lt),
                    ("le", Cmp::Le),
                ];
                self.known_keys(
                    t,
                    &["eq", "ne", "gt", "ge", "lt", "le", "not"],
                    &format!("the comparison of `{}`", fact.name()),
                );
                let mut cmps = Vec::new();
                for (k, val) in t.iter() {
                    let Some((_, op)) = ops.iter().find(|(n, _)| *n == k.get_ref().as_ref()) else {
                        continue;
                    };
                    match int(val.get_ref()) {
                        Some(n) => cmps.push((*op, n)),
                        None => self.err(
                            val.span().start,
                            format!("`{}` compares with an integer", k.get_ref()),
                            "write a number without quotes",
                        ),
                    }
                }
                if cmps.is_empty() {
                    self.err(
                        v.span().start,
                        format!("no comparison for `{}`", fact.name()),
                        "use `{ ge = 5 }`, `{ lt = 10 }`, …",
                    );
                    return None;
                }
                return Some((Test::Num(cmps), false));
            }
            self.err(
                v.span().start,
                format!(
                    "`{}` takes a value or a list of values, or `{{ not = ... }}`",
                    fact.name()
                ),
                "comparisons (`ge`, `lt`, …) are for numeric facts",
            );
            return None;
        }
        let items: Vec<&Spanned<DeValue<'_>>> = match v.get_ref() {
            DeValue::Array(a) => {
                if a.is_empty() {
                    self.err(
                        v.span().start,
                        format!("empty list of values for `{}`", fact.name()),
                        "an empty list never matches; remove the condition or add values",
                    );
                    return None;
                }
                a.iter().collect()
            }
            _ => vec![v],
        };
        match fact.kind() {
            FactKind::Enum(names) => {
                let mut mask = 0u64;
                for it in items {
                    match it.get_ref() {
                        DeValue::String(s) => match names.iter().position(|n| *n == s.as_ref()) {
                            Some(i) => mask |= 1 << i,
                            None => self.err(
                                it.span().start,
                                format!("`{s}` is not a value of `{}`", fact.name()),
                                format!("values: {}", names.join(", ")),
                            ),
                        },
                        other => self.err(
                            it.span().start,
                            format!("`{}` takes a string, not {}", fact.name(), kind_name(other)),
                            format!("values: {}", names.join(", ")),
                        ),
                    }
                }
                Some((Test::Mask(mask), false))
            }
            FactKind::Failure => {
                let mut mask = 0u64;
                for it in items {
                    match it.get_ref() {
                        DeValue::String(s) => match FailureFact::parse(s) {
                            Some(f) => mask |= 1 << f.index(),
                            None => {
                                let names = crate::stir::verify::FailureKind::ALL
                                    .iter()
                                    .map(|k| k.name());
                                let help = suggest(s, names).map_or_else(
                                    || "see the failure kinds in README.md, or `none`".to_owned(),
                                    |x| format!("did you mean `{x}`?"),
                                );
                                self.err(
                                    it.span().start,
                                    format!("`{s}` is not a failure kind"),
                                    help,
                                );
                            }
                        },
                        other => self.err(
                            it.span().start,
                            format!("`failure` takes a string, not {}", kind_name(other)),
                            "write a failure kind such as \"bad-signature\"",
                        ),
                    }
                }
                Some((Test::Mask(mask), false))
            }
            FactKind::Bool => {
                let mut mask = 0u64;
                for it in items {
                    match it.get_ref() {
                        DeValue::Boolean(b) => mask |= 1 << usize::from(*b),
                        other => self.err(
                            it.span().start,
                            format!(
                                "`{}` is true or false, not {}",
                                fact.name(),
                                kind_name(other)
                            ),
                            "write `true` or `false` without quotes",
                        ),
                    }
                }
                Some((Test::Mask(mask), false))
            }
            FactKind::Number => {
                let mut vs = Vec::new();
                for it in items {
                    match int(it.get_ref()) {
                        Some(n) => vs.push(n),
                        None => self.err(
                            it.span().start,
                            format!(
                                "`{}` is a number, not {}",
                                fact.name(),
                                kind_name(it.get_ref())
                            ),
                            "write a number, or a comparison such as `{ ge = 5 }`",
                        ),
                    }
                }
                Some((Test::NumAny(vs), false))
            }
            FactKind::Text => {
                let mut vs = Vec::new();
                for it in items {
                    match it.get_ref() {
                        DeValue::String(s) => vs.push(s.to_string()),
                        other => self.err(
                            it.span().start,
                            format!("`{}` takes a string, not {}", fact.name(), kind_name(other)),
                            "put the value in double quotes",
                        ),
                    }
                }
                Some((Test::Text(vs), false))
            }
            FactKind::TelNumber => {
                let mut pats = Vec::new();
                for it in items {
                    match it.get_ref() {
                        DeValue::String(s) => {
                            let (body, prefix) = s
                                .strip_suffix('*')
                                .map_or((s.as_ref(), false), |b| (b, true));
                            match Tn::canonical(body) {
                                Ok(tn) => pats.push((tn.to_string(), prefix)),
                                Err(e) => self.err(it.span().start, format!("`{s}` is not a telephone number: {e}"), "write digits (a leading `+` and separators are ignored), or a prefix such as \"1900*\""),
                            }
                        }
                        other => self.err(
                            it.span().start,
                            format!(
                                "`{}` takes a number in quotes, not {}",
                                fact.name(),
                                kind_name(other)
                            ),
                            "write \"12125551212\" or a prefix \"1900*\"",
                        ),
                    }
                }
                Some((Test::Tn(pats), false))
            }
            FactKind::List => {
                let mut ids = Vec::new();
                for it in items {
                    match it.get_ref() {
                        DeValue::String(s) => match lists.iter().position(|l| l.name == s.as_ref())
                        {
                            Some(i) => {
                                let want = if fact == Fact::SpcIn {
                                    ListKind::Spc
                                } else {
                                    ListKind::Tn
                                };
                                if lists.get(i).is_some_and(|l| l.kind != want) {
                                    self.err(
                                        it.span().start,
                                        format!(
                                            "list `{s}` holds {}, but `{}` needs {}",
                                            if want == ListKind::Spc {
                                                "numbers"
                                            } else {
                                                "SPCs"
                                            },
                                            fact.name(),
                                            if want == ListKind::Spc {
                                                "SPCs"
                                            } else {
                                                "numbers"
                                            }
                                        ),
                                        "check the list's `kind`",
                                    );
                                }
                                ids.push(i);
                            }
                            None => {
                                let help = match suggest(s, lists.iter().map(|l| l.name.as_str())) {
                                    Some(x) => format!("did you mean `{x}`?"),
                                    None => "declare it first as `[lists.NAME]`".into(),
                                };
                                self.err(it.span().start, format!("unknown list `{s}`"), help);
                            }
                        },
                        other => self.err(
                            it.span().start,
                            format!("`{}` names a list, not {}", fact.name(), kind_name(other)),
                            "write the list's name in quotes",
                        ),
                    }
                }
                Some((Test::Lists(ids), false))
            }
        }
    }

    fn action(&mut self, t: &Table<'_>, at: usize, table: &str) -> Option<Action> {
        let fwd = Self::get(t, "forward");
        let rej = Self::get(t, "reject");
        match (fwd, rej) {
            (Some(_), Some(r)) => {
                self.err(
                    r.span().start,
                    format!("{table} has both `forward` and `reject`"),
                    "an action either forwards or rejects: keep one",
                );
                None
            }
            (None, None) => {
                self.err(
                    at,
                    format!("{table} has neither `forward` nor `reject`"),
                    "add `forward = true` or `reject = 608` (or another code)",
                );
                None
            }
            (Some(f), None) => {
                self.known_keys(
                    t,
                    &[
                        "forward",
                        "verstat",
                        "attest_suffix",
                        "p_attestation_indicator",
                        "p_origination_id",
                        "identity",
                        "reason",
                    ],
                    table,
                );
                if !matches!(f.get_ref(), DeValue::Boolean(true)) {
                    self.err(
                        f.span().start,
                        "`forward` must be `true`",
                        "to reject, write `reject = CODE` instead",
                    );
                }
                let mut fw = Forward::default();
                if let Some(v) = Self::get(t, "verstat") {
                    let mut place = VerstatPlace::default();
                    let items: Vec<&Spanned<DeValue<'_>>> = match v.get_ref() {
                        DeValue::Array(a) => a.iter().collect(),
                        _ => vec![v],
                    };
                    for it in items {
                        match it.get_ref() {
                            DeValue::String(s) if s.as_ref() == "pai" => place.pai = true,
                            DeValue::String(s) if s.as_ref() == "from" => place.from = true,
                            _ => self.err(
                                it.span().start,
                                "`verstat` places are \"pai\" and \"from\"",
                                "write `verstat = [\"pai\", \"from\"]`, or `[]` for none",
                            ),
                        }
                    }
                    fw.verstat = place;
                }
                if let Some(b) = self.boolean(t, "attest_suffix", table) {
                    fw.attest_suffix = b;
                }
                if let Some(b) = self.boolean(t, "p_attestation_indicator", table) {
                    fw.p_attestation_indicator = b;
                }
                if let Some(b) = self.boolean(t, "p_origination_id", table) {
                    fw.p_origination_id = b;
                }
                if let Some(b) = self.boolean(t, "reason", table) {
                    fw.reason = b;
                }
                match self.string(t, "identity", table).as_deref() {
                    None | Some("keep") => {}
                    Some("strip") => fw.strip_identity = true,
                    Some(other) => {
                        let at = Self::get(t, "identity").map_or(0, |v| v.span().start);
                        self.err(
                            at,
                            format!("`identity = \"{other}\"` is not \"keep\" or \"strip\""),
                            "write \"keep\" (default) or \"strip\"",
                        );
                    }
                }
                Some(Action::Forward(fw))
            }
            (None, Some(r)) => {
                self.known_keys(
                    t,
                    &[
                        "reject",
                        "reason_phrase",
                        "guidance",
                        "jcard",
                        "network_blocked",
                    ],
                    table,
                );
                let code = match r.get_ref() {
                    DeValue::String(s) if s.as_ref() == "stir" => RejectCode::Stir,
                    other => match int(other)
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| (400..=699).contains(n))
                    {
                        Some(n) => RejectCode::Fixed(n),
                        None => {
                            self.err(r.span().start, "`reject` must be a SIP code from 400 to 699, or \"stir\"", "e.g. 607 (callee flagged), 608 (network block), 603 (603+), 438, or \"stir\" for the call's RFC 8224 code");
                            RejectCode::Fixed(603)
                        }
                    },
                };
                let jcard_default = matches!(code, RejectCode::Fixed(608));
                let jcard = self.boolean(t, "jcard", table).unwrap_or(jcard_default);
                if jcard && !matches!(code, RejectCode::Fixed(608 | 603)) {
                    let at = Self::get(t, "jcard").map_or(r.span().start, |v| v.span().start);
                    self.err(at, "`jcard` applies to 608 and 603 only", "RFC 8688 defines the jwscard Call-Info for rejected calls (608); ATIS-1000099 reuses it for 603+");
                }
                let network_blocked = self.boolean(t, "network_blocked", table).unwrap_or(false);
                if network_blocked && code != RejectCode::Fixed(603) {
                    let at =
                        Self::get(t, "network_blocked").map_or(r.span().start, |v| v.span().start);
                    self.err(
                        at,
                        "`network_blocked` applies to 603 only",
                        "ATIS-1000099 \"603+\" is a 603 response",
                    );
                }
                let reason_phrase = self.string(t, "reason_phrase", table);
                let guidance = match Self::get(t, "guidance") {
                    Some(g) => match g.get_ref() {
                        DeValue::String(s) => self.template(s, g.span().start),
                        other => {
                            self.err(
                                g.span().start,
                                format!("`guidance` must be a string, not {}", kind_name(other)),
                                "write the text in double quotes",
                            );
                            Template::default()
                        }
                    },
                    None => Template::default(),
                };
                Some(Action::Reject(Reject {
                    code,
                    reason_phrase,
                    guidance,
                    jcard,
                    network_blocked,
                }))
            }
        }
    }

    fn template(&mut self, s: &str, at: usize) -> Template {
        let (template, problems) = Template::parse(s);
        for p in problems {
            match p {
                TemplateProblem::Unclosed => self.err(
                    at,
                    "unclosed `{` in guidance",
                    "write placeholders as `{orig}`",
                ),
                TemplateProblem::Unknown(name) => {
                    let help = match suggest(&name, PLACEHOLDERS.iter().copied()) {
                        Some(x) => format!("did you mean `{{{x}}}`?"),
                        None => format!(
                            "placeholders: {}",
                            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
                        ),
                    };
                    self.err(
                        at,
                        format!("unknown placeholder `{{{name}}}` in guidance"),
                        help,
                    );
                }
            }
        }
        template
    }

    /// Reports rules that can never match because an earlier rule without
    /// `unless` matches every call they match.
    fn shadowed(&mut self, rules: &[Rule]) {
        for (j, later) in rules.iter().enumerate() {
            for earlier in rules.iter().take(j) {
                if earlier.unless.is_empty() && implies(&later.when, &earlier.when) {
                    let offset = self
                        .text
                        .split_inclusive('\n')
                        .take(later.line.saturating_sub(1))
                        .map(str::len)
                        .sum();
                    self.err(
                        offset,
                        format!("rule `{}` can never match: rule `{}` (line {}) matches every call it would", later.id, earlier.id, earlier.line),
                        format!("move `{}` above `{}`, or narrow `{}`", later.id, earlier.id, earlier.id),
                    );
                    break;
                }
            }
        }
    }
}

/// Does every call satisfying `strong` also satisfy `weak`? Conservative:
/// true only when each condition of `weak` is implied by one of `strong`.
fn implies(strong: &[Cond], weak: &[Cond]) -> bool {
    weak.iter().all(|w| {
        strong.iter().any(|s| {
            s.fact == w.fact
                && match (&s.test, &w.test, s.negate, w.negate) {
                    (Test::Mask(a), Test::Mask(b), false, false) => a & !b == 0,
                    (x, y, ns, nw) => x == y && ns == nw,
                }
        })
    })
}

/// Resolves a guidance template.
pub fn fill(t: &Template, var: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    for p in &t.0 {
        match p {
            Part::Text(s) => out.push_str(s),
            Part::Var(v) => out.push_str(&var(v)),
        }
    }
    out
}
