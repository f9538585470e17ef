//! [`Key`]: whose budget a limit spends (client IP, user, API key, tenant, a header, or any
//! function of the request).

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;
use sha2::{Digest, Sha256};
use tollgate_limits::StoreKey;

/// A function of the request that names a key, or `None` when the request has none.
pub(crate) type Extractor = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Keys longer than this are stored as their digest (bounded memory per key).
pub(crate) const MAX_PLAIN_KEY: usize = 128;

/// Whose budget a limit spends. Cheap to clone.
///
/// A limit whose key is absent from a request (nobody signed in, no API key sent) does not
/// apply to that request; an empty value (`x-api-key:` sent blank, a function returning
/// `Some("")`) counts as absent. So a key a client can leave out or blank is never the
/// only limit on a route: pair it with one it cannot (`per_ip`). Keys that carry secrets
/// (API keys, `Authorization`, cookies, or any
/// key marked [`Key::hashed`]) reach the store only as a SHA-256 digest, the same in every
/// process, so instances sharing Redis share the bucket and Redis never holds the secret.
/// A digest is a pseudonym, not a lock: it is taken with a fixed, public prefix and no
/// secret of yours, so whoever reads the store's keys (Redis's `SCAN`, `MONITOR`, a backup)
/// finds any value that can be guessed by hashing guesses: an HTTP Basic credential (a
/// user name and a common password), an e-mail, an IP address, a short id (a review
/// recovered `alice:Summer2024!` from its key in a fraction of a millisecond). Key such a
/// limit on what cannot be guessed (an API key, a bearer token), or on the user the
/// authentication found rather than the credential it checked. Keys not hashed (the client
/// IP, [`Key::user`], [`Key::tenant`], [`Key::header`] of any header but `Authorization`,
/// `Proxy-Authorization` and `Cookie`, a function's) are stored as they are, in the store's
/// keys and in the logs of overrides and resets.
///
/// A credential read from a header is charged whatever its value: key a limit on a credential
/// only behind the authentication that checks it, so that keys a client invents are refused
/// before they are counted, or on what that authentication found (a request extension, as
/// [`Key::tenant`] below). An authentication layer that asks for a credential on some paths
/// only must ask on every spelling the limiter classifies as those paths (it reads a path
/// normalised: `//v1/users` and `/./v1/users` are `/v1/users` to it), or remove the
/// credential from the requests it did not check. Otherwise anyone can spend a client's
/// budget with its key, tell a key in use from an invented one by the budget left, and fill
/// the store with invented keys.
///
/// ```
/// use tollgate::{Key, Policy};
///
/// struct Org(String);
/// let policy = Policy::named("api")
///     .limit(Key::api_key("x-api-key"), "60/60s")
///     .limit(Key::tenant(|parts| parts.extensions.get::<Org>().map(|o| o.0.clone())), "100/min")
///     .limit(Key::header("x-device-id"), "10/s");
/// assert_eq!(Key::api_key("x-api-key").kind(), "api_key");
/// assert_eq!(Key::header("X-Device-Id").kind(), "header:x-device-id");
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct Key {
    pub(crate) source: Source,
    pub(crate) kind: Arc<str>,
    pub(crate) hashed: bool,
}

#[derive(Clone)]
pub(crate) enum Source {
    /// The client IP, as the limiter's [`ClientIp`](crate::ClientIp) resolves it.
    Ip,
    /// The client IP's network: IPv6 addresses folded to their first so many bits.
    Network(u8),
    /// The limiter's identity function ([`LimiterBuilder::identity`](crate::LimiterBuilder::identity)).
    User,
    /// One key for every request.
    Global,
    /// A header's value; the name is checked when the limiter is built.
    Header(Result<HeaderName, String>),
    /// A function of the request.
    Custom(Extractor),
}

impl Source {
    /// For a key of the client's address ([`Source::Ip`], [`Source::Network`]), the IPv6
    /// prefix it folds to: `Some(None)` for the clients' own
    /// ([`ClientIp::ipv6_prefix`](crate::ClientIp::ipv6_prefix)); `None` for any other key.
    pub(crate) fn address_network(&self) -> Option<Option<u8>> {
        match self {
            Source::Ip => Some(None),
            Source::Network(prefix) => Some(Some(*prefix)),
            _ => None,
        }
    }
}

