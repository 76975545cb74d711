//! The SSRF address classifier and URL checks, without any network (§8 items 23, 27, 33's
//! shared guard): fixed vectors plus proptest over every IPv4-in-IPv6 embedding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use editd::image_io::{check_addr, check_url, classify_ip, classify_ipv4, FetchPolicy, IpClass};
use proptest::prelude::*;

fn public(s: &str) -> bool {
    classify_ip(s.parse().unwrap()).is_public()
}

#[test]
fn fixed_vectors() {
    for s in [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "169.254.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.1",
        "203.0.113.7",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fc00::1",
        "fd00:ec2::254",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "100::1",
        "64:ff9b:1::1",
        "2001:2::1",
        "2001:10::1",
        "3fff::1",
        "5f00::1",
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "::127.0.0.1",
        "::ffff:0:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "2002:c0a8:101::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "2001:0:7f00:1:0:0:f7f7:f7f7",
        "1::1",
        "4000::1",
    ] {
        assert!(!public(s), "{s} must not be public");
        let addr = SocketAddr::new(s.parse().unwrap(), 443);
        let e = check_addr(addr, &FetchPolicy::default()).unwrap_err();
        assert!(
            e.contains(&*addr.ip().to_string()) || e.contains("Teredo"),
            "{s}: {e}"
        );
    }
    for s in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:0:808:808:0:0:f7f7:f7f7",
    ] {
        assert!(
            public(s),
            "{s} must be public: {:?}",
            classify_ip(s.parse().unwrap())
        );
        assert!(check_addr(
            SocketAddr::new(s.parse().unwrap(), 443),
            &FetchPolicy::default()
        )
        .is_ok());
    }
}

#[test]
fn policy_private_cidrs_ports() {
    let lan = FetchPolicy {
        allow_private: true,
        ..FetchPolicy::default()
    };
    let a = |s: &str, port| SocketAddr::new(s.parse().unwrap(), port);
    // private: refused by default, allowed (any port) with allow_private
    assert!(check_addr(a("192.168.1.20", 8080), &FetchPolicy::default()).is_err());
    assert!(check_addr(a("192.168.1.20", 8080), &lan).is_ok());
    assert!(check_addr(a("::ffff:10.1.2.3", 80), &lan).is_ok());
    // metadata and forbidden classes stay refused even with allow_private
    assert!(check_addr(a("169.254.169.254", 80), &lan).is_err());
    assert!(check_addr(a("fd00:ec2::254", 80), &lan).is_err());
    assert!(check_addr(a("0.0.0.0", 80), &lan).is_err());
    assert!(check_addr(a("224.0.0.1", 80), &lan).is_err());
    // an explicit CIDR allows exactly that range (also via the IPv4-mapped form)
    let cidr = FetchPolicy {
        allow_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        ..FetchPolicy::default()
    };
    assert!(check_addr(a("10.1.2.3", 9000), &cidr).is_ok());
    assert!(check_addr(a("::ffff:10.1.2.3", 9000), &cidr).is_ok());
    assert!(check_addr(a("10.2.0.1", 80), &cidr).is_err());
    // ports: public targets 80/443 only unless allow_any_port
    assert!(check_addr(a("8.8.8.8", 8443), &FetchPolicy::default())
        .unwrap_err()
        .contains("port 8443"));
    let any = FetchPolicy {
        allow_any_port: true,
        ..FetchPolicy::default()
    };
    assert!(check_addr(a("8.8.8.8", 8443), &any).is_ok());
}

