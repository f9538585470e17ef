//! The forwarded-header reader: `ClientIp::resolve` with arbitrary `X-Forwarded-For`,
//! `Forwarded` and `X-Real-IP` lines, trusted proxies and peers.
//!
//! Invariants: no panic; no peer, no address; an untrusted peer is the client whatever
//! the headers say; only the configured header is read; a trusted peer's client is what
//! a separate, plain reading of the header gives (walk from the right past trusted hops,
//! stop at the first unreadable entry, at most `MAX_HOPS` entries of at most
//! `MAX_ENTRY_LEN` bytes; a `Forwarded` element of any length, its `for=` node without
//! quotes and obfuscated port at most `MAX_ENTRY_LEN`); the result is the peer or an
//! address written in the header; keys never panic.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate::{ClientIp, ProxyHeader};
const MAX_ENTRY_LEN: usize = ClientIp::MAX_ENTRY_LEN;
const MAX_HOPS: usize = ClientIp::MAX_HOPS;

use crate::input::Input;

/// Addresses the fuzzer picks from (and writes into headers), so that trusted proxies,
/// peers and hops meet.
const ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.1.2.3",
    "192.0.2.9",
    "203.0.113.7",
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "::",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:ffff::9",
    "fd00::5",
    "::ffff:10.0.0.2",
    "::ffff:203.0.113.7",
    "fe80::1",
];

const PROXIES: &[&str] = &[
    "10.0.0.0/8",
    "10.0.0.2",
    "10.0.0.2/32",
    "203.0.113.7",
    "192.0.2.0/24",
    "::1",
    "::1/128",
    "2001:db8::/32",
    "2001:db8:ffff::/48",
    "fd00::/8",
    "::ffff:10.0.0.0/104",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.1/8",
    "10.0.0.0/33",
    "garbage",
    " 10.0.0.2 ",
];

/// Pieces header values are made of.
const PIECES: &[&str] = &[
    ",",
    ", ",
    " ",
    ";",
    "=",
    "\"",
    "[",
    "]",
    ":",
    "for=",
    "For=",
    "proto=https",
    "by=",
    "unknown",
    "_hidden",
    ":443",
    ":99999",
    ":+80",
    "\\",
    "%25eth0",
    "\t",
];

fn address(input: &mut Input<'_>) -> IpAddr {
    match input.below(4) {
        0 => IpAddr::V4(Ipv4Addr::from(input.u32())),
        1 => IpAddr::V6(Ipv6Addr::from(
            u128::from(input.u64()) << 64 | u128::from(input.u64()),
        )),
        _ => input.pick(ADDRESSES).parse().expect("a listed address"),
    }
}

/// A header value: listed addresses and pieces, or raw bytes.
fn value(input: &mut Input<'_>) -> Vec<u8> {
    if input.byte() < 24 {
        return input.bytes(300).to_vec();
    }
    let mut value = Vec::new();
    for _ in 0..input.below(12) {
        match input.below(3) {
            0 => value.extend_from_slice(input.pick(PIECES).as_bytes()),
            1 => value.extend_from_slice(address(input).to_string().as_bytes()),
            _ => value.extend_from_slice(input.pick(ADDRESSES).as_bytes()),
        }
    }
    if input.byte() < 8 {
        // A run long enough to pass the entry limit.
        let len = MAX_ENTRY_LEN - 2 + input.below(5);
        value.extend(std::iter::repeat_n(b'1', len));
    }
    value
}

/// The plain reading of an address as proxies write it: `a.b.c.d`, `a.b.c.d:port`,
/// `v6`, `[v6]`, `[v6]:port`, spaces around.
fn node(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (text, None),
    };
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(port) = port {
        // A port is digits. After `[v6]` a leading `+` passes too (the reader takes the
        // port as `u16::from_str` does; `a.b.c.d:+80` it reads as a socket address, which
        // has no sign). Proxies write neither, and either answer is an address.
        let digits = match bracketed {
            Some(_) => port.strip_prefix('+').unwrap_or(port),
            None => port,
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u16>().ok()?;
    }
    match bracketed {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None if port.is_some() => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        None => None,
    }
}

/// `text` split on `sep` outside quoted strings, as read from the right (the end a trusted
/// proxy wrote): a `"` opens or closes one unless an odd run of backslashes comes before it.
/// Pieces left to right.
fn split_unquoted(text: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut inside = false;
    let mut end = text.len();
    for i in (0..text.len()).rev() {
        if text[i] == b'"' {
            let backslashes = text[..i].iter().rev().take_while(|&&b| b == b'\\').count();
            inside ^= backslashes % 2 == 0;
        } else if text[i] == sep && !inside {
            pieces.push(&text[i + 1..end]);
            end = i;
        }
    }
    pieces.push(&text[..end]);
    pieces.reverse();
    pieces
}

/// A `for=` value without its obfuscated port (`_` then letters, digits, `.`, `_`, `-`),
/// where a port may be: after `[v6]` or an IPv4 address.
fn without_obfport(value: &str) -> &str {
    match value.rsplit_once(":_") {
        Some((host, port))
            if !port.is_empty()
                && port
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && (host.ends_with(']') || !host.contains(':')) =>
        {
            host
        }
        _ => value,
    }
}

