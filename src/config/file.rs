//! The file layer: `enrollhook.toml` (or `--config FILE`), read and checked.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DEFAULT_CONFIG_FILE, Secret};
use crate::ids::SourceName;

/// One school (or Thinkific app) that sends us webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Checked when the file is read (see [`SourceName`]).
    pub name: SourceName,
    /// The school's API key (or the app's client secret).
    pub secret: Option<Secret>,
    /// A query-API token that reads this source's data only.
    pub api_token: Option<Secret>,
    /// The school's Thinkific subdomain (`acme` for acme.thinkific.com), for
    /// `enrollhook thinkific …` (the API key is `secret`).
    pub subdomain: Option<String>,
    /// A Thinkific API Access Token (Bearer) for `enrollhook thinkific …`,
    /// used instead of (or with) the API key.
    pub access_token: Option<Secret>,
    /// Raise `enrollhook.source.silent` after no delivery for this long,
    /// e.g. "6h" (off when unset).
    pub silent_after: Option<String>,
    /// `[source.milestones]`: the milestones derived for this source.
    pub milestones: Option<MilestonesFile>,
}

/// `[alerts]`: when alerts (`enrollhook.*` events) are raised.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Failed attempts in a row that make a subscription `failing` (default 5).
    pub failing_after: Option<u32>,
    /// More rejected signatures than this within `signature_window` make
    /// `signatures.failing` (default 20).
    pub signature_failures: Option<u32>,
    /// Default "5m".
    pub signature_window: Option<String>,
    /// How often signatures and silence are checked (default "1m").
    pub check_every: Option<String>,
}

/// `[milestones]` / `[source.milestones]`: which milestones a source's
/// enrollments emit. Present means on, each kind with its default unless set;
/// `false` switches a kind off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestonesFile {
    /// `false` switches every kind off (the same as no table).
    pub enabled: Option<bool>,
    /// Thresholds in percent (default [25, 50, 75]), or `false`.
    pub progress: Option<Switch<Vec<f64>>>,
    pub completed: Option<bool>,
    pub trial_converted: Option<bool>,
    /// Days without activity (default 14), or `false`.
    pub stalled_days: Option<Switch<u32>>,
    /// Lesson ids whose completion is a milestone.
    #[serde(default)]
    pub lessons: Vec<i64>,
}

/// A setting that is either a value or `true` (its default) / `false` (off).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Switch<T> {
    Flag(bool),
    Value(T),
}

impl MilestonesFile {
    /// The source's milestones, checked (an error says which setting and why).
    pub fn resolve(&self) -> Result<crate::projection::milestones::SourceMilestones, String> {
        use crate::projection::milestones::{
            DEFAULT_STALLED_DAYS, DEFAULT_THRESHOLDS, SourceMilestones,
        };
        if self.enabled == Some(false) {
            return Ok(SourceMilestones {
                progress: Vec::new(),
                completed: false,
                trial_converted: false,
                stalled_days: None,
                lessons: Vec::new(),
            });
        }
        SourceMilestones {
            progress: match &self.progress {
                None | Some(Switch::Flag(true)) => DEFAULT_THRESHOLDS.to_vec(),
                Some(Switch::Flag(false)) => Vec::new(),
                Some(Switch::Value(v)) => v.clone(),
            },
            completed: self.completed.unwrap_or(true),
            trial_converted: self.trial_converted.unwrap_or(true),
            stalled_days: match self.stalled_days {
                None | Some(Switch::Flag(true)) => Some(DEFAULT_STALLED_DAYS),
                Some(Switch::Flag(false)) => None,
                Some(Switch::Value(d)) => Some(d),
            },
            lessons: self.lessons.clone(),
        }
        .normalized()
    }
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
    /// `--max-quarantine-bytes`.
    pub max_quarantine_bytes: Option<ByteSize>,
    /// The default source's Thinkific subdomain, for `enrollhook thinkific …`.
    pub subdomain: Option<String>,
    /// `--reconcile-every`, e.g. "24h".
    pub reconcile_every: Option<String>,
    /// `--public-url`.
    pub public_url: Option<String>,
    /// The default source's milestones (`[milestones]`).
    pub milestones: Option<MilestonesFile>,
    /// How often `serve` looks for stalled enrollments, e.g. "1h" (default).
    pub stalled_check_every: Option<String>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub alerts: AlertsFile,
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
            if !seen.insert(s.name.as_str()) {
                anyhow::bail!("source `{}` is configured twice", s.name);
            }
            // Alerts that concern no single source are stored under it.
            if s.name.as_str() == crate::alerts::OWN_SOURCE {
                anyhow::bail!(
                    "source name `{}` is reserved for enrollhook's own alerts: choose another name",
                    s.name
                );
            }
        }
        config.milestone_rules()?;
        Ok(config)
    }

    /// Every source's milestones: `[source.milestones]` per source, and the
    /// top-level `[milestones]` for the default source.
    pub fn milestone_rules(&self) -> anyhow::Result<crate::projection::milestones::MilestoneRules> {
        let mut rules = crate::projection::milestones::MilestoneRules::default();
        if let Some(m) = &self.milestones {
            let resolved = m
                .resolve()
                .map_err(|e| anyhow::anyhow!("[milestones]: {e}"))?;
            rules.set(super::DEFAULT_SOURCE, resolved);
        }
        for s in &self.sources {
            if let Some(m) = &s.milestones {
                let resolved = m
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("[source.milestones] of `{}`: {e}", s.name))?;
                rules.set(s.name.as_str(), resolved);
            }
        }
        Ok(rules)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_settings_are_read_and_the_own_source_is_reserved() {
        let c = FileConfig::parse(
            "[alerts]\nfailing_after = 3\nsignature_window = \"10m\"\n\
             [[source]]\nname = \"acme\"\nsilent_after = \"6h\"\n",
        )
        .unwrap();
        assert_eq!(c.alerts.failing_after, Some(3));
        assert_eq!(c.alerts.signature_window.as_deref(), Some("10m"));
        assert_eq!(c.sources[0].silent_after.as_deref(), Some("6h"));
        let e = FileConfig::parse("[[source]]\nname = \"enrollhook\"\n").unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        assert!(FileConfig::parse("[alerts]\nfailing = 3\n").is_err());
    }
}
