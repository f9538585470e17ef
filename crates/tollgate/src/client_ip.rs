use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The most header entries (hops) looked at per request.
pub(crate) const MAX_HOPS: usize = 32;

/// Entries longer than this many bytes are treated as unreadable.
pub(crate) const MAX_ENTRY_LEN: usize = 256;

/// Prefixes shorter than this for IPv6 keys get a warning.
const COARSE_IPV6_PREFIX: u8 = 48;

/// Which header a trusted proxy writes the client's address to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS ALB,
    /// Cloudflare, Google Cloud): each proxy appends the peer it saw.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
    /// `X-Real-IP: 192.0.2.60`: one address, overwritten by the proxy (the
    /// last line counts if there are several).
    XRealIp,
}

impl ProxyHeader {
    fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }
}

/// Reads a trusted-proxy entry: a network (`10.0.0.0/8`, `fd00::/8`) or an address (a
/// network of one). An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network
/// it holds (`10.0.0.0/8`), since addresses are compared in their canonical form.
fn parse_proxy(input: &str) -> Result<IpNet, ClientIpError> {
    let text = input.trim();
    let invalid = |reason: &'static str| ClientIpError::InvalidProxy {
        input: input.to_owned(),
        reason,
    };
    let net = match text.split_once('/') {
        None => IpNet::from(
            text.parse::<IpAddr>()
                .map_err(|_| invalid("not an IP address"))?,
        ),
        Some((address, _)) => text.parse::<IpNet>().map_err(|_| {
            if address.parse::<IpAddr>().is_err() {
                invalid("not an IP address")
            } else {
                invalid("the prefix length must be 0..=32 (IPv4) or 0..=128 (IPv6)")
            }
        })?,
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    };
    if net.trunc() != net {
        return Err(ClientIpError::HostBitsSet {
            input: input.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// A client-IP configuration that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientIpError {
    /// A trusted proxy entry that cannot be read.
    #[error(
        "trusted proxy `{input}`: {reason} (examples: `10.0.0.0/8`, `192.168.1.1`, `::1/128`)"
    )]
    InvalidProxy {
        /// The entry as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `10.0.0.1/8`: probably a typo for the network.
    #[error("trusted proxy `{input}` has host bits set; did you mean `{network}`?")]
    HostBitsSet {
        /// The entry as given.
        input: String,
        /// The network it lies in.
        network: String,
    },
    /// The IPv6 key prefix is longer than 128 bits.
    #[error("ipv6_prefix({0}) is out of range: use 0..=128 (64 folds each /64 into one key)")]
    Ipv6Prefix(u8),
}

/// The client's IP address, and the rate-limit key made from it.
///
/// By default the client is the TCP peer ([`ClientIp::peer`]). Behind a reverse
/// proxy or load balancer every request comes from the proxy, so the client is
/// read from the header the proxy writes, **but only when the peer is one of
/// the configured trusted proxies** ([`ClientIp::trust_proxies`]); a client
/// that connects directly can send any header it likes and is still itself.
///
/// The header is read from the right (the hop nearest to us) to the left,
/// skipping trusted proxies, and the first address that is not a trusted proxy
/// is the client. A value that cannot be read (garbage, `unknown`, an
/// obfuscated `Forwarded` node; an obfuscated port, `for="192.0.2.60:_a1"`, hides only
/// the port, and commas or semicolons inside a quoted `Forwarded` value separate
/// nothing) stops the walk: the client is then the last
/// trusted hop (at worst the proxy itself), never an address the client chose.
/// Work is bounded: at most [`ClientIp::MAX_HOPS`] entries are looked at, however many
/// lines the header has; an `X-Forwarded-For` entry or `X-Real-IP` value longer than
/// [`ClientIp::MAX_ENTRY_LEN`] bytes is not read further. A `Forwarded` element is read
/// whatever its length, in time proportional to it (its `host=` holds the `Host` a client
/// sent, which a long one made unreadable, keying the client as the proxy), and its `for=`
/// node (without its quotes and an obfuscated port) is unreadable past `MAX_ENTRY_LEN`.
///
/// Read exactly one header, the one your proxy sets ([`ProxyHeader`]; default
/// `X-Forwarded-For`): a proxy that appends to `X-Forwarded-For` passes a
/// client's forged `Forwarded` through untouched.
///
/// [`ClientIp::key`] turns the address into a bucket key: IPv4 as is, IPv6
/// folded to its /64 network (configurable with [`ClientIp::ipv6_prefix`]),
/// since one customer usually holds a whole /64; IPv4-mapped IPv6 addresses
/// (`::ffff:203.0.113.7`, from dual-stack sockets) are IPv4.
///
/// ```
/// use std::net::IpAddr;
/// use http::HeaderMap;
/// use tollgate::{ClientIp, ProxyHeader};
///
/// # fn main() -> Result<(), tollgate::ClientIpError> {
/// let client_ip = ClientIp::peer().trust_proxies(["10.0.0.0/8", "::1"]);
/// client_ip.validate()?; // the layer does this once, when it is built
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.3".parse().unwrap());
///
/// // From a trusted proxy: the first untrusted hop from the right.
/// let proxy: IpAddr = "10.0.0.2".parse().unwrap();
/// let client = client_ip.resolve(Some(proxy), &headers).unwrap();
/// assert_eq!(client_ip.key(client), "203.0.113.7");
///
/// // From anyone else: the header is ignored.
/// let direct: IpAddr = "192.0.2.9".parse().unwrap();
/// assert_eq!(client_ip.resolve(Some(direct), &headers), Some(direct));
///
/// // IPv6 clients are keyed by their /64.
/// let v6: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
/// assert_eq!(client_ip.key(v6), "2001:db8:1:2::/64");
///
/// // RFC 7239 `Forwarded`, if that is what the proxy writes.
/// let forwarded = ClientIp::peer().trust_proxies(["10.0.0.0/8"]).proxy_header(ProxyHeader::Forwarded);
/// let mut headers = HeaderMap::new();
/// headers.insert("forwarded", r#"for="[2001:db8::17]:4711";proto=https"#.parse().unwrap());
/// assert_eq!(forwarded.resolve(Some(proxy), &headers), Some("2001:db8::17".parse().unwrap()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    /// Errors from `trust_proxies`, reported by `validate`.
    errors: Vec<ClientIpError>,
    ipv6_prefix: u8,
    header: ProxyHeader,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::peer()
    }
}

