//! The SIP Identity header field (RFC 8224 §4.1).
//!
//! `Identity: <jws>;info=<absoluteURI>;alg=ES256;ppt=shaken`. Parameters may
//! come in any order after `info`, with LWS around `;` and `=`; `ppt` may be a
//! quoted string (seen from real carriers); each parameter at most once.

use crate::limits::MAX_IDENTITY_HEADER;

/// Full or compact PASSporT form (RFC 8225 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// `header.payload.signature`
    Full,
    /// `..signature`: header and claims rebuilt from SIP.
    Compact,
}

/// One parsed Identity header value, borrowing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityHeader<'a> {
    /// The JWS compact serialisation.
    pub token: &'a str,
    pub form: Form,
    /// The `info` URI, without angle brackets.
    pub info: &'a str,
    pub alg: Option<&'a str>,
    /// `ppt`, unquoted.
    pub ppt: Option<&'a str>,
}

/// Why an Identity header value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("Identity header of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("Identity header has no PASSporT")]
    NoToken,
    #[error("PASSporT is not three `.`-separated parts")]
    BadTokenShape,
    #[error("Identity header has no `info` parameter")]
    InfoMissing,
    #[error("`info` is not an absolute URI in angle brackets")]
    InfoInvalid,
    #[error("parameter `{0}` appears more than once")]
    DuplicateParam(String),
    #[error("malformed parameter `{0}`")]
    BadParam(String),
}

impl<'a> IdentityHeader<'a> {
    /// Parses one Identity header value (already unfolded).
    pub fn parse(value: &'a str) -> Result<Self, IdentityError> {
        if value.len() > MAX_IDENTITY_HEADER {
            return Err(IdentityError::TooLarge {
                len: value.len(),
                max: MAX_IDENTITY_HEADER,
            });
        }
        let value = value.trim();
        let (token, params) = match memchr::memchr(b';', value.as_bytes()) {
            Some(i) => (
                value.get(..i).unwrap_or_default(),
                value.get(i + 1..).unwrap_or_default(),
            ),
            None => (value, ""),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(IdentityError::NoToken);
        }
        // The alphabet (base64url, RFC 8224 erratum 6499) is checked by the
        // strict decoder of each part; here only the shape.
        let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
        let (Some(d1), Some(d2), None) = (dots.next(), dots.next(), dots.next()) else {
            return Err(IdentityError::BadTokenShape);
        };
        let (h, p, s) = (
            token.get(..d1).unwrap_or_default(),
            token.get(d1 + 1..d2).unwrap_or_default(),
            token.get(d2 + 1..).unwrap_or_default(),
        );
        let form = match (h.is_empty(), p.is_empty(), s.is_empty()) {
            (false, false, false) => Form::Full,
            (true, true, false) => Form::Compact,
            _ => return Err(IdentityError::BadTokenShape),
        };
        let (mut info, mut alg, mut ppt) = (None, None, None);
        if params.trim().is_empty() {
            return Err(IdentityError::InfoMissing);
        }
        let mut seen_other: Vec<&str> = Vec::new();
        for raw in params.split(';') {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(IdentityError::BadParam(String::new()));
            }
            let (name, val) = match raw.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (raw, None),
            };
            let slot = if name.eq_ignore_ascii_case("info") {
                &mut info
            } else if name.eq_ignore_ascii_case("alg") {
                &mut alg
            } else if name.eq_ignore_ascii_case("ppt") {
                &mut ppt
            } else {
                if seen_other.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                    return Err(IdentityError::DuplicateParam(name.to_owned()));
                }
                if !crate::sip::is_token(name) {
                    return Err(IdentityError::BadParam(clip(raw)));
                }
                seen_other.push(name);
                continue;
            };
            if slot.is_some() {
                return Err(IdentityError::DuplicateParam(name.to_ascii_lowercase()));
            }
            let val = val
                .filter(|v| !v.is_empty())
                .ok_or_else(|| IdentityError::BadParam(clip(raw)))?;
            *slot = Some(val);
        }
        let info = info.ok_or(IdentityError::InfoMissing)?;
        let info = info
            .strip_prefix('<')
            .and_then(|i| i.strip_suffix('>'))
            .ok_or(IdentityError::InfoInvalid)?;
        crate::sip::addr::Uri::parse(info).map_err(|_| IdentityError::InfoInvalid)?;
        let ppt = ppt.map(|p| {
            p.strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(p)
        });
        Ok(IdentityHeader {
            token,
            form,
            info,
            alg,
            ppt,
        })
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_form_any_order_quoted_ppt_and_spaces() {
        let h = IdentityHeader::parse(
            "aa.bb.cc ; ppt=\"shaken\" ;alg = ES256; info=<https://x.example/c.pem>",
        )
        .unwrap();
        assert_eq!(
            (h.token, h.form, h.info, h.alg, h.ppt),
            (
                "aa.bb.cc",
                Form::Full,
                "https://x.example/c.pem",
                Some("ES256"),
                Some("shaken")
            )
        );
    }

    #[test]
    fn compact_form_is_recognised() {
        let h = IdentityHeader::parse("..sig;info=<https://x.example/c.pem>;ppt=shaken").unwrap();
        assert_eq!(h.form, Form::Compact);
    }

    #[test]
    fn rejects_bad_headers() {
        use IdentityError::*;
        let e = |s: &str| IdentityHeader::parse(s).unwrap_err();
        assert_eq!(e("aa.bb.cc"), InfoMissing);
        assert_eq!(e("aa.bb.cc;alg=ES256"), InfoMissing);
        assert_eq!(e("aa.bb.cc;info=https://x"), InfoInvalid);
        assert_eq!(
            e("aa.bb.cc;info=<https://x>;ppt=shaken;ppt=div"),
            DuplicateParam("ppt".into())
        );
        assert_eq!(e("aa.b.bb.cc;info=<https://x>"), BadTokenShape);
        assert_eq!(e("aa.bb;info=<https://x>"), BadTokenShape);
        assert_eq!(e(".bb.cc;info=<https://x>"), BadTokenShape);
        assert!(matches!(e(&"a".repeat(70_000)), TooLarge { .. }));
    }
}