/// An `Authorization` (or `Proxy-Authorization`) value as one credential: the scheme
/// case-folded, the blanks around it and after it dropped (RFC 9110 §11.1: a scheme is
/// case-insensitive; `1*SP` separates it from the credential). `None` for a value that
/// already reads so, or is no scheme and credential (a bare token, not UTF-8).
pub(crate) fn credential(raw: &[u8]) -> Option<String> {
    // Every blank Unicode has: an authentication layer splitting on whitespace takes a
    // non-breaking space as one (a re-check spent 3 a minute 20 times over with them).
    let blank = char::is_whitespace;
    let text = std::str::from_utf8(raw).ok()?.trim_matches(blank);
    let (scheme, rest) = text.split_once(blank)?;
    let rest = rest.trim_start_matches(blank);
    let plain = text.len() == raw.len()
        && !scheme.bytes().any(|b| b.is_ascii_uppercase())
        && scheme.len() + 1 + rest.len() == text.len()
        && text.as_bytes()[scheme.len()] == b' ';
    (!plain).then(|| format!("{} {rest}", scheme.to_ascii_lowercase()))
}

impl Key {
    /// `raw` as this key reads it, if not as it is: from an `Authorization` or
    /// `Proxy-Authorization` header, the credential it holds ([`credential`]). The one
    /// reading of a request's value and an operator's.
    pub(crate) fn read_credential(&self, raw: &[u8]) -> Option<String> {
        self.reads_credentials().then(|| credential(raw)).flatten()
    }

    /// Whether this key reads a credential from an `Authorization` or
    /// `Proxy-Authorization` header ([`Key::read_credential`]).
    pub(crate) fn reads_credentials(&self) -> bool {
        matches!(
            &self.source,
            Source::Header(Ok(h)) if *h == http::header::AUTHORIZATION
                || *h == http::header::PROXY_AUTHORIZATION
        )
    }

    /// The client IP ([`LimiterBuilder::client_ip`](crate::LimiterBuilder::client_ip)):
    /// the TCP peer, or the forwarded client behind trusted proxies; IPv6 by its /64.
    pub fn ip() -> Self {
        Self::new(Source::Ip, "ip")
    }

    /// The client's network: the client IP of [`Key::ip`] with an IPv6 address folded to
    /// its first `ipv6_prefix` bits (`2001:db8:aa::/48`), an IPv4 address kept whole. Kind
    /// `network:<bits>`. A backstop beside [`Key::ip`]: IPv6 clients are keyed by their
    /// /64, and whoever holds a /56 (many home connections) or a /48 (a tunnel broker gives
    /// one away) holds 256 or 65,536 of those, each with its own per-IP budget; a limit per
    /// /48 bounds what one such holder can spend together. (A prefix longer than the
    /// clients', [`ClientIp::ipv6_prefix`](crate::ClientIp::ipv6_prefix), bounds nothing
    /// more than [`Key::ip`] does.) A prefix above 128 is a build error
    /// ([`BuildError::BadNetworkPrefix`](crate::BuildError::BadNetworkPrefix)).
    ///
    /// ```
    /// use tollgate::{Key, Policy};
    ///
    /// // 20 failed attempts a minute per client, 100 per /48 together.
    /// let guard = Policy::failed_auth_per_ip("20/min").limit(Key::network(48), "100/min");
    /// assert_eq!(Key::network(48).kind(), "network:48");
    /// # let _ = guard;
    /// ```
    pub fn network(ipv6_prefix: u8) -> Self {
        Self::new(
            Source::Network(ipv6_prefix),
            &format!("network:{ipv6_prefix}"),
        )
    }

    /// The signed-in user ([`LimiterBuilder::identity`](crate::LimiterBuilder::identity));
    /// absent for anonymous requests.
    pub fn user() -> Self {
        Self::new(Source::User, "user")
    }

    /// One bucket shared by every request: a backstop for the whole service.
    pub fn global() -> Self {
        Self::new(Source::Global, "global")
    }

    /// The API key sent in `header` (e.g. `x-api-key`, or `authorization` for bearer
    /// tokens). Always hashed before it reaches the store. Kind `api_key`. From
    /// `authorization` (or `proxy-authorization`) the key is the credential, not its
    /// spelling: the scheme is read case-insensitively and the blanks around it are dropped
    /// (RFC 9110 §11), so `Bearer t`, `bearer t` and `Bearer   t` are one key, as an
    /// authentication layer reading the token takes them (a review spent 3 a minute 113
    /// times over with spellings of one token). Of a header sent several times, the first.
    pub fn api_key(header: &str) -> Self {
        let mut key = Self::new(Source::Header(parse_header(header)), "api_key");
        key.hashed = true;
        key
    }

