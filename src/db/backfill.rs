//! The backfill work queue (`data_ingestion.backfill_tasks`): tasks on a fixed grid of windows,
//! planned idempotently, claimed with `FOR UPDATE SKIP LOCKED` under a lease, marked done once
//! their bars are committed. Several processes on several machines share one queue with no
//! coordinator of their own: PostgreSQL's row locks are the coordinator.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;

use super::DbError;
use crate::domain::{DataSource, Mode, Symbol, Timeframe};

/// A claim lasts this long unless renewed; a machine that vanished frees its tasks by then.
pub const LEASE: Duration = Duration::seconds(30);
/// Workers renew their lease this often.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One window of one symbol: `[start, end)`. Mode `backfill`: a window of the grid; mode
/// `stream`: a gap of the daemon's stream, filled into the feed's `stream` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub source: DataSource,
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    pub mode: Mode,
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
    /// When the run began, by the database's clock (see `now`): a window fetched since (one
    /// that reaches past its fetch, or failed) is not claimed again by this run or a concurrent
    /// one.
    pub since: DateTime<Utc>,
    /// `backfill --holes`: only these tasks of the range, not every window of every symbol.
    pub cells: Option<Cells>,
}

/// Tasks named one by one: `symbols[i]`'s window `[starts[i], ends[i])`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cells {
    pub symbols: Vec<String>,
    pub starts: Vec<DateTime<Utc>>,
    pub ends: Vec<DateTime<Utc>>,
}

/// The rows of [`Range::cells`] (all of the range's rows when it names none); `$a` and `$b` are
/// the cells' symbols and starts.
fn in_cells(a: u8, b: u8) -> String {
    format!(
        "(${a}::text[] IS NULL OR (symbol, window_start) IN
            (SELECT * FROM unnest(${a}::text[], ${b}::timestamptz[])))"
    )
}

impl Range {
    fn symbols(&self) -> Vec<&str> {
        self.symbols.iter().map(Symbol::as_str).collect()
    }

    fn cell_symbols(&self) -> Option<&Vec<String>> {
        self.cells.as_ref().map(|c| &c.symbols)
    }

    fn cell_starts(&self) -> Option<&Vec<DateTime<Utc>>> {
        self.cells.as_ref().map(|c| &c.starts)
    }
}

/// Where a range stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub done: i64,
}

/// The database's clock: every time the queue compares comes from it, never from the
/// machines' clocks (which drift, and step back under NTP).
pub async fn now(client: &Client) -> Result<DateTime<Utc>, DbError> {
    Ok(client.query_one("SELECT now()", &[]).await?.get(0))
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
    let (source, timeframe) = (range.source.as_str(), range.timeframe.as_str());
    match &range.cells {
        None => {
            client
                .execute(
                    "INSERT INTO data_ingestion.backfill_tasks
                         (data_source, symbol, timeframe, window_start, window_end)
                     SELECT $1, s, $2, w.start, w.stop
                     FROM unnest($3::text[]) AS s,
                          unnest($4::timestamptz[], $5::timestamptz[]) AS w(start, stop)
                     ON CONFLICT DO NOTHING",
                    &[&source, &timeframe, &range.symbols(), &starts, &ends],
                )
                .await?
        }
        Some(c) => {
            client
                .execute(
                    "INSERT INTO data_ingestion.backfill_tasks
                         (data_source, symbol, timeframe, window_start, window_end)
                     SELECT $1, s, $2, start, stop
                     FROM unnest($3::text[], $4::timestamptz[], $5::timestamptz[])
                         AS w(s, start, stop)
                     ON CONFLICT DO NOTHING",
                    &[&source, &timeframe, &c.symbols, &c.starts, &c.ends],
                )
                .await?
        }
    };
    if force {
        client
            .execute(
                &format!(
                    "UPDATE data_ingestion.backfill_tasks SET state = 'pending', updated_at = now()
                 WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
                   AND mode = 'backfill' AND window_start BETWEEN $4 AND $5 AND state = 'done'
                   AND {}",
                    in_cells(6, 7)
                ),
                &[
                    &source,
                    &timeframe,
                    &range.symbols(),
                    &range.first,
                    &range.last,
                    &range.cell_symbols(),
                    &range.cell_starts(),
                ],
            )
            .await?;
    }
    counts(client, range).await
}

