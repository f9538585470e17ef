//! Hiding the credentials of URLs in text that is printed: a store's URL in its errors and
//! `Debug`, a configuration message that quotes one.
//!
//! ```
//! use tollgate_limits::redact::{hide_url_credentials, hide_user_info};
//!
//! assert_eq!(hide_user_info("redis://default:s3cret@db:6379"), "redis://default:***@db:6379");
//! assert_eq!(
//!     hide_url_credentials(r#"invalid type: string "redis://u:p?w=1@db", expected struct"#),
//!     r#"invalid type: string "redis://u:***@db", expected struct"#,
//! );
//! ```

/// `url` with its user info's password (everything between `:` and the last `@`; all of
/// it without a `:`) replaced by `***`. The user info is taken to end at the last `@`,
/// whatever comes before it (`/`, `?`, `#`, `=` written unencoded in a password), so it
/// hides too much rather than too little: an `@` in a query (`?client_name=svc@host`) is
/// taken for the user info's. Text without `://` is read as all user info and place
/// (`redis//u:p@host`, a mistyped scheme, keeps `redis//u:***@host`).
pub fn hide_user_info(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(end) => url.split_at(end + 3),
        None => ("", url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, place) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***{place}"),
        // `redis://password@host` is also accepted by some clients: hide it all.
        None => format!("{scheme}***{place}"),
    }
}

/// `text` with [`hide_user_info`] applied to every URL in it: each `://` with the scheme
/// before it and what follows up to whitespace or a quote (`"`, `'`, `` ` ``) or `<`, `>`.
/// For messages that may quote a URL (a review: a configuration file's parse error quoted a
/// misplaced `redis://user:password@host`, and a reload logged it).
pub fn hide_url_credentials(text: &str) -> String {
    let ends = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // (After the last character that is not a scheme's, whatever its length: a
        // fuzzer's `é` before `userl://` made this cut it in two, a panic.)
        let start = rest[..sep]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[sep..].find(ends).map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..start]);
        out.push_str(&hide_user_info(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::hide_url_credentials;

    // (`hide_user_info` alone: the tests of tollgate-redis's `redact`, which uses it.)
    #[test]
    fn every_url_of_a_message_is_hidden() {
        assert_eq!(
            hide_url_credentials(
                "unknown variant `redis://d:P9@127.0.0.1:1`, expected one of `memory`"
            ),
            "unknown variant `redis://d:***@127.0.0.1:1`, expected one of `memory`"
        );
        assert_eq!(
            hide_url_credentials("a rediss://x:1@a and redis://y:2@b, then c://d"),
            "a rediss://x:***@a and redis://y:***@b, then c://d"
        );
        assert_eq!(hide_url_credentials("no url here"), "no url here");
        assert_eq!(
            hide_url_credentials("obaèuserl://u:p@1 ="),
            "obaèuserl://u:***@1 ="
        );
    }
}
