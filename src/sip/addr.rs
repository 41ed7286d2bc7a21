//! URIs, name-addr values and Via (RFC 3261 §19.1, §20.10, §20.42, §25;
//! RFC 3966 for `tel:`).

use crate::sip::is_token;

/// Why a header value does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("missing `>` after `<`")]
    UnclosedAngle,
    #[error("whitespace inside `<...>`")]
    SpaceInAngle,
    #[error("display name has characters that need quoting")]
    BadDisplayName,
    #[error("URI has no scheme")]
    NoScheme,
    #[error("URI has invalid characters")]
    BadUri,
    #[error("addr-spec with `,` `;` or `?` must be enclosed in `<>`")]
    NeedsAngles,
    #[error("empty or malformed parameter")]
    BadParam,
    #[error("empty value")]
    Empty,
    #[error("malformed Via")]
    BadVia,
}

/// A URI split into scheme and the rest; parts are parsed on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    /// Everything after `scheme:`.
    pub rest: &'a str,
}

impl<'a> Uri<'a> {
    /// Splits `scheme:rest`, checking the scheme grammar
    /// (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`) and that the URI has no
    /// whitespace, angle brackets or quotes.
    pub fn parse(s: &'a str) -> Result<Self, AddrError> {
        let (scheme, rest) = s.split_once(':').ok_or(AddrError::NoScheme)?;
        let mut sb = scheme.bytes();
        if !sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            || !sb.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(AddrError::NoScheme);
        }
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"<>\"".contains(&b))
        {
            return Err(AddrError::BadUri);
        }
        Ok(Uri { scheme, rest })
    }

    /// Is this a `sip:` or `sips:` URI?
    pub fn is_sip(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("sip") || self.scheme.eq_ignore_ascii_case("sips")
    }

    /// Is this a `tel:` URI?
    pub fn is_tel(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("tel")
    }

    /// For sip/sips: `(user, host-and-params, headers)`. The user part ends
    /// at the first `@` (it may itself contain `?`, RFC 4475 `intmeth`);
    /// `?headers` start at the first `?` after it.
    fn sip_split(&self) -> (Option<&'a str>, &'a str, Option<&'a str>) {
        let (user, after) = match self.rest.split_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, self.rest),
        };
        match after.split_once('?') {
            Some((h, q)) => (user, h, Some(q)),
            None => (user, after, None),
        }
    }

    /// For sip/sips: the user part, with user parameters such as
    /// `;verstat=` or `;isub=` still attached, if any.
    pub fn sip_user(&self) -> Option<&'a str> {
        self.sip_split().0
    }

    /// For sip/sips: the user part without its password (`user:pw`).
    pub fn sip_user_no_password(&self) -> Option<&'a str> {
        self.sip_user().map(|u| u.split(':').next().unwrap_or(u))
    }

    /// For sip/sips: `host[:port]`.
    pub fn sip_hostport(&self) -> &'a str {
        let h = self.sip_split().1;
        h.split(';').next().unwrap_or(h)
    }

    /// For sip/sips: URI parameters after the host (`;lr`, `;user=phone`).
    pub fn sip_params(&self) -> Params<'a> {
        Params(self.sip_split().1.split_once(';').map_or("", |(_, p)| p))
    }

    /// Does a sip/sips URI carry `?headers` (not allowed in a Request-URI)?
    pub fn has_headers(&self) -> bool {
        self.is_sip() && self.sip_split().2.is_some()
    }

    /// For tel: the number without parameters; for sip: the user part
    /// without user parameters.
    pub fn number_part(&self) -> Option<&'a str> {
        if self.is_tel() {
            return self.rest.split(';').next();
        }
        if self.is_sip() {
            let u = self.sip_user_no_password()?;
            return u.split(';').next();
        }
        None
    }
}

/// `;`-separated parameters, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a>(pub &'a str);

