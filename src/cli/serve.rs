//! `serve`: resolve the configuration, start the server, say where it listens.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::flags::ServeFlags;
use crate::config::{self, Settings};
use crate::redact;

pub async fn serve(settings: &Settings, flags: ServeFlags) -> anyhow::Result<ExitCode> {
    let config = settings.serve(flags).await?;
    if config.insecure_skip_verification {
        tracing::warn!(
            "--insecure-skip-verification: signatures are NOT checked; anyone who can reach this port can write events"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let running = crate::server::start(config.clone(), listener, true).await?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let sources: Vec<String> = config
        .sources
        .names()
        .map(|n| {
            if n == config::DEFAULT_SOURCE {
                format!("{scheme}://{}/webhooks/thinkific", running.addr)
            } else {
                format!("{scheme}://{}/webhooks/thinkific/{n}", running.addr)
            }
        })
        .collect();
    tracing::info!(
        database = %redact::url(&config.database_url),
        api = %format!("{scheme}://{}/api/enrollments", running.addr),
        "enrollhook listening on {}; webhook URLs: {}; dashboard: {scheme}://{}/dashboard",
        running.addr,
        sources.join(", "),
        running.addr
    );
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}