/// The `for=` node of one `Forwarded` element; exactly one `for`, every non-empty pair
/// `k=v` (RFC 7239 allows empty ones; `;` inside a quoted value separates nothing), a
/// quoted value without inner quotes or backslashes, an obfuscated port dropped, what is
/// left at most `MAX_ENTRY_LEN` bytes (the element itself may be longer: a `host=` holds
/// what the client sent).
fn forwarded_node(element: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(element).ok()?;
    let mut values = Vec::new();
    for pair in split_unquoted(element, b';') {
        let pair = std::str::from_utf8(pair).ok()?;
        if pair.trim().is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("for") {
            values.push(value.trim());
        }
    }
    let [value] = values[..] else {
        return None;
    };
    let value = if let Some(quoted) = value.strip_prefix('"') {
        let inner = quoted.strip_suffix('"')?;
        if inner.contains(['"', '\\']) {
            return None;
        }
        inner
    } else {
        value
    };
    let value = without_obfport(value);
    if value.len() > MAX_ENTRY_LEN {
        return None;
    }
    node(value.as_bytes())
}

/// A header line's entries, left to right: split on `,` (for `Forwarded`, outside quoted
/// strings).
fn entries(header: ProxyHeader, line: &[u8]) -> Vec<&[u8]> {
    match header {
        ProxyHeader::Forwarded => split_unquoted(line, b','),
        _ => line.split(|&b| b == b',').collect(),
    }
}

/// The client by the plain reading: the header's entries (every line split on `,`; for
/// `Forwarded`, outside quoted strings), right to left.
fn expected(client_ip: &ClientIp, header: ProxyHeader, peer: IpAddr, lines: &[Vec<u8>]) -> IpAddr {
    let peer = peer.to_canonical();
    if !client_ip.is_trusted(peer) {
        return peer;
    }
    if header == ProxyHeader::XRealIp {
        return lines
            .last()
            .and_then(|line| node(line))
            .map_or(peer, |ip| ip.to_canonical());
    }
    let entries: Vec<&[u8]> = lines
        .iter()
        .rev()
        .flat_map(|line| entries(header, line).into_iter().rev())
        .take(MAX_HOPS)
        .collect();
    let mut client = peer;
    for entry in entries {
        if entry.len() > MAX_ENTRY_LEN && header != ProxyHeader::Forwarded {
            break;
        }
        let read = match header {
            ProxyHeader::Forwarded => forwarded_node(entry),
            _ => node(entry),
        };
        let Some(hop) = read.map(|ip| ip.to_canonical()) else {
            break;
        };
        client = hop;
        if !client_ip.is_trusted(hop) {
            break;
        }
    }
    client
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let header = input.pick(&[
        ProxyHeader::XForwardedFor,
        ProxyHeader::Forwarded,
        ProxyHeader::XRealIp,
    ]);
    let name = match header {
        ProxyHeader::XForwardedFor => "x-forwarded-for",
        ProxyHeader::Forwarded => "forwarded",
        _ => "x-real-ip",
    };
    let proxies: Vec<String> = (0..input.below(4))
        .map(|_| match input.below(4) {
            0 => String::from_utf8_lossy(input.bytes(48)).into_owned(),
            1 => format!("{}/{}", address(&mut input), input.byte()),
            _ => input.pick(PROXIES).to_owned(),
        })
        .collect();
    let mut client_ip = ClientIp::peer()
        .trust_proxies(&proxies)
        .proxy_header(header);
    if input.bool() {
        client_ip = client_ip.ipv6_prefix(input.byte());
    }
    let valid = client_ip.validate().is_ok();
    let _ = client_ip.warnings();
    let peer = (input.byte() != 0).then(|| address(&mut input));

    let mut headers = HeaderMap::new();
    let mut lines = Vec::new();
    for _ in 0..input.below(5) {
        if let Ok(line) = HeaderValue::from_bytes(&value(&mut input)) {
            lines.push(line.as_bytes().to_vec());
            headers.append(name, line);
        }
    }
    let mut noisy = headers.clone();
    for other in ["x-forwarded-for", "forwarded", "x-real-ip", "x-client-ip"] {
        if other != name && input.bool() {
            if let Ok(line) = HeaderValue::from_bytes(&value(&mut input)) {
                noisy.append(HeaderName::from_static(other), line);
            }
        }
    }

    let resolved = client_ip.resolve(peer, &headers);
    assert_eq!(
        client_ip.resolve(peer, &noisy),
        resolved,
        "another header than `{name}` changed the client"
    );
    let Some(peer) = peer else {
        assert_eq!(resolved, None);
        return;
    };
    let client = resolved.expect("a request with a peer has a client");
    if !client_ip.is_trusted(peer) {
        assert_eq!(
            client,
            peer.to_canonical(),
            "an untrusted peer chose its address"
        );
    }
    if client != peer.to_canonical() {
        assert!(client_ip.is_trusted(peer));
        let written = lines.iter().any(|line| {
            entries(header, line)
                .into_iter()
                .filter_map(|entry| match header {
                    ProxyHeader::Forwarded => forwarded_node(entry),
                    _ => node(entry),
                })
                .any(|ip| ip.to_canonical() == client)
        }) || (header == ProxyHeader::XRealIp
            && lines
                .last()
                .and_then(|l| node(l))
                .map(|ip| ip.to_canonical())
                == Some(client));
        assert!(written, "{client} is neither the peer nor in the header");
    }
    assert_eq!(
        client,
        expected(&client_ip, header, peer, &lines),
        "peer {peer}, proxies {proxies:?}, {name}: {:?}",
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
    );
    if valid {
        let key = client_ip.key(client);
        assert!(!key.is_empty());
    }
}
