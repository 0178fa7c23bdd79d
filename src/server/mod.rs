//! The HTTP shell: webhook ingest, query API, health and metrics.

mod alerts;
mod api;
pub mod auth;
mod dashboard;
mod deadline;
mod error;
pub mod export;
mod learning;
pub mod limits;
pub mod listen;
pub mod openapi;
pub mod origin;
mod stream;
mod subscriptions;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;

pub use api::{SourceMilestonesView, milestone_topics};
pub use error::ApiError;
pub use subscriptions::{new_subscription_id, subscription_view};

use crate::config::{Secret, ServeConfig, Sources};
use crate::ingest::Ingestor;
use crate::maintenance::retention;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingestor: Ingestor,
    pub sources: Arc<Sources>,
    pub verify_signatures: bool,
    pub api_token: Option<Arc<Secret>>,
    pub metrics: Arc<Metrics>,
    pub max_body: usize,
    pub allow_private_destinations: bool,
    /// How deliveries are sent (for a subscription's test delivery).
    pub forward: Arc<crate::forward::ForwardConfig>,
    pub read_timeout: std::time::Duration,
    pub limits: Arc<limits::RateLimits>,
    pub max_quarantine: u64,
    pub max_quarantine_bytes: u64,
    pub quarantine_budget: Arc<limits::QuarantineBudget>,
    pub delivery_log: Arc<crate::log_budget::DeliveryLog>,
    /// The Host names the API and dashboard answer to without a token.
    pub hosts: Arc<origin::HostPolicy>,
    /// Live streams open, against `--max-streams`.
    pub streams: Arc<stream::StreamSlots>,
    /// Turns true when the server begins to stop: live streams end then, so
    /// the graceful shutdown does not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    let read_timeout = state.read_timeout;
    // No Host or Origin checks on deliveries: see `origin`.
    let webhooks = webhooks::router().layer(DefaultBodyLimit::max(max_body));
    let dashboard = dashboard::router().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        origin::dashboard_host,
    ));
    Router::new()
        .route("/openapi.json", axum::routing::get(openapi::serve_document))
        .merge(webhooks)
        .merge(dashboard)
        .merge(api::router(state.clone()))
        .merge(subscriptions::router(state.clone()))
        .merge(alerts::router(state.clone()))
        .with_state(state)
        // Every body must arrive whole within --read-timeout (408 on webhooks).
        .layer(axum::middleware::from_fn_with_state(
            read_timeout,
            deadline::limit_body_time,
        ))
}

/// A running server: its address, and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Graceful stop: no new connections, in-flight deliveries finish and commit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }

    /// Waits until the server stops by itself (after a signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Opens the store, starts the group-commit writer and serves on `listener`
/// until `stop` is called or, with `handle_signals`, SIGINT/SIGTERM arrives.
pub async fn start(
    config: ServeConfig,
    listener: TcpListener,
    handle_signals: bool,
) -> anyhow::Result<Running> {
    let store = store::open_with_milestones(
        &config.database_url,
        config.migrate,
        config.milestones.clone(),
    )
    .await?;
    let metrics = Arc::new(Metrics::new());
    let writer_count = config.writers.unwrap_or_else(|| store.writers()).max(1);
    let (ingestor, writers) = Ingestor::start(
        store.clone(),
        metrics.clone(),
        writer_count,
        config.max_batch,
    );
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let state = AppState {
        stopping,
        streams: Arc::new(stream::StreamSlots::new(
            config.max_streams,
            metrics.streams(config.max_streams),
        )),
        store: store.clone(),
        ingestor,
        sources: Arc::new(config.sources.clone()),
        verify_signatures: !config.insecure_skip_verification,
        api_token: config.api_token.clone().map(Arc::new),
        metrics,
        max_body: config.max_body,
        allow_private_destinations: config.forward.allow_private_destinations,
        forward: Arc::new(config.forward.clone()),
        read_timeout: config.read_timeout,
        limits: Arc::new(limits::RateLimits::new(
            config.rate_limit,
            config.global_rate_limit,
        )),
        max_quarantine: config.max_quarantine,
        max_quarantine_bytes: config.max_quarantine_bytes,
        quarantine_budget: Arc::new(limits::QuarantineBudget::new(config.max_quarantine_rate)),
        delivery_log: crate::log_budget::DeliveryLog::start(
            "deliveries",
            || tracing::enabled!(target: "enrollhook::server::webhooks", tracing::Level::DEBUG),
        ),
        hosts: Arc::new(origin::HostPolicy::new(
            listener.local_addr()?,
            &config.allowed_hosts,
        )),
    };
    let listen_options = listen::ListenOptions {
        tls: match &config.tls {
            Some((cert, key)) => Some(listen::tls_config(cert, key)?),
            None => None,
        },
        read_timeout: config.read_timeout,
        max_connections: config.max_connections,
        connections: state.metrics.connections(config.max_connections),
    };
    let forwarder = crate::forward::Forwarder::start(store.clone(), config.forward.clone())?;
    let alerts = crate::alerts::raise::spawn(
        store.clone(),
        config.forward.alerts.clone(),
        config.sources.names().map(str::to_owned).collect(),
    );
    let retention = config
        .retain_events
        .map(|retain| retention::spawn(store.clone(), retain, retention::EVERY));
    let reconciler = match config.reconcile_every {
        Some(every) => {
            let mut targets = Vec::with_capacity(config.reconcile.len());
            for r in &config.reconcile {
                targets.push(crate::maintenance::reconcile::Target {
                    source: r.thinkific.source.clone(),
                    client: r.thinkific.client()?,
                    webhook_url: r.webhook_url.clone(),
                });
            }
            Some(crate::maintenance::reconcile::spawn(
                store.clone(),
                targets,
                every,
            ))
        }
        None => None,
    };
    let stalled_check = (config
        .milestones
        .iter()
        .any(|(_, m)| m.stalled_days.is_some()))
    .then(|| {
        crate::maintenance::milestones::spawn(
            store.clone(),
            config.clock.clone(),
            config.stalled_check_every,
        )
    });
    let app = router(state);
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async move {
            if handle_signals {
                tokio::select! {
                    _ = rx => {}
                    _ = shutdown_signal() => {}
                }
            } else {
                let _ = rx.await;
            }
            tracing::info!("shutting down: finishing in-flight deliveries");
            let _ = stop_streams.send(true);
        };
        listen::serve(listener, app, listen_options, stop).await;
        // The router (and with it every Ingestor handle) is gone: the writers
        // drain what is queued, commit, and end.
        writers.join_all().await;
        forwarder.stop().await;
        alerts.abort();
        if let Some(retention) = retention {
            retention.abort();
        }
        if let Some(reconciler) = reconciler {
            reconciler.abort();
        }
        if let Some(stalled_check) = stalled_check {
            stalled_check.abort();
        }
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        store,
        shutdown: Some(tx),
        task,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
