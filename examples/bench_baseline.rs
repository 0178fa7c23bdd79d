//! Ceilings for the ingest benchmark (`bench/run.sh`): the same kind of HTTP
//! server as enrollhook doing only part of its work, so each number says what
//! this machine can do at best up to that step.
//!
//! - `--mode bare`: axum reads the body and answers 200 (the HTTP ceiling);
//! - `--mode verify`: + HMAC-SHA256 check of `X-Thinkific-Hmac-Sha256` and a JSON
//!   parse of the envelope (the CPU ceiling without storage);
//! - `--mode rusqlite`: + a single-writer SQLite group commit of the raw event
//!   written with rusqlite directly on a thread of its own (WAL,
//!   synchronous=FULL, one transaction per batch, a prepared insert, a unique
//!   (source, id) index, answer after commit): the SQLite storage ceiling;
//! - `--mode sqlite`: the same through sqlx (one multi-row insert per batch), an
//!   extra row that shows what the driver's hand-off costs;
//! - `--mode postgres`: + a single-writer PostgreSQL group commit of the raw
//!   event (one multi-row insert per batch, unique (source, id), answer after
//!   commit): the PostgreSQL storage ceiling.
//!
//! Deliberately independent of enrollhook's own code: it is what we compare against.

use std::str::FromStr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::{Parser, ValueEnum};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Bare,
    Verify,
    Rusqlite,
    Sqlite,
    Postgres,
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
    /// SQLite file (rusqlite and sqlite modes) or PostgreSQL URL (postgres mode).
    #[arg(long, default_value = "bench_baseline.db")]
    database: String,
    /// Most events per group-commit transaction (same default as enrollhook).
    #[arg(long, default_value_t = 512)]
    max_batch: usize,
}

/// An event waiting for its batch to commit: (source, envelope id, raw body).
struct Job {
    source: String,
    id: String,
    body: String,
    done: oneshot::Sender<Result<(), String>>,
}

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
        Mode::Bare | Mode::Verify => None,
        Mode::Rusqlite => Some(start_rusqlite_writer(&args.database, args.max_batch)?),
        Mode::Sqlite => Some(start_sqlx_sqlite_writer(&args.database, args.max_batch).await?),
        Mode::Postgres => Some(start_postgres_writer(&args.database, args.max_batch).await?),
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

async fn receive(
    State(ctx): State<Ctx>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
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
    let job_id = id.to_string();
    let raw = String::from_utf8(body.to_vec()).expect("valid JSON is UTF-8");
    let source = path.rsplit('/').next().unwrap_or_default().to_string();
    let (done, committed) = oneshot::channel();
    let job = Job {
        source,
        id: job_id,
        body: raw,
        done,
    };
    if writer.send(job).await.is_err() {
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

const EVENTS: &str = "CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, source TEXT NOT NULL, event_id TEXT NOT NULL,
    received_at TEXT NOT NULL, body TEXT NOT NULL)";
const EVENTS_UNIQUE: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS events_source_id ON events (source, event_id)";

/// Answer every job of a batch with the batch's result.
fn answer(jobs: &mut Vec<Job>, result: Result<(), String>) {
    for job in jobs.drain(..) {
        let _ = job.done.send(result.clone());
    }
}

/// One thread with one rusqlite connection: takes every waiting event (up to
/// `max_batch`), inserts them with a prepared statement in one transaction,
/// then answers them all. No async hand-off per statement: the plain ceiling.
fn start_rusqlite_writer(path: &str, max_batch: usize) -> anyhow::Result<mpsc::Sender<Job>> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(&format!("{EVENTS}; {EVENTS_UNIQUE};"))?;
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 4);
    std::thread::spawn(move || {
        let mut jobs = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let result = commit_rusqlite(&mut conn, &jobs).map_err(|e| e.to_string());
            answer(&mut jobs, result);
        }
    });
    Ok(tx)
}

fn commit_rusqlite(conn: &mut rusqlite::Connection, jobs: &[Job]) -> rusqlite::Result<()> {
    let received_at = chrono::Utc::now().to_rfc3339();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (source, event_id, received_at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        for job in jobs {
            insert.execute((&job.source, &job.id, &received_at, &job.body))?;
        }
    }
    tx.commit()
}

/// One connection, one task: takes every waiting body (up to `max_batch`),
/// inserts them with one statement in one transaction, then answers them all.
async fn start_sqlx_sqlite_writer(
    path: &str,
    max_batch: usize,
) -> anyhow::Result<mpsc::Sender<Job>> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query(EVENTS).execute(&mut conn).await?;
    sqlx::query(EVENTS_UNIQUE).execute(&mut conn).await?;
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 4);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(max_batch);
        while rx.recv_many(&mut jobs, max_batch).await > 0 {
            let result = commit_sqlx_sqlite(&mut conn, &jobs)
                .await
                .map_err(|e| e.to_string());
            answer(&mut jobs, result);
        }
    });
    Ok(tx)
}

async fn commit_sqlx_sqlite(conn: &mut SqliteConnection, jobs: &[Job]) -> sqlx::Result<()> {
    let received_at = chrono::Utc::now().to_rfc3339();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut insert =
        QueryBuilder::<Sqlite>::new("INSERT INTO events (source, event_id, received_at, body) ");
    insert.push_values(jobs, |mut row, job| {
        row.push_bind(&job.source)
            .push_bind(&job.id)
            .push_bind(&received_at)
            .push_bind(&job.body);
    });
    insert.push(" ON CONFLICT DO NOTHING");
    insert.build().execute(&mut *tx).await?;
    tx.commit().await
}

/// The same single writer on PostgreSQL: one multi-row insert per batch.
async fn start_postgres_writer(url: &str, max_batch: usize) -> anyhow::Result<mpsc::Sender<Job>> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS events (
            seq BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, event_id TEXT NOT NULL,
            received_at TIMESTAMPTZ NOT NULL, body TEXT NOT NULL);
         CREATE UNIQUE INDEX IF NOT EXISTS events_source_id ON events (source, event_id);",
    )
    .execute(&mut conn)
    .await?;
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 4);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(max_batch);
        while rx.recv_many(&mut jobs, max_batch).await > 0 {
            let result = commit_postgres(&mut conn, &jobs)
                .await
                .map_err(|e| e.to_string());
            answer(&mut jobs, result);
        }
    });
    Ok(tx)
}

async fn commit_postgres(conn: &mut PgConnection, jobs: &[Job]) -> sqlx::Result<()> {
    let received_at = chrono::Utc::now();
    let mut tx = conn.begin().await?;
    let mut insert =
        QueryBuilder::<Postgres>::new("INSERT INTO events (source, event_id, received_at, body) ");
    insert.push_values(jobs, |mut row, job| {
        row.push_bind(&job.source)
            .push_bind(&job.id)
            .push_bind(received_at)
            .push_bind(&job.body);
    });
    insert.push(" ON CONFLICT DO NOTHING");
    insert.build().execute(&mut *tx).await?;
    tx.commit().await
}
