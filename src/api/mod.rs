//! The ATIS-1000082 HTTP API (`[api] listen`): `POST /stir/v1/verification`
//! and `POST /stir/v1/signing`, with the ATIS request checks and error
//! objects (shared/reference/standards.md §5), served by axum on hyper's
//! HTTP/1 connections from our own accept loop (connection cap, TLS,
//! header read timeout). `GET /openapi.json` serves the OpenAPI document
//! (`src/api/openapi.json`).
//!
//! A verification request is turned into the SIP request it describes
//! (From, To, Date from `time`, the Identity header) and screened by the
//! same service as the SIP front-ends ([`Screener::screen`]): the
//! response carries the ATIS `verificationResponse` (verstat, and on a
//! failure reasoncode/reasontext/reasondesc) and, as a stirscreen extension
//! beside it, the policy's `decision`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::routing::{any, get};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::net::http::ClientAddr;
use crate::policy::render::Verdict;
use crate::proxy::{FrontEnd, Screener};
use crate::sip::Message;
use crate::stir::passport::{Attest, SigningKey};
use crate::time::{Clock, UnixTime};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A running API listener.
#[derive(Debug)]
pub struct Api {
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Clone)]
struct Ctx {
    screen: Arc<Screener>,
    signer: Option<Arc<SigningKey>>,
}

impl Api {
    /// Binds `[api] listen` and serves with `screen` (the screening
    /// service the SIP front-ends use). Refuses a non-loopback listener
    /// without `token` or without a `[tls]` certificate.
    pub async fn start(screen: Arc<Screener>) -> Result<Api, String> {
        let cfg = screen.config().clone();
        let addr: SocketAddr = cfg.api.listen.parse().map_err(|_| {
            format!(
                "[api] listen: `{}` is not address:port (IPv6 as [::1]:8443)",
                cfg.api.listen
            )
        })?;
        let loopback = addr.ip().is_loopback();
        if !loopback && cfg.api.token.is_empty() {
            return Err(format!(
                "[api] token: a listener on {addr} (not loopback) needs a bearer token"
            ));
        }
        let acceptor = if loopback {
            None
        } else {
            let sc = crate::net::tls::server_config(&cfg.tls).map_err(|e| {
                format!("[api] listen on {addr} (not loopback) is served over HTTPS: {e}")
            })?;
            Some(sc)
        };
        let signer = match &cfg.api.signing_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("[api] signing_key `{}`: {e}", path.display()))?;
                let k = SigningKey::from_pem(&pem)
                    .map_err(|e| format!("[api] signing_key `{}`: {e}", path.display()))?;
                if cfg.api.signing_x5u.is_empty() {
                    return Err("[api] signing_x5u: needed with signing_key".into());
                }
                Some(Arc::new(k))
            }
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("[api] listen `{addr}`: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let router = Router::new()
            .route("/stir/v1/verification", any(verification))
            .route("/stir/v1/signing", any(signing))
            .route("/openapi.json", get(openapi))
            .fallback(not_found)
            .with_state(Ctx { screen, signer });
        let tls = acceptor.is_some();
        let opts = crate::net::http::ServeOptions {
            max_connections: cfg.api.max_connections,
            header_timeout: Duration::from_millis(cfg.api.read_timeout_ms.max(1)),
            max_header_bytes: 64 * 1024,
            tls: acceptor,
            handshake_timeout: Duration::from_millis(cfg.tls.handshake_timeout_ms.max(1)),
            title_case_headers: false,
        };
        crate::net::http::spawn(listener, router, opts);
        Ok(Api { addr: local, tls })
    }
}

/// The ATIS error templates (standards.md §5.5), and stirscreen's own for
/// what ATIS does not cover (401, 408, 413, 403 on signing policy).
fn template(id: &str) -> (StatusCode, &'static str) {
    match id {
        "SVC4000" => (StatusCode::BAD_REQUEST, "Missing request body"),
        "SVC4001" => (StatusCode::BAD_REQUEST, "Missing mandatory parameter '%1'"),
        "SVC4002" => (
            StatusCode::NOT_ACCEPTABLE,
            "Requested response body type '%1' is not supported",
        ),
        "SVC4003" => (StatusCode::NOT_FOUND, "Requested resource was not found"),
        "SVC4004" => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported request body type, expected '%1'",
        ),
        "SVC4005" => (StatusCode::BAD_REQUEST, "Invalid '%1' parameter value: %2"),
        "SVC4006" => (
            StatusCode::BAD_REQUEST,
            "Failed to parse received message body: %1",
        ),
        "SVC4007" => (
            StatusCode::LENGTH_REQUIRED,
            "Missing mandatory Content-Length header",
        ),
        "SVC4008" => (
            StatusCode::REQUEST_TIMEOUT,
            "Request body not received within %1 ms",
        ),
        "SVC4013" => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body larger than %1 bytes",
        ),
        "POL4010" => (StatusCode::UNAUTHORIZED, "Missing or wrong bearer token"),
        "POL4030" => (StatusCode::FORBIDDEN, "Not allowed for this client: %1"),
        "POL4050" => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
    }
}