impl ClientIp {
    /// The most entries of a forwarding header read, right to left.
    pub const MAX_HOPS: usize = MAX_HOPS;

    /// The longest forwarding-header entry read (an `X-Forwarded-For` entry, an
    /// `X-Real-IP` value, a `Forwarded` element's `for=` node without its quotes and an
    /// obfuscated port); a longer one ends the walk.
    pub const MAX_ENTRY_LEN: usize = MAX_ENTRY_LEN;

    /// The TCP peer is the client; no header is trusted.
    pub fn peer() -> Self {
        Self {
            trusted: Vec::new(),
            errors: Vec::new(),
            ipv6_prefix: 64,
            header: ProxyHeader::default(),
        }
    }

    /// Adds trusted proxies: addresses (`"192.168.1.1"`, `"::1"`) or networks
    /// (`"10.0.0.0/8"`, `"fd00::/8"`). Entries that cannot be read are
    /// reported by [`validate`](Self::validate).
    pub fn trust_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for cidr in cidrs {
            match parse_proxy(cidr.as_ref()) {
                Ok(cidr) => self.trusted.push(cidr),
                Err(error) => self.errors.push(error),
            }
        }
        self
    }

    /// How many leading bits of an IPv6 address make its key (default 64;
    /// 128 keys each address on its own). Checked by
    /// [`validate`](Self::validate).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The header trusted proxies write the client to (default
    /// [`ProxyHeader::XForwardedFor`]). Only this header is read.
    pub fn proxy_header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// Checks the configuration; the layer calls this once when it is built.
    ///
    /// # Errors
    ///
    /// The first trusted-proxy entry that could not be read, or an IPv6 prefix
    /// over 128.
    pub fn validate(&self) -> Result<(), ClientIpError> {
        if let Some(error) = self.errors.first() {
            return Err(error.clone());
        }
        if self.ipv6_prefix > 128 {
            return Err(ClientIpError::Ipv6Prefix(self.ipv6_prefix));
        }
        Ok(())
    }

    /// Settings that are valid but probably not meant;
    /// [`LimiterBuilder::build`](crate::LimiterBuilder::build) logs them (once per limiter:
    /// its guards do not again).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> =
            self.trusted
                .iter()
                .filter(|cidr| cidr.prefix_len() == 0)
                .map(|cidr| {
                    format!(
                    "trusted proxies include `{}/0`, i.e. every {} address: any client can choose \
                     its own IP (and rate-limit key) by sending `{}`",
                    cidr.network(),
                    if cidr.network().is_ipv4() { "IPv4" } else { "IPv6" },
                    self.header.name(),
                )
                })
                .collect();
        if self.ipv6_prefix < COARSE_IPV6_PREFIX {
            warnings.push(format!(
                "ipv6_prefix({}) puts a whole /{} (many unrelated clients) in one rate-limit key",
                self.ipv6_prefix, self.ipv6_prefix
            ));
        }
        warnings
    }

    /// Whether `ip` is a trusted proxy: in a trusted network as written, or as the IPv4
    /// address it is keyed by ([`ClientIp::key`]: `::ffff:198.51.100.7` and, through a NAT64
    /// translator, `64:ff9b::198.51.100.7` are the proxy `198.51.100.7`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let in_trusted = |ip: IpAddr| self.trusted.iter().any(|cidr| cidr.contains(&ip));
        let (ip, keyed) = (ip.to_canonical(), key_address(ip));
        in_trusted(ip) || (keyed != ip && in_trusted(keyed))
    }

    /// The client address of a request from `peer` with `headers`, or `None`
    /// when the peer is unknown (the layer reports that as a configuration
    /// error). Never panics, whatever the headers hold.
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut lines = headers.get_all(self.header.name()).iter();
        Some(match self.header {
            ProxyHeader::XForwardedFor => self.walk(peer, lines, parse_node),
            ProxyHeader::Forwarded => self.walk(peer, lines, forwarded_for),
            // One entry: longer than an entry may be, it is unreadable, as in a list.
            ProxyHeader::XRealIp => lines
                .next_back()
                .filter(|line| line.len() <= MAX_ENTRY_LEN)
                .and_then(|line| parse_node(line.as_bytes()))
                .map_or(peer, |ip| ip.to_canonical()),
        })
    }

    /// Walks comma-separated entries right to left (last line first) and
    /// returns the first untrusted hop, or the last trusted one.
    fn walk<'a>(
        &self,
        peer: IpAddr,
        lines: impl DoubleEndedIterator<Item = &'a HeaderValue>,
        read: fn(&[u8]) -> Option<IpAddr>,
    ) -> IpAddr {
        let mut last_trusted = peer;
        // A `Forwarded` element holds more than its node (a `host=` as long as the client
        // made its `Host`): only its node is bounded, in `forwarded_for`.
        let (quoted, max_len) = match self.header {
            ProxyHeader::Forwarded => (true, usize::MAX),
            _ => (false, MAX_ENTRY_LEN),
        };
        let mut entries = lines.rev().flat_map(|line| RevEntries {
            rest: Some(line.as_bytes()),
            sep: b',',
            quoted,
            max_len,
        });
        for _ in 0..MAX_HOPS {
            let Some(entry) = entries.next() else {
                break;
            };
            let Some(hop) = entry.and_then(read).map(|ip| ip.to_canonical()) else {
                break;
            };
            if !self.is_trusted(hop) {
                return hop;
            }
            last_trusted = hop;
        }
        last_trusted
    }

    /// The rate-limit key of a client address: `"203.0.113.7"`, or for IPv6
    /// the network of the configured prefix, `"2001:db8:1:2::/64"` (the bare
    /// address when the prefix is 128). An IPv4 client written as IPv6 is keyed by its
    /// IPv4 address: `::ffff:203.0.113.7`, and `64:ff9b::203.0.113.7`, the NAT64
    /// well-known prefix (RFC 6052) a translator in front of the server shows IPv4 clients
    /// from (folded to its /64, every IPv4 client would share one key).
    pub fn key(&self, ip: IpAddr) -> String {
        self.network_key(ip, self.ipv6_prefix)
    }

    /// [`ClientIp::key`] of an address written as text, with IPv6 folded to `network` bits
    /// if given (as [`ClientIp::network_key`] does), else to the clients' prefix: an
    /// address as proxies write one ([`parse_node`]: also `[2001:db8::5]`, as URLs and
    /// `Forwarded` write IPv6), or an address key as stored (`2001:db8::/64`, whose prefix
    /// must be the one it is folded to: `/32` for IPv4). `None` if it is neither: a
    /// `198.51.100.7/8` names no client's key (it named `198.51.100.7`, the `/8` silently
    /// dropped). How an operator's value (an override, an admin lookup) is folded like a
    /// request's client.
    pub(crate) fn fold_text(&self, value: &str, network: Option<u8>) -> Option<String> {
        let ipv6_prefix = self.prefix(network);
        let text = value.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let ip = parse_node(address.as_bytes())?;
        let folded = match key_address(ip) {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => ipv6_prefix,
        };
        if prefix.is_some_and(|p| p != folded) {
            return None;
        }
        Some(self.network_key(ip, ipv6_prefix))
    }

    /// The key of the network of a client address, coarser than [`ClientIp::key`] for
    /// IPv6: the address's first `ipv6_prefix` bits (`network_key(ip, 48)` is
    /// `"2001:db8:1::/48"`); an IPv4 client (also written as IPv6, as for
    /// [`ClientIp::key`]) by its address. For a backstop a handler charges beside a per-IP
    /// limit: whoever holds an IPv6 /48 holds 65,536 /64s, each a client to
    /// [`ClientIp::key`]'s default.
    pub fn network_key(&self, ip: IpAddr, ipv6_prefix: u8) -> String {
        let mut out = tollgate_limits::StoreKey::new();
        push_address_key(ip, ipv6_prefix, &mut out);
        out.into()
    }

    /// The IPv6 prefix a key folds addresses to: `network`'s, else the clients' own.
    pub(crate) fn prefix(&self, network: Option<u8>) -> u8 {
        network.unwrap_or(self.ipv6_prefix)
    }
}

