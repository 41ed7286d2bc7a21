//! From a decision to SIP: the exact response of a rejection (RFC 3261
//! §8.2.6, RFC 8688, ATIS-1000099) or the annotations of a forwarded INVITE
//! (verstat per 3GPP TS 24.229 §7.2A.20 placement, RFC 8224 Reason).

use serde_json::json;

use super::lang::{Action, Forward, RejectCode, Template, fill};
use crate::policy::facts::Facts;
use crate::sip::addr::NameAddr;
use crate::sip::{HeaderId, Message};
use crate::stir::passport::SigningKey;
use crate::stir::verify::FailureKind;
use crate::stir::verify::Verstat;
use crate::time::UnixTime;

/// Who is rejecting: named in guidance, the Warning agent and the jCard.
#[derive(Debug)]
pub struct Operator {
    pub name: String,
    /// The Warning header's agent (a host name or pseudonym).
    pub agent: String,
    /// Where a blocked caller can seek redress (URL, phone or e-mail).
    pub redress: String,
    /// The same, by kind, for the ATIS-1000099 603+ (`url=`, `tel=`,
    /// `email=`; empty: left out).
    pub redress_url: String,
    pub redress_tel: String,
    pub redress_email: String,
    /// Signs the RFC 8688 jCard; none means no Call-Info is added.
    pub jcard: Option<JcardSigner>,
}

impl Default for Operator {
    fn default() -> Self {
        Operator {
            name: "this network".into(),
            agent: "stirscreen".into(),
            redress: "the network operator".into(),
            redress_url: String::new(),
            redress_tel: String::new(),
            redress_email: String::new(),
            jcard: None,
        }
    }
}

/// The operator's jCard signer (RFC 8688 §3.1: a JWS-signed jCard).
#[derive(Debug)]
pub struct JcardSigner {
    pub key: SigningKey,
    /// x5u of the operator's certificate.
    pub x5u: String,
    /// The jCard (RFC 7095) of the operator's redress contact.
    pub card: serde_json::Value,
    /// When set, Call-Info points here instead of carrying the JWS inline.
    pub url: Option<String>,
}

/// How to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    /// The verstat value placed (`None`: upstream verstat is only removed).
    pub verstat: Option<String>,
    pub in_pai: bool,
    pub in_from: bool,
    /// Headers added to the forwarded INVITE.
    pub add: Vec<(String, String)>,
    pub strip_identity: bool,
    /// The verified rcd caller name to show as the display name of From and
    /// every P-Asserted-Identity ([`apply_rcd`]).
    pub display_name: Option<String>,
    /// Remove rich-call-data Call-Info values (purpose icon, jcard, info)
    /// the request arrived with: nobody vouches for them.
    pub strip_rcd_call_info: bool,
    /// A Reason header for the first response relayed upstream, carrying
    /// the verification failure (ATIS-1000074 §5.3.2; RFC 8224 §6.2.2).
    pub upstream_reason: Option<String>,
}

/// How to reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectPlan {
    pub code: u16,
    pub phrase: String,
    /// Reason, Warning and (608/603) Call-Info, in that order.
    pub headers: Vec<(String, String)>,
    pub guidance: String,
}

/// What to do with the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward(ForwardPlan),
    Reject(RejectPlan),
}

/// Standard reason phrases (RFC 3261 §21, RFC 8197, RFC 8688, RFC 8224).
pub fn phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Stale Date",
        404 => "Not Found",
        408 => "Request Timeout",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        428 => "Use Identity Header",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity Info",
        437 => "Unsupported Credential",
        438 => "Invalid Identity Header",
        480 => "Temporarily Unavailable",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        _ => "Rejected",
    }
}