impl<'a> Params<'a> {
    /// Iterates `(name, value)`, names trimmed; value `None` for a bare flag.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        self.0
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p.trim(), None),
            })
    }

    /// The value of a parameter, name compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// `[display-name] <URI> *(;param)` or `addr-spec *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name without quotes (escapes left as they are), if any.
    pub display: Option<&'a str>,
    pub uri: Uri<'a>,
    /// Header parameters after the address (`;tag=`).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one name-addr / addr-spec with its parameters (RFC 3261 §20.10).
    pub fn parse(value: &'a str) -> Result<Self, AddrError> {
        let v = value.trim();
        if v.is_empty() {
            return Err(AddrError::Empty);
        }
        let (display, after_display) = if let Some(q) = v.strip_prefix('"') {
            let end = closing_quote(q).ok_or(AddrError::UnterminatedQuote)?;
            let disp = q.get(..end).unwrap_or_default();
            let after = q.get(end + 1..).unwrap_or_default().trim_start();
            if !after.starts_with('<') {
                return Err(AddrError::BadDisplayName);
            }
            (Some(disp), after)
        } else if let Some(lt) = v.find('<') {
            let disp = v.get(..lt).unwrap_or_default().trim();
            if v.get(..lt).unwrap_or_default().contains('"') {
                return Err(AddrError::UnterminatedQuote);
            }
            if !disp.is_empty()
                && !disp
                    .split([' ', '\t'])
                    .filter(|w| !w.is_empty())
                    .all(is_token)
            {
                return Err(AddrError::BadDisplayName);
            }
            (
                (!disp.is_empty()).then_some(disp),
                v.get(lt..).unwrap_or_default(),
            )
        } else {
            if v.contains('"') {
                return Err(AddrError::UnterminatedQuote);
            }
            // addr-spec form: parameters after the first `;` belong to the
            // header, so the URI cannot carry `;`, `?` or `,` itself.
            let (uri_s, params) = v.split_once(';').unwrap_or((v, ""));
            let uri_s = uri_s.trim_end();
            if uri_s.contains(['?', ',']) || uri_s.contains([' ', '\t']) {
                return Err(AddrError::NeedsAngles);
            }
            let uri = Uri::parse(uri_s)?;
            check_params(params)?;
            return Ok(NameAddr {
                display: None,
                uri,
                params: Params(params),
            });
        };
        let inner = after_display
            .strip_prefix('<')
            .ok_or(AddrError::UnclosedAngle)?;
        let gt = inner.find('>').ok_or(AddrError::UnclosedAngle)?;
        let uri_s = inner.get(..gt).unwrap_or_default();
        if uri_s.starts_with([' ', '\t']) || uri_s.ends_with([' ', '\t']) {
            return Err(AddrError::SpaceInAngle);
        }
        let uri = Uri::parse(uri_s)?;
        let rest = inner.get(gt + 1..).unwrap_or_default().trim();
        let params = if rest.is_empty() {
            ""
        } else {
            rest.strip_prefix(';').ok_or(AddrError::BadParam)?
        };
        check_params(params)?;
        Ok(NameAddr {
            display,
            uri,
            params: Params(params),
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }
}

fn closing_quote(s: &str) -> Option<usize> {
    let mut esc = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if esc => esc = false,
            b'\\' => esc = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Checks `*(;param)` text after the leading `;`: no empty parameter, names
/// are tokens, values are tokens, hosts or quoted strings.
pub fn check_params(params: &str) -> Result<(), AddrError> {
    if params.trim().is_empty() {
        return Ok(());
    }
    for p in split_outside_quotes(params, b';') {
        let p = p.trim();
        if p.is_empty() {
            return Err(AddrError::BadParam);
        }
        let (n, v) = p
            .split_once('=')
            .map_or((p, None), |(n, v)| (n.trim(), Some(v.trim())));
        if !is_token(n) {
            return Err(AddrError::BadParam);
        }
        if let Some(v) = v {
            let ok = if let Some(q) = v.strip_prefix('"') {
                closing_quote(q).is_some_and(|e| e + 1 == q.len())
            } else {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| !b.is_ascii_whitespace() && !b"\",;<>".contains(&b))
            };
            if !ok {
                return Err(AddrError::BadParam);
            }
        }
    }
    Ok(())
}

/// Splits on `sep` where it is outside quoted strings and `<...>`,
/// without allocating.
pub fn split_outside_quotes(s: &str, sep: u8) -> SplitOutside<'_> {
    SplitOutside {
        s,
        pos: 0,
        sep,
        done: false,
    }
}

