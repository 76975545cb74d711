//! The SSRF guard's pure parts: classifying IP addresses (incl. IPv4 embedded in IPv6),
//! checking URLs against a [`FetchPolicy`], and deciding whether a resolved address may be
//! dialled. No I/O here, so it is property-tested and fuzzed directly.
//!
//! Classes (IANA special-purpose registries, reliability.md §3):
//! - **Private** — refused unless `allow_private` (or an `allow_cidrs` match): IPv4 `10/8`,
//!   `172.16/12`, `192.168/16`, `100.64/10` (CGNAT), `127/8`, `169.254/16`; IPv6 `::1`,
//!   `fc00::/7`, `fe80::/10`, `fec0::/10`.
//! - **Forbidden** — refused unless an explicit `allow_cidrs` match: IPv4 `0/8`, `192.0.0/24`,
//!   `192.0.2/24`, `192.88.99/24`, `198.18/15`, `198.51.100/24`, `203.0.113/24`, `224/4`,
//!   `240/4` (incl. broadcast); the cloud metadata endpoints `169.254.169.254`,
//!   `169.254.170.2`, `fd00:ec2::254`; IPv6 `::`, `ff00::/8`, `100::/64`, `64:ff9b:1::/48`,
//!   `2001::/23` (but see Teredo), `2001:db8::/32`, `3fff::/20`, `5f00::/16`, and everything
//!   outside `2000::/3` (global unicast) that is not an embedding below.
//! - **Embedded IPv4** — classified by the IPv4 inside: `::ffff:a.b.c.d` (mapped),
//!   `::a.b.c.d` (compatible), `::ffff:0:a.b.c.d` (SIIT), `64:ff9b::/96` (NAT64),
//!   `2002:AABB:CCDD::/16` (6to4), Teredo `2001:0:SSSS:SSSS::/32` (server and the
//!   bit-inverted client address in the last 32 bits: both must pass).
//!
//! URL literals are normalised by the WHATWG parser of the `url` crate — the same one reqwest
//! uses — so `127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`, `0x7f.1` and `[::ffff:7f00:1]`
//! are all seen as the addresses they dial.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use url::{Host, Url};

use super::error::ImageIoError;

/// What the fetcher may do. `Default` is the safe public-internet setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Allow `http://` (default false: `https://` only).
    pub allow_http: bool,
    /// Allow private / loopback / link-local / CGNAT / ULA targets, and any port on them
    /// (LAN setups). Metadata endpoints and the *forbidden* class stay refused.
    pub allow_private: bool,
    /// Addresses always allowed (any class, any port): an explicit operator allow-list.
    pub allow_cidrs: Vec<IpNet>,
    /// Allow ports other than 80/443 on public addresses (default false).
    pub allow_any_port: bool,
    /// TCP (+TLS) connect timeout per hop. Default 5 s.
    pub connect_timeout: Duration,
    /// Whole fetch, all hops and the body. Default 30 s.
    pub total_timeout: Duration,
    /// Body cap, enforced while streaming (Content-Length is not trusted). Default 50 MiB.
    pub max_bytes: usize,
    /// Redirects followed by hand, each re-checked. Default 3.
    pub max_redirects: u32,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private: false,
            allow_cidrs: Vec::new(),
            allow_any_port: false,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_bytes: 50 * 1024 * 1024,
            max_redirects: 3,
        }
    }
}

/// The class of an address for the SSRF guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpClass {
    /// Globally routable: always allowed (ports permitting).
    Public,
    /// LAN-ish (RFC 1918, loopback, link-local, CGNAT, ULA): allowed with `allow_private`.
    Private(String),
    /// Never dialled unless listed in `allow_cidrs`.
    Forbidden(String),
}