/// The shipped guidance for a code when the rule gives none.
pub fn default_guidance(code: u16) -> &'static str {
    match code {
        607 => {
            "The person you called has asked not to receive calls from {orig}. Please do not call this number again."
        }
        608 | 603 => {
            "{operator} blocked this call from {orig} as suspected unwanted or illegal robocalling. If you are a legitimate caller, contact {redress} to have the block reviewed; having your provider sign your calls with full 'A' attestation helps."
        }
        403 => {
            "The call's PASSporT was stale ({failure}): it must be signed within 60 seconds of the call. Check your provider's signing service and clock."
        }
        428 => {
            "This network accepts only signed calls. Ask your provider to sign your calls with STIR/SHAKEN (an Identity header)."
        }
        436 => {
            "The signing certificate could not be fetched from the PASSporT's x5u URL ({failure}). Ask your provider to publish it over HTTPS on port 443 or 8443."
        }
        437 => {
            "The signing certificate is not accepted here ({failure}): it must be current, unrevoked, issued by an approved STI-CA, and carry a TNAuthList. Contact your provider."
        }
        438 => {
            "The Identity header did not verify ({failure}): the signature, or the calling and called numbers, did not match what was signed. Ask your provider to sign the numbers it sends."
        }
        _ => {
            "This call was rejected by {operator} (rule {rule}). If you believe this is a mistake, contact {redress}."
        }
    }
}

/// `s` as a SIP quoted-string (RFC 3261 §25.1): `"` and `\\` escaped, line
/// breaks and tabs as spaces, other control characters dropped (no header
/// injection from guidance or signed text).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `Reason` of a 603+ as ATIS-1000099 implementations quote it:
/// `SIP;cause=603;text="v=analytics1;url=…;tel=…;email=…;id=…";location=RLN`
/// (RFC 8606 `location`: the network serving the callee). `id` leads back
/// to the decision record; it is left out unless it is 1–64 letters,
/// digits, `_` or `-`.
pub fn analytics_reason(op: &Operator, id: &str) -> String {
    let mut text = String::from("v=analytics1");
    for (k, v) in [
        ("url", &op.redress_url),
        ("tel", &op.redress_tel),
        ("email", &op.redress_email),
    ] {
        if !v.is_empty() {
            text.push_str(&format!(";{k}={v}"));
        }
    }
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        text.push_str(&format!(";id={id}"));
    }
    format!("SIP;cause=603;text={};location=RLN", quote(&text))
}

/// Turns an action into a verdict for this call. `id` is the call's
/// decision id (in its decision record; a 603+ carries it for redress).
pub fn verdict(
    action: &Action,
    rule: &str,
    facts: &Facts,
    op: &Operator,
    now: UnixTime,
    id: &str,
) -> Verdict {
    match action {
        Action::Forward(f) => Verdict::Forward(forward_plan(f, facts)),
        Action::Reject(r) => {
            let code = match r.code {
                RejectCode::Fixed(c) => c,
                RejectCode::Stir if facts.stir_code != 0 => facts.stir_code,
                // Rejecting "with the RFC 8224 code" a call that has none:
                // it carried no valid PASSporT.
                RejectCode::Stir => 438,
            };
            let phrase = r.reason_phrase.clone().unwrap_or_else(|| {
                if code == 603 && r.network_blocked {
                    "Network Blocked".to_owned()
                } else {
                    phrase(code).to_owned()
                }
            });
            let template = if r.guidance.0.is_empty() {
                Template::parse(default_guidance(code)).0
            } else {
                r.guidance.clone()
            };
            let guidance = fill(&template, |v| var(v, facts, rule, op, code));
            // 603+: the structured redress Reason; the guidance is in the
            // Warning. Otherwise the guidance is the Reason's text.
            let reason = if code == 603 && r.network_blocked {
                analytics_reason(op, id)
            } else {
                format!("SIP;cause={code};text={}", quote(&guidance))
            };
            let mut headers = vec![
                ("Reason".to_owned(), reason),
                (
                    "Warning".to_owned(),
                    format!("399 {} {}", op.agent, quote(&guidance)),
                ),
            ];
            // RFC 8688 §6: a jCard only for callers that verified.
            if r.jcard
                && facts.verstat == Verstat::Passed
                && let Some(j) = &op.jcard
                && let Some(v) = jcard_call_info(j, facts, now)
            {
                headers.push(("Call-Info".to_owned(), v));
            }
            Verdict::Reject(RejectPlan {
                code,
                phrase,
                headers,
                guidance,
            })
        }
    }
}