/// §8 item 23 (syntax half): every literal spelling of a loopback/private/metadata address is
/// normalised and refused by `check_url` before any I/O.
#[test]
fn url_literals_are_normalised_and_refused() {
    let p = FetchPolicy {
        allow_http: true,
        ..FetchPolicy::default()
    };
    for url in [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://127.0.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7F.0.0.1/",
        "http://017700000001/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://169.254.169.254/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://0xa9fea9fe/",
        "http://10.0.0.1/",
        "http://10.1/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "http://0/",
        "http://0.0.0.0/",
        "http://[::]/",
        "https://user:pw@127.0.0.1/",
        "http://127.0.0.1.:80/",
        "HTTP://127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1%25eth0]/",
    ] {
        let e = check_url(url, &p).unwrap_err();
        assert_eq!(e.code(), "FETCH_FORBIDDEN", "{url}: {e}");
        assert!(!e.to_string().contains("pw@"), "credentials leaked: {e}");
    }
    // scheme rules
    for (url, why) in [
        ("http://example.com/a.png", "http is not allowed"),
        ("ftp://example.com/a.png", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("https://[example.com]/", "not a valid URL"),
        ("not a url", "not a valid URL"),
    ] {
        let e = check_url(url, &FetchPolicy::default()).unwrap_err();
        assert_eq!(e.code(), "FETCH_FORBIDDEN", "{url}");
        assert!(
            e.to_string().contains(why) || e.to_string().contains("host"),
            "{url}: {e}"
        );
    }
    // a public https URL passes the syntactic check (resolution comes later)
    let ok = check_url("https://example.com/a.png", &FetchPolicy::default()).unwrap();
    assert_eq!(
        (ok.host.as_str(), ok.port, ok.literal),
        ("example.com", 443, None)
    );
    let ok = check_url("https://8.8.8.8/a.png", &FetchPolicy::default()).unwrap();
    assert_eq!(ok.literal, Some("8.8.8.8".parse().unwrap()));
    assert!(check_url("https://8.8.8.8:8443/a.png", &FetchPolicy::default()).is_err());
}

fn non_public_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(x & 0x00ff_ffff)), // 0/8
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0x6440_0000 | (x & 0x003f_ffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0x7f00_0000 | (x & 0x00ff_ffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xa9fe_0000 | (x & 0xffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xac10_0000 | (x & 0x000f_ffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xc0a8_0000 | (x & 0xffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xc000_0200 | (x & 0xff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xc612_0000 | (x & 0x0001_ffff))),
        (any::<u32>()).prop_map(|x| Ipv4Addr::from(0xe000_0000 | (x & 0x1fff_ffff))), // 224/3
    ]
}

fn public_v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>()
        .prop_map(Ipv4Addr::from)
        .prop_filter("public", |ip| classify_ipv4(*ip).is_public())
}

/// Every IPv6 form that embeds `v4`.
fn embeddings(v4: Ipv4Addr) -> Vec<Ipv6Addr> {
    let x = u128::from(u32::from(v4));
    let mut out = vec![
        v4.to_ipv6_mapped(),
        Ipv6Addr::from((0xffffu128 << 48) | x), // ::ffff:0:a.b.c.d (SIIT)
        Ipv6Addr::from((0x0064_ff9bu128 << 96) | x), // NAT64
        Ipv6Addr::from((0x2002u128 << 112) | (x << 80) | 0x1234), // 6to4
        Ipv6Addr::from(
            (0x2001_0000u128 << 96)
                | (x << 64)
                | 0xdead_beef_0000_0000
                | u128::from(!0x0808_0808u32),
        ), // Teredo server
        Ipv6Addr::from(
            (0x2001_0000u128 << 96) | (0x0808_0808u128 << 64) | u128::from(!u32::from(v4)),
        ), // Teredo client
    ];
    if x > 1 {
        out.push(Ipv6Addr::from(x)); // ::a.b.c.d (compatible)
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn non_public_v4_refused_in_every_embedding(v4 in non_public_v4(), port in any::<u16>()) {
        prop_assert!(!classify_ipv4(v4).is_public());
        prop_assert!(check_addr(SocketAddr::new(IpAddr::V4(v4), port), &FetchPolicy::default()).is_err());
        for v6 in embeddings(v4) {
            prop_assert!(!classify_ip(IpAddr::V6(v6)).is_public(), "{} embeds {}", v6, v4);
            prop_assert!(check_addr(SocketAddr::new(IpAddr::V6(v6), 443), &FetchPolicy::default()).is_err());
            let url = format!("https://[{v6}]/x.png");
            prop_assert_eq!(check_url(&url, &FetchPolicy::default()).unwrap_err().code(), "FETCH_FORBIDDEN");
        }
    }

    #[test]
    fn public_v4_allowed_in_every_embedding(v4 in public_v4()) {
        prop_assert!(check_addr(SocketAddr::new(IpAddr::V4(v4), 443), &FetchPolicy::default()).is_ok());
        for v6 in embeddings(v4) {
            prop_assert_eq!(classify_ip(IpAddr::V6(v6)), IpClass::Public, "{} embeds {}", v6, v4);
        }
    }

    /// Decimal, hex, octal and short spellings normalise to the same address and verdict.
    #[test]
    fn literal_spellings_agree(x in any::<u32>()) {
        let v4 = Ipv4Addr::from(x);
        let o = v4.octets();
        let p = FetchPolicy { allow_http: true, ..FetchPolicy::default() };
        let spellings = [
            format!("http://{v4}/"),
            format!("http://{x}/"),
            format!("http://0x{x:x}/"),
            format!("http://0{x:o}/"),
            format!("http://0x{:x}.0{:o}.{}.0x{:x}/", o[0], o[1], o[2], o[3]),
            format!("http://{}.{}/", o[0], x & 0x00ff_ffff),
            format!("http://{}.{}.{}/", o[0], o[1], x & 0xffff),
        ];
        let expect_ok = check_addr(SocketAddr::new(IpAddr::V4(v4), 80), &p).is_ok();
        for s in spellings {
            let r = check_url(&s, &p);
            prop_assert_eq!(r.is_ok(), expect_ok, "{} -> {:?}", s, r);
            if let Ok(c) = r {
                prop_assert_eq!(c.literal, Some(IpAddr::V4(v4)));
            }
        }
    }

    /// The classifier never panics and IPv6 outside 2000::/3 is never public unless it embeds
    /// a public IPv4.
    #[test]
    fn any_v6_is_classified(x in any::<u128>()) {
        let v6 = Ipv6Addr::from(x);
        let c = classify_ip(IpAddr::V6(v6));
        if c.is_public() && (x >> 125) != 1 {
            let emb = editd::image_io::embedded_ipv4(v6);
            prop_assert!(emb.is_some(), "{} public outside 2000::/3", v6);
        }
    }
}
