//! The backfill work queue (`data_ingestion.backfill_tasks`): tasks on a fixed grid of windows,
//! planned idempotently, claimed with `FOR UPDATE SKIP LOCKED` under a lease, marked done once
//! their bars are committed. Several processes on several machines share one queue with no
//! coordinator of their own: PostgreSQL's row locks are the coordinator.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;

use super::DbError;
use crate::domain::{DataSource, Symbol, Timeframe};

/// A claim lasts this long unless renewed; a machine that vanished frees its tasks by then.
pub const LEASE: Duration = Duration::seconds(30);
/// Workers renew their lease this often.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One window of one symbol: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub source: DataSource,
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What a run asks of the queue: these symbols' windows that start in `[first, last]`.
#[derive(Debug, Clone)]
pub struct Range {
    pub source: DataSource,
    pub timeframe: Timeframe,
    pub symbols: Vec<Symbol>,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// When the run began: a window fetched since (one that reaches past its fetch, left
    /// pending for the next run) is not claimed again by this run or a concurrent one.
    pub since: DateTime<Utc>,
}

impl Range {
    fn symbols(&self) -> Vec<&str> {
        self.symbols.iter().map(Symbol::as_str).collect()
    }
}

/// Where a range stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub done: i64,
}

/// Creates the range's tasks that do not exist yet; with `force`, sets done ones pending again
/// (to pick up a vendor's corrections). `windows` are the grid's windows of the range.
pub async fn plan(
    client: &Client,
    range: &Range,
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    force: bool,
) -> Result<Counts, DbError> {
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| w.0).collect();
    let ends: Vec<DateTime<Utc>> = windows.iter().map(|w| w.1).collect();
    client
        .execute(
            "INSERT INTO data_ingestion.backfill_tasks
                 (data_source, symbol, timeframe, window_start, window_end)
             SELECT $1, s, $2, w.start, w.stop
             FROM unnest($3::text[]) AS s, unnest($4::timestamptz[], $5::timestamptz[]) AS w(start, stop)
             ON CONFLICT DO NOTHING",
            &[
                &range.source.as_str(),
                &range.timeframe.as_str(),
                &range.symbols(),
                &starts,
                &ends,
            ],
        )
        .await?;
    if force {
        client
            .execute(
                "UPDATE data_ingestion.backfill_tasks SET state = 'pending', updated_at = now()
                 WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
                   AND window_start BETWEEN $4 AND $5 AND state = 'done'",
                &[
                    &range.source.as_str(),
                    &range.timeframe.as_str(),
                    &range.symbols(),
                    &range.first,
                    &range.last,
                ],
            )
            .await?;
    }
    counts(client, range).await
}

pub async fn counts(client: &Client, range: &Range) -> Result<Counts, DbError> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'done')
             FROM data_ingestion.backfill_tasks
             WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
               AND window_start BETWEEN $4 AND $5",
            &[
                &range.source.as_str(),
                &range.timeframe.as_str(),
                &range.symbols(),
                &range.first,
                &range.last,
            ],
        )
        .await?;
    Ok(Counts {
        total: row.get(0),
        done: row.get(1),
    })
}

/// Claims the next free pending task of the range, skipping `skip` symbols (failed this run).
/// Free: never claimed, its lease run out, or its claiming session gone (the process died).
/// The claim belongs to `client`'s session, which the worker keeps until the task ends.
pub async fn claim(
    client: &Client,
    range: &Range,
    skip: &[Symbol],
) -> Result<Option<Task>, DbError> {
    let skip: Vec<&str> = skip.iter().map(Symbol::as_str).collect();
    let lease = format!("{} seconds", LEASE.num_seconds());
    let row = client
        .query_opt(
            "UPDATE data_ingestion.backfill_tasks t
             SET lease_pid = pg_backend_pid(), lease_until = now() + $7::text::interval,
                 claimed_at = now(), attempts = attempts + 1, updated_at = now()
             WHERE (t.data_source, t.symbol, t.timeframe, t.window_start) = (
                 SELECT data_source, symbol, timeframe, window_start
                 FROM data_ingestion.backfill_tasks c
                 WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
                   AND NOT (symbol = ANY($6)) AND window_start BETWEEN $4 AND $5
                   AND state = 'pending' AND (fetched_at IS NULL OR fetched_at < $8)
                   AND (lease_pid IS NULL OR lease_until < now()
                        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                       WHERE a.pid = c.lease_pid AND a.backend_start <= c.claimed_at))
                 ORDER BY window_start, symbol
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING symbol, window_start, window_end",
            &[
                &range.source.as_str(),
                &range.timeframe.as_str(),
                &range.symbols(),
                &range.first,
                &range.last,
                &skip,
                &lease,
                &range.since,
            ],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let symbol: String = row.get(0);
    Ok(Some(Task {
        source: range.source,
        // Planned from parsed symbols: a stored one always parses.
        symbol: symbol
            .parse()
            .map_err(|e| DbError::Migrate(format!("backfill_tasks holds a bad symbol: {e}")))?,
        timeframe: range.timeframe,
        start: row.get(1),
        end: row.get(2),
    }))
}

const KEY: &str = "data_source = $1 AND symbol = $2 AND timeframe = $3 AND window_start = $4
    AND lease_pid = pg_backend_pid()";

fn key(t: &Task) -> (&'static str, &str, &'static str, DateTime<Utc>) {
    (
        t.source.as_str(),
        t.symbol.as_str(),
        t.timeframe.as_str(),
        t.start,
    )
}

/// Extends the lease; false if it was lost (another worker took the task over).
pub async fn renew(client: &Client, task: &Task) -> Result<bool, DbError> {
    let lease = format!("{} seconds", LEASE.num_seconds());
    let k = key(task);
    let n = client
        .execute(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET lease_until = now() + $5::text::interval WHERE {KEY}"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &lease],
        )
        .await?;
    Ok(n == 1)
}

/// Ends the claim after the task's bars are committed: done, unless its window reached past
/// `fetched_at` (then it stays pending, so the next backfill fetches it again).
pub async fn finish(
    client: &Client,
    task: &Task,
    bars: i64,
    fetched_at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let k = key(task);
    let done = task.end <= fetched_at;
    client
        .execute(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET state = CASE WHEN $5 THEN 'done' ELSE 'pending' END,
                     done_at = CASE WHEN $5 THEN now() END,
                     bars = $6, fetched_at = $7, last_error = NULL,
                     lease_pid = NULL, lease_until = NULL, updated_at = now()
                 WHERE {KEY}"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &done, &bars, &fetched_at],
        )
        .await?;
    Ok(done)
}

/// Gives a task back, pending, with the reason it was not finished (none when stopped).
pub async fn release(client: &Client, task: &Task, error: Option<&str>) -> Result<(), DbError> {
    let k = key(task);
    client
        .execute(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET lease_pid = NULL, lease_until = NULL,
                     last_error = COALESCE($5, last_error), updated_at = now()
                 WHERE {KEY}"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &error],
        )
        .await?;
    Ok(())
}
