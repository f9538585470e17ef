//! Spoofing and robustness of client-IP resolution with random headers.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tollgate::{ClientIp, ProxyHeader};

const HEADERS: [ProxyHeader; 3] = [
    ProxyHeader::XForwardedFor,
    ProxyHeader::Forwarded,
    ProxyHeader::XRealIp,
];

fn trusted(header: ProxyHeader) -> ClientIp {
    ClientIp::peer()
        .trust_proxies(["10.0.0.0/8", "fd00::/8"])
        .proxy_header(header)
}

/// Header values a client might send: any bytes a `HeaderValue` accepts.
fn value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        // Control characters cannot be in a header value; everything else can
        // (including non-UTF-8 bytes).
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|mut bytes| {
            for b in &mut bytes {
                if *b < 0x20 || *b == 0x7f {
                    *b = b',';
                }
            }
            HeaderValue::from_bytes(&bytes).unwrap()
        }),
        "[0-9a-fA-F:.,;=\\[\\]\" _forFOR]{0,120}"
            .prop_filter_map("not a header value", |s| HeaderValue::from_str(&s).ok()),
    ]
}

fn forged_headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((0..3usize, value()), 0..12).prop_map(|values| {
        let mut map = HeaderMap::new();
        for (which, value) in values {
            let name = ["x-forwarded-for", "forwarded", "x-real-ip"][which];
            map.append(HeaderName::from_static(name), value);
        }
        map
    })
}

fn public_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..=9, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| IpAddr::from([a, b, c, d])),
        any::<[u16; 7]>()
            .prop_map(|[b, c, d, e, f, g, h]| IpAddr::from([0x2001, b, c, d, e, f, g, h])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn untrusted_peer_is_itself_whatever_it_forges(peer in public_ip(), headers in forged_headers()) {
        for header in HEADERS {
            prop_assert_eq!(trusted(header).resolve(Some(peer), &headers), Some(peer));
        }
    }

    #[test]
    fn trusted_proxy_never_panics_and_yields_a_hop(headers in forged_headers()) {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        for header in HEADERS {
            let client_ip = trusted(header);
            let client = client_ip.resolve(Some(proxy), &headers);
            prop_assert!(client.is_some());
            let _ = client_ip.key(client.unwrap());
        }
    }

    #[test]
    fn the_hop_the_proxy_appends_wins_over_anything_forged(
        client in public_ip(),
        forged in value(),
    ) {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let node = match client {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]:443\""),
        };
        // The proxy appends a line (or a list item) with the peer it saw.
        for (header, appended) in [
            (ProxyHeader::XForwardedFor, client.to_string()),
            (ProxyHeader::Forwarded, format!("for={node};proto=https")),
            (ProxyHeader::XRealIp, client.to_string()),
        ] {
            let mut headers = HeaderMap::new();
            let name = HeaderName::from_static(match header {
                ProxyHeader::XForwardedFor => "x-forwarded-for",
                ProxyHeader::Forwarded => "forwarded",
                _ => "x-real-ip",
            });
            headers.append(name.clone(), forged.clone());
            headers.append(name, HeaderValue::from_str(&appended).unwrap());
            prop_assert_eq!(trusted(header).resolve(Some(proxy), &headers), Some(client));
        }
    }
}

#[test]
fn behind_a_trusted_proxy_each_client_gets_its_own_key() {
    let client_ip = trusted(ProxyHeader::XForwardedFor);
    let proxy: IpAddr = "10.0.0.2".parse().unwrap();
    let keys: Vec<String> = [
        "203.0.113.7",
        "203.0.113.8",
        "2001:db8:1:2::1",
        "2001:db8:1:3::1",
    ]
    .iter()
    .map(|client| {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            format!("6.6.6.6, {client}").parse().unwrap(),
        );
        client_ip.key(client_ip.resolve(Some(proxy), &headers).unwrap())
    })
    .collect();
    assert_eq!(
        keys,
        [
            "203.0.113.7",
            "203.0.113.8",
            "2001:db8:1:2::/64",
            "2001:db8:1:3::/64"
        ]
    );
    // The same clients connecting directly with forged headers: each is itself.
    let direct: IpAddr = "198.51.100.1".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    headers.insert("forwarded", "for=203.0.113.7".parse().unwrap());
    headers.insert("x-real-ip", "203.0.113.7".parse().unwrap());
    for header in HEADERS {
        let client_ip = trusted(header);
        assert_eq!(
            client_ip.key(client_ip.resolve(Some(direct), &headers).unwrap()),
            "198.51.100.1"
        );
    }
}
