//! Lab helpers shared by `stirscreen sign --invite`, the demo and tests:
//! building a signed SIP INVITE.

use crate::passport::{Attest, SignError, SignRequest, SigningKey, identity_header_value};
use crate::time::{UnixTime, format_sip_date};

/// What goes into a lab INVITE.
#[derive(Debug, Clone)]
pub struct InviteSpec {
    pub orig: String,
    pub dest: String,
    /// Host part of the From/To/Request-URI.
    pub domain: String,
    pub call_id: String,
    pub branch: String,
    /// `ip:port` in Via and Contact.
    pub via: String,
    pub transport: String,
    pub date: Option<UnixTime>,
    /// Complete Identity header values (zero or more).
    pub identities: Vec<String>,
}

impl InviteSpec {
    /// A spec with lab defaults.
    pub fn new(orig: &str, dest: &str) -> Self {
        InviteSpec {
            orig: orig.to_owned(),
            dest: dest.to_owned(),
            domain: "example.net".into(),
            call_id: format!("{}@stirscreen.lab", random_hex(8)),
            branch: format!("z9hG4bK{}", random_hex(8)),
            via: "192.0.2.10:5060".into(),
            transport: "UDP".into(),
            date: None,
            identities: Vec::new(),
        }
    }

    /// The INVITE text (CRLF line ends, SDP body).
    pub fn build(&self) -> String {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let mut m = format!(
            "INVITE sip:+{dest}@{dom};user=phone SIP/2.0\r\n\
             Via: SIP/2.0/{tr} {via};branch={br}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+{orig}@{dom};user=phone>;tag={tag}\r\n\
             To: <sip:+{dest}@{dom};user=phone>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:+{orig}@{via}>\r\n",
            dest = self.dest,
            orig = self.orig,
            dom = self.domain,
            tr = self.transport,
            via = self.via,
            br = self.branch,
            tag = random_hex(4),
            cid = self.call_id,
        );
        if let Some(d) = self.date {
            m.push_str(&format!("Date: {}\r\n", format_sip_date(d)));
        }
        for i in &self.identities {
            m.push_str(&format!("Identity: {i}\r\n"));
        }
        m.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ));
        m
    }
}

/// Signs a canonical SHAKEN PASSporT and returns the Identity header value.
pub fn sign_identity(
    key: &SigningKey,
    x5u: &str,
    attest: Attest,
    orig: &str,
    dest: &[String],
    iat: UnixTime,
    origid: Option<&str>,
) -> Result<String, SignError> {
    let req = SignRequest {
        attest,
        orig: orig.to_owned(),
        dest: dest.to_vec(),
        iat: iat.0,
        origid: origid.map_or_else(uuid_v4, str::to_owned),
        x5u: x5u.to_owned(),
    };
    let token = key.sign(&req)?;
    Ok(identity_header_value(&token, x5u))
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex(&b)
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for x in bytes {
        s.push(char::from(
            HEX.get(usize::from(x >> 4)).copied().unwrap_or(b'0'),
        ));
        s.push(char::from(
            HEX.get(usize::from(x & 15)).copied().unwrap_or(b'0'),
        ));
    }
    s
}

/// A random RFC 4122 version 4 UUID (the recommended `origid` form).
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}
