//! Telephone-number canonicalisation (RFC 8224 §8.3) and extraction from
//! SIP URIs (`tel:`, `sip:…;user=phone`, RFC 4904 trunk parameters).

use std::fmt;

use crate::limits::MAX_TN_DIGITS;
use crate::sip::addr::{NameAddr, Uri};

/// A canonical telephone number: ASCII digits with an optional leading `*`
/// or `#`, no `+`, no separators. Stored inline: no allocation per call.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tn {
    len: u8,
    buf: [u8; MAX_TN_DIGITS],
}

/// Why a string is not a telephone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TnError {
    #[error("no digits")]
    Empty,
    #[error("more than {MAX_TN_DIGITS} digits")]
    TooLong,
    #[error("character `{0}` is not a digit or visual separator")]
    BadChar(char),
}

impl Tn {
    /// Canonicalises per RFC 8224 §8.3: drops a leading `+` and the RFC 3966
    /// visual separators (`-` `.` `(` `)` and spaces); keeps a leading `*`
    /// or `#` (service codes); anything else is not a telephone number.
    pub fn canonical(s: &str) -> Result<Tn, TnError> {
        let mut tn = Tn {
            len: 0,
            buf: [0; MAX_TN_DIGITS],
        };
        let s = s.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        for (i, c) in s.chars().enumerate() {
            let keep = match c {
                '0'..='9' => true,
                '*' | '#' if i == 0 => true,
                '-' | '.' | '(' | ')' | ' ' => false,
                other => return Err(TnError::BadChar(other)),
            };
            if keep {
                let slot = tn
                    .buf
                    .get_mut(usize::from(tn.len))
                    .ok_or(TnError::TooLong)?;
                *slot = c as u8;
                tn.len += 1;
            }
        }
        if !tn.as_str().bytes().any(|b| b.is_ascii_digit()) {
            return Err(TnError::Empty);
        }
        Ok(tn)
    }

    /// The canonical digits.
    pub fn as_str(&self) -> &str {
        let bytes = self.buf.get(..usize::from(self.len)).unwrap_or_default();
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl fmt::Debug for Tn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tn({})", self.as_str())
    }
}

impl fmt::Display for Tn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Tn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The telephone number a URI names, if it names one: a `tel:` URI, or a
/// sip/sips URI whose user part is a number (`user=phone`, a leading `+`,
/// or only digits and separators). User parameters (`;verstat=`, `;isub=`,
/// `;tgrp=`, `;trunk-context=`, RFC 4904) are ignored.
pub fn tn_of_uri(uri: &Uri<'_>) -> Option<Tn> {
    number_of_uri(uri).and_then(|n| Tn::canonical(n).ok())
}

/// The number as written in a URI (before canonicalisation).
fn number_of_uri<'u>(uri: &Uri<'u>) -> Option<&'u str> {
    if uri.is_tel() {
        return uri.rest.split(';').next();
    }
    if !uri.is_sip() {
        return None;
    }
    let (user, host_params) = uri.rest.split_once('@')?;
    let user = user.split(':').next().unwrap_or(user);
    let number = user.split(';').next().unwrap_or(user);
    let looks_numeric = number.starts_with('+')
        || number
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-.()*#".contains(&b));
    if !looks_numeric {
        let host_params = host_params.split('?').next().unwrap_or(host_params);
        let params = crate::sip::addr::Params(host_params.split_once(';').map_or("", |(_, p)| p));
        let user_phone = params
            .get("user")
            .flatten()
            .is_some_and(|v| v.eq_ignore_ascii_case("phone"));
        if !user_phone {
            return None;
        }
    }
    Some(number)
}

/// How numbers written without a country code are completed to E.164
/// (`[verify] default_country_code`), so that `2155551212` in From matches
/// `12155551212` signed in the PASSporT. Off when the code is empty.
///
/// A number written with a leading `+` (or a service code `*`/`#`) is
/// never changed. With country code `1` (NANP): ten digits starting 2-9
/// (NPA-NXX-XXXX) get `1` in front; `011` (the NANP international prefix)
/// is dropped. With another code: `00` (the ITU international prefix) is
/// dropped, and a single leading `0` (the usual trunk prefix) is replaced
/// by the country code. Anything else is taken as already international.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    /// Digits of the default country code (`1`, `44`, `33`), or empty.
    pub country_code: String,
}

impl Numbering {
    /// `raw` (as written) canonicalised and completed.
    pub fn canonical(&self, raw: &str) -> Option<Tn> {
        let t = Tn::canonical(raw).ok()?;
        let d = t.as_str();
        if self.country_code.is_empty()
            || raw.trim_start().starts_with('+')
            || d.starts_with(['*', '#'])
        {
            return Some(t);
        }
        let cc = self.country_code.as_str();
        let full = if cc == "1" {
            if let Some(intl) = d.strip_prefix("011") {
                intl.to_owned()
            } else if d.len() == 10 && d.starts_with(['2', '3', '4', '5', '6', '7', '8', '9']) {
                format!("1{d}")
            } else {
                return Some(t);
            }
        } else if let Some(intl) = d.strip_prefix("00") {
            intl.to_owned()
        } else if let Some(national) = d.strip_prefix('0') {
            format!("{cc}{national}")
        } else {
            return Some(t);
        };
        Tn::canonical(&full).ok().or(Some(t))
    }

