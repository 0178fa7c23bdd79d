//! Values that come from outside and are checked once, when they are built:
//! after that, a value of these types is known to be valid everywhere. Kept
//! free of other modules' types, so that every layer can use them.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of a source (a school, with its own secret): part of the webhook
/// URL `/webhooks/thinkific/{source}`, of stored rows and of forwarded ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "source name `{0}` is invalid: use 1 to 64 letters, digits, `-` or `_` (it becomes part of the webhook URL)"
)]
pub struct InvalidSourceName(String);

impl SourceName {
    /// The source `--secret` configures, served at `/webhooks/thinkific`.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(name: &str) -> Result<SourceName, InvalidSourceName> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(SourceName(name.to_owned()))
        } else {
            Err(InvalidSourceName(name.to_owned()))
        }
    }

    pub fn default_source() -> SourceName {
        SourceName(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SourceName {
    type Err = InvalidSourceName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceName::parse(s)
    }
}

impl TryFrom<String> for SourceName {
    type Error = InvalidSourceName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SourceName::parse(&s)
    }
}

impl From<SourceName> for String {
    fn from(s: SourceName) -> String {
        s.0
    }
}

impl Deref for SourceName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by source name be looked up with a `&str` (a URL segment).
impl std::borrow::Borrow<str> for SourceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SourceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SourceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SourceName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A secret (webhook key or API token). Never printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Empty or only whitespace: never a usable key or token.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_are_checked_when_built() {
        for ok in ["default", "acme", "acme_x", "school-2", &"a".repeat(64)] {
            assert_eq!(SourceName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a b", "a/b", "é", "a.b", &"a".repeat(65)] {
            let e = SourceName::parse(bad).unwrap_err();
            assert!(e.to_string().contains("1 to 64 letters"), "{e}");
        }
        let from_toml: Result<SourceName, _> = serde_json::from_str("\"no/slash\"");
        assert!(from_toml.is_err());
    }
}