/// The key of `ip` with IPv6 addresses folded to their first `ipv6_prefix` bits, appended
/// to `out` ([`ClientIp::key`], [`ClientIp::network_key`]).
pub(crate) fn push_address_key(ip: IpAddr, ipv6_prefix: u8, out: &mut tollgate_limits::StoreKey) {
    use std::fmt::Write as _;
    match key_address(ip) {
        IpAddr::V4(v4) => {
            // Dotted decimal into a stack buffer (each octet's text from a table, copied
            // whole: the buffer has room past the last octet's), then one copy into the key.
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in v4.octets() {
                let (digits, n) = OCTET_TEXT[usize::from(octet)];
                text[len..len + 4].copy_from_slice(&digits);
                len += usize::from(n);
            }
            // (The last octet's `.` is not part of the key.)
            out.push_ascii(&text[..len - 1]);
        }
        IpAddr::V6(v6) => {
            let prefix = ipv6_prefix.min(128);
            let network = Ipv6Net::new(v6, prefix).map_or(v6, |net| net.network());
            let _ = if prefix == 128 {
                write!(out, "{network}")
            } else {
                write!(out, "{network}/{prefix}")
            };
        }
    }
}

/// Every octet's decimal text followed by a `.` (left-aligned in four bytes), and the
/// length of that text with its `.`: what [`push_address_key`] writes an IPv4 address with.
const OCTET_TEXT: [([u8; 4], u8); 256] = {
    let mut table = [([0u8; 4], 0u8); 256];
    let mut octet = 0;
    while octet < 256 {
        let (hundreds, tens, ones) = (
            (octet / 100) as u8,
            (octet / 10 % 10) as u8,
            (octet % 10) as u8,
        );
        table[octet] = if octet >= 100 {
            ([b'0' + hundreds, b'0' + tens, b'0' + ones, b'.'], 4)
        } else if octet >= 10 {
            ([b'0' + tens, b'0' + ones, b'.', 0], 3)
        } else {
            ([b'0' + ones, b'.', 0, 0], 2)
        };
        octet += 1;
    }
    table
};