pub async fn counts(client: &Client, range: &Range) -> Result<Counts, DbError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE state = 'done')
                 FROM data_ingestion.backfill_tasks
                 WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
                   AND mode = 'backfill' AND window_start BETWEEN $4 AND $5 AND {}",
                in_cells(6, 7)
            ),
            &[
                &range.source.as_str(),
                &range.timeframe.as_str(),
                &range.symbols(),
                &range.first,
                &range.last,
                &range.cell_symbols(),
                &range.cell_starts(),
            ],
        )
        .await?;
    Ok(Counts {
        total: row.get(0),
        done: row.get(1),
    })
}

/// Claims free pending tasks of the range for one window: the oldest free window's, up to
/// `most` symbols of it (a vendor that serves many symbols per request fetches them together),
/// skipping `skip` symbols (failed this run). Free: never claimed, its lease run out, or its
/// claiming session gone (the process died). The claims belong to `client`'s session, which the
/// worker keeps until the tasks end. Empty when nothing is left.
pub async fn claim(
    client: &Client,
    range: &Range,
    skip: &[Symbol],
    most: usize,
) -> Result<Vec<Task>, DbError> {
    let skip: Vec<&str> = skip.iter().map(Symbol::as_str).collect();
    let lease = format!("{} seconds", LEASE.num_seconds());
    let most = i64::try_from(most.max(1)).unwrap_or(1);
    let pending = format!(
        "data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
         AND mode = 'backfill'
         AND NOT (symbol = ANY($6)) AND window_start BETWEEN $4 AND $5
         AND state = 'pending' AND (fetched_at IS NULL OR fetched_at < $8) AND {}",
        in_cells(10, 11)
    );
    // Claims are taken one at a time (across processes too): two workers claiming at once
    // would otherwise split one window's symbols between them, doubling the requests. The lock
    // is the transaction's; the claim's statement then sees every earlier claim committed.
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7356001)")
        .await?;
    let rows = client
        .query(
            &format!(
                "WITH first AS (
                     SELECT window_start FROM data_ingestion.backfill_tasks c
                     WHERE {pending} AND {FREE}
                     ORDER BY window_start, symbol
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED),
                 pick AS (
                     SELECT symbol FROM data_ingestion.backfill_tasks c
                     WHERE {pending} AND {FREE}
                       AND window_start = (SELECT window_start FROM first)
                     ORDER BY symbol
                     LIMIT $9
                     FOR UPDATE SKIP LOCKED)
                 UPDATE data_ingestion.backfill_tasks t
                 SET lease_pid = pg_backend_pid(), lease_until = now() + $7::text::interval,
                     claimed_at = now(), attempts = attempts + 1, updated_at = now()
                 WHERE t.data_source = $1 AND t.timeframe = $2 AND t.mode = 'backfill'
                   AND t.window_start = (SELECT window_start FROM first)
                   AND t.symbol IN (SELECT symbol FROM pick)
                 RETURNING symbol, window_start, window_end"
            ),
            &[
                &range.source.as_str(),
                &range.timeframe.as_str(),
                &range.symbols(),
                &range.first,
                &range.last,
                &skip,
                &lease,
                &range.since,
                &most,
                &range.cell_symbols(),
                &range.cell_starts(),
            ],
        )
        .await;
    let rows = match rows {
        Ok(rows) => {
            client.batch_execute("COMMIT").await?;
            rows
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let mut tasks = rows
        .iter()
        .map(|r| task_of(r, range.source, range.timeframe, Mode::Backfill))
        .collect::<Result<Vec<_>, _>>()?;
    tasks.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    Ok(tasks)
}

/// A claimed row (`symbol, window_start, window_end`) as a task.
fn task_of(
    row: &tokio_postgres::Row,
    source: DataSource,
    timeframe: Timeframe,
    mode: Mode,
) -> Result<Task, DbError> {
    let symbol: String = row.get(0);
    Ok(Task {
        source,
        // Planned from parsed symbols: a stored one always parses.
        symbol: symbol
            .parse()
            .map_err(|e| DbError::Migrate(format!("backfill_tasks holds a bad symbol: {e}")))?,
        timeframe,
        mode,
        start: row.get(1),
        end: row.get(2),
    })
}

/// A task nobody works: never claimed, its lease run out, or its claiming session gone.
const FREE: &str = "(lease_pid IS NULL OR lease_until < now()
    OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                   WHERE a.pid = c.lease_pid
                     -- NULL for another role's session without
                     -- pg_read_all_stats: then trust the pid and the lease.
                     AND (a.backend_start IS NULL OR a.backend_start <= c.claimed_at)))";

