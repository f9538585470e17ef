//! serde for the types a configuration file names (feature `serde`): [`Quota`] as its
//! text (`100/min`), [`Algorithm`] by name. [`FailureMode`](crate::FailureMode) derives
//! its impls (`fallback`, `open`, `closed`).

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

use crate::{Algorithm, Quota};

/// Reads the syntax of [`Quota::parse`] (`100/min`, `5/30min`, `10000/day`); an error
/// says what [`Quota::parse`] says.
impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Quota::parse(&text).map_err(de::Error::custom)
    }
}

/// Writes the quota as [`Quota::parse`] reads it (its `Display`).
impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The names a configuration gives the algorithms of a quota alone.
const ALGORITHMS: &[&str] = &["sliding", "exact", "fixed"];

/// Reads an algorithm by name: `sliding` ([`Algorithm::SlidingWindow`] in
/// [`DEFAULT_SEGMENTS`](crate::DEFAULT_SEGMENTS) segments, as
/// [`Limit::sliding`](crate::Limit::sliding) makes it), `exact` ([`Algorithm::SlidingLog`])
/// or `fixed` ([`Algorithm::FixedWindow`]). A token bucket has no name here: it needs its
/// burst ([`Limit::token_bucket`](crate::Limit::token_bucket)).
impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl de::Visitor<'_> for Name {
            type Value = Algorithm;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Algorithm, E> {
                match name {
                    "sliding" => Ok(Algorithm::SlidingWindow {
                        segments: crate::DEFAULT_SEGMENTS,
                    }),
                    "exact" => Ok(Algorithm::SlidingLog),
                    "fixed" => Ok(Algorithm::FixedWindow),
                    _ => Err(de::Error::unknown_variant(name, ALGORITHMS)),
                }
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts() {
        let q: Quota = serde_json::from_str("\"100/min\"").unwrap();
        assert_eq!(q, Quota::per_minute(100));
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"100/min\"");
        let a: Algorithm = serde_json::from_str("\"exact\"").unwrap();
        assert_eq!(a, Algorithm::SlidingLog);
        let err = serde_json::from_str::<Algorithm>("\"token\"").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unknown variant `token`, expected one of `sliding`, `exact`, `fixed`"
            ),
            "{err}"
        );
        let m: crate::FailureMode = serde_json::from_str("\"closed\"").unwrap();
        assert_eq!(m, crate::FailureMode::Closed);
    }
}