impl IpClass {
    pub fn is_public(&self) -> bool {
        matches!(self, Self::Public)
    }
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

/// Classify an IPv4 address.
pub fn classify_ipv4(ip: Ipv4Addr) -> IpClass {
    use IpClass::*;
    let o = ip.octets();
    let f = |s: &str| Forbidden(format!("{ip} is {s}"));
    let p = |s: &str| Private(format!("{ip} is {s}"));
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(169, 254, 170, 2) {
        return f("a cloud metadata endpoint");
    }
    match o {
        [0, ..] => f("in 0.0.0.0/8 (this network)"),
        [10, ..] => p("private (10.0.0.0/8)"),
        [100, b, ..] if (64..128).contains(&b) => p("shared address space (100.64.0.0/10)"),
        [127, ..] => p("loopback (127.0.0.0/8)"),
        [169, 254, ..] => p("link-local (169.254.0.0/16)"),
        [172, b, ..] if (16..32).contains(&b) => p("private (172.16.0.0/12)"),
        [192, 0, 0, _] => f("IETF protocol assignments (192.0.0.0/24)"),
        [192, 0, 2, _] => f("documentation (192.0.2.0/24)"),
        [192, 88, 99, _] => f("6to4 relay anycast (192.88.99.0/24)"),
        [192, 168, ..] => p("private (192.168.0.0/16)"),
        [198, b, ..] if b == 18 || b == 19 => f("benchmarking (198.18.0.0/15)"),
        [198, 51, 100, _] => f("documentation (198.51.100.0/24)"),
        [203, 0, 113, _] => f("documentation (203.0.113.0/24)"),
        [a, ..] if (224..240).contains(&a) => f("multicast (224.0.0.0/4)"),
        [a, ..] if a >= 240 => f("reserved (240.0.0.0/4, incl. broadcast)"),
        _ => Public,
    }
}

/// The IPv4 address embedded in an IPv6 one, with the embedding's name.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some((low32, "IPv4-mapped"));
    }
    if s[..6] == [0; 6] && bits > 1 {
        return Some((low32, "IPv4-compatible"));
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some((low32, "IPv4-translated (SIIT)"));
    }
    if v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some((low32, "NAT64"));
    }
    if s[0] == 0x2002 {
        return Some((Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32), "6to4"));
    }
    None
}

fn teredo(ip: Ipv6Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let s = ip.segments();
    if s[0] == 0x2001 && s[1] == 0 {
        let bits = u128::from(ip);
        let server = Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!(bits as u32));
        Some((server, client))
    } else {
        None
    }
}

/// Classify an IPv6 address (embedded IPv4 decoded and classified as IPv4).
pub fn classify_ipv6(ip: Ipv6Addr) -> IpClass {
    use IpClass::*;
    let f = |s: &str| Forbidden(format!("{ip} is {s}"));
    let p = |s: &str| Private(format!("{ip} is {s}"));
    if ip.is_unspecified() {
        return f("unspecified (::)");
    }
    if ip.is_loopback() {
        return p("loopback (::1)");
    }
    if let Some((v4, how)) = embedded_ipv4(ip) {
        return match classify_ipv4(v4) {
            Public => Public,
            Private(why) => Private(format!("{ip} is {how}: {why}")),
            Forbidden(why) => Forbidden(format!("{ip} is {how}: {why}")),
        };
    }
    if let Some((server, client)) = teredo(ip) {
        for (v4, role) in [(server, "server"), (client, "client")] {
            match classify_ipv4(v4) {
                Public => {}
                Private(why) => return Private(format!("{ip} is Teredo ({role} {why})")),
                Forbidden(why) => return Forbidden(format!("{ip} is Teredo ({role} {why})")),
            }
        }
        return Public;
    }
    let net = |a: &str| a.parse::<Ipv6Addr>().expect("constant");
    if ip == net("fd00:ec2::254") {
        return f("a cloud metadata endpoint");
    }
    if v6_in(ip, net("fc00::"), 7) {
        return p("unique local (fc00::/7)");
    }
    if v6_in(ip, net("fe80::"), 10) {
        return p("link-local (fe80::/10)");
    }
    if v6_in(ip, net("fec0::"), 10) {
        return p("site-local (fec0::/10)");
    }
    if v6_in(ip, net("ff00::"), 8) {
        return f("multicast (ff00::/8)");
    }
    if v6_in(ip, net("100::"), 64) {
        return f("discard-only (100::/64)");
    }
    if v6_in(ip, net("64:ff9b:1::"), 48) {
        return f("local-use NAT64 (64:ff9b:1::/48)");
    }
    if v6_in(ip, net("2001:db8::"), 32) {
        return f("documentation (2001:db8::/32)");
    }
    if v6_in(ip, net("2001::"), 23) {
        return f("IETF protocol assignments (2001::/23)");
    }
    if v6_in(ip, net("3fff::"), 20) {
        return f("documentation (3fff::/20)");
    }
    if v6_in(ip, net("5f00::"), 16) {
        return f("SRv6 SIDs (5f00::/16)");
    }
    if !v6_in(ip, net("2000::"), 3) {
        return f("not global unicast (outside 2000::/3)");
    }
    Public
}