fn var(name: &str, f: &Facts, rule: &str, op: &Operator, code: u16) -> String {
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_owned()
        } else {
            s.to_owned()
        }
    };
    match name {
        "orig" => or(&f.orig, "your number"),
        "dest" => or(&f.dest, "the called number"),
        "attest" => f.attest.as_str().to_owned(),
        "verstat" => f.verstat.as_str().to_owned(),
        "failure" => f.failure.as_str().to_owned(),
        "code" => code.to_string(),
        "spc" => or(&f.spc, "none"),
        "rule" => rule.to_owned(),
        "operator" => op.name.clone(),
        "redress" => op.redress.clone(),
        "source" => f.source.clone(),
        _ => String::new(),
    }
}

fn forward_plan(f: &Forward, facts: &Facts) -> ForwardPlan {
    let mut verstat = facts.verstat.as_str().to_owned();
    if f.attest_suffix && facts.verstat == Verstat::Passed {
        verstat.push('-');
        verstat.push_str(facts.attest.as_str());
    }
    let mut add = Vec::new();
    if f.p_attestation_indicator && facts.verstat == Verstat::Passed {
        add.push((
            "P-Attestation-Indicator".to_owned(),
            facts.attest.as_str().to_owned(),
        ));
    }
    if f.p_origination_id && facts.verstat == Verstat::Passed && !facts.origid.is_empty() {
        add.push(("P-Origination-ID".to_owned(), facts.origid.clone()));
    }
    let upstream_reason = (f.reason && facts.stir_code != 0).then(|| {
        let text = FailureKind::reason_phrase(facts.stir_code);
        // RFC 9410: the STIR protocol value carries the verification
        // result, beside (never instead of) a downstream `SIP` Reason.
        format!("STIR;cause={};text={}", facts.stir_code, quote(text))
    });
    ForwardPlan {
        verstat: (f.verstat.pai || f.verstat.from).then_some(verstat),
        in_pai: f.verstat.pai,
        in_from: f.verstat.from,
        add,
        strip_identity: f.strip_identity,
        display_name: None,
        strip_rcd_call_info: false,
        upstream_reason,
    }
}

/// The operator's signed jCard as a Call-Info value (`purpose=jwscard`).
fn jcard_call_info(j: &JcardSigner, f: &Facts, now: UnixTime) -> Option<String> {
    if let Some(url) = &j.url {
        return Some(format!("<{url}>;purpose=jwscard"));
    }
    let header =
        json!({"alg": "ES256", "ppt": "jcard", "typ": "passport", "x5u": j.x5u}).to_string();
    let payload = json!({
        "dest": {"tn": [f.dest]},
        "iat": now.0,
        "jcard": j.card,
        "orig": {"tn": f.orig},
    })
    .to_string();
    let jws = j.key.sign_raw(&header, &payload).ok()?;
    Some(format!("<data:application/jose,{jws}>;purpose=jwscard"))
}

