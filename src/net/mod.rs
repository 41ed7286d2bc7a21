//! Address classification for the x5u SSRF guard (pure).

#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
pub mod tls;

use std::net::{IpAddr, Ipv4Addr};

/// A URL's host after the WHATWG host parser (the one reqwest uses):
/// every spelling of an IPv4 address (`127.1`, `0x7f000001`,
/// `2130706433`, `0177.0.0.1`) is an [`Host::Ip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A domain name, lowercase, without a trailing dot.
    Name(String),
}

impl Host {
    /// The host of a parsed URL.
    pub fn of(u: &url::Url) -> Option<Host> {
        Some(match u.host()? {
            url::Host::Ipv4(a) => Host::Ip(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Host::Ip(IpAddr::V6(a)),
            url::Host::Domain(d) => Host::Name(d.trim_end_matches('.').to_ascii_lowercase()),
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// The IPv4 address an IPv6 one embeds: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, deprecated), 6to4 (`2002:AABB:CCDD::/48`),
/// NAT64 (`64:ff9b::a.b.c.d`, RFC 6052) and Teredo (`2001:0::/32`, the
/// client address inverted in the last 32 bits).
pub fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = |a: u16, b: u16| Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        [0, 0, 0, 0, 0, 0, a, b] if (a, b) != (0, 0) && (a, b) != (0, 1) => Some(last(a, b)),
        [0x2002, a, b, ..] => Some(last(a, b)),
        [0x0064, 0xff9b, 0, 0, 0, 0, a, b] => Some(last(a, b)),
        [0x2001, 0, _, _, _, _, a, b] => Some(last(!a, !b)),
        _ => None,
    }
}

/// Loopback, private, link-local, shared, documentation, multicast and
/// other special-purpose addresses (IANA special-purpose registries).
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = embedded_ipv4(v6) {
                return is_special(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 local-use (64:ff9b:1::/48)
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard
        }
    }
}

/// An address block (`a.b.c.d/len`, `x::/len`, or a single address),
/// parsed once from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    net: IpAddr,
    len: u32,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address or address/prefix-length");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.trim().parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Cidr { net, len })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Cidr {
    /// Does the block contain `ip`?
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - self.len).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - self.len).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!c("0.0.0.0/0").contains(ip("::1")), "families never mix");
        assert!(c("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7/32").contains(ip("192.0.2.8")));
        assert!(c("192.0.2.0/25").contains(ip("192.0.2.127")));
        assert!(!c("192.0.2.0/25").contains(ip("192.0.2.128")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(c("::/0").contains(ip("::1")));
        assert!("192.0.2.0/33".parse::<Cidr>().is_err());
    }

    /// Regression (SSRF): every spelling the WHATWG parser (reqwest's)
    /// turns into a special address is classified as that address.
    #[test]
    fn every_spelling_of_a_special_address_is_special() {
        for spelled in [
            "https://127.1/x.pem",
            "https://0x7f000001/x.pem",
            "https://2130706433/x.pem",
            "https://0177.0.0.1/x.pem",
            "https://127.000.000.001/x.pem",
            "https://0/x.pem",
            "https://10.1/x.pem",
            "https://0xa9fea9fe/x.pem",
            "https://169.254.43518/x.pem",
            "https://[::127.0.0.1]/x.pem",
            "https://[::ffff:7f00:1]/x.pem",
            "https://[2002:7f00:1::1]/x.pem",
            "https://[2002:a00:1::]/x.pem",
            "https://[64:ff9b::a9fe:a9fe]/x.pem",
            "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x.pem",
            "https://[::1]/x.pem",
            "https://LOCALHOST./x.pem",
        ] {
            let u = url::Url::parse(spelled).unwrap();
            match Host::of(&u).unwrap() {
                Host::Ip(ip) => assert!(is_special(ip), "{spelled} → {ip}"),
                Host::Name(n) => assert_eq!(n, "localhost", "{spelled}"),
            }
        }
        // Public addresses, also when embedded, stay public.
        for public in [
            "https://8.8.8.8/x.pem",
            "https://[2002:808:808::1]/x.pem",
            "https://[64:ff9b::808:808]/x.pem",
            "https://cert.example.org/x.pem",
        ] {
            let u = url::Url::parse(public).unwrap();
            if let Host::Ip(ip) = Host::of(&u).unwrap() {
                assert!(!is_special(ip), "{public}");
            }
        }
        // Teredo: the client address is the last 32 bits inverted.
        assert_eq!(
            embedded_ipv4("2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap()),
            Some(Ipv4Addr::new(192, 0, 2, 45))
        );
    }

    #[test]
    fn special_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_special(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "2606:4700::1111", "151.101.1.1"] {
            assert!(!is_special(a.parse().unwrap()), "{a}");
        }
    }
}

/// Kernel counters of our UDP sockets, as `/proc/net/udp` and
/// `/proc/net/udp6` list them (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpKernelStats {
    /// Datagrams the kernel dropped for these sockets (receive buffer full).
    pub drops: u64,
    /// Bytes waiting in their receive queues now.
    pub rx_queue: u64,
}

/// Sums the counters of the sockets whose inode is in `inodes` from the
/// text of `/proc/net/udp` or `/proc/net/udp6` (columns: sl, local, remote,
/// st, tx_queue:rx_queue (hex), tr, tm->when, retrnsmt, uid, timeout,
/// inode, ref, pointer, drops).
pub fn udp_kernel_stats(proc_text: &str, inodes: &[u64]) -> UdpKernelStats {
    let mut out = UdpKernelStats::default();
    for line in proc_text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(queues), Some(inode), Some(drops)) = (cols.get(4), cols.get(9), cols.get(12))
        else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        out.drops += drops.parse::<u64>().unwrap_or(0);
        if let Some((_, rx)) = queues.split_once(':') {
            out.rx_queue += u64::from_str_radix(rx, 16).unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn reads_drops_and_queue_of_our_sockets_only() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  512: 0100007F:13C4 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  513: 0100007F:13C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 0000000000000000 5\n";
        assert_eq!(
            udp_kernel_stats(text, &[4242]),
            UdpKernelStats {
                drops: 17,
                rx_queue: 0xA00
            }
        );
        assert_eq!(udp_kernel_stats(text, &[1]), UdpKernelStats::default());
    }
}
