//! `subscriptions …` and `replay`: where events are forwarded, and sending them again.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Args, Subcommand};

use super::open_existing;
use super::table::{Format, opt, output};
use crate::config::Settings;
use crate::forward::ForwardConfig;
use crate::forward::SubscriptionInput;
use crate::forward::template::{Preset, TemplateSpec};
use crate::forward::worker::{TestEvent, test_delivery};
use crate::store::{self, PageRequest, ReplayScope};
use crate::thinkific;
use crate::views;

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    /// Forward matching events to a URL: https:// (a webhook), nats:// (with
    /// --subject), amqp:// (with --exchange) or redis:// (with --stream).
    Add {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        fields: SubscriptionFields,
        /// Accept a private, loopback or link-local URL (the server must also allow it).
        #[arg(long)]
        allow_private: bool,
    },
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One subscription, with its secret.
    Show {
        id: String,
    },
    /// Change a subscription; options not given are left as they are.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: SubscriptionFields,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long)]
        allow_private: bool,
    },
    Remove {
        id: String,
    },
    /// New signing secret; the old one keeps signing too during the grace period.
    RotateSecret {
        id: String,
        #[arg(long, default_value = "24h", value_parser = crate::forward::policy::parse_duration)]
        grace: Duration,
    },
    /// Show the request a subscription would send (its template rendered)
    /// for a stored event, a sample or a test ping; --send sends it. Nothing
    /// is queued or recorded. Fails (exit 1) when it cannot render or the
    /// destination did not answer 2xx.
    Test {
        id: String,
        /// A stored event: SOURCE/EVENT_ID (rendered with its enrollment as it is now).
        #[arg(long, conflicts_with = "sample")]
        event: Option<String>,
        /// The --event's topic, needed when its id names events of several topics.
        #[arg(long, requires = "event")]
        topic: Option<String>,
        /// A Thinkific sample: created, progress, completed, lesson, order or signup.
        #[arg(long)]
        sample: Option<String>,
        /// Send it, signed, as a real delivery.
        #[arg(long)]
        send: bool,
        /// Send to a private, loopback or link-local address.
        #[arg(long)]
        allow_private: bool,
    },
    /// Delivery attempts of a subscription, oldest first (`--newest-first`: the latest).
    Attempts {
        id: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The most recent attempts, newest first.
        #[arg(long)]
        newest_first: bool,
    },
}

#[derive(Args)]
pub struct SubscriptionFields {
    /// Topic pattern: `*`, `enrollment.*` or an exact topic (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Only events of this course (repeatable).
    #[arg(long = "course")]
    course_ids: Vec<i64>,
    /// Only events of this source (repeatable).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Signing secret (`whsec_…`); generated when not given.
    #[arg(long = "signing-secret")]
    signing_secret: Option<String>,
    /// Extra header sent with every delivery, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Deliver the events of one enrollment in order, one at a time.
    #[arg(long)]
    ordered: Option<bool>,
    /// Only events this filter accepts, as JSON, e.g.
    /// `{"payload.course.id": {"$in": [68, 71]}}`; `none` removes it (README: Filters).
    #[arg(long)]
    filter: Option<String>,
    /// Send a ready-made shape instead of Thinkific's body: slack, discord,
    /// teams or json; `none` removes the template (README: Templates and presets).
    #[arg(long)]
    preset: Option<String>,
    /// The template as a JSON file (`preset`, `method`, `url`, `headers`,
    /// `body`, `message`, `content_type`); --preset and --message override its fields.
    #[arg(long)]
    template_file: Option<std::path::PathBuf>,
    /// The sentence a preset shows, a template, e.g.
    /// `{{ student.name }} finished {{ course.name }} in {{ days_to_complete }} days`.
    #[arg(long)]
    message: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// nats:// destinations: the subject to publish to, e.g. `thinkific.{source}.{topic}`.
    #[arg(long)]
    subject: Option<String>,
    /// amqp:// destinations: the exchange to publish to (`""`: the default exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// amqp:// destinations: the routing key [default: `{topic}`].
    #[arg(long)]
    routing_key: Option<String>,
    /// redis:// destinations: the stream key to XADD to, e.g. `thinkific:{source}`.
    #[arg(long)]
    stream: Option<String>,
    /// redis:// destinations: trim the stream to about this many entries (`MAXLEN ~`).
    #[arg(long)]
    maxlen: Option<i64>,
}