/// Builds the response a proxy sends as UAS (RFC 3261 §8.2.6): Via, From,
/// Call-ID and CSeq copied, To copied with a tag added when absent.
pub fn build_response(
    req: &Message<'_>,
    code: u16,
    phrase: &str,
    headers: &[(String, String)],
    to_tag: &str,
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {phrase}\r\n");
    for h in &req.headers {
        let name = match h.id {
            HeaderId::Via => "Via",
            HeaderId::From => "From",
            HeaderId::CallId => "Call-ID",
            HeaderId::CSeq => "CSeq",
            HeaderId::To => "To",
            _ => continue,
        };
        let Some(v) = req.text(h) else { continue };
        if h.id == HeaderId::To && code > 100 && NameAddr::parse(v).is_ok_and(|a| a.tag().is_none())
        {
            out.push_str(&format!("To: {v};tag={to_tag}\r\n"));
        } else {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Replaces any `verstat` in the telephone-number URI of a From/PAI value
/// and, when `verstat` is given, adds it (user part of a sip URI, parameter
/// of a tel URI).
pub fn set_verstat(value: &str, verstat: Option<&str>) -> String {
    let Ok(addr) = NameAddr::parse(value) else {
        return value.to_owned();
    };
    let uri_full = format!("{}:{}", addr.uri.scheme, addr.uri.rest);
    let Some(pos) = value.find(&uri_full) else {
        return value.to_owned();
    };
    let strip = |params: &str| -> String {
        params
            .split(';')
            .filter(|p| !p.is_empty() && !p.trim().to_ascii_lowercase().starts_with("verstat="))
            .map(|p| format!(";{p}"))
            .collect()
    };
    let new_uri = if addr.uri.is_tel() {
        let (num, params) = addr.uri.rest.split_once(';').unwrap_or((addr.uri.rest, ""));
        let mut u = format!("{}:{num}{}", addr.uri.scheme, strip(params));
        if let Some(v) = verstat {
            u.push_str(&format!(";verstat={v}"));
        }
        u
    } else if addr.uri.is_sip() && crate::stir::tn::tn_of_uri(&addr.uri).is_some() {
        let Some((user, host)) = addr.uri.rest.split_once('@') else {
            return value.to_owned();
        };
        let (num, params) = user.split_once(';').unwrap_or((user, ""));
        let mut u = format!("{}:{num}{}", addr.uri.scheme, strip(params));
        if let Some(v) = verstat {
            u.push_str(&format!(";verstat={v}"));
        }
        u.push('@');
        // verstat is a tel-URI parameter: in a SIP URI it means something
        // only with `user=phone` (RFC 3261 §19.1.1), which a telephone-
        // number user part may be given; without it, UAs show the whole
        // user part as the caller.
        let (host_params, headers) = match host.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (host, None),
        };
        u.push_str(host_params);
        let user_phone = host_params
            .split(';')
            .skip(1)
            .any(|p| p.trim().eq_ignore_ascii_case("user=phone"));
        if verstat.is_some() && !user_phone {
            u.push_str(";user=phone");
        }
        if let Some(q) = headers {
            u.push('?');
            u.push_str(q);
        }
        u
    } else {
        return value.to_owned();
    };
    let in_angles = value
        .get(..pos)
        .is_some_and(|b| b.trim_end().ends_with('<'));
    if !in_angles && addr.uri.is_tel() && verstat.is_some() {
        // An addr-spec tel URI with parameters must be enclosed in <> to
        // keep header parameters apart.
        return format!(
            "{}<{new_uri}>{}",
            value.get(..pos).unwrap_or_default(),
            value.get(pos + uri_full.len()..).unwrap_or_default()
        );
    }
    format!(
        "{}{new_uri}{}",
        value.get(..pos).unwrap_or_default(),
        value.get(pos + uri_full.len()..).unwrap_or_default()
    )
}

/// `[[peers]] annotation`: how verified results are written toward the peer
/// a call is forwarded to (SBCs and PBXs read them differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Annotation {
    /// As the policy's forward action says (default).
    #[default]
    Policy,
    /// Plain verstat (`TN-Validation-Passed`): scripts that compare the
    /// exact RFC 8224 value (e.g. a common CUCM script) see a pass.
    Verstat,
    /// verstat with the attestation suffix (`TN-Validation-Passed-A`).
    VerstatAttest,
    /// Plain verstat plus `Attestation-Info: A|B|C` on verified calls (read
    /// by PBXs such as Avaya IP Office when PAI carries no verstat).
    AttestationInfo,
    /// Plain verstat plus RFC 9796 Call-Info for verified rich call data
    /// (as `forward_rcd = "call-info"`).
    CallInfo,
}

/// Rewrites a forward plan for the downstream peer's `annotation`.
pub fn apply_annotation(
    plan: &mut ForwardPlan,
    annotation: Annotation,
    facts: &Facts,
    rcd: Option<&crate::stir::passport::RcdStatus>,
) {
    let plain = facts.verstat.as_str().to_owned();
    match annotation {
        Annotation::Policy => {}
        Annotation::Verstat => plan.verstat = plan.verstat.take().map(|_| plain),
        Annotation::VerstatAttest => {
            plan.verstat = plan.verstat.take().map(|_| {
                if facts.verstat == Verstat::Passed {
                    format!("{plain}-{}", facts.attest.as_str())
                } else {
                    plain
                }
            });
        }
        Annotation::AttestationInfo => {
            plan.verstat = plan.verstat.take().map(|_| plain);
            if facts.verstat == Verstat::Passed {
                plan.add
                    .push(("Attestation-Info".into(), facts.attest.as_str().into()));
            }
        }
        Annotation::CallInfo => {
            plan.verstat = plan.verstat.take().map(|_| plain);
            if !plan.add.iter().any(|(k, _)| k == "Call-Info") {
                apply_rcd(plan, RcdForward::CallInfo, rcd);
            }
        }
    }
}

/// `[[peers]] display_tag_passed` / `display_tag_failed`: prefixes the
/// caller's display name toward that peer with the tag for the call's
/// verstat (TN-Validation-Passed / TN-Validation-Failed; other verstats
/// untouched). The name tagged is the verified rcd name when the plan
/// presents one, else the display name the caller sent, else its number.
pub fn apply_display_tag(plan: &mut ForwardPlan, passed: &str, failed: &str, facts: &Facts) {
    let tag = match facts.verstat {
        Verstat::Passed => passed,
        Verstat::Failed => failed,
        _ => "",
    };
    if tag.is_empty() {
        return;
    }
    let base = match &plan.display_name {
        Some(q) => unquote(q),
        None if !facts.display_name.is_empty() => unquote(&facts.display_name),
        None => facts.orig.clone(),
    };
    plan.display_name = Some(quoted_string(&format!("{tag}{base}")));
}

/// A display name's text: a quoted-string's content unescaped, a token as
/// it is.
fn unquote(s: &str) -> String {
    let s = s.trim();
    let Some(inner) = s.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return s.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// `[proxy] forward_rcd`: what the callee is told of verified rich call
/// data (RFC 9795 `rcd`, presented per RFC 9796).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RcdForward {
    /// The request's headers as received; nothing added (default).
    #[default]
    None,
    /// Rich-call-data Call-Info values the request arrived with removed;
    /// nothing added.
    Strip,
    /// `strip`, then Call-Info for the verified `icn` (purpose=icon) and
    /// `jcl` (purpose=jcard), each `;verified`, with `call-reason` (`crn`)
    /// and `integrity` (a checked `rcdi` digest).
    CallInfo,
    /// `strip`, then the verified `nam` as the display name of From and
    /// P-Asserted-Identity.
    DisplayName,
    /// `call-info` and `display-name`.
    Both,
}

/// Adds what `mode` says of a verified PASSporT's rcd to a forward plan.
/// Only `signed` rcd (with its `rcdi` checked when `check_rcdi` is on)
/// is presented; a broken one is never shown.
pub fn apply_rcd(
    plan: &mut ForwardPlan,
    mode: RcdForward,
    rcd: Option<&crate::stir::passport::RcdStatus>,
) {
    if mode == RcdForward::None {
        return;
    }
    plan.strip_rcd_call_info = true;
    let Some(crate::stir::passport::RcdStatus::Signed { rcd, rcdi_checked }) = rcd else {
        return;
    };
    if matches!(mode, RcdForward::DisplayName | RcdForward::Both) {
        plan.display_name = rcd.nam.as_deref().map(quoted_string);
    }
    if matches!(mode, RcdForward::CallInfo | RcdForward::Both) {
        let mut reason = rcd.crn.as_deref().map(quoted_string);
        for (pointer, url, purpose) in [
            ("/icn", rcd.icn.as_deref(), "icon"),
            ("/jcl", rcd.jcl.as_deref(), "jcard"),
        ] {
            let Some(url) = url else { continue };
            let mut v = format!("<{url}>;purpose={purpose};verified");
            if *rcdi_checked && let Some(d) = rcd.rcdi_digests.iter().find(|d| d.pointer == pointer)
            {
                v.push_str(&format!(";integrity={}", quoted_string(&d.digest)));
            }
            if let Some(r) = reason.take() {
                v.push_str(&format!(";call-reason={r}"));
            }
            plan.add.push(("Call-Info".into(), v));
        }
    }
}

/// `text` as a SIP quoted-string (see [`quote`]).
pub fn quoted_string(text: &str) -> String {
    quote(text)
}

/// A name-addr or addr-spec header value with `name` (already a
/// quoted-string) as its display name.
pub fn set_display_name(value: &str, name: &str) -> String {
    let v = value.trim();
    // `<` outside a quoted display name starts the URI.
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => {
                return format!("{name} {}", v.get(i..).unwrap_or_default());
            }
            _ => {}
        }
    }
    // addr-spec: its URI ends at the first `;` (header parameters follow).
    match v.split_once(';') {
        Some((uri, params)) => format!("{name} <{uri}>;{params}"),
        None => format!("{name} <{v}>"),
    }
}

