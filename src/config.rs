//! Configuration: flags > environment (`ENROLLHOOK_*`, handled by clap) >
//! `enrollhook.toml` > defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The name of the source that `POST /webhooks/thinkific` (no name) delivers to.
pub const DEFAULT_SOURCE: &str = "default";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite://enrollhook.db";
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const DEFAULT_CONFIG_FILE: &str = "enrollhook.toml";
pub const DEFAULT_MAX_QUARANTINE: u64 = 100_000;

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
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One school (or Thinkific app) that sends us webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// The school's API key (or the app's client secret).
    pub secret: Option<Secret>,
    /// A query-API token that reads this source's data only.
    pub api_token: Option<Secret>,
    /// The school's Thinkific subdomain (`acme` for acme.thinkific.com), for
    /// `enrollhook thinkific …` (the API key is `secret`).
    pub subdomain: Option<String>,
}

/// `enrollhook.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub database: Option<String>,
    pub secret: Option<Secret>,
    pub api_token: Option<Secret>,
    pub max_body: Option<ByteSize>,
    /// The default source's Thinkific subdomain, for `enrollhook thinkific …`.
    pub subdomain: Option<String>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
}

/// A size in bytes, written as a number or as `512KiB`, `1MiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct ByteSize(pub usize);

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) if n > 0 => Ok(ByteSize(n as usize)),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "expected a size like 1048576 or \"1MiB\", got {other}"
            )),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size: use bytes or a unit, e.g. 1MiB"))?;
        let factor = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}`: use B, KiB, MiB, KB or MB"
                ));
            }
        };
        match n.checked_mul(factor) {
            Some(0) | None => Err(format!("`{s}` is not a usable size")),
            Some(bytes) => Ok(ByteSize(bytes)),
        }
    }
}

impl FileConfig {
    /// Reads the config file. An explicitly named file must exist; the default
    /// `enrollhook.toml` is optional.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<(FileConfig, Option<PathBuf>)> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                if !p.exists() {
                    return Ok((FileConfig::default(), None));
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let config = FileConfig::parse(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        Ok((config, Some(path)))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        let config: FileConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut seen = std::collections::HashSet::new();
        for s in &config.sources {
            validate_source_name(&s.name)?;
            if !seen.insert(s.name.as_str()) {
                anyhow::bail!("source `{}` is configured twice", s.name);
            }
        }
        Ok(config)
    }
}

/// A TOML error that says where, without quoting the line: toml's own message
/// shows the offending line, which may be a `secret = "…"` line.
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("invalid TOML: {}", e.message());
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line_text = text
        .lines()
        .nth(line - 1)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let message = if line_text.contains("secret") || line_text.contains("token") {
        "invalid value (not shown: the line holds a secret)".to_owned()
    } else {
        e.message().to_owned()
    };
    anyhow::anyhow!("invalid TOML at line {line}, column {column}: {message}")
}

pub fn validate_source_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    anyhow::ensure!(
        ok,
        "source name `{name}` is invalid: use 1 to 64 letters, digits, `-` or `_` (it becomes part of the webhook URL)"
    );
    Ok(())
}

/// The sources deliveries are accepted for, by name.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    by_name: BTreeMap<String, Option<Secret>>,
    /// Per-source API tokens: (token, source name).
    tokens: Vec<(Secret, String)>,
}

impl Sources {
    /// `flag_secret` (from `--secret` / `ENROLLHOOK_SECRET`, else the file's
    /// top-level `secret`) configures the default source.
    pub fn resolve(flag_secret: Option<Secret>, file: &FileConfig) -> Sources {
        let mut by_name = BTreeMap::new();
        let mut tokens = Vec::new();
        for s in &file.sources {
            by_name.insert(s.name.clone(), s.secret.clone());
            if let Some(token) = &s.api_token {
                tokens.push((token.clone(), s.name.clone()));
            }
        }
        if let Some(secret) = flag_secret.or_else(|| file.secret.clone()) {
            by_name.insert(DEFAULT_SOURCE.to_owned(), Some(secret));
        }
        Sources { by_name, tokens }
    }

    /// The source whose `api_token` this is. `eq` must compare in constant time.
    pub fn source_for_token(&self, token: &str, eq: fn(&[u8], &[u8]) -> bool) -> Option<&str> {
        // Compare against every token (no early exit) so timing reveals nothing.
        let mut found = None;
        for (t, name) in &self.tokens {
            if eq(token.as_bytes(), t.expose().as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<Option<&Secret>> {
        self.by_name.get(name).map(Option::as_ref)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Sources that have no secret (only usable with `--insecure-skip-verification`).
    pub fn without_secret(&self) -> Vec<&str> {
        self.by_name
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| n.as_str())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// A single unsigned default source, for `--insecure-skip-verification` with no config.
    pub fn insecure_default() -> Sources {
        let mut by_name = BTreeMap::new();
        by_name.insert(DEFAULT_SOURCE.to_owned(), None);
        Sources {
            by_name,
            tokens: Vec::new(),
        }
    }
}

/// What `serve` needs, fully resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub sources: Sources,
    pub insecure_skip_verification: bool,
    pub api_token: Option<Secret>,
    pub max_body: usize,
    pub migrate: bool,
    /// Events per group-commit transaction, at most.
    pub max_batch: usize,
    pub forward: crate::forward::ForwardConfig,
    /// Serve HTTPS with this PEM certificate chain and key.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Deadline for a client to send request headers (and a TLS handshake), and its body.
    pub read_timeout: std::time::Duration,
    /// Deliveries per second per source (None: unlimited).
    pub rate_limit: Option<u32>,
    /// Deliveries per second overall (None: unlimited).
    pub global_rate_limit: Option<u32>,
    /// Group-commit writer tasks; None: what the backend suits (1 on SQLite, 2 on PostgreSQL).
    pub writers: Option<usize>,
    /// Rejected deliveries kept in the quarantine; the oldest beyond this are deleted.
    pub max_quarantine: u64,
    /// Drop raw bodies of events received longer ago than this (None: keep all).
    pub retain_events: Option<std::time::Duration>,
    /// Host names the API and dashboard answer to without --api-token, besides
    /// localhost, loopback addresses and the listen address (see `server::origin`).
    pub allowed_hosts: Vec<String>,
    /// Most client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// `--max-connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl ServeConfig {
    /// Settings for tests and embedding: a database, one default source.
    pub fn new(database_url: impl Into<String>, secret: Option<&str>) -> ServeConfig {
        let sources = match secret {
            Some(s) => Sources::resolve(Some(Secret::new(s)), &FileConfig::default()),
            None => Sources::insecure_default(),
        };
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            database_url: database_url.into(),
            sources,
            insecure_skip_verification: secret.is_none(),
            api_token: None,
            max_body: DEFAULT_MAX_BODY,
            migrate: true,
            max_batch: 512,
            forward: crate::forward::ForwardConfig::default(),
            tls: None,
            read_timeout: std::time::Duration::from_secs(10),
            rate_limit: None,
            global_rate_limit: None,
            writers: None,
            max_quarantine: DEFAULT_MAX_QUARANTINE,
            retain_events: None,
            allowed_hosts: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Refuses configurations that would be unsafe on a public endpoint.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.insecure_skip_verification {
            if self.sources.is_empty() {
                anyhow::bail!("{NO_SECRET_HELP}");
            }
            let unsigned = self.sources.without_secret();
            if !unsigned.is_empty() {
                anyhow::bail!(
                    "source(s) {} have no secret. Set `secret` for each [[source]] in the config file \
                     (the school's API key), or pass --insecure-skip-verification for local experiments only.",
                    unsigned.join(", ")
                );
            }
        }
        if self.api_token.is_none() && !self.sources.has_tokens() && !self.listen.ip().is_loopback()
        {
            anyhow::bail!(
                "refusing to listen on {} without an API token: the query API would be open to the network. \
                 Set --api-token or ENROLLHOOK_API_TOKEN (any long random string, e.g. `openssl rand -hex 32`), \
                 or listen on 127.0.0.1.",
                self.listen
            );
        }
        Ok(())
    }
}