impl SubscriptionFields {
    /// The input these options describe; `existing` is the subscription's
    /// template today (an update's --preset or --message changes only that field).
    fn into_input(
        self,
        url: Option<String>,
        existing: Option<&TemplateSpec>,
    ) -> anyhow::Result<SubscriptionInput> {
        let headers = if self.headers.is_empty() {
            None
        } else {
            let mut map = std::collections::BTreeMap::new();
            for h in &self.headers {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("--header `{h}` must look like `Name: value`"))?;
                map.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            Some(map)
        };
        let filter = match self.filter.as_deref().map(str::trim) {
            None => None,
            Some("none") => Some(None),
            Some(text) => {
                // Parsed here for a message with the line and column; the
                // server checks the operators.
                let json = serde_json::from_str(text).map_err(|e| {
                    anyhow::anyhow!(
                        "--filter is not valid JSON at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    )
                })?;
                Some(Some(json))
            }
        };
        let template = self.template(existing)?;
        Ok(SubscriptionInput {
            url,
            filter,
            template,
            topics: (!self.topics.is_empty()).then_some(self.topics),
            course_ids: (!self.course_ids.is_empty()).then_some(Some(self.course_ids)),
            sources: (!self.sources.is_empty()).then_some(Some(self.sources)),
            secret: self.signing_secret,
            enabled: None,
            ordered: self.ordered,
            headers,
            description: self.description.map(Some),
            subject: self.subject.map(Some),
            exchange: self.exchange.map(Some),
            routing_key: self.routing_key.map(Some),
            stream: self.stream.map(Some),
            maxlen: self.maxlen.map(Some),
        })
    }
}

impl SubscriptionFields {
    /// The template the options describe (None: leave it as it is;
    /// Some(None): remove it). --template-file replaces the whole template;
    /// --preset and --message change that field of the file's or `existing`.
    fn template(
        &self,
        existing: Option<&TemplateSpec>,
    ) -> anyhow::Result<Option<Option<TemplateSpec>>> {
        if self.preset.as_deref() == Some("none") {
            if self.template_file.is_some() || self.message.is_some() {
                bail!(
                    "--preset none removes the template: give no --template-file or --message with it"
                );
            }
            return Ok(Some(None));
        }
        if self.preset.is_none() && self.template_file.is_none() && self.message.is_none() {
            return Ok(None);
        }
        let mut spec = match &self.template_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --template-file {}", path.display()))?;
                serde_json::from_str::<TemplateSpec>(&text).with_context(|| {
                    format!(
                        "--template-file {} is not a template (a JSON object with preset, method, url, headers, body, message, content_type)",
                        path.display()
                    )
                })?
            }
            None => existing.cloned().unwrap_or_default(),
        };
        if let Some(name) = &self.preset {
            spec.preset = Some(
                Preset::ALL
                    .into_iter()
                    .find(|p| p.name() == name)
                    .with_context(|| {
                        format!(
                            "--preset `{name}` is unknown: use slack, discord, teams, json or none"
                        )
                    })?,
            );
        }
        if let Some(message) = &self.message {
            spec.message = Some(message.clone());
        }
        Ok(Some(Some(spec)))
    }
}

#[derive(Args)]
pub struct ReplayArgs {
    /// One event: SOURCE/EVENT_ID (to every matching subscription, or to --subscription).
    #[arg(long, conflicts_with_all = ["dead", "since"])]
    event: Option<String>,
    /// The --event's topic, needed when its id names events of several topics
    /// (Thinkific gives `lesson.completed` and `quiz.attempted` one id).
    #[arg(long, requires = "event")]
    topic: Option<String>,
    #[arg(long)]
    subscription: Option<String>,
    /// Every dead delivery of --subscription.
    #[arg(long, requires = "subscription")]
    dead: bool,
    /// Every matching event received since this time (RFC 3339), to --subscription.
    #[arg(long, requires = "subscription")]
    since: Option<String>,
    /// End of the time range [default: now].
    #[arg(long, requires = "since")]
    until: Option<String>,
}

