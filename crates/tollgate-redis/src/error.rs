//! Configuration errors: what [`RedisStoreBuilder::build`](crate::RedisStoreBuilder::build)
//! and [`from_env`](crate::from_env) reject, before any request is served.

use tollgate_limits::redact::hide_user_info;

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
/// logs. The user info is taken to end at the last `@` ([`hide_user_info`]): a password
/// written without encoding may hold `/`, `?`, `#`, `=` or `@`, and a URL holding one may
/// not parse, which is when its error prints it. So an `@` in a query
/// (`?client_name=svc@host`) hides what comes before it too: it hides too much rather
/// than too little (a review: `redis://u:Ab?cd=ef@host`, its `?cd=` read as a query before
/// the `@`, was printed whole).
pub(crate) fn redact(url: &str) -> String {
    let hidden = hide_user_info(url);
    let Some((place, query)) = hidden.split_once('?') else {
        return hidden;
    };
    let mut out = format!("{place}?");
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
        // An `@` in a query cannot be told from a password's: hidden too much.
        assert_eq!(
            redact("redis://127.0.0.1:6379/0?client_name=svc@host"),
            "redis://127.0.0.1:***@host"
        );
        assert_eq!(
            redact("redis://u:s3@127.0.0.1:6379/0?client_name=svc@host"),
            "redis://u:***@host"
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
        // `?` or `#` and then a `name=` in a password: not a query (a review: printed whole).
        for password in ["Ab?cd=ef", "Ab#cd=ef", "x/y?z=1", ":Zq9?k=Lp2"] {
            let url = format!("redis://default:{password}@127.0.0.1:35792");
            assert_eq!(redact(&url), "redis://default:***@127.0.0.1:35792", "{url}");
        }
        assert_eq!(
            redact("redis://default:p@ss?w=1@127.0.0.1:35792"),
            "redis://default:***@127.0.0.1:35792"
        );
    }
}