    /// The value of `header`. Hashed if the header is `authorization`,
    /// `proxy-authorization` or `cookie` (or if [`Key::hashed`] is used); an
    /// `authorization` credential read as [`Key::api_key`] reads it. Kind `header:<name>`.
    /// Of a header sent several times, the first. A header the client writes as it likes
    /// is a key it can change at will: `cookie`, whole, changes with every cookie added;
    /// key by the session a cookie names with [`Key::custom`] (or by
    /// [`LimiterBuilder::identity`](crate::LimiterBuilder::identity)) instead.
    pub fn header(name: &str) -> Self {
        Self::of_header(
            name,
            &format!("header:{}", name.trim().to_ascii_lowercase()),
        )
    }

    /// The tenant named by the value of `header` (e.g. `x-tenant-id`): [`Key::header`] under
    /// kind `tenant`. A tenant found some other way is [`Key::tenant`]; the two share the
    /// kind, and so a tenant's override ([`Limiter::set_override`](crate::Limiter::set_override)):
    /// a header any client writes beside a verified tenant lets a client spend another's.
    pub fn tenant_header(header: &str) -> Self {
        Self::of_header(header, "tenant")
    }

    /// The value of header `name`, under kind `kind`; hashed if the header carries secrets
    /// (`authorization`, `proxy-authorization`, `cookie`). A bad name is a build error.
    fn of_header(name: &str, kind: &str) -> Self {
        let parsed = parse_header(name);
        let secret = matches!(
            &parsed,
            Ok(h) if *h == http::header::AUTHORIZATION
                || *h == http::header::PROXY_AUTHORIZATION
                || *h == http::header::COOKIE
        );
        let mut key = Self::new(Source::Header(parsed), kind);
        key.hashed = secret;
        key
    }

