//! Lab helpers shared by `stirscreen sign --invite`, the demo and tests:
//! building a signed SIP INVITE.
//!
//! With `runtime`: [`pki`] (the lab STI PKI generator, `certs gen`) and
//! [`certrepo`] (a lab HTTPS certificate repository).

#[cfg(feature = "runtime")]
pub mod certrepo;
#[cfg(feature = "runtime")]
pub mod http1;
#[cfg(feature = "runtime")]
pub mod pki;

use crate::ids::random_hex;
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