/// Classify any address.
pub fn classify_ip(ip: IpAddr) -> IpClass {
    match ip {
        IpAddr::V4(v4) => classify_ipv4(v4),
        IpAddr::V6(v6) => classify_ipv6(v6),
    }
}

/// May `addr` be dialled under `policy`? `Err` says why not.
pub fn check_addr(addr: SocketAddr, policy: &FetchPolicy) -> Result<(), String> {
    let ip = addr.ip();
    let canon = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if policy
        .allow_cidrs
        .iter()
        .any(|n| n.contains(&ip) || n.contains(&canon))
    {
        return Ok(());
    }
    let lan = match classify_ip(ip) {
        IpClass::Public => false,
        IpClass::Private(why) => {
            if !policy.allow_private {
                return Err(format!("{why}; private networks are not allowed"));
            }
            true
        }
        IpClass::Forbidden(why) => return Err(format!("{why}; never fetched")),
    };
    let port = addr.port();
    if !lan && !policy.allow_any_port && port != 80 && port != 443 {
        return Err(format!("port {port} is not allowed (80 and 443 only)"));
    }
    Ok(())
}

/// A URL as the client wrote it (so they recognise it), stripped of credentials and shortened,
/// for messages and logs.
pub fn display_url(url: &str) -> String {
    let url = url.trim();
    let shown = match Url::parse(url) {
        Ok(mut u)
            if u.scheme() != "data" && (!u.username().is_empty() || u.password().is_some()) =>
        {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    };
    if shown.chars().count() > 200 {
        let mut s: String = shown.chars().take(200).collect();
        s.push('…');
        s
    } else {
        shown
    }
}

/// A URL that passed the syntactic checks: scheme allowed, has a host; an IP-literal host is
/// already checked against the policy (hostnames are checked after resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    pub url: Url,
    /// Host as the connector sees it (IPv6 without brackets), lower-cased.
    pub host: String,
    pub port: u16,
    /// The literal address, when the host is an IP literal.
    pub literal: Option<IpAddr>,
}

/// Parse and check a URL without any I/O (usable at request validation, e.g. `callback_url`).
pub fn check_url(url: &str, policy: &FetchPolicy) -> Result<CheckedUrl, ImageIoError> {
    let forbid = |reason: String| ImageIoError::FetchForbidden {
        input: display_url(url),
        reason,
    };
    let parsed = Url::parse(url.trim()).map_err(|e| forbid(format!("not a valid URL ({e})")))?;
    check_parsed(parsed, policy).map_err(forbid)
}

pub(crate) fn check_parsed(url: Url, policy: &FetchPolicy) -> Result<CheckedUrl, String> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err("http is not allowed (https only)".into()),
        other => return Err(format!("scheme {other:?} is not allowed")),
    }
    let port = url.port_or_known_default().ok_or("no port")?;
    let (host, literal) = match url.host() {
        None => return Err("no host".into()),
        Some(Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
        Some(Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() {
                return Err("empty host".into());
            }
            (d, None)
        }
    };
    if let Some(ip) = literal {
        check_addr(SocketAddr::new(ip, port), policy)?;
    }
    Ok(CheckedUrl {
        url,
        host,
        port,
        literal,
    })
}