pub async fn subscriptions(
    settings: &Settings,
    cmd: SubscriptionsCommand,
) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let now = Utc::now();
    let print = |s: &crate::forward::Subscription| -> anyhow::Result<()> {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::server::subscription_view(s, true))?
        );
        Ok(())
    };
    match cmd {
        SubscriptionsCommand::Add {
            url,
            fields,
            allow_private,
        } => {
            let s = fields.into_input(Some(url), None)?.create(
                crate::server::new_subscription_id(),
                now,
                allow_private,
            )?;
            store.insert_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::List { format } => {
            let subs = store.list_subscriptions().await?;
            if format == Format::Json {
                let values: Vec<_> = subs
                    .iter()
                    .map(|s| crate::server::subscription_view(s, false))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
                return Ok(ExitCode::SUCCESS);
            }
            let header = [
                "id",
                "enabled",
                "url",
                "topics",
                "courses",
                "ordered",
                "disabled_reason",
            ];
            output(format, &header, &subs, |s| {
                vec![
                    s.id.clone(),
                    s.enabled.to_string(),
                    crate::redact::url(&s.url),
                    s.topics.join(","),
                    s.course_ids
                        .as_ref()
                        .map(|c| c.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "*".into()),
                    s.ordered.to_string(),
                    s.disabled_reason.clone().unwrap_or_default(),
                ]
            })?;
        }
        SubscriptionsCommand::Show { id } => {
            let s = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            print(&s)?;
        }
        SubscriptionsCommand::Update {
            id,
            url,
            fields,
            enable,
            disable,
            allow_private,
        } => {
            let existing = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            let mut input = fields.into_input(url, existing.template.as_ref())?;
            input.enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            let s = input.apply(existing, now, allow_private)?;
            store.update_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::Remove { id } => {
            if !store.delete_subscription(&id).await? {
                bail!("no subscription `{id}`");
            }
            println!("removed {id}");
        }
        SubscriptionsCommand::RotateSecret { id, grace } => {
            let mut s = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            s.rotate_secret(None, grace, now)?;
            store.update_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::Test {
            id,
            event,
            topic,
            sample,
            send,
            allow_private,
        } => {
            let s = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            let event = match (event, sample) {
                (Some(event), _) => {
                    let (source, event_id) = event.split_once('/').with_context(|| {
                        format!("--event `{event}` must be SOURCE/EVENT_ID, e.g. default/20190131192004041953291")
                    })?;
                    let stored = store
                        .get_event(source, event_id, topic.as_deref())
                        .await?
                        .with_context(|| format!("no event `{event_id}` from source `{source}`"))?;
                    TestEvent::Stored(Box::new(stored))
                }
                (None, Some(sample)) => TestEvent::Sample(sample),
                (None, None) => TestEvent::Ping,
            };
            let config = ForwardConfig {
                allow_private_destinations: allow_private,
                ..ForwardConfig::default()
            };
            let report = test_delivery(&config, store.as_ref(), &s, event, send).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        SubscriptionsCommand::Attempts {
            id,
            limit,
            newest_first,
        } => {
            let page = store
                .list_attempts(
                    Some(&id),
                    None,
                    &PageRequest {
                        limit: limit.clamp(1, store::MAX_PAGE),
                        cursor: None,
                    },
                    newest_first,
                )
                .await?;
            let header = [
                "attempted_at",
                "event_seq",
                "attempt",
                "status",
                "latency_ms",
                "error",
            ];
            output(Format::Table, &header, &page.items, |a| {
                vec![
                    views::rfc3339(&a.attempted_at),
                    a.event_seq.to_string(),
                    a.attempt.to_string(),
                    opt(a.status),
                    format!("{:.1}", a.latency_ms),
                    a.error.clone().unwrap_or_default(),
                ]
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(settings: &Settings, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let scope = match (a.event, a.subscription) {
        (Some(event), subscription_id) => {
            let (source, event_id) = event
                .split_once('/')
                .with_context(|| format!("--event `{event}` must be SOURCE/EVENT_ID, e.g. default/20190131192004041953291"))?;
            ReplayScope::Event {
                source: source.into(),
                event_id: event_id.into(),
                topic: a.topic,
                subscription_id,
            }
        }
        (None, Some(subscription_id)) if a.dead => ReplayScope::Dead { subscription_id },
        (None, Some(subscription_id)) if a.since.is_some() => {
            let parse = |name: &str, v: &str| {
                thinkific::envelope::parse_timestamp(v).with_context(|| {
                    format!("--{name} `{v}` is not an RFC 3339 timestamp like 2024-05-01T00:00:00Z")
                })
            };
            ReplayScope::Range {
                subscription_id,
                since: parse("since", a.since.as_deref().expect("checked"))?,
                until: match a.until.as_deref() {
                    Some(u) => parse("until", u)?,
                    None => Utc::now(),
                },
            }
        }
        _ => bail!(
            "say what to replay: --event SOURCE/EVENT_ID, or --subscription ID with --dead or --since TIME"
        ),
    };
    let count = store.replay(&scope, Utc::now()).await?;
    println!("{count} deliveries queued; a running `enrollhook serve` sends them");
    Ok(ExitCode::SUCCESS)
}