fn json_response(status: StatusCode, body: &Value, rid: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-requestid", v);
    }
    r
}

/// An ATIS error object: `requestError.serviceException` (SVC…) or
/// `requestError.policyException` (POL…).
fn error(id: &str, vars: &[&str], rid: &str) -> Response<Body> {
    let (status, text) = template(id);
    let kind = if id.starts_with("POL") {
        "policyException"
    } else {
        "serviceException"
    };
    let body = json!({ "requestError": { kind: {
        "messageId": id,
        "text": format!("Error: {text}."),
        "variables": vars,
    }}});
    let mut r = json_response(status, &body, rid);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// `X-RequestID`: echoed when it is a sane header value (1-128 visible
/// ASCII characters); a new UUID when absent. `Err` (with a new id) when
/// present but not sane: the request is answered 400.
fn request_id(h: &HeaderMap) -> Result<String, String> {
    match h.get("x-requestid") {
        None => Ok(crate::ids::uuid_v4()),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .ok_or_else(crate::ids::uuid_v4),
    }
}

/// The checks every API POST gets, in the ATIS order, then the body.
async fn read_request(
    ctx: &Ctx,
    req: Request<Body>,
    rid: &Result<String, String>,
) -> Result<Value, Response<Body>> {
    let cfg = &ctx.screen.config().api;
    let rid = match rid {
        Ok(r) => r.as_str(),
        Err(new) => {
            if req.method() != Method::POST {
                return Err(error("POL4050", &[], new));
            }
            return Err(error(
                "SVC4005",
                &["X-RequestID", "not 1-128 visible ASCII characters"],
                new,
            ));
        }
    };
    if req.method() != Method::POST {
        return Err(error("POL4050", &[], rid));
    }
    let h = req.headers();
    if !cfg.token.is_empty() {
        let want = format!("Bearer {}", cfg.token);
        let got = h
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if aws_lc_rs::constant_time::verify_slices_are_equal(got, want.as_bytes()).is_err() {
            return Err(error("POL4010", &[], rid));
        }
    }
    let ctype = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = ctype.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(error("SVC4004", &["application/json"], rid));
    }
    if let Some(accept) = h.get(header::ACCEPT) {
        let a = accept.to_str().unwrap_or_default();
        let ok = a.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or_default().trim();
            ["application/json", "application/*", "*/*"]
                .iter()
                .any(|x| m.eq_ignore_ascii_case(x))
        });
        if !ok {
            return Err(error("SVC4002", &[a], rid));
        }
    }
    let Some(len) = h.get(header::CONTENT_LENGTH) else {
        return Err(error("SVC4007", &[], rid));
    };
    let len: usize = len
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| error("SVC4007", &[], rid))?;
    let max = cfg.max_body_bytes;
    if len > max {
        return Err(error("SVC4013", &[&max.to_string()], rid));
    }
    if len == 0 {
        return Err(error("SVC4000", &[], rid));
    }
    let wait = Duration::from_millis(cfg.read_timeout_ms.max(1));
    let body = match tokio::time::timeout(wait, axum::body::to_bytes(req.into_body(), max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Err(error("SVC4013", &[&max.to_string()], rid)),
        Err(_) => return Err(error("SVC4008", &[&cfg.read_timeout_ms.to_string()], rid)),
    };
    serde_json::from_slice::<Value>(&body).map_err(|e| error("SVC4006", &[&e.to_string()], rid))
}

/// A telephone number as the API takes it: 1–15 digits, an optional
/// leading `+` (dropped).
fn tn(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let d = s.strip_prefix('+').unwrap_or(s);
    (!d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.to_owned())
}

/// 1 to 16 telephone numbers ([`tn`]), or why not.
fn tn_array(v: &Value) -> Result<Vec<String>, &'static str> {
    match v {
        Value::Array(a) if !a.is_empty() && a.len() <= 16 => a
            .iter()
            .map(tn)
            .collect::<Option<Vec<_>>>()
            .ok_or("not telephone numbers (1-15 digits each)"),
        _ => Err("not an array of 1 to 16 telephone numbers"),
    }
}

/// The client's address, put on the request by `net::http`.
fn client_addr(req: &Request<Body>) -> SocketAddr {
    req.extensions()
        .get::<ClientAddr>()
        .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0)
}

fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

async fn verification(State(ctx): State<Ctx>, req: Request<Body>) -> Response<Body> {
    let rid_checked = request_id(req.headers());
    let client = client_addr(&req);
    let v = match read_request(&ctx, req, &rid_checked).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let rid = rid_checked.unwrap_or_else(|e| e);
    let missing = |name: &str| error("SVC4001", &[name], &rid);
    let invalid = |name: &str, why: &str| error("SVC4005", &[name, why], &rid);
    let Some(vr) = field(&v, "verificationRequest") else {
        return missing("verificationRequest");
    };
    if !vr.is_object() {
        return invalid("verificationRequest", "not an object");
    }
    let Some(from) = field(vr, "from") else {
        return missing("from");
    };
    let Some(from) = field(from, "tn") else {
        return missing("from.tn");
    };
    let Some(from) = tn(from) else {
        return invalid("from.tn", "not a telephone number (1-15 digits)");
    };
    let Some(to) = field(vr, "to") else {
        return missing("to");
    };
    let Some(to) = field(to, "tn") else {
        return missing("to.tn");
    };
    let to = match tn_array(to) {
        Ok(t) => t,
        Err(why) => return invalid("to.tn", why),
    };
    let Some(time) = field(vr, "time") else {
        return missing("time");
    };
    let Some(time) = time.as_i64().filter(|t| *t >= 0) else {
        return invalid("time", "not a NumericDate (seconds since 1970)");
    };
    let Some(identity) = field(vr, "identity") else {
        return missing("identity");
    };
    let Some(identity) = identity.as_str() else {
        return invalid("identity", "not a string");
    };
    if identity.is_empty()
        || identity.len() > crate::limits::MAX_IDENTITY_HEADER
        || !identity.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return invalid(
            "identity",
            "not an Identity header value (printable ASCII, at most 8 KiB)",
        );
    }
    let cfg = ctx.screen.config();
    let now = Clock.now();
    // ATIS E3: the request's time must be fresh.
    if (now.0 - time).abs() > cfg.verify.max_date_age {
        let body = json!({ "verificationResponse": {
            "reasoncode": 403,
            "reasontext": "Stale Date",
            "reasondesc": format!("time {time} is more than {} s from now", cfg.verify.max_date_age),
            "verstat": "No-TN-Validation",
        }});
        return json_response(StatusCode::OK, &body, &rid);
    }
    let invite = sip_request(&from, &to, UnixTime(time), identity, &rid);
    let Ok(msg) = Message::parse(invite.as_bytes()) else {
        return invalid("identity", "does not form a SIP header");
    };
    let s = ctx.screen.screen(&msg, client, FrontEnd::Api).await;
    let mut resp = serde_json::Map::new();
    if s.stir_code != 0 {
        resp.insert("reasoncode".into(), json!(s.stir_code));
        resp.insert(
            "reasontext".into(),
            json!(crate::stir::verify::FailureKind::reason_phrase(s.stir_code)),
        );
        if let Some(f) = &s.failure {
            resp.insert(
                "reasondesc".into(),
                json!(format!("{}: {}", f.kind.name(), f.detail)),
            );
        }
    }
    resp.insert("verstat".into(), json!(s.verstat.as_str()));
    let body = json!({
        "verificationResponse": Value::Object(resp),
        "decision": decision_json(&s),
    });
    json_response(StatusCode::OK, &body, &rid)
}

/// The stirscreen extension: what the policy decided, for an SBC that
/// acts on it (forward with these annotations, or answer this rejection).
fn decision_json(s: &crate::proxy::Screened) -> Value {
    let pairs = |h: &[(String, String)]| -> Vec<Value> {
        h.iter()
            .map(|(n, v)| json!({ "name": n, "value": v }))
            .collect()
    };
    let mut d = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        d.insert(k.to_owned(), v);
    };
    put("id", json!(s.id));
    put("rule", json!(s.rule));
    put("attest", json!(s.attest.map(Attest::as_str)));
    put("spc", json!(s.spc));
    put("failure", json!(s.failure.as_ref().map(|f| f.kind.name())));
    match &s.verdict {
        Verdict::Forward(p) => {
            let mut placement = Vec::new();
            if p.verstat.is_some() && p.in_from {
                placement.push("from");
            }
            if p.verstat.is_some() && p.in_pai {
                placement.push("pai");
            }
            put("action", json!("forward"));
            put("verstat", json!(p.verstat));
            put("verstatPlacement", json!(placement));
            put("addHeaders", json!(pairs(&p.add)));
            put("stripIdentity", json!(p.strip_identity));
            put("upstreamReason", json!(p.upstream_reason));
        }
        Verdict::Reject(p) => {
            put("action", json!("reject"));
            put("code", json!(p.code));
            put("phrase", json!(p.phrase));
            put("headers", json!(pairs(&p.headers)));
            put("guidance", json!(p.guidance));
        }
    }
    Value::Object(d)
}

