//! `quarantine list|show|retry`: rejected deliveries.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::open_existing;
use super::table::{Format, output};
use crate::config::Settings;
use crate::ingest::quarantine::{self, RetryError};
use crate::store::{self, PageRequest};
use crate::views;

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Rejected deliveries, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One rejected delivery with its headers and body.
    Show { id: i64 },
    /// Re-verify with the current secret and store it if it now passes.
    Retry { id: i64 },
}

pub async fn quarantine(settings: &Settings, cmd: QuarantineCommand) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    match cmd {
        QuarantineCommand::List { limit, format } => {
            let page = store
                .list_quarantine(
                    None,
                    &PageRequest {
                        limit: limit.clamp(1, store::MAX_PAGE),
                        cursor: None,
                    },
                )
                .await?;
            if format == Format::Json {
                let values: Vec<_> = page
                    .items
                    .iter()
                    .map(|r| views::quarantine_view(r, false))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
                return Ok(ExitCode::SUCCESS);
            }
            let header = [
                "id",
                "received_at",
                "source",
                "reason_code",
                "body_size",
                "resolution",
                "reason",
            ];
            output(format, &header, &page.items, |r| {
                vec![
                    r.id.to_string(),
                    views::rfc3339(&r.received_at),
                    r.source.clone(),
                    r.reason_code.clone(),
                    r.body_size.to_string(),
                    r.resolution.clone().unwrap_or_else(|| "-".into()),
                    r.reason.clone(),
                ]
            })?;
        }
        QuarantineCommand::Show { id } => {
            let record = store
                .get_quarantine(id)
                .await?
                .with_context(|| format!("no quarantined delivery #{id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&views::quarantine_view(&record, true))?
            );
        }
        QuarantineCommand::Retry { id } => {
            let record = store
                .get_quarantine(id)
                .await?
                .with_context(|| format!("no quarantined delivery #{id}"))?;
            // Always verifies: the CLI has no --insecure-skip-verification.
            match quarantine::retry(
                store.as_ref(),
                quarantine::Writer::Direct(store.as_ref()),
                &settings.sources(),
                true,
                &record,
            )
            .await
            {
                Ok(admitted) => println!("#{id}: {}", admitted.resolution),
                Err(RetryError::StillRejected(r)) => {
                    eprintln!("#{id} is still rejected: {r}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