    /// The number a URI names, completed.
    pub fn of_uri(&self, uri: &Uri<'_>) -> Option<Tn> {
        number_of_uri(uri).and_then(|n| self.canonical(n))
    }

    /// The number in a From/To/P-Asserted-Identity value, completed.
    pub fn of_header(&self, value: &str) -> Option<Tn> {
        NameAddr::parse(value)
            .ok()
            .and_then(|a| self.of_uri(&a.uri))
    }
}

/// The telephone number in a From/To/P-Asserted-Identity value.
pub fn tn_of_header(value: &str) -> Option<Tn> {
    NameAddr::parse(value).ok().and_then(|a| tn_of_uri(&a.uri))
}

/// Why a canonical number (E.164 digits, no `+`) cannot be a caller's:
/// longer than E.164's 15 digits, or a North American (country code 1)
/// number whose length, NPA or NXX the NANP never assigns (an NPA or NXX
/// starting with 0 or 1, an N11 code). `None`: no such rule applies
/// (numbers of other countries are only checked for length).
pub fn invalid_reason(digits: &str) -> Option<&'static str> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 15 {
        return Some("too-long");
    }
    let national = digits.strip_prefix('1')?;
    if national.len() != 10 {
        return Some("nanp-length");
    }
    let (npa, rest) = national.split_at(3);
    let nxx = rest.get(..3).unwrap_or_default();
    if npa.starts_with(['0', '1']) {
        return Some("nanp-npa");
    }
    if nxx.starts_with(['0', '1']) {
        return Some("nanp-nxx");
    }
    if npa.ends_with("11") || nxx.ends_with("11") {
        return Some("nanp-n11");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_plus_and_visual_separators() {
        assert_eq!(
            Tn::canonical("+1 (215) 555-1212").unwrap().as_str(),
            "12155551212"
        );
        assert_eq!(
            Tn::canonical("1.215.555.1212").unwrap().as_str(),
            "12155551212"
        );
        assert_eq!(Tn::canonical("*67").unwrap().as_str(), "*67");
        assert_eq!(Tn::canonical("12a"), Err(TnError::BadChar('a')));
        assert_eq!(Tn::canonical("+"), Err(TnError::Empty));
        assert_eq!(Tn::canonical(&"1".repeat(40)), Err(TnError::TooLong));
    }

    #[test]
    fn national_numbers_are_completed_with_the_default_country_code() {
        let nanp = Numbering {
            country_code: "1".into(),
        };
        let c = |n: &Numbering, s: &str| n.canonical(s).map(|t| t.to_string());
        assert_eq!(c(&nanp, "2155551212").as_deref(), Some("12155551212"));
        assert_eq!(c(&nanp, "(215) 555-1212").as_deref(), Some("12155551212"));
        assert_eq!(c(&nanp, "12155551212").as_deref(), Some("12155551212"));
        assert_eq!(
            c(&nanp, "+2155551212").as_deref(),
            Some("2155551212"),
            "+ is international"
        );
        assert_eq!(c(&nanp, "011442071234567").as_deref(), Some("442071234567"));
        assert_eq!(
            c(&nanp, "1155551212").as_deref(),
            Some("1155551212"),
            "NPA cannot start with 1"
        );
        assert_eq!(c(&nanp, "*67").as_deref(), Some("*67"));
        let fr = Numbering {
            country_code: "33".into(),
        };
        assert_eq!(c(&fr, "0123456789").as_deref(), Some("33123456789"));
        assert_eq!(c(&fr, "0044207123").as_deref(), Some("44207123"));
        let off = Numbering::default();
        assert_eq!(c(&off, "2155551212").as_deref(), Some("2155551212"));
        assert_eq!(
            nanp.of_header("<sip:2155551212@ex.com;user=phone>")
                .map(|t| t.to_string())
                .as_deref(),
            Some("12155551212")
        );
    }

    #[test]
    fn numbers_from_uris() {
        let tn = |s| tn_of_header(s).map(|t| t.to_string());
        assert_eq!(
            tn("<tel:+1-215-555-1212;verstat=TN-Validation-Passed>").as_deref(),
            Some("12155551212")
        );
        assert_eq!(
            tn("<sip:+12155551212;npdi;rn=+12155550000@ex.com;user=phone>;tag=1").as_deref(),
            Some("12155551212")
        );
        assert_eq!(
            tn("\"A\" <sip:12155551212@ex.com>").as_deref(),
            Some("12155551212")
        );
        assert_eq!(
            tn("<sip:2155551212;tgrp=tg1;trunk-context=ex.com@ex.com;user=phone>").as_deref(),
            Some("2155551212")
        );
        assert_eq!(tn("<sip:alice@ex.com>"), None);
    }

    #[test]
    fn invalid_numbers_by_nanp_rules() {
        for (n, why) in [
            ("12155551212", None),
            ("442079460000", None),
            ("1215555121", Some("nanp-length")),
            ("10155551212", Some("nanp-npa")),
            ("11155551212", Some("nanp-npa")),
            ("12150551212", Some("nanp-nxx")),
            ("12151551212", Some("nanp-nxx")),
            ("14115551212", Some("nanp-n11")),
            ("12154111212", Some("nanp-n11")),
            ("1234567890123456", Some("too-long")),
        ] {
            assert_eq!(super::invalid_reason(n), why, "{n}");
        }
    }
}
