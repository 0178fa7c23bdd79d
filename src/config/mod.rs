//! Configuration: flags > environment (`ENROLLHOOK_*`) > `enrollhook.toml` > defaults.
//!
//! Each layer has one home: [`flags`] declares every flag with its environment
//! variable (clap reads both), [`file`] reads `enrollhook.toml`, and
//! [`resolve`] merges them, once, into what a command needs: [`Settings`] for
//! every command, [`ServeConfig`] for `serve`, [`ThinkificSettings`] for
//! `thinkific …`. The CLI never merges anything itself.

mod file;
pub mod flags;
mod resolve;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use crate::ids::Secret;
use crate::ids::SourceName;

pub use file::{ByteSize, FileConfig, SourceConfig};
pub use resolve::{Settings, ThinkificSettings};

/// The name of the source that `POST /webhooks/thinkific` (no name) delivers to.
pub const DEFAULT_SOURCE: &str = crate::ids::SourceName::DEFAULT;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite://enrollhook.db";
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const DEFAULT_CONFIG_FILE: &str = "enrollhook.toml";
pub const DEFAULT_MAX_QUARANTINE: u64 = 100_000;
/// The quarantine's bound in kept body bytes (issue #15, item 3): 256 MiB.
pub const DEFAULT_MAX_QUARANTINE_BYTES: u64 = 256 * 1024 * 1024;

/// The sources deliveries are accepted for, by name.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    by_name: BTreeMap<SourceName, Option<Secret>>,
    /// Per-source API tokens: (token, source name).
    tokens: Vec<(Secret, SourceName)>,
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
            by_name.insert(SourceName::default_source(), Some(secret));
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
        self.by_name.keys().map(SourceName::as_str)
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

    /// Whether any source's secret or API token is empty or whitespace.
    pub fn has_blank_secret(&self) -> bool {
        self.by_name.values().flatten().any(Secret::is_blank)
            || self.tokens.iter().any(|(t, _)| t.is_blank())
    }

    /// A single unsigned default source, for `--insecure-skip-verification` with no config.
    pub fn insecure_default() -> Sources {
        let mut by_name = BTreeMap::new();
        by_name.insert(SourceName::default_source(), None);
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
    /// Body bytes kept in the quarantine; the oldest beyond this are deleted.
    pub max_quarantine_bytes: u64,
    /// Rejected deliveries written to the quarantine per second per source
    /// (five times this in total); more are answered and only counted.
    pub max_quarantine_rate: u32,
    /// Drop raw bodies of events received longer ago than this (None: keep all).
    pub retain_events: Option<std::time::Duration>,
    /// Host names the API and dashboard answer to without --api-token, besides
    /// localhost, loopback addresses and the listen address (see `server::origin`).
    pub allowed_hosts: Vec<String>,
    /// Most client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most live streams (`/api/stream`) open at once; more are refused with 503.
    pub max_streams: usize,
    /// Reconcile with Thinkific this often (None: never), for these sources.
    pub reconcile_every: Option<std::time::Duration>,
    pub reconcile: Vec<ReconcileSource>,
    /// The milestones derived per source (`[milestones]` in the file).
    pub milestones: crate::projection::milestones::MilestoneRules,
    /// How often stalled enrollments are looked for.
    pub stalled_check_every: std::time::Duration,
    /// What time it is, for the stalled check (tests set their own).
    pub clock: crate::maintenance::milestones::Clock,
}

/// A source a scheduled reconciliation covers: its Thinkific credentials, and
/// the URL its webhooks should deliver to, when the public URL is known.
#[derive(Debug, Clone)]
pub struct ReconcileSource {
    pub thinkific: resolve::ThinkificSettings,
    pub webhook_url: Option<String>,
}