/// The address a client is keyed by ([`ClientIp::key`]): an IPv4 client written as IPv6
/// (`::ffff:a.b.c.d`, or in the NAT64 well-known prefix `64:ff9b::/96`) as its IPv4 address.
fn key_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
        }
        other => other,
    }
}

/// Yields the `sep`-separated entries of one header line (or the pairs of one
/// `Forwarded` element) from the right; an entry longer than `max_len` comes out as
/// `None` (and ends the line), so no more than that is scanned per entry. With `quoted`
/// (`Forwarded`), a separator inside a quoted string (`host="a,b"`) separates nothing.
struct RevEntries<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
    quoted: bool,
    max_len: usize,
}

/// Where the last separator `sep` of `text` is, outside quoted strings if `quoted`
/// (a quote escaped by a backslash, `\"`, opens or closes none).
fn rposition_of(text: &[u8], sep: u8, quoted: bool) -> Option<usize> {
    if !quoted {
        return text.iter().rposition(|&b| b == sep);
    }
    let mut inside = false;
    for i in (0..text.len()).rev() {
        match text[i] {
            b'"' => {
                let escapes = text[..i].iter().rev().take_while(|&&b| b == b'\\').count();
                if escapes % 2 == 0 {
                    inside = !inside;
                }
            }
            b if b == sep && !inside => return Some(i),
            _ => {}
        }
    }
    None
}

impl<'a> Iterator for RevEntries<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let window = rest.len().saturating_sub(self.max_len.saturating_add(1));
        match rposition_of(&rest[window..], self.sep, self.quoted) {
            Some(at) => {
                let comma = window + at;
                self.rest = Some(&rest[..comma]);
                Some(Some(&rest[comma + 1..]))
            }
            None if rest.len() <= self.max_len => {
                self.rest = None;
                Some(Some(rest))
            }
            None => {
                self.rest = None;
                Some(None)
            }
        }
    }
}

/// An address as proxies write it: `203.0.113.7`, `203.0.113.7:8080`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, with optional spaces.
fn parse_node(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Some(bracketed) = text.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|port| port.parse::<u16>().is_ok());
        return if port_ok {
            address.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            None
        };
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    text.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// The `for=` node of one `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`, `for="[2001:db8::1]:4711"`, an
/// obfuscated port: `for="192.0.2.60:_a1"`). `unknown`, obfuscated nodes, a missing or
/// repeated `for` are unreadable. Semicolons inside another pair's quoted value
/// (`host="a;b"`) separate nothing.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    // Pairs from the right (which `for` is found first does not matter: a repeated one
    // is unreadable), whatever their length: the node alone is bounded.
    let pairs = RevEntries {
        rest: Some(element),
        sep: b';',
        quoted: true,
        max_len: usize::MAX,
    };
    for pair in pairs {
        let pair = std::str::from_utf8(pair?).ok()?;
        // RFC 7239 allows empty pairs (`for=192.0.2.60;`, `;for=192.0.2.60`).
        if pair.trim().is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted
                .strip_suffix('"')
                .filter(|v| !v.contains(['"', '\\']))?,
            None => value,
        };
        found = Some(without_obfuscated_port(value));
    }
    parse_node(found.filter(|node| node.len() <= MAX_ENTRY_LEN)?.as_bytes())
}

