//! The merge, once: flags > environment (both in [`super::flags`]) >
//! `enrollhook.toml` ([`FileConfig`]) > defaults, into what each command needs.
//!
//! Secrets are checked here too, where it is still known which setting gave
//! them: an empty one (typically `ENROLLHOOK_SECRET=$UNSET_VARIABLE`) would
//! make the server accept bodies signed with the empty key, so it is refused
//! by name; a short one is only warned about.

use std::path::PathBuf;

use anyhow::Context;

use super::flags::{GlobalFlags, ServeFlags, ThinkificFlags};
use super::{
    DEFAULT_DATABASE, DEFAULT_LISTEN, DEFAULT_MAX_BODY, DEFAULT_MAX_QUARANTINE_BYTES,
    DEFAULT_SOURCE, FileConfig, Secret, ServeConfig, Sources,
};
use crate::forward::ForwardConfig;

/// Secrets shorter than this get a warning at start-up.
const SHORT_SECRET: usize = 16;

/// What every command shares: the file, the database, the default source's secret.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: FileConfig,
    /// The file that was read (None: no file).
    pub file_path: Option<PathBuf>,
    pub database_url: String,
    /// `--secret` / `ENROLLHOOK_SECRET` only; [`Settings::secret`] adds the file's.
    secret_flag: Option<Secret>,
}

impl Settings {
    /// Reads the config file named by `--config` (or the default one if present).
    pub fn load(flags: &GlobalFlags) -> anyhow::Result<Settings> {
        let (file, file_path) = FileConfig::load(flags.config.as_deref())?;
        Ok(Settings::merge(flags, file, file_path))
    }