/// Call-Info values (one header line's worth) without the rich-call-data
/// ones (purpose icon, jcard or info); `None` when none is left.
pub fn without_rcd_call_info(value: &str) -> Option<String> {
    let kept: Vec<&str> = crate::sip::addr::split_values(value)
        .filter(|v| {
            let purpose = v
                .split(';')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("purpose"))
                .map(|(_, p)| p.trim().trim_matches('"').to_ascii_lowercase());
            !matches!(purpose.as_deref(), Some("icon" | "jcard" | "info"))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The From or P-Asserted-Identity header line of a forwarded request (CRLF
/// included): upstream verstat removed from every value, ours placed where
/// the plan says. `None` when the value is not text: copy it as received.
pub fn annotated_line(
    req: &Message<'_>,
    h: &crate::sip::Header<'_>,
    plan: &ForwardPlan,
) -> Option<String> {
    let v = req.text(h)?;
    let place = if h.id == HeaderId::From {
        plan.in_from
    } else {
        plan.in_pai
    };
    let vs = plan.verstat.as_deref().filter(|_| place);
    let annotate = |one: &str| {
        let one = set_verstat(one, vs);
        match &plan.display_name {
            Some(name) => set_display_name(&one, name),
            None => one,
        }
    };
    let values: Vec<String> = if h.id == HeaderId::From {
        vec![annotate(v)]
    } else {
        crate::sip::addr::split_values(v).map(annotate).collect()
    };
    Some(format!("{}: {}\r\n", h.name, values.join(", ")))
}

/// The forwarded INVITE: upstream verstat removed from From and every PAI,
/// ours placed as planned, Identity stripped if asked, headers added;
/// everything else, and the body, unchanged.
pub fn build_forward(req: &Message<'_>, plan: &ForwardPlan) -> Vec<u8> {
    let mut out = Vec::with_capacity(req.bytes.len() + 128);
    let first_end = req.headers.first().map_or(req.body_start, |h| h.span.0);
    out.extend_from_slice(req.bytes.get(..first_end).unwrap_or_default());
    for h in &req.headers {
        let raw = req.bytes.get(h.span.0..h.span.1).unwrap_or_default();
        match h.id {
            HeaderId::Identity if plan.strip_identity => continue,
            HeaderId::CallInfo if plan.strip_rcd_call_info => {
                if let Some(kept) = req.text(h).and_then(without_rcd_call_info) {
                    out.extend_from_slice(format!("{}: {kept}\r\n", h.name).as_bytes());
                }
            }
            HeaderId::From | HeaderId::PAssertedIdentity => match annotated_line(req, h, plan) {
                Some(line) => out.extend_from_slice(line.as_bytes()),
                None => {
                    out.extend_from_slice(raw);
                    out.extend_from_slice(b"\r\n");
                }
            },
            _ => {
                out.extend_from_slice(raw);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    for (k, v) in &plan.add {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
    out
}

/// The 302 of the SIP redirect server for a call the policy lets through
/// (the practice of redirect-mode verification services: the SBC asks
/// with the INVITE and places what the 302 says on the INVITE it sends
/// on).
///
/// - `Contact`: the INVITE's Request-URI with the verstat as RFC 8224 puts
///   it on a telephone-number URI (`sip:+1…;verstat=…@host;user=phone`,
///   `tel:+1…;verstat=…`; other URIs get it as a URI parameter), and the
///   headers the policy adds (P-Attestation-Indicator, Attestation-Info,
///   Call-Info for verified rcd, …) as URI headers (RFC 3261 §19.1.5),
///   which a UAC copies into the redirected request. `From` cannot be
///   passed that way (§19.1.5): the SBC moves verstat to From/PAI, as the
///   plan's placement says (`X-Verstat-Placement`: `from`, `pai`,
///   `from,pai` or `none`).
/// - `Reason: STIR;cause=…` when verification failed (RFC 9410), for the
///   SBC to relay upstream.
pub fn build_redirect(req: &Message<'_>, plan: &ForwardPlan, to_tag: &str) -> Vec<u8> {
    let ruri = match req.start {
        crate::sip::StartLine::Request { uri, .. } => uri,
        crate::sip::StartLine::Response { .. } => "",
    };
    let mut contact = match plan.verstat.as_deref() {
        Some(v) => {
            let placed = set_verstat(&format!("<{ruri}>"), Some(v));
            let placed = placed
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned();
            if placed.contains("verstat=") {
                placed
            } else {
                // Not a telephone number: a URI parameter.
                match placed.split_once('?') {
                    Some((u, q)) => format!("{u};verstat={v}?{q}"),
                    None => format!("{placed};verstat={v}"),
                }
            }
        }
        None => ruri.to_owned(),
    };
    let mut sep = if contact.contains('?') { '&' } else { '?' };
    for (k, v) in &plan.add {
        contact.push(sep);
        sep = '&';
        contact.push_str(&uri_header_escape(k));
        contact.push('=');
        contact.push_str(&uri_header_escape(v));
    }
    let placement = match (plan.in_from, plan.in_pai) {
        _ if plan.verstat.is_none() => "none",
        (true, true) => "from,pai",
        (true, false) => "from",
        (false, true) => "pai",
        (false, false) => "none",
    };
    let mut headers = vec![
        ("Contact".to_owned(), format!("<{contact}>")),
        ("X-Verstat-Placement".to_owned(), placement.to_owned()),
    ];
    if let Some(r) = &plan.upstream_reason {
        headers.push(("Reason".to_owned(), r.clone()));
    }
    build_response(req, 302, "Moved Temporarily", &headers, to_tag)
}

/// A header name or value as an RFC 3261 §25.1 `hname`/`hvalue`: unreserved
/// and `[]/?:+$` kept, everything else percent-encoded (so `&`, `=`, `<`,
/// `>`, `;`, `"` and spaces cannot end the URI or the header early).
pub fn uri_header_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b'/'
                    | b'?'
                    | b':'
                    | b'+'
                    | b'$'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_carries_verstat_on_the_request_uri_and_headers_as_uri_headers() {
        let req = b"INVITE sip:+12125551213@vs.example;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa\r\n\
From: <sip:+12155551212@example.net;user=phone>;tag=1\r\n\
To: <sip:+12125551213@example.net;user=phone>\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(req).unwrap();
        let plan = ForwardPlan {
            verstat: Some("TN-Validation-Passed".into()),
            in_pai: true,
            in_from: true,
            add: vec![
                ("P-Attestation-Indicator".into(), "A".into()),
                (
                    "Call-Info".into(),
                    "<https://x.example/a.png>;purpose=icon".into(),
                ),
            ],
            strip_identity: false,
            display_name: None,
            strip_rcd_call_info: false,
            upstream_reason: None,
        };
        let r = String::from_utf8(build_redirect(&m, &plan, "t1")).unwrap();
        assert!(r.starts_with("SIP/2.0 302 Moved Temporarily\r\n"), "{r}");
        assert!(
            r.contains("Contact: <sip:+12125551213;verstat=TN-Validation-Passed@vs.example;user=phone?P-Attestation-Indicator=A&Call-Info=%3Chttps://x.example/a.png%3E%3Bpurpose%3Dicon>\r\n"),
            "{r}"
        );
        assert!(r.contains("X-Verstat-Placement: from,pai\r\n"), "{r}");
        assert!(r.contains(";tag=t1"), "{r}");
        assert_eq!(uri_header_escape("a&b=c d"), "a%26b%3Dc%20d");
    }

    #[test]
    fn every_shipped_guidance_names_only_known_placeholders() {
        for code in [400, 403, 428, 436, 437, 438, 480, 603, 607, 608] {
            let (_, problems) = Template::parse(default_guidance(code));
            assert!(problems.is_empty(), "{code}: {problems:?}");
        }
    }

    #[test]
    fn rcd_presentation_is_quoted_and_filtered() {
        assert_eq!(
            quoted_string("Acme \"Pharmacy\"\r\nX:\u{7} y"),
            "\"Acme \\\"Pharmacy\\\"  X: y\""
        );
        assert_eq!(
            set_display_name("\"Old <name>\" <sip:+1215@ex.net>;tag=1", "\"Acme\""),
            "\"Acme\" <sip:+1215@ex.net>;tag=1"
        );
        assert_eq!(
            set_display_name("sip:+1215@ex.net;tag=1", "\"Acme\""),
            "\"Acme\" <sip:+1215@ex.net>;tag=1"
        );
        assert_eq!(
            without_rcd_call_info("<https://a/logo.png>;purpose=icon, <sip:x@y>;answer-after=0"),
            Some("<sip:x@y>;answer-after=0".into())
        );
        assert_eq!(
            without_rcd_call_info("<https://a/j>;purpose=\"jcard\""),
            None
        );
    }

    #[test]
    fn verstat_placement_replaces_upstream_values() {
        assert_eq!(
            set_verstat(
                "<sip:+12155551212;verstat=TN-Validation-Passed@ex.net;user=phone>;tag=1",
                Some("No-TN-Validation")
            ),
            "<sip:+12155551212;verstat=No-TN-Validation@ex.net;user=phone>;tag=1"
        );
        assert_eq!(
            set_verstat("<tel:+12155551212;verstat=X>", None),
            "<tel:+12155551212>"
        );
        assert_eq!(
            set_verstat("tel:+12155551212", Some("TN-Validation-Passed")),
            "<tel:+12155551212;verstat=TN-Validation-Passed>"
        );
        assert_eq!(
            set_verstat("\"Bob\" <sip:bob@ex.net>", Some("TN-Validation-Passed")),
            "\"Bob\" <sip:bob@ex.net>"
        );
        // A number without user=phone gets it (baresip's From).
        assert_eq!(
            set_verstat(
                "<sip:+12125551212@10.0.0.1>;tag=x",
                Some("No-TN-Validation")
            ),
            "<sip:+12125551212;verstat=No-TN-Validation@10.0.0.1;user=phone>;tag=x"
        );
    }
}