/// `--max-connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// `--max-streams` by default: dashboards kept open, a few per school.
pub const DEFAULT_MAX_STREAMS: usize = 64;

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
            max_quarantine_bytes: DEFAULT_MAX_QUARANTINE_BYTES,
            max_quarantine_rate: crate::server::limits::DEFAULT_QUARANTINE_RATE,
            retain_events: None,
            allowed_hosts: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams: DEFAULT_MAX_STREAMS,
            reconcile_every: None,
            reconcile: Vec::new(),
            milestones: Default::default(),
            stalled_check_every: crate::maintenance::milestones::DEFAULT_EVERY,
            clock: Default::default(),
        }
    }

    /// Refuses configurations that would be unsafe on a public endpoint.
    pub fn validate(&self) -> anyhow::Result<()> {
        // `Settings::serve` names the empty setting; this guards embedders too.
        anyhow::ensure!(
            !self.sources.has_blank_secret()
                && !self.api_token.as_ref().is_some_and(Secret::is_blank),
            "a webhook secret or API token is empty: set it to the real value or remove it"
        );
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
    fn milestones_per_source_with_defaults_and_off_switches() {
        let c = FileConfig::parse(
            r#"
            [milestones]
            stalled_days = false
            [[source]]
            name = "acme"
            secret = "k"
            [source.milestones]
            progress = [75, 50]
            trial_converted = false
            lessons = [9, 9, 4]
            [[source]]
            name = "beta"
            secret = "k"
            [[source]]
            name = "gamma"
            secret = "k"
            [source.milestones]
            enabled = false
            "#,
        )
        .unwrap();
        let rules = c.milestone_rules().unwrap();
        let default = rules.of(DEFAULT_SOURCE).unwrap();
        assert_eq!(default.progress, vec![25.0, 50.0, 75.0]);
        assert_eq!(default.stalled_days, None);
        assert!(default.completed && default.trial_converted);
        let acme = rules.of("acme").unwrap();
        assert_eq!(acme.progress, vec![50.0, 75.0]);
        assert!(!acme.trial_converted);
        assert_eq!(acme.stalled_days, Some(14));
        assert_eq!(acme.lessons, vec![4, 9]);
        assert!(rules.of("beta").is_none(), "no table: no milestones");
        assert!(rules.of("gamma").is_none(), "enabled = false: none");

        for bad in [
            "[milestones]\nprogress = [150]",
            "[milestones]\nstalled_days = 0",
            "[milestones]\nstaled_days = 3",
            "[milestones]\nprogress = \"half\"",
        ] {
            let e = FileConfig::parse(bad).unwrap_err().to_string();
            assert!(e.contains("milestones") || e.contains("line"), "{bad}: {e}");
        }
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

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file =
            FileConfig::parse("database = \"sqlite://file.db\"\nsecret = \"file-key\"").unwrap();
        let none = flags::GlobalFlags::default();
        let s = Settings::merge(&none, file.clone(), None);
        assert_eq!(s.database_url, "sqlite://file.db");
        assert_eq!(s.secret().unwrap().expose(), "file-key");
        let given = flags::GlobalFlags {
            database: Some("sqlite://flag.db".into()),
            secret: Some("flag-key".into()),
            ..Default::default()
        };
        let s = Settings::merge(&given, file, None);
        assert_eq!(s.database_url, "sqlite://flag.db");
        assert_eq!(
            s.sources().get(DEFAULT_SOURCE).unwrap().unwrap().expose(),
            "flag-key"
        );
        let s = Settings::merge(&none, FileConfig::default(), None);
        assert_eq!(s.database_url, DEFAULT_DATABASE);
    }

    #[test]
    fn validation_refuses_blank_secrets_and_tokens() {
        let c = ServeConfig::new("sqlite::memory:", Some(" "));
        assert!(c.validate().is_err(), "blank webhook secret");
        let mut c = ServeConfig::new("sqlite::memory:", Some("a-long-enough-school-key"));
        c.api_token = Some(Secret::new(""));
        assert!(c.validate().is_err(), "blank admin token");
    }
}