/// A `Forwarded` node without its obfuscated port (RFC 7239 section 6.3: `_` and letters,
/// digits, `.`, `_` or `-`): `192.0.2.60:_a1` is `192.0.2.60`, `[2001:db8::1]:_p` is
/// `[2001:db8::1]`. The address is real; only the port is hidden.
fn without_obfuscated_port(node: &str) -> &str {
    let Some((address, port)) = node.rsplit_once(':') else {
        return node;
    };
    let obfuscated = port.strip_prefix('_').is_some_and(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    // Only where a port may be: after a bracketed IPv6 address, or an IPv4 one.
    if obfuscated && (address.ends_with(']') || !address.contains(':')) {
        address
    } else {
        node
    }
}

/// The TCP peer address of a request: axum's `ConnectInfo<SocketAddr>` (with
/// the `axum` feature), else a `SocketAddr` or `IpAddr` in the extensions.
pub fn peer_addr(extensions: &http::Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    extensions
        .get::<SocketAddr>()
        .map(SocketAddr::ip)
        .or_else(|| extensions.get::<IpAddr>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_keys_are_dotted_decimal_without_leading_zeros() {
        let client_ip = ClientIp::peer();
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "203.0.113.7",
            "255.255.255.255",
            "1.20.190.249",
        ] {
            let mut key = tollgate_limits::StoreKey::new();
            push_address_key(ip(text), client_ip.prefix(None), &mut key);
            assert_eq!(key.as_str(), text);
        }
        for octet in 0..=255u8 {
            let address = std::net::Ipv4Addr::new(octet, 255 - octet, octet / 3, octet);
            let mut key = tollgate_limits::StoreKey::new();
            push_address_key(IpAddr::V4(address), client_ip.prefix(None), &mut key);
            assert_eq!(key.as_str(), address.to_string());
        }
        // An IPv4-mapped IPv6 address is its IPv4 client.
        let mut key = tollgate_limits::StoreKey::new();
        push_address_key(ip("::ffff:10.0.0.1"), client_ip.prefix(None), &mut key);
        assert_eq!(key.as_str(), "10.0.0.1");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const PROXY: &str = "10.0.0.2";

    /// `203.0.113.7` with spaces before it, `len` bytes in all.
    fn padded(len: usize) -> String {
        format!("{:>len$}", "203.0.113.7")
    }

    fn behind_proxy(header: ProxyHeader) -> ClientIp {
        ClientIp::peer()
            .trust_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])
            .proxy_header(header)
    }

    #[test]
    fn parses_trusted_proxies_and_reports_bad_ones() {
        let ok =
            ClientIp::peer().trust_proxies(["10.0.0.0/8", "192.168.1.1", "::1/128", " fd00::/8 "]);
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.is_trusted(ip("10.255.0.1")));
        assert!(ok.is_trusted(ip("192.168.1.1")));
        assert!(!ok.is_trusted(ip("192.168.1.2")));
        assert!(ok.is_trusted(ip("::1")));
        assert!(ok.is_trusted(ip("fdab::1")));
        assert!(ok.is_trusted(ip("::ffff:10.1.2.3")), "IPv4-mapped is IPv4");
        assert!(!ok.is_trusted(ip("11.0.0.1")));
        let mapped = ClientIp::peer().trust_proxies(["::ffff:10.0.0.0/104"]);
        assert!(mapped.is_trusted(ip("10.9.9.9")));

        let bad = |input: &str| {
            ClientIp::peer()
                .trust_proxies([input])
                .validate()
                .unwrap_err()
        };
        assert_eq!(
            bad("10.0.0.1/8"),
            ClientIpError::HostBitsSet {
                input: "10.0.0.1/8".into(),
                network: "10.0.0.0/8".into()
            }
        );
        assert!(matches!(
            bad("10.0.0.0/33"),
            ClientIpError::InvalidProxy { .. }
        ));
        assert_eq!(
            bad("::ffff:10.0.0.1/104"),
            ClientIpError::HostBitsSet {
                input: "::ffff:10.0.0.1/104".into(),
                network: "10.0.0.0/8".into()
            }
        );
        assert_eq!(
            bad("10.0.0.0/33").to_string(),
            "trusted proxy `10.0.0.0/33`: the prefix length must be 0..=32 (IPv4) or 0..=128 \
             (IPv6) (examples: `10.0.0.0/8`, `192.168.1.1`, `::1/128`)"
        );
        assert!(matches!(bad("::/129"), ClientIpError::InvalidProxy { .. }));
        assert!(matches!(
            bad("10.0.0.0/"),
            ClientIpError::InvalidProxy { .. }
        ));
        assert!(matches!(
            bad("10.0.0/8"),
            ClientIpError::InvalidProxy { .. }
        ));
        assert!(matches!(
            bad("localhost"),
            ClientIpError::InvalidProxy { .. }
        ));
        assert!(matches!(
            bad("10.0.0.0/x"),
            ClientIpError::InvalidProxy { .. }
        ));
        assert_eq!(
            bad("proxy.internal").to_string(),
            "trusted proxy `proxy.internal`: not an IP address (examples: `10.0.0.0/8`, \
             `192.168.1.1`, `::1/128`)"
        );
        assert_eq!(
            ClientIp::peer().ipv6_prefix(129).validate(),
            Err(ClientIpError::Ipv6Prefix(129))
        );
    }

    #[test]
    fn a_mapped_network_shorter_than_96_bits_is_rejected_as_host_bits() {
        // Its IPv4-mapped address lies in host bits; there is no IPv4 network to fold it to.
        assert_eq!(
            ClientIp::peer()
                .trust_proxies(["::ffff:10.0.0.0/80"])
                .validate(),
            Err(ClientIpError::HostBitsSet {
                input: "::ffff:10.0.0.0/80".into(),
                network: "::/80".into()
            })
        );
    }

    #[test]
    fn an_ipv6_prefix_of_128_is_valid() {
        assert_eq!(ClientIp::peer().ipv6_prefix(128).validate(), Ok(()));
    }

    #[test]
    fn warns_about_trusting_everyone_and_coarse_prefixes() {
        assert!(ClientIp::peer()
            .trust_proxies(["10.0.0.0/8"])
            .warnings()
            .is_empty());
        let w = ClientIp::peer()
            .trust_proxies(["0.0.0.0/0", "::/0"])
            .ipv6_prefix(32)
            .warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("`0.0.0.0/0`") && w[0].contains("x-forwarded-for"),
            "{w:?}"
        );
        assert!(w[1].contains("`::/0`"), "{w:?}");
        assert!(w[2].contains("ipv6_prefix(32)"), "{w:?}");
    }

    #[test]
    fn an_ipv6_prefix_of_48_does_not_warn_but_47_does() {
        assert!(ClientIp::peer().ipv6_prefix(48).warnings().is_empty());
        let w = ClientIp::peer().ipv6_prefix(47).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("ipv6_prefix(47)"), "{w:?}");
    }

    #[test]
    fn keys_fold_ipv6_and_unmap_ipv4() {
        let c = ClientIp::peer();
        assert_eq!(c.key(ip("203.0.113.7")), "203.0.113.7");
        assert_eq!(c.key(ip("::ffff:203.0.113.7")), "203.0.113.7");
        // Through a NAT64 translator: each IPv4 client its own key, not one /64 for all.
        assert_eq!(c.key(ip("64:ff9b::203.0.113.7")), "203.0.113.7");
        assert_eq!(c.key(ip("64:ff9b::9.9.9.9")), "9.9.9.9");
        assert_eq!(
            c.fold_text("64:ff9b::1.2.3.4", None).as_deref(),
            Some("1.2.3.4")
        );
        // Outside the /96 it is an IPv6 network like any other.
        assert_eq!(c.key(ip("64:ff9b:1::203.0.113.7")), "64:ff9b:1::/64");
        // A network key: coarser for IPv6, the address for IPv4 however written.
        assert_eq!(c.network_key(ip("2001:db8:1:2::9"), 48), "2001:db8:1::/48");
        assert_eq!(c.network_key(ip("203.0.113.7"), 48), "203.0.113.7");
        assert_eq!(c.network_key(ip("::ffff:203.0.113.7"), 48), "203.0.113.7");
        assert_eq!(c.network_key(ip("64:ff9b::203.0.113.7"), 48), "203.0.113.7");
        assert_eq!(c.network_key(ip("2001:db8::9"), 128), "2001:db8::9");
        assert_eq!(c.key(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(c.key(ip("2001:db8:1:2::9")), "2001:db8:1:2::/64");
        assert_eq!(c.key(ip("2001:db8:1:3::9")), "2001:db8:1:3::/64");
        assert_eq!(
            ClientIp::peer().ipv6_prefix(128).key(ip("2001:db8::9")),
            "2001:db8::9"
        );
        assert_eq!(
            ClientIp::peer().ipv6_prefix(48).key(ip("2001:db8:1:2::9")),
            "2001:db8:1::/48"
        );
        assert_eq!(
            ClientIp::peer().ipv6_prefix(0).key(ip("2001:db8::9")),
            "::/0"
        );
    }

    #[test]
    fn a_proxy_seen_through_nat64_is_the_ipv4_proxy_it_is_keyed_as() {
        // (A review: trusted as `198.51.100.0/24`, the proxy reached the server through a
        // NAT64 translator as `64:ff9b::198.51.100.7`, was not trusted, and every client
        // behind it shared the one key `198.51.100.7`.)
        let c = ClientIp::peer().trust_proxies(["198.51.100.0/24"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 64:ff9b::198.51.100.3")]);
        for peer in [
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "64:ff9b::198.51.100.7",
        ] {
            assert!(c.is_trusted(ip(peer)), "{peer}");
            assert_eq!(
                c.resolve(Some(ip(peer)), &h),
                Some(ip("203.0.113.9")),
                "{peer}"
            );
        }
        // Outside the well-known /96, or another IPv4 network: not the proxy.
        for peer in ["64:ff9b:1::198.51.100.7", "64:ff9b::198.51.101.7"] {
            assert!(!c.is_trusted(ip(peer)), "{peer}");
            assert_eq!(c.resolve(Some(ip(peer)), &h), Some(ip(peer)), "{peer}");
        }
        // A NAT64 network listed as such is trusted as before.
        let c6 = ClientIp::peer().trust_proxies(["64:ff9b::198.51.100.0/120"]);
        assert!(c6.is_trusted(ip("64:ff9b::198.51.100.7")));
    }

    #[test]
    fn an_untrusted_peer_is_itself_whatever_it_sends() {
        let forged = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        for header in [
            ProxyHeader::XForwardedFor,
            ProxyHeader::Forwarded,
            ProxyHeader::XRealIp,
        ] {
            let c = behind_proxy(header);
            assert_eq!(
                c.resolve(Some(ip("198.51.100.9")), &forged),
                Some(ip("198.51.100.9"))
            );
            // No proxies configured: even a private peer is itself.
            let peer_only = ClientIp::peer().proxy_header(header);
            assert_eq!(peer_only.resolve(Some(ip(PROXY)), &forged), Some(ip(PROXY)));
        }
        assert_eq!(ClientIp::peer().resolve(None, &forged), None);
        assert_eq!(
            ClientIp::peer().resolve(Some(ip("::ffff:198.51.100.9")), &forged),
            Some(ip("198.51.100.9"))
        );
    }

    #[test]
    fn x_forwarded_for_walks_right_to_left_past_trusted_hops() {
        let c = behind_proxy(ProxyHeader::XForwardedFor);
        let resolve =
            |value: &str| c.resolve(Some(ip(PROXY)), &headers(&[("x-forwarded-for", value)]));
        assert_eq!(resolve("203.0.113.7"), Some(ip("203.0.113.7")));
        assert_eq!(
            resolve("1.2.3.4, 203.0.113.7"),
            Some(ip("203.0.113.7")),
            "forged left part ignored"
        );
        assert_eq!(
            resolve("1.2.3.4, 203.0.113.7, 10.0.0.3, 10.1.1.1"),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(resolve("203.0.113.7:5555"), Some(ip("203.0.113.7")));
        assert_eq!(resolve(" [2001:db8::5]:443 "), Some(ip("2001:db8::5")));
        assert_eq!(resolve("2001:db8::5"), Some(ip("2001:db8::5")));
        assert_eq!(resolve("::ffff:203.0.113.7"), Some(ip("203.0.113.7")));
        assert_eq!(
            resolve("2001:db8:ffff::1, 2001:db8::5"),
            Some(ip("2001:db8::5"))
        );
        // All hops trusted: the leftmost (an internal client).
        assert_eq!(resolve("10.9.9.9, 10.0.0.3"), Some(ip("10.9.9.9")));
        // Unreadable entries stop at the last trusted hop.
        assert_eq!(resolve("203.0.113.7, garbage"), Some(ip(PROXY)));
        assert_eq!(
            resolve("203.0.113.7, garbage, 10.0.0.3"),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(resolve("203.0.113.7, unknown"), Some(ip(PROXY)));
        assert_eq!(resolve(""), Some(ip(PROXY)));
        assert_eq!(resolve(",,,"), Some(ip(PROXY)));
        assert_eq!(resolve("203.0.113.7:99999"), Some(ip(PROXY)));
        // Several lines are one list, the last line nearest.
        let lines = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.3"),
        ]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &lines), Some(ip("203.0.113.7")));
        let lines = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &lines), Some(ip("1.2.3.4")));
        // Other headers are not read.
        let other = headers(&[("forwarded", "for=1.2.3.4"), ("x-real-ip", "1.2.3.4")]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &other), Some(ip(PROXY)));
    }

    #[test]
    fn forwarded_reads_the_for_node() {
        let c = behind_proxy(ProxyHeader::Forwarded);
        let resolve = |value: &str| c.resolve(Some(ip(PROXY)), &headers(&[("forwarded", value)]));
        assert_eq!(resolve("for=203.0.113.7"), Some(ip("203.0.113.7")));
        assert_eq!(
            resolve("For=203.0.113.7;proto=https;by=10.0.0.2"),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            resolve(r#"for="[2001:db8:cafe::17]:4711""#),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            resolve(r#"for="[2001:db8:cafe::17]""#),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(resolve(r#"for="203.0.113.7:80""#), Some(ip("203.0.113.7")));
        // Empty pairs are allowed around the element's pairs.
        assert_eq!(resolve("for=203.0.113.7;"), Some(ip("203.0.113.7")));
        assert_eq!(
            resolve(";proto=https;;for=203.0.113.7"),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(resolve("for=1.2.3.4, ;"), Some(ip(PROXY)));
        assert_eq!(
            resolve("for=1.2.3.4, for=203.0.113.7, for=10.0.0.3"),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(resolve("for=1.2.3.4, for=unknown"), Some(ip(PROXY)));
        assert_eq!(resolve("for=1.2.3.4, for=_hidden"), Some(ip(PROXY)));
        assert_eq!(resolve("for=1.2.3.4, proto=https"), Some(ip(PROXY)));
        assert_eq!(resolve("for=1.2.3.4;for=5.6.7.8"), Some(ip(PROXY)));
        assert_eq!(resolve(r#"for="[2001:db8::1"#), Some(ip(PROXY)));
        assert_eq!(resolve(r#"for="2001:db8::1\"""#), Some(ip(PROXY)));
        assert_eq!(resolve("garbage"), Some(ip(PROXY)));
    }

    /// A `Forwarded` element's other pairs may be long (`host=` holds the `Host` a client
    /// sent): only its `for=` node is bounded. (A review: a client sending a `Host` of
    /// 240 bytes made the proxy's element longer than `MAX_ENTRY_LEN`, unreadable, and was
    /// keyed as the proxy, spending its budget and then every such client's.)
    #[test]
    fn a_forwarded_element_is_read_whatever_the_length_of_its_other_pairs() {
        let c = behind_proxy(ProxyHeader::Forwarded);
        let resolve = |value: &str| c.resolve(Some(ip(PROXY)), &headers(&[("forwarded", value)]));
        let host = "h".repeat(10_000);
        assert_eq!(
            resolve(&format!(r#"for=203.0.113.7;proto=https;host="{host}""#)),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            resolve(&format!(r#"host={host};for="203.0.113.7:_p""#)),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            resolve(&format!(
                r#"for=6.6.6.6, for=203.0.113.7;host="{host}", for=10.0.0.3;host="{host}""#
            )),
            Some(ip("203.0.113.7"))
        );
        // The node itself: at most `MAX_ENTRY_LEN`, as an entry of the other headers.
        let node = |len: usize| resolve(&format!("for=\"{}\";host={host}", padded(len)));
        assert_eq!(node(MAX_ENTRY_LEN), Some(ip("203.0.113.7")));
        assert_eq!(node(MAX_ENTRY_LEN + 1), Some(ip(PROXY)));
        // One enormous element is read once, and holds no node.
        assert_eq!(resolve(&"x".repeat(100_000)), Some(ip(PROXY)));
        let unbalanced = format!("for=203.0.113.7;host=\"{}", "a,".repeat(50_000));
        assert_eq!(resolve(&unbalanced), Some(ip(PROXY)));
    }

    /// RFC 7239 as proxies write it beyond the plain node: an obfuscated port hides the
    /// port, not the address; commas and semicolons inside a quoted value (`host="a,b"`)
    /// separate nothing. (A review: both read as no client at all, so every client behind
    /// such a proxy shared the proxy's key.)
    #[test]
    fn forwarded_reads_obfuscated_ports_and_quoted_separators() {
        let c = behind_proxy(ProxyHeader::Forwarded);
        let resolve = |value: &str| c.resolve(Some(ip(PROXY)), &headers(&[("forwarded", value)]));
        assert_eq!(resolve(r#"for="192.0.2.60:_port""#), Some(ip("192.0.2.60")));
        assert_eq!(
            resolve(r#"for="[2001:db8::1]:_p-1.x""#),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            resolve(r#"for="192.0.2.60:_""#),
            Some(ip(PROXY)),
            "empty obfport"
        );
        assert_eq!(resolve(r#"for="192.0.2.60:_a b""#), Some(ip(PROXY)));
        assert_eq!(
            resolve(r#"for=192.0.2.60;host="a,b""#),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            resolve(r#"for=6.6.6.6, for=192.0.2.60;host="a,b""#),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            resolve(r#"for=192.0.2.60;host="a;b=c""#),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            resolve(r#"for=192.0.2.60;host="x\",for=6.6.6.6""#),
            Some(ip("192.0.2.60")),
            "an escaped quote does not end the value"
        );
        // The right-most element is still the one read first.
        assert_eq!(
            resolve(r#"for=6.6.6.6;host="a,b", for=192.0.2.60"#),
            Some(ip("192.0.2.60"))
        );
        // An unterminated quote: unreadable.
        assert_eq!(resolve(r#"for=192.0.2.60;host="a,b"#), Some(ip(PROXY)));
    }

    #[test]
    fn an_operators_address_text_is_folded_like_a_client() {
        let ip = ClientIp::peer();
        let key = |t: &str| ip.fold_text(t, None);
        assert_eq!(key(" 198.51.100.7 ").as_deref(), Some("198.51.100.7"));
        assert_eq!(key("198.51.100.7/32").as_deref(), Some("198.51.100.7"));
        assert_eq!(key("::ffff:198.51.100.7").as_deref(), Some("198.51.100.7"));
        let v6 = Some("2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::9").as_deref(), v6);
        assert_eq!(key("[2001:db8:1:2::9]").as_deref(), v6, "as URLs write it");
        assert_eq!(key("2001:db8:1:2::/64").as_deref(), v6, "as stored");
        // A prefix clients are not folded to names no client's key (the /8 was dropped).
        assert_eq!(key("198.51.100.7/8"), None);
        assert_eq!(key("2001:db8::/48"), None);
        assert_eq!(key("198.51.100.7/x"), None);
        assert_eq!(key("not-an-ip"), None);
    }

    #[test]
    fn x_real_ip_is_one_address() {
        let c = behind_proxy(ProxyHeader::XRealIp);
        let resolve = |h: &HeaderMap| c.resolve(Some(ip(PROXY)), h);
        assert_eq!(
            resolve(&headers(&[("x-real-ip", "203.0.113.7")])),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            resolve(&headers(&[
                ("x-real-ip", "1.2.3.4"),
                ("x-real-ip", "203.0.113.7")
            ])),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            resolve(&headers(&[("x-real-ip", "1.2.3.4, 5.6.7.8")])),
            Some(ip(PROXY))
        );
        assert_eq!(resolve(&headers(&[])), Some(ip(PROXY)));
        // An entry's length at most, as in a list: one byte more is unreadable.
        let one = |value: String| resolve(&headers(&[("x-real-ip", &value)]));
        assert_eq!(one(padded(MAX_ENTRY_LEN)), Some(ip("203.0.113.7")));
        assert_eq!(one(padded(MAX_ENTRY_LEN + 1)), Some(ip(PROXY)));
    }

    #[test]
    fn work_is_bounded() {
        let c = behind_proxy(ProxyHeader::XForwardedFor);
        // 10,000 trusted entries: the walk stops after MAX_HOPS.
        let many = vec!["10.0.0.3"; 10_000].join(", ");
        let h = headers(&[("x-forwarded-for", &many)]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &h), Some(ip("10.0.0.3")));
        // 10,000 entries with the client at the right.
        let many = format!("{}, 203.0.113.7", vec!["1.2.3.4"; 10_000].join(", "));
        let h = headers(&[("x-forwarded-for", &many)]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &h), Some(ip("203.0.113.7")));
        // One enormous entry is unreadable.
        let huge = "9".repeat(100_000);
        let h = headers(&[("x-forwarded-for", &huge)]);
        assert_eq!(c.resolve(Some(ip(PROXY)), &h), Some(ip(PROXY)));
        // Many lines.
        let mut h = HeaderMap::new();
        for _ in 0..10_000 {
            h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        }
        assert_eq!(c.resolve(Some(ip(PROXY)), &h), Some(ip("10.0.0.3")));
    }

    #[test]
    fn an_entry_of_exactly_max_entry_len_bytes_is_read() {
        let c = behind_proxy(ProxyHeader::XForwardedFor);
        let resolve = |entry: String| {
            let value = format!("1.2.3.4,{entry}");
            c.resolve(Some(ip(PROXY)), &headers(&[("x-forwarded-for", &value)]))
        };
        assert_eq!(resolve(padded(MAX_ENTRY_LEN)), Some(ip("203.0.113.7")));
        assert_eq!(resolve(padded(MAX_ENTRY_LEN + 1)), Some(ip(PROXY)));
    }

    #[test]
    fn an_overlong_leftmost_entry_is_unreadable_even_if_it_holds_an_address() {
        let c = behind_proxy(ProxyHeader::XForwardedFor);
        let resolve =
            |value: &str| c.resolve(Some(ip(PROXY)), &headers(&[("x-forwarded-for", value)]));
        let overlong = format!("{:<300}", "203.0.113.7");
        assert_eq!(resolve(&overlong), Some(ip(PROXY)));
        assert_eq!(
            resolve(&format!("{overlong}, 10.0.0.3")),
            Some(ip("10.0.0.3"))
        );
    }

    #[test]
    fn non_utf8_header_values_fall_back() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        let c = behind_proxy(ProxyHeader::XForwardedFor);
        assert_eq!(c.resolve(Some(ip(PROXY)), &h), Some(ip(PROXY)));
    }

    #[test]
    fn peer_addr_reads_the_extensions() {
        let mut ext = http::Extensions::new();
        assert_eq!(peer_addr(&ext), None);
        ext.insert(ip("192.0.2.1"));
        assert_eq!(peer_addr(&ext), Some(ip("192.0.2.1")));
        ext.insert(SocketAddr::new(ip("192.0.2.2"), 80));
        assert_eq!(peer_addr(&ext), Some(ip("192.0.2.2")));
        #[cfg(feature = "axum")]
        {
            ext.insert(axum::extract::ConnectInfo(SocketAddr::new(
                ip("192.0.2.3"),
                80,
            )));
            assert_eq!(peer_addr(&ext), Some(ip("192.0.2.3")));
        }
    }
}