const BY_KEY: &str =
    "data_source = $1 AND symbol = $2 AND timeframe = $3 AND window_start = $4 AND mode = $5";
const MINE: &str = "lease_pid = pg_backend_pid()";

fn key(
    t: &Task,
) -> (
    &'static str,
    &str,
    &'static str,
    DateTime<Utc>,
    &'static str,
) {
    (
        t.source.as_str(),
        t.symbol.as_str(),
        t.timeframe.as_str(),
        t.start,
        t.mode.as_str(),
    )
}

/// Records each symbol's stream gap: from its feed's committed `last_bar_timestamp`
/// (inclusive: a corrected last bar is picked up), or `default_from` for a feed without one,
/// up to `to` (exclusive, the new subscription's moment). A pending gap with the same start is
/// extended, a done one opened again. Returns the gaps recorded.
pub async fn record_gaps(
    client: &Client,
    source: DataSource,
    timeframe: Timeframe,
    symbols: &[Symbol],
    default_from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    Ok(client
        .execute(
            "INSERT INTO data_ingestion.backfill_tasks AS t
                 (data_source, symbol, timeframe, mode, window_start, window_end)
             SELECT $1, s, $2, 'stream', g.start, $5
             FROM unnest($3::text[]) AS s
             LEFT JOIN data_ingestion.ingestion_status st
               ON st.data_source = $1 AND st.symbol = s AND st.mode = 'stream'
             CROSS JOIN LATERAL (SELECT COALESCE(st.last_bar_timestamp, $4) AS start) g
             WHERE g.start < $5
             ON CONFLICT (data_source, symbol, timeframe, mode, window_start) DO UPDATE
             SET window_end = GREATEST(t.window_end, EXCLUDED.window_end), state = 'pending',
                 done_at = NULL, updated_at = now()",
            &[
                &source.as_str(),
                &timeframe.as_str(),
                &symbols,
                &default_from,
                &to,
            ],
        )
        .await?)
}

/// Forgets the gaps done more than a week ago: every reconnect records one a feed.
pub async fn prune_gaps(client: &Client) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM data_ingestion.backfill_tasks
             WHERE mode = 'stream' AND state = 'done' AND done_at < now() - interval '7 days'",
            &[],
        )
        .await?)
}

/// Longest wait between two attempts at one gap.
pub const GAP_RETRY_MAX_SECS: i32 = 300;