    /// The tenant (organisation, team) a request belongs to, from a function of the request.
    /// Kind `tenant`.
    pub fn tenant<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Self::custom("tenant", f)
    }

    /// Any function of the request, under a kind name of your own (shown in logs and used
    /// in bucket names: letters, digits, `_`, `-`, `.`, other than `global` and `all`,
    /// which are [`Key::global`]'s, `ip` and `user`, which are [`Key::ip`]'s and
    /// [`Key::user`]'s, and other than a built-in kind's part before its `:`, `header` and
    /// `network`, when the limiter has such a kind; checked when the limiter is built).
    ///
    /// A function that falls back to the client's address takes it as the limiter does,
    /// from the same [`ClientIp`](crate::ClientIp): [`peer_addr`](crate::peer_addr) alone
    /// is the proxy's address behind one (every client one key), and a forwarding header
    /// read by hand is whatever a client writes there. An API key, else the address:
    ///
    /// ```
    /// use tollgate::{peer_addr, ClientIp, Key, Limiter, Policy};
    ///
    /// let client_ip = ClientIp::peer().trust_proxies(["10.0.0.0/8"]);
    /// let ip = client_ip.clone();
    /// let caller = Key::custom("caller", move |parts| {
    ///     match parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
    ///         Some(api_key) if !api_key.is_empty() => Some(format!("key:{api_key}")),
    ///         _ => ip
    ///             .resolve(peer_addr(&parts.extensions), &parts.headers)
    ///             .map(|addr| format!("ip:{}", ip.key(addr))),
    ///     }
    /// });
    /// let limiter = Limiter::builder()
    ///     .client_ip(client_ip)
    ///     .route("/*", Policy::named("default").limit(caller.hashed(), "100/min"))
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn custom<F>(kind: &str, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Self::new(Source::Custom(Arc::new(f)), kind)
    }

    /// Store this key only as a digest (for keys that carry secrets). A kind is stored one
    /// way throughout a limiter: the same kind hashed in one policy and as given in another
    /// is a build error ([`BuildError::KeyKindStoredTwoWays`](crate::BuildError::KeyKindStoredTwoWays)),
    /// since an override, a peek or a reset of the kind would reach only one of them.
    ///
    /// The digest (SHA-256) is made of the whole key on each request, refused ones
    /// included, at about half a nanosecond a byte: a key taken from a header costs what
    /// the client makes it (a review sent 60 KB bearer tokens, each 34 µs of hashing, ten
    /// times a plain refused request, within hyper's limit on a request's headers).
    /// Where that matters, bound the header's length before the limiter (refuse a longer
    /// credential with a `400`), or key on what authentication found.
    pub fn hashed(mut self) -> Self {
        self.hashed = true;
        self
    }

    /// The key's kind: `ip`, `network:<bits>`, `user`, `api_key`, `tenant`, `global`,
    /// `header:<name>`, or a custom kind. What a refusal's log, metrics and the rate-limit
    /// headers show instead of the key itself (the logs of an override or a reset show the
    /// key as stored: its digest if it is hashed, else as it is).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn new(source: Source, kind: &str) -> Self {
        Self {
            source,
            kind: kind.into(),
            hashed: false,
        }
    }

    /// Whether the kind name is usable in bucket names: a custom kind of letters, digits,
    /// `_`, `-` and `.` (as [`BuildError::BadKeyKind`](crate::BuildError::BadKeyKind) says);
    /// the built-in kinds also hold `:` (`header:<name>`). `global` and `all` are
    /// [`Key::global`]'s alone: its bucket is the policy's own name and its key `all`, so a
    /// custom kind `global` would put a key taken from the request (`ip:203.0.113.9`)
    /// right after the policy's name, on another limit's store key, and a custom kind
    /// `all` a key (`29944158`) on a fixed window's (`<policy>:all:<window>`: a review's
    /// client reset a global 3 a minute with each request, 18 admitted). `ip` and `user`
    /// are [`Key::ip`]'s and [`Key::user`]'s: a kind names the limiter's per-key overrides
    /// (`override:<kind>:<key>`, one for every policy of the kind), so a custom kind of
    /// either name, read from what a client sends, would spend the override of another
    /// client's address or account (a review: 3 requests saying `192.0.2.9` spent that
    /// address's override, and its first request was refused).
    pub(crate) fn kind_is_valid(&self) -> bool {
        let custom = matches!(self.source, Source::Custom(_));
        let reserved = custom && matches!(&*self.kind, "global" | "all" | "ip" | "user");
        !reserved
            && !self.kind.is_empty()
            && self.kind.len() <= 64
            && self.kind.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') || (c == ':' && !custom)
            })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kind", &self.kind)
            .field("hashed", &self.hashed)
            .finish()
    }
}

fn parse_header(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| name.to_string())
}

/// The form of a raw key that reaches the store: the key itself when it is short,
/// printable, free of braces and not secret; otherwise `#` and the first 128 bits of its
/// SHA-256 in hex. Stable across processes and machines. (Braces are Redis Cluster hash
/// tags: a client-chosen `{x}` would otherwise pick the cluster node its keys land on.)
pub(crate) fn store_key(raw: &[u8], secret: bool) -> String {
    let mut out = StoreKey::new();
    push_store_key(raw, secret, &mut out);
    out.into()
}

/// A key an operator names (an override to set or remove, a bucket to look up or reset):
/// a stored digest (`#` and 32 hex digits, as the lists of overrides and buckets show a
/// hashed key) names itself; any other value is stored as [`store_key`] stores it. (A
/// review: an override on a hashed kind could be removed only by its raw credential, put
/// in a URL path that access logs keep; its digest named a digest of the digest.) Not for
/// a request's keys: a client must not name another's bucket by its digest.
pub(crate) fn operator_key(raw: &str, secret: bool) -> String {
    if is_digest(raw) {
        raw.to_string()
    } else {
        store_key(raw.as_bytes(), secret)
    }
}