/// The SIP INVITE a verification request describes (every value was
/// checked: digits, printable ASCII).
fn sip_request(from: &str, to: &[String], time: UnixTime, identity: &str, rid: &str) -> String {
    let dest = to.first().map_or("", String::as_str);
    let call_id: String = rid
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        .map(char::from)
        .collect();
    format!(
        "INVITE sip:+{dest}@api.stirscreen.invalid;user=phone SIP/2.0\r\n\
         Via: SIP/2.0/TCP api.stirscreen.invalid;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+{from}@api.stirscreen.invalid;user=phone>;tag={tag}\r\n\
         To: <sip:+{dest}@api.stirscreen.invalid;user=phone>\r\n\
         Call-ID: {call_id}@api\r\n\
         CSeq: 1 INVITE\r\n\
         Date: {date}\r\n\
         Identity: {identity}\r\n\
         Content-Length: 0\r\n\r\n",
        branch = crate::ids::random_hex(8),
        tag = crate::ids::random_hex(4),
        date = crate::time::format_sip_date(time),
    )
}

async fn signing(State(ctx): State<Ctx>, req: Request<Body>) -> Response<Body> {
    let rid_checked = request_id(req.headers());
    let rid = rid_checked.clone().unwrap_or_else(|e| e);
    let client = client_addr(&req);
    if req.method() == Method::POST && ctx.signer.is_none() {
        return error("SVC4003", &[], &rid);
    }
    let v = match read_request(&ctx, req, &rid_checked).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(signer) = &ctx.signer else {
        return error("SVC4003", &[], &rid);
    };
    let missing = |name: &str| error("SVC4001", &[name], &rid);
    let invalid = |name: &str, why: &str| error("SVC4005", &[name, why], &rid);
    let Some(sr) = field(&v, "signingRequest") else {
        return missing("signingRequest");
    };
    let Some(attest) = field(sr, "attest") else {
        return missing("attest");
    };
    let attest = match attest.as_str() {
        Some("A") => Attest::A,
        Some("B") => Attest::B,
        Some("C") => Attest::C,
        _ => return invalid("attest", "not A, B or C"),
    };
    let Some(orig) = field(sr, "orig").and_then(|o| field(o, "tn")) else {
        return missing("orig.tn");
    };
    let Some(orig) = tn(orig) else {
        return invalid("orig.tn", "not a telephone number (1-15 digits)");
    };
    let Some(dest) = field(sr, "dest").and_then(|d| field(d, "tn")) else {
        return missing("dest.tn");
    };
    let dest = match tn_array(dest) {
        Ok(t) => t,
        Err(why) => return invalid("dest.tn", why),
    };
    let Some(iat) = field(sr, "iat") else {
        return missing("iat");
    };
    let cfg = ctx.screen.config();
    let now = Clock.now();
    let Some(iat) = iat
        .as_i64()
        .filter(|t| (now.0 - *t).abs() <= cfg.verify.max_iat_age)
    else {
        return invalid(
            "iat",
            &format!(
                "not a NumericDate within {} s of now",
                cfg.verify.max_iat_age
            ),
        );
    };
    let Some(origid) = field(sr, "origid") else {
        return missing("origid");
    };
    let Some(origid) = origid.as_str().filter(|o| {
        o.len() == 36
            && o.bytes().enumerate().all(|(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            })
    }) else {
        return invalid("origid", "not a UUID");
    };
    let allowed = cfg.sign_attest_of(client.ip());
    if !allowed.iter().any(|a| a == attest.as_str()) {
        return error(
            "POL4030",
            &[&format!(
                "attestation {} (allowed: {})",
                attest.as_str(),
                allowed.join(", ")
            )],
            &rid,
        );
    }
    match crate::stir::passport::sign_identity(
        signer,
        &cfg.api.signing_x5u,
        attest,
        &orig,
        &dest,
        UnixTime(iat),
        Some(origid),
    ) {
        Ok(identity) => json_response(
            StatusCode::OK,
            &json!({ "signingResponse": { "identity": identity } }),
            &rid,
        ),
        Err(e) => {
            tracing::error!("signing API: {e}");
            error("POL5000", &[], &rid)
        }
    }
}

async fn openapi() -> Response<Body> {
    let mut r = Response::new(Body::from(OPENAPI));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn not_found(req: Request<Body>) -> Response<Body> {
    let rid = request_id(req.headers()).unwrap_or_else(|e| e);
    error("SVC4003", &[], &rid)
}