    /// Merges already-read layers (tests, embedding).
    pub fn merge(flags: &GlobalFlags, file: FileConfig, file_path: Option<PathBuf>) -> Settings {
        Settings {
            database_url: flags
                .database
                .clone()
                .or_else(|| file.database.clone())
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned()),
            secret_flag: flags.secret.clone().map(Secret::new),
            file,
            file_path,
        }
    }

    /// The default source's secret: `--secret` / `ENROLLHOOK_SECRET`, else the file's `secret`.
    pub fn secret(&self) -> Option<Secret> {
        self.secret_flag
            .clone()
            .or_else(|| self.file.secret.clone())
    }

    /// [`Settings::secret`], for commands that cannot work without it.
    pub fn require_secret(&self) -> anyhow::Result<Secret> {
        self.secret().ok_or_else(|| {
            anyhow::anyhow!(
                "--secret (or ENROLLHOOK_SECRET) is required: the school's Thinkific API key"
            )
        })
    }

    /// Every source deliveries are accepted for, with its secret.
    pub fn sources(&self) -> Sources {
        Sources::resolve(self.secret_flag.clone(), &self.file)
    }

    fn file_name(&self) -> String {
        self.file_path.as_ref().map_or_else(
            || super::DEFAULT_CONFIG_FILE.to_owned(),
            |p| p.display().to_string(),
        )
    }

    /// Every secret `serve` would use, each named by where it came from.
    fn serve_secrets<'a>(
        &'a self,
        api_token_flag: Option<&'a Secret>,
    ) -> Vec<(String, &'a Secret)> {
        let file = self.file_name();
        let mut named = Vec::new();
        match (&self.secret_flag, &self.file.secret) {
            (Some(s), _) => named.push(("--secret / ENROLLHOOK_SECRET".to_owned(), s)),
            (None, Some(s)) => named.push((format!("`secret` in {file}"), s)),
            (None, None) => {}
        }
        match (api_token_flag, &self.file.api_token) {
            (Some(t), _) => named.push(("--api-token / ENROLLHOOK_API_TOKEN".to_owned(), t)),
            (None, Some(t)) => named.push((format!("`api_token` in {file}"), t)),
            (None, None) => {}
        }
        for s in &self.file.sources {
            if let Some(secret) = &s.secret {
                named.push((
                    format!("`secret` of [[source]] `{}` in {file}", s.name),
                    secret,
                ));
            }
            if let Some(token) = &s.api_token {
                named.push((
                    format!("`api_token` of [[source]] `{}` in {file}", s.name),
                    token,
                ));
            }
        }
        named
    }

    /// `serve`'s configuration, resolved and validated.
    pub async fn serve(&self, flags: ServeFlags) -> anyhow::Result<ServeConfig> {
        let api_token_flag = flags.api_token.map(Secret::new);
        for (setting, secret) in self.serve_secrets(api_token_flag.as_ref()) {
            let len = secret.expose().trim().len();
            anyhow::ensure!(
                len > 0,
                "{setting} is empty: an empty secret would accept anything signed with the empty key. \
                 Set it to the real value (the school's Thinkific API key for a secret, a long random \
                 string such as `openssl rand -hex 32` for a token), or remove it (an unset \
                 environment variable expanded to nothing is the usual cause)."
            );
            if len < SHORT_SECRET {
                tracing::warn!(
                    "{setting} is shorter than {SHORT_SECRET} bytes: easy to guess; use the full API key or a long random token"
                );
            }
        }
        let listen = flags
            .listen
            .or_else(|| self.file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = tokio::net::lookup_host(&listen)
            .await
            .with_context(|| format!("--listen `{listen}` is not an address like 127.0.0.1:8080"))?
            .next()
            .with_context(|| format!("--listen `{listen}` resolves to no address"))?;
        let mut sources = self.sources();
        if flags.insecure_skip_verification && sources.is_empty() {
            sources = Sources::insecure_default();
        }
        let (reconcile_every, reconcile) = self.reconcile(
            flags.reconcile_every,
            flags.public_url.clone(),
            &flags.thinkific_api_base,
            &sources,
        )?;
        let config = ServeConfig {
            listen,
            database_url: self.database_url.clone(),
            sources,
            insecure_skip_verification: flags.insecure_skip_verification,
            api_token: api_token_flag.or_else(|| self.file.api_token.clone()),
            max_body: flags
                .max_body
                .or(self.file.max_body)
                .map_or(DEFAULT_MAX_BODY, |b| b.0),
            migrate: !flags.no_migrate,
            max_batch: flags.max_batch.max(1),
            forward: ForwardConfig {
                schedule: flags.retry_schedule.unwrap_or_default(),
                allow_private_destinations: flags.allow_private_destinations,
                concurrency: flags.forward_concurrency.max(1),
                per_subscription: flags.forward_concurrency_per_subscription.max(1),
                timeout: flags.forward_timeout,
                disable_after: flags.disable_failing_after,
                alerts: self.alerts()?,
                ..ForwardConfig::default()
            },
            tls: flags.tls_cert.zip(flags.tls_key),
            read_timeout: flags.read_timeout,
            rate_limit: flags.rate_limit,
            global_rate_limit: flags.global_rate_limit,
            writers: flags.writers,
            max_quarantine: flags.max_quarantine,
            max_quarantine_bytes: flags
                .max_quarantine_bytes
                .or(self.file.max_quarantine_bytes)
                .map_or(DEFAULT_MAX_QUARANTINE_BYTES, |b| b.0 as u64),
            max_quarantine_rate: flags.max_quarantine_rate.max(1),
            retain_events: flags.retain_events,
            allowed_hosts: flags.allowed_hosts,
            max_connections: flags.max_connections.max(1),
            max_streams: flags.max_streams,
            reconcile_every,
            reconcile,
            milestones: self.file.milestone_rules()?,
            stalled_check_every: match &self.file.stalled_check_every {
                None => crate::maintenance::milestones::DEFAULT_EVERY,
                Some(text) => {
                    let every = crate::forward::policy::parse_duration(text).map_err(|e| {
                        anyhow::anyhow!("stalled_check_every in {}: {e}", self.file_name())
                    })?;
                    anyhow::ensure!(
                        every >= std::time::Duration::from_secs(1),
                        "stalled_check_every in {} must be at least 1s; e.g. \"1h\"",
                        self.file_name()
                    );
                    every
                }
            },
            clock: Default::default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// `[alerts]` and the sources' `silent_after`, over the defaults.
    fn alerts(&self) -> anyhow::Result<crate::alerts::AlertConfig> {
        let duration = |what: &str, text: &str| {
            crate::forward::policy::parse_duration(text).map_err(|e| {
                anyhow::anyhow!("{what} in {}: {e} (e.g. \"5m\", \"6h\")", self.file_name())
            })
        };
        let file = &self.file.alerts;
        let mut config = crate::alerts::AlertConfig::default();
        if let Some(n) = file.failing_after {
            anyhow::ensure!(
                n > 0,
                "[alerts] failing_after in {} must be at least 1",
                self.file_name()
            );
            config.failing_after = n;
        }
        if let Some(n) = file.signature_failures {
            config.signature_failures = n;
        }
        if let Some(text) = &file.signature_window {
            config.signature_window = duration("[alerts] signature_window", text)?;
        }
        if let Some(text) = &file.check_every {
            config.check_every = duration("[alerts] check_every", text)?;
            anyhow::ensure!(
                config.check_every >= std::time::Duration::from_secs(1),
                "[alerts] check_every in {} must be at least 1s",
                self.file_name()
            );
        }
        for s in &self.file.sources {
            if let Some(text) = &s.silent_after {
                let what = format!("silent_after of [[source]] `{}`", s.name.as_str());
                config
                    .silent_after
                    .insert(s.name.as_str().to_owned(), duration(&what, text)?);
            }
        }
        Ok(config)
    }

    /// `--reconcile-every` (flag, environment, else the file's
    /// `reconcile_every`) and the sources it covers: every source whose
    /// Thinkific credentials resolve as for `thinkific …` (a subdomain with its
    /// secret, or an access token), with its webhook URL under `--public-url`.
    fn reconcile(
        &self,
        every_flag: Option<std::time::Duration>,
        public_url: Option<String>,
        api_base: &str,
        sources: &Sources,
    ) -> anyhow::Result<(Option<std::time::Duration>, Vec<super::ReconcileSource>)> {
        let every = match (every_flag, &self.file.reconcile_every) {
            (Some(d), _) => Some(d),
            (None, Some(text)) => Some(
                crate::forward::policy::parse_duration(text)
                    .map_err(|e| anyhow::anyhow!("reconcile_every in {}: {e}", self.file_name()))?,
            ),
            (None, None) => None,
        };
        let Some(every) = every else {
            return Ok((None, Vec::new()));
        };
        anyhow::ensure!(
            every >= std::time::Duration::from_secs(60),
            "--reconcile-every must be at least 1m (Thinkific allows 120 requests a minute); e.g. 24h"
        );
        let public_url = public_url.or(self.file.public_url.clone());
        let mut covered = Vec::new();
        for name in sources.names() {
            let Ok(source) = name.parse::<crate::ids::SourceName>() else {
                continue;
            };
            let thinkific = ThinkificFlags {
                subdomain: None,
                api_key: None,
                access_token: None,
                api_base: api_base.to_owned(),
                source: source.clone(),
            };
            // A source without credentials is not covered (it may have none).
            let Ok(thinkific) = self.thinkific(&thinkific) else {
                continue;
            };
            let webhook_url = public_url.as_deref().map(|base| {
                let base = base.trim_end_matches('/');
                if source.as_str() == DEFAULT_SOURCE {
                    format!("{base}/webhooks/thinkific")
                } else {
                    format!("{base}/webhooks/thinkific/{source}")
                }
            });
            covered.push(super::ReconcileSource {
                thinkific,
                webhook_url,
            });
        }
        anyhow::ensure!(
            !covered.is_empty(),
            "--reconcile-every needs a source with Thinkific API credentials: set `subdomain` \
             (the secret is the API key) or `access_token` for a [[source]] in enrollhook.toml, \
             or the top-level `subdomain` for the default source"
        );
        Ok((Some(every), covered))
    }

    /// `thinkific …`'s credentials for `--source`: flags and environment first,
    /// then the source's `subdomain` and `secret` (the school's API key) from
    /// the file; the default source also falls back to `--secret` and the
    /// file's top-level `secret` and `subdomain`.
    pub fn thinkific(&self, flags: &ThinkificFlags) -> anyhow::Result<ThinkificSettings> {
        let configured = self.file.sources.iter().find(|s| s.name == flags.source);
        let is_default = flags.source == DEFAULT_SOURCE;
        let access_token = flags
            .access_token
            .clone()
            .map(Secret::new)
            .or_else(|| configured.and_then(|s| s.access_token.clone()));
        if access_token.as_ref().is_some_and(Secret::is_blank) {
            anyhow::bail!(
                "the Thinkific access token for source `{}` is blank: pass a real one with \
                 --access-token or ENROLLHOOK_THINKIFIC_ACCESS_TOKEN, or leave it out",
                flags.source
            );
        }
        let api_key = flags
            .api_key
            .clone()
            .map(Secret::new)
            .or_else(|| configured.and_then(|s| s.secret.clone()))
            .or_else(|| is_default.then(|| self.secret()).flatten());
        if api_key.is_none() && access_token.is_none() {
            anyhow::bail!(
                "no Thinkific API key or access token for source `{}`: pass --access-token \
                 (ENROLLHOOK_THINKIFIC_ACCESS_TOKEN), or --api-key (ENROLLHOOK_THINKIFIC_API_KEY) \
                 (Settings → Code & analytics → API in your Thinkific admin)",
                flags.source
            );
        }
        let subdomain = flags
            .subdomain
            .clone()
            .or_else(|| configured.and_then(|s| s.subdomain.clone()))
            .or_else(|| is_default.then(|| self.file.subdomain.clone()).flatten());
        if subdomain.is_none() && access_token.is_none() {
            anyhow::bail!(
                "no Thinkific subdomain for source `{}`: pass --subdomain (acme for acme.thinkific.com) \
                 or ENROLLHOOK_THINKIFIC_SUBDOMAIN, or set `subdomain` in enrollhook.toml \
                 (the API key needs it; an --access-token does not)",
                flags.source
            );
        }
        // With a token and no subdomain, the key cannot be used (it needs one).
        let api_key = if subdomain.is_none() { None } else { api_key };
        Ok(ThinkificSettings {
            source: flags.source.clone(),
            subdomain,
            api_key,
            access_token,
            api_base: flags.api_base.clone(),
        })
    }
}

/// Whose Thinkific REST API `thinkific …` talks to, resolved.
#[derive(Debug, Clone)]
pub struct ThinkificSettings {
    /// The enrollhook source the backfill files its events under.
    pub source: crate::ids::SourceName,
    pub subdomain: Option<String>,
    pub api_key: Option<Secret>,
    pub access_token: Option<Secret>,
    pub api_base: String,
}

impl ThinkificSettings {
    pub fn client(&self) -> anyhow::Result<crate::thinkific::rest::RestClient> {
        Ok(crate::thinkific::rest::RestClient::with_credentials(
            &self.api_base,
            crate::thinkific::rest::Credentials {
                subdomain: self.subdomain.clone(),
                api_key: self.api_key.clone(),
                access_token: self.access_token.clone(),
            },
            crate::thinkific::rest::RetryPolicy::default(),
        )?)
    }
}
