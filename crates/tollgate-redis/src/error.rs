//! Configuration errors: what [`RedisStoreBuilder::build`](crate::RedisStoreBuilder::build)
//! and [`from_env`](crate::from_env) reject, before any request is served.

/// Why a Redis store could not be configured. Never returned because Redis is unreachable:
/// connections are made lazily, and the [`FallbackStore`](crate::FallbackStore) covers an
/// unreachable Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The builder was given no URL, cluster nodes or pool.
    #[error("no Redis connection configured: give a URL (`RedisStoreBuilder::url(\"redis://host:6379\")`), cluster nodes (`cluster`), or a deadpool-redis pool (`pool`, with the `deadpool` feature)")]
    NoConnection,
    /// The URL could not be parsed (or names TLS, `rediss://`, without the `tls` feature).
    /// The password, if any, is not shown.
    #[error("invalid Redis URL `{url}` (expected `redis://[user:password@]host[:port][/db]`, `rediss://...` with the `tls` feature of tollgate or tollgate-redis, or `unix:///path`): {source}")]
    InvalidUrl {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the Redis client said.
        #[source]
        source: redis::RedisError,
    },
    /// A cluster was asked for with no node.
    #[error("a Redis Cluster needs at least one node URL")]
    EmptyCluster,
    /// An environment variable of the fallback settings
    /// ([`FALLBACK_VARIABLES`](crate::env::FALLBACK_VARIABLES)) holds something else than
    /// a whole number of at least 1.
    #[error("environment variable {variable}={value:?}: expected {expected}")]
    InvalidEnv {
        /// The variable.
        variable: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
}

/// `url` with the password of its user info, and the value of any query parameter that
/// names a secret (`password=`, `auth=`, `token=`), replaced by `***`, for messages and
/// logs. The user info ends at the last `@`: a password written without encoding may hold
/// `/`, `?`, `#` or `@` (`redis://u:top/secret@host`, `redis://u:p#ss@host` are still
/// hidden), unless that `@` is a query parameter's (`?client_name=svc@host`: a `?` or `#`
/// before it is followed by a `name=`). A URL without `://` (a mistyped scheme,
/// `redis//u:p@host`) is read as all user info and place. When in doubt it hides too much.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(scheme_end) => url.split_at(scheme_end + 3),
        None => ("", url),
    };
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = match rest.rfind('@') {
        // A query parameter's `@`: the user info's, if any, comes before the query.
        Some(at) if at > query && rest[query..at].contains('=') => rest[..query].rfind('@'),
        at => at,
    };
    let (userinfo, after) = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            if !userinfo.contains(':') && !user.is_empty() {
                // `redis://password@host` is also accepted by some clients: hide it all.
                ("***@".to_string(), &rest[at + 1..])
            } else {
                (format!("{user}:***@"), &rest[at + 1..])
            }
        }
        None => (String::new(), rest),
    };
    let (place, query) = after.split_once('?').unwrap_or((after, ""));
    let mut out = format!("{scheme}{userinfo}{place}");
    if after.contains('?') {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = name.to_ascii_lowercase();
            if pair.contains('=')
                && ["pass", "auth", "token", "secret"]
                    .iter()
                    .any(|s| lower.contains(s))
            {
                out.push_str(name);
                out.push_str("=***");
            } else {
                out.push_str(pair);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("rediss://default:s3cret@eu1.example.com:6379"),
            "rediss://default:***@eu1.example.com:6379"
        );
        assert_eq!(
            redact("redis://:s3cret@localhost/0"),
            "redis://:***@localhost/0"
        );
        assert_eq!(redact("redis://s3cret@localhost"), "redis://***@localhost");
        assert_eq!(
            redact("redis://localhost:6379/0"),
            "redis://localhost:6379/0"
        );
        assert_eq!(redact("not a url"), "not a url");
        // A mistyped scheme: the URL does not parse, and its error must not show it.
        assert_eq!(redact("redis//u:hunter2@h:6379"), "redis//u:***@h:6379");
        assert_eq!(redact("redis:/:hunter2@h"), "redis:***@h");
        assert_eq!(redact("hunter2@h"), "***@h");
        // Written without encoding, a password may hold `/` or `@`.
        assert_eq!(
            redact("redis://u:top/secret@127.0.0.1:6379/"),
            "redis://u:***@127.0.0.1:6379/"
        );
        assert_eq!(
            redact("redis://u:a@b@127.0.0.1:6379/0"),
            "redis://u:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0?client_name=svc@host"),
            "redis://127.0.0.1:6379/0?client_name=svc@host"
        );
        assert_eq!(
            redact("redis://u:s3@127.0.0.1:6379/0?client_name=svc@host"),
            "redis://u:***@127.0.0.1:6379/0?client_name=svc@host"
        );
        // `?` and `#` in a password, the URLs a client refuses, whose error prints them.
        assert_eq!(
            redact("redis://u:pa?ss@host:6379/0"),
            "redis://u:***@host:6379/0"
        );
        assert_eq!(
            redact("redis://u:p#ss@host:6379"),
            "redis://u:***@host:6379"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0?protocol=resp3&password=s3cret"),
            "redis://127.0.0.1:6379/0?protocol=resp3&password=***"
        );
    }
}
