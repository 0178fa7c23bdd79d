//! Ceilings for the ingest benchmark (`bench/run.sh`): the same kind of HTTP
//! server as enrollhook doing only part of its work, so each number says what
//! this machine can do at best up to that step.
//!
//! - `--mode bare`: axum reads the body and answers 200 (the HTTP ceiling);
//! - `--mode verify`: + HMAC-SHA256 check of `X-Thinkific-Hmac-Sha256` and a JSON
//!   parse of the envelope (the CPU ceiling without storage);
//! - `--mode sqlite`: + a bare single-writer SQLite group commit of the raw body
//!   (WAL, synchronous=FULL, one transaction per batch, answer after commit):
//!   the storage ceiling.
//!
//! Deliberately independent of enrollhook's own code: it is what we compare against.

use std::str::FromStr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::{Parser, ValueEnum};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Bare,
    Verify,
    Sqlite,
}

#[derive(Parser)]
#[command(about = "Baseline webhook receivers for the ingest benchmark")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Key of the HMAC-SHA256 signature (verify and sqlite modes).
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// SQLite file (sqlite mode).
    #[arg(long, default_value = "bench_baseline.db")]
    database: String,
    /// Most events per group-commit transaction (same default as enrollhook).
    #[arg(long, default_value_t = 512)]
    max_batch: usize,
}

/// A body waiting for its batch to commit.
type Job = (String, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
struct Ctx {
    mode: Mode,
    secret: std::sync::Arc<[u8]>,
    writer: Option<mpsc::Sender<Job>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let writer = match args.mode {
        Mode::Sqlite => Some(start_writer(&args.database, args.max_batch).await?),
        _ => None,
    };
    let ctx = Ctx {
        mode: args.mode,
        secret: args.secret.as_bytes().into(),
        writer,
    };
    // Any POST path: the harness posts to /webhooks/thinkific/{source}.
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(ctx);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("bench_baseline listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if ctx.mode == Mode::Bare {
        return (StatusCode::OK, r#"{"status":"ok"}"#.into());
    }
    if let Err(why) = verify(&ctx.secret, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, why.into());
    }
    let envelope: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")),
    };
    let Some(id) = envelope.get("id").and_then(|v| v.as_str()) else {
        return (StatusCode::BAD_REQUEST, "envelope has no id".into());
    };
    let reply = format!(r#"{{"status":"stored","event_id":"{id}"}}"#);
    let Some(writer) = &ctx.writer else {
        return (StatusCode::OK, reply);
    };
    let raw = String::from_utf8(body.to_vec()).expect("valid JSON is UTF-8");
    let (done, committed) = oneshot::channel();
    if writer.send((raw, done)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "writer stopped".into());
    }
    match committed.await {
        Ok(Ok(())) => (StatusCode::OK, reply),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "writer stopped".into()),
    }
}

fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = headers
        .get("x-thinkific-hmac-sha256")
        .ok_or("missing signature")?;
    let expected = hex::decode(header.as_bytes()).map_err(|_| "signature is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| "signature mismatch")
}

/// One connection, one task: takes every waiting body (up to `max_batch`),
/// inserts them with one statement in one transaction, then answers them all.
async fn start_writer(path: &str, max_batch: usize) -> anyhow::Result<mpsc::Sender<Job>> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY, received_at TEXT NOT NULL, body TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .await?;
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 4);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(max_batch);
        while rx.recv_many(&mut jobs, max_batch).await > 0 {
            let result = commit(&mut conn, &jobs).await.map_err(|e| e.to_string());
            for (_, done) in jobs.drain(..) {
                let _ = done.send(result.clone());
            }
        }
    });
    Ok(tx)
}

async fn commit(conn: &mut SqliteConnection, jobs: &[Job]) -> sqlx::Result<()> {
    let received_at = chrono::Utc::now().to_rfc3339();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO events (received_at, body) ");
    insert.push_values(jobs, |mut row, (body, _)| {
        row.push_bind(&received_at).push_bind(body);
    });
    insert.build().execute(&mut *tx).await?;
    tx.commit().await
}