/// Iterator of [`split_outside_quotes`].
#[derive(Debug, Clone)]
pub struct SplitOutside<'a> {
    s: &'a str,
    pos: usize,
    sep: u8,
    done: bool,
}

impl<'a> Iterator for SplitOutside<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        let rest = self.s.get(self.pos..)?;
        let (mut in_q, mut esc, mut angle) = (false, false, 0u32);
        for (i, b) in rest.bytes().enumerate() {
            match b {
                _ if esc => esc = false,
                b'\\' if in_q => esc = true,
                b'"' => in_q = !in_q,
                b'<' if !in_q => angle += 1,
                b'>' if !in_q => angle = angle.saturating_sub(1),
                _ if b == self.sep && !in_q && angle == 0 => {
                    self.pos += i + 1;
                    return rest.get(..i);
                }
                _ => {}
            }
        }
        self.done = true;
        Some(rest)
    }
}

/// Splits a multi-valued header (`a, b, c`) into values.
pub fn split_values(s: &str) -> impl Iterator<Item = &str> {
    split_outside_quotes(s, b',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, … (the third part of sent-protocol).
    pub transport: &'a str,
    /// `host[:port]`.
    pub sent_by: &'a str,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one Via value; LWS around `/` is allowed (RFC 4475 `wsinv`).
    pub fn parse(v: &'a str) -> Result<Self, AddrError> {
        let mut parts = v.splitn(3, '/');
        let (Some(name), Some(ver), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AddrError::BadVia);
        };
        if !name.trim().eq_ignore_ascii_case("SIP") || ver.trim() != "2.0" {
            return Err(AddrError::BadVia);
        }
        let rest = rest.trim_start();
        let t_end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .ok_or(AddrError::BadVia)?;
        let transport = rest.get(..t_end).unwrap_or_default();
        if !is_token(transport) {
            return Err(AddrError::BadVia);
        }
        let after = rest.get(t_end..).unwrap_or_default().trim_start();
        let (sent_by, params) = after.split_once(';').unwrap_or((after, ""));
        let sent_by = sent_by.trim();
        if sent_by.is_empty()
            || sent_by
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b"\"<>,;".contains(&b))
        {
            return Err(AddrError::BadVia);
        }
        check_params(params)?;
        Ok(Via {
            transport,
            sent_by,
            params: Params(params),
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let a =
            NameAddr::parse("\"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com> ; tag = 98asjd8")
                .unwrap();
        assert_eq!(a.uri.scheme, "sip");
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = NameAddr::parse("sip:caller@example.net;tag=134161461246").unwrap();
        assert_eq!(b.tag(), Some("134161461246"));
        assert_eq!(b.uri.rest, "caller@example.net");
        let c = NameAddr::parse("Bob <tel:+1-212-555-1213;phone-context=x>").unwrap();
        assert_eq!(c.display, Some("Bob"));
        assert_eq!(c.uri.number_part(), Some("+1-212-555-1213"));
    }

    #[test]
    fn name_addr_rejects_rfc4475_faults() {
        assert_eq!(
            NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>"),
            Err(AddrError::UnterminatedQuote)
        );
        assert_eq!(
            NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >"),
            Err(AddrError::SpaceInAngle)
        );
        assert_eq!(
            NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            Err(AddrError::BadDisplayName)
        );
        assert_eq!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            Err(AddrError::NeedsAngles)
        );
        assert_eq!(
            NameAddr::parse("\"Joe\" <sip:joe@example.org>;;;;"),
            Err(AddrError::BadParam)
        );
    }

    #[test]
    fn via_with_lws() {
        let v = Via::parse(
            "SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw"
                .replace("\r\n", "")
                .as_str(),
        )
        .map(|v| {
            (
                v.transport.to_owned(),
                v.sent_by.to_owned(),
                v.branch().map(str::to_owned),
            )
        })
        .unwrap();
        assert_eq!(
            v,
            ("UDP".into(), "192.0.2.2".into(), Some("390skdjuw".into()))
        );
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
    }

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse("sip:+12155551212;verstat=TN-Validation-Passed@example.com;user=phone")
            .unwrap();
        assert_eq!(u.number_part(), Some("+12155551212"));
        assert_eq!(u.sip_params().get("user"), Some(Some("phone")));
        assert_eq!(u.sip_hostport(), "example.com");
    }
}