/// Claims the oldest free pending gap of these feeds whose backoff has passed: after the n-th
/// failed or unsettled attempt a gap waits 2^n s (at most [`GAP_RETRY_MAX_SECS`]).
pub async fn claim_gap(
    client: &Client,
    source: DataSource,
    timeframe: Timeframe,
    symbols: &[Symbol],
) -> Result<Option<Task>, DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    let lease = format!("{} seconds", LEASE.num_seconds());
    let row = client
        .query_opt(
            &format!(
                "UPDATE data_ingestion.backfill_tasks t
                 SET lease_pid = pg_backend_pid(), lease_until = now() + $4::text::interval,
                     claimed_at = now(), attempts = attempts + 1, updated_at = now()
                 WHERE (t.data_source, t.symbol, t.timeframe, t.mode, t.window_start) = (
                     SELECT data_source, symbol, timeframe, mode, window_start
                     FROM data_ingestion.backfill_tasks c
                     WHERE data_source = $1 AND timeframe = $2 AND symbol = ANY($3)
                       AND mode = 'stream' AND state = 'pending'
                       AND (fetched_at IS NULL OR fetched_at + make_interval(
                            secs => LEAST($5, power(2, LEAST(attempts, 20)))) <= now())
                       AND {FREE}
                     ORDER BY window_start, symbol
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING symbol, window_start, window_end"
            ),
            &[
                &source.as_str(),
                &timeframe.as_str(),
                &symbols,
                &lease,
                &f64::from(GAP_RETRY_MAX_SECS),
            ],
        )
        .await?;
    row.map(|r| task_of(&r, source, timeframe, Mode::Stream))
        .transpose()
}

/// Extends the lease; false if it was lost (another worker took the task over).
pub async fn renew(client: &Client, task: &Task) -> Result<bool, DbError> {
    let lease = format!("{} seconds", LEASE.num_seconds());
    let k = key(task);
    let n = client
        .execute(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET lease_until = now() + $6::text::interval WHERE {BY_KEY} AND {MINE}"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &k.4, &lease],
        )
        .await?;
    Ok(n == 1)
}

/// Whether a finished task is done: every page final (`$6`), and a grid window ended an hour
/// before it was claimed (the vendor's last minutes of a window, late trades and corrections,
/// settle first) (today's stays pending: the next backfill fetches it again). A gap
/// ends where the stream took over, so the stream covers what came after it.
const SETTLED: &str = "($6 AND (mode = 'stream' OR window_end + interval '1 hour' <= claimed_at))";

/// Ends a task whose bars are all committed: done when [`SETTLED`], else pending. By key, not by lease: the bars are committed even if the lease was lost
/// meanwhile. Returns whether the task is done.
pub async fn finish(
    client: &Client,
    task: &Task,
    bars: i64,
    settled: bool,
) -> Result<bool, DbError> {
    let k = key(task);
    let row = client
        .query_opt(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET state = CASE WHEN {SETTLED} THEN 'done' ELSE 'pending' END,
                     done_at = CASE WHEN {SETTLED} THEN now() END,
                     bars = $7, fetched_at = claimed_at, last_error = NULL,
                     lease_pid = CASE WHEN {MINE} THEN NULL ELSE lease_pid END,
                     lease_until = CASE WHEN {MINE} THEN NULL ELSE lease_until END,
                     updated_at = now()
                 WHERE {BY_KEY}
                 RETURNING state = 'done'"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &k.4, &settled, &bars],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Gives a task back, pending. With an error, the task is also marked fetched (at its claim)
/// so that this run does not claim it again; the next run retries it.
pub async fn release(client: &Client, task: &Task, error: Option<&str>) -> Result<(), DbError> {
    let k = key(task);
    client
        .execute(
            &format!(
                "UPDATE data_ingestion.backfill_tasks
                 SET lease_pid = NULL, lease_until = NULL,
                     last_error = COALESCE($6, last_error),
                     fetched_at = CASE WHEN $6::text IS NULL THEN fetched_at ELSE claimed_at END,
                     updated_at = now()
                 WHERE {BY_KEY} AND {MINE}"
            ),
            &[&k.0, &k.1, &k.2, &k.3, &k.4, &error],
        )
        .await?;
    Ok(())
}
