//! `alerts`: incidents raised as `enrollhook.*` events, newest first.

use std::process::ExitCode;

use clap::Args;

use super::open_existing;
use super::table::{Format, output};
use crate::config::Settings;
use crate::views;

#[derive(Args)]
pub struct AlertsArgs {
    /// Only incidents not ended yet.
    #[arg(long)]
    open: bool,
    /// Only this source's (`enrollhook`: alerts about subscriptions of every source).
    #[arg(long)]
    source: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub async fn alerts(settings: &Settings, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let incidents = store
        .list_incidents(
            args.source.as_deref(),
            args.open,
            args.limit.clamp(1, crate::store::MAX_PAGE),
        )
        .await?;
    let header = ["id", "kind", "source", "since", "ended", "summary"];
    output(args.format, &header, &incidents, |i| {
        vec![
            i.id.to_string(),
            i.kind.clone(),
            i.source.clone(),
            views::rfc3339(&i.started_at),
            i.closed_at
                .as_ref()
                .map_or_else(|| "open".to_owned(), views::rfc3339),
            i.summary.clone(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}