pub const NO_SECRET_HELP: &str = "no webhook secret configured, so deliveries could not be verified.\n\
  Thinkific signs every webhook with your school's API key: in your Thinkific admin, open\n\
  Settings → Code & analytics → API (https://YOUR-SCHOOL.thinkific.com/manage/settings/api),\n\
  copy the API key and pass it as --secret KEY or ENROLLHOOK_SECRET=KEY\n\
  (for a Thinkific app, use the app's client secret). For several schools, add\n\
  [[source]] entries with `name` and `secret` to enrollhook.toml.\n\
  For a local experiment only, --insecure-skip-verification accepts unsigned deliveries.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file() {
        let c = FileConfig::parse(
            r#"
            listen = "0.0.0.0:9000"
            max_body = "2MiB"
            [[source]]
            name = "school-a"
            secret = "key-a"
            subdomain = "school-a"
            [[source]]
            name = "school_b"
            secret = "key-b"
            "#,
        )
        .unwrap();
        assert_eq!(c.max_body, Some(ByteSize(2 * 1024 * 1024)));
        let s = Sources::resolve(Some(Secret::new("flag")), &c);
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["default", "school-a", "school_b"]
        );
        assert_eq!(s.get("school-a").unwrap().unwrap().expose(), "key-a");
        assert_eq!(c.sources[0].subdomain.as_deref(), Some("school-a"));
        assert!(s.get("nope").is_none());
    }

    #[test]
    fn rejects_bad_config() {
        assert!(
            FileConfig::parse("lisen = \"x\"").is_err(),
            "typos are errors"
        );
        assert!(FileConfig::parse("[[source]]\nname = \"a/b\"\nsecret = \"k\"").is_err());
        assert!(FileConfig::parse("[[source]]\nname = \"a\"\n[[source]]\nname = \"a\"").is_err());
        assert!(FileConfig::parse("max_body = \"lots\"").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("1048576".parse(), Ok(ByteSize(1048576)));
        assert_eq!("1MiB".parse(), Ok(ByteSize(1048576)));
        assert_eq!("10 MB".parse(), Ok(ByteSize(10_000_000)));
        assert!("0".parse::<ByteSize>().is_err());
        assert!("1 parsec".parse::<ByteSize>().is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn toml_errors_say_where_but_never_quote_a_secret() {
        let text = "[[source]]\nname = \"a\"\nsecret = \"hunter2\" extra\n";
        let e = FileConfig::parse(text).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = FileConfig::parse("[[source]]\nnme = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("unknown field `nme`"),
            "{e}"
        );
    }

    #[test]
    fn validation() {
        let mut c = ServeConfig::new("sqlite::memory:", Some("k"));
        assert!(c.validate().is_ok());
        c.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(c.validate().is_err(), "public without token");
        c.api_token = Some(Secret::new("t"));
        assert!(c.validate().is_ok());
        c.sources = Sources::default();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("API key"), "{err}");
    }
}