/// Whether `raw` is a key as [`store_key`] stores a digest: `#` and 32 hex digits.
pub(crate) fn is_digest(raw: &str) -> bool {
    raw.len() == 33
        && raw.starts_with('#')
        && raw[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// [`store_key`], appended to `out` (no allocation for keys that fit inline).
pub(crate) fn push_store_key(raw: &[u8], secret: bool, out: &mut StoreKey) {
    let plain_ok = !secret
        && !raw.is_empty()
        && raw.len() <= MAX_PLAIN_KEY
        && raw[0] != b'#'
        && raw
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'{' && *b != b'}');
    // (Printable ASCII: `push_ascii` takes it.)
    if plain_ok && out.push_ascii(raw) {
        return;
    }
    let digest = Sha256::new()
        .chain_update(b"tollgate-key\0")
        .chain_update(raw)
        .finalize();
    let mut hex = [0u8; 33];
    hex[0] = b'#';
    for (i, byte) in digest[..16].iter().enumerate() {
        hex[1 + 2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 + 2 * i] = HEX[usize::from(byte & 0xf)];
    }
    out.push_ascii(&hex);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_braces_are_hashed_so_clients_cannot_choose_a_cluster_slot() {
        assert_eq!(store_key(b"user-42", false), "user-42");
        for raw in [&b"{x}"[..], b"a{b", b"b}"] {
            let k = store_key(raw, false);
            assert!(
                k.starts_with('#') && !k.contains('{') && !k.contains('}'),
                "{k}"
            );
        }
    }

    #[test]
    fn secrets_are_hashed_stably() {
        let k = store_key(b"sk_live_123", true);
        // A fixed value: every process and machine must compute the same key.
        assert_eq!(k, store_key(b"sk_live_123", true));
        assert_eq!(k.len(), 33);
        assert!(k.starts_with('#'));
        assert!(!k.contains("sk_live"));
        // Computed independently: SHA-256("tollgate-key\0sk_live_123"), first 16 bytes.
        assert_eq!(k, "#f2795ce9bb62232f9699b5061dbbc985");
        assert_ne!(k, store_key(b"sk_live_124", true));
    }

    /// One credential, however its scheme is spelled and spaced; distinct tokens apart.
    #[test]
    fn a_credential_is_read_whatever_its_spelling() {
        for spelling in [
            "Bearer tok",
            "bearer tok",
            "BeArEr tok",
            "Bearer   tok",
            "Bearer\ttok",
            " Bearer tok ",
            "Bearer\u{a0}tok\u{3000}",
        ] {
            let read = credential(spelling.as_bytes()).unwrap_or_else(|| spelling.to_string());
            assert_eq!(read, "bearer tok", "{spelling:?}");
        }
        assert_eq!(credential(b"bearer tok"), None, "already so");
        assert_eq!(credential(b"Bearer TOK").as_deref(), Some("bearer TOK"));
        assert_eq!(credential(b"tok"), None, "a bare token");
        assert_eq!(credential(b"Basic a b").as_deref(), Some("basic a b"));
    }

    #[test]
    fn plain_keys_stay_readable_unless_odd() {
        assert_eq!(store_key(b"203.0.113.7", false), "203.0.113.7");
        assert_eq!(store_key(b"u_42", false), "u_42");
        // Spaces, non-ASCII, a leading '#', or a very long key: digest.
        for odd in [
            b"a b".to_vec(),
            "é".as_bytes().to_vec(),
            b"#3d3b".to_vec(),
            vec![b'a'; MAX_PLAIN_KEY + 1],
            vec![0xff, 0xfe],
        ] {
            let k = store_key(&odd, false);
            assert!(k.starts_with('#') && k.len() == 33, "{k}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(Key::ip().kind(), "ip");
        assert_eq!(Key::network(56).kind(), "network:56");
        assert!(Key::network(48).kind_is_valid());
        assert!(Key::api_key("x-api-key").hashed);
        assert!(Key::header("Authorization").hashed);
        assert!(!Key::header("x-device").hashed);
        assert!(Key::header("bad header").source_is_bad_header());
        assert!(!Key::custom("a b", |_| None).kind_is_valid());
        assert!(Key::custom("plan-tier", |_| None).kind_is_valid());
        assert!(!Key::custom("global", |_| None).kind_is_valid());
        assert!(!Key::custom("all", |_| None).kind_is_valid());
        assert!(!Key::custom("ip", |_| None).kind_is_valid());
        assert!(!Key::custom("user", |_| None).kind_is_valid());
        assert!(Key::ip().kind_is_valid() && Key::user().kind_is_valid());
        assert!(Key::global().kind_is_valid());
    }

    #[test]
    fn debug_shows_the_kind_and_whether_hashed() {
        assert_eq!(
            format!("{:?}", Key::api_key("x-api-key")),
            "Key { kind: \"api_key\", hashed: true }"
        );
        assert_eq!(
            format!("{:?}", Key::network(48)),
            "Key { kind: \"network:48\", hashed: false }"
        );
    }

    impl Key {
        fn source_is_bad_header(&self) -> bool {
            matches!(self.source, Source::Header(Err(_)))
        }
    }
}
