//! Structured-field pieces of the IETF `RateLimit` and `RateLimit-Policy` fields
//! (RFC 9651).

/// The largest integer a structured field may carry (at most 15 digits).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// `n`, clamped to what a structured-field integer may carry.
pub(crate) fn clamp(n: u64) -> u64 {
    n.min(SF_INTEGER_MAX)
}

/// A bucket name as a structured-field string (RFC 9651 §3.3.3): `:` becomes `-`, anything
/// outside printable ASCII becomes `_`, `"` and `\` are escaped.
pub(crate) fn string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            ':' => out.push('-'),
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_structured_field_strings() {
        assert_eq!(string("default:ip"), "\"default-ip\"");
        assert_eq!(string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(string("é"), "\"_\"");
        assert_eq!(clamp(u64::MAX), 999_999_999_999_999);
    }
}
