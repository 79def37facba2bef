//! `mdingest migrate --to-partitioned`: converts a plain `market_data` into the monthly layout
//! while writers go on. A new partitioned table is filled symbol by symbol (each symbol one
//! transaction, recorded in `partition_copy`, so a run stopped by a signal or `kill -9` goes on
//! where it stopped), a trigger on the plain table copies every write made meanwhile, and one
//! short transaction at the end swaps the names. The plain table is kept, renamed, for the
//! operator to drop once satisfied: a conversion never destroys the only copy of the history.

use std::collections::HashSet;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::partitions::{self, BUILDING, TABLE};
use super::DbError;
use crate::progress::{Progress, Unit};
use crate::shutdown::Shutdown;

/// The plain table's name after the swap.
pub const KEPT: &str = "market_data_unpartitioned";
/// One conversion at a time (a session lock: it dies with the process).
const CONVERT_LOCK_KEY: i64 = 0x6d64_636f_6e76; // "mdconv"

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// The table was partitioned already: nothing done.
    pub already: bool,
    /// Symbols copied by this run, of all the plain table holds.
    pub symbols_copied: u64,
    pub symbols_total: u64,
    pub rows_copied: u64,
    /// Stopped by a signal before the swap; a new run goes on.
    pub interrupted: bool,
}

/// Writes to the plain table made during the copy reach the new one too: the newest value wins
/// whichever of the copy and the write comes first (the copy never overwrites).
const TRIGGER_SQL: &str = "
CREATE OR REPLACE FUNCTION data_ingestion.market_data_to_partitioned() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO data_ingestion.market_data_partitioned AS p
        (id, symbol, timestamp, open, high, low, close, volume, created_at, data_source)
    VALUES (NEW.id, NEW.symbol, NEW.timestamp, NEW.open, NEW.high, NEW.low, NEW.close,
            NEW.volume, NEW.created_at, NEW.data_source)
    ON CONFLICT (symbol, timestamp, data_source) DO UPDATE
    SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS market_data_to_partitioned ON data_ingestion.market_data;
CREATE TRIGGER market_data_to_partitioned AFTER INSERT OR UPDATE ON data_ingestion.market_data
    FOR EACH ROW EXECUTE FUNCTION data_ingestion.market_data_to_partitioned();";

/// Every symbol of the plain table, by skipping along its unique index (one probe per symbol,
/// not a scan of every row).
const SYMBOLS_SQL: &str = "
WITH RECURSIVE s AS (
    (SELECT symbol FROM data_ingestion.market_data ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT symbol FROM data_ingestion.market_data m WHERE m.symbol > s.symbol
            ORDER BY symbol LIMIT 1)
    FROM s WHERE s.symbol IS NOT NULL
)
SELECT symbol::text FROM s WHERE symbol IS NOT NULL";

const COPY_SYMBOL_SQL: &str = "
INSERT INTO data_ingestion.market_data_partitioned
    (id, symbol, timestamp, open, high, low, close, volume, created_at, data_source)
SELECT id, symbol, timestamp, open, high, low, close, volume, created_at, data_source
FROM data_ingestion.market_data WHERE symbol = $1
ON CONFLICT DO NOTHING";

pub async fn to_partitioned(
    client: &mut Client,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Converted, DbError> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&CONVERT_LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        return Err(DbError::Migrate(
            "another `migrate --to-partitioned` is running on this database".into(),
        ));
    }
    let result = convert(client, shutdown, show_progress).await;
    let _ = client
        .query("SELECT pg_advisory_unlock($1)", &[&CONVERT_LOCK_KEY])
        .await;
    result
}

async fn convert(
    client: &mut Client,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Converted, DbError> {
    let mut done = Converted::default();
    if partitions::partitioned_tables(client)
        .await?
        .contains(&TABLE)
    {
        done.already = true;
        return Ok(done);
    }
    if partitions::exists(client, KEPT).await? {
        return Err(DbError::Migrate(format!(
            "data_ingestion.{KEPT} exists (an earlier conversion's plain table?): drop or rename it, then run again"
        )));
    }
    let sequence: Option<String> = client
        .query_one(
            "SELECT pg_get_serial_sequence('data_ingestion.market_data', 'id')",
            &[],
        )
        .await?
        .get(0);
    let sequence = sequence.ok_or_else(|| {
        DbError::Migrate(
            "data_ingestion.market_data has no id sequence: not the seed's table".into(),
        )
    })?;
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning;
             {};
             CREATE TABLE IF NOT EXISTS data_ingestion.partition_copy (
                 symbol TEXT PRIMARY KEY, rows BIGINT NOT NULL,
                 copied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            partitions::create_sql(BUILDING, Some(&sequence))
        ))
        .await?;
    partitions::make_ahead(client, chrono::Utc::now()).await?;
    // Waits for writes in flight (the trigger's lock conflicts with theirs): every write
    // committed after it passes through the trigger, every one before is in the listing below.
    if !locked_ddl(client, shutdown, TRIGGER_SQL).await? {
        done.interrupted = true;
        return Ok(done);
    }
    let copied: HashSet<String> = client
        .query("SELECT symbol FROM data_ingestion.partition_copy", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let symbols: Vec<String> = client
        .query(SYMBOLS_SQL, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    done.symbols_total = symbols.len() as u64;
    let todo: Vec<&String> = symbols.iter().filter(|s| !copied.contains(*s)).collect();
    tracing::info!(
        symbols = symbols.len(),
        left = todo.len(),
        "copying market_data into monthly partitions"
    );
    let mut progress = Progress::new(
        "to-partitioned",
        todo.len() as u64,
        Unit::Symbols,
        show_progress,
    );
    let mut months: HashSet<i32> = HashSet::new();
    for (i, symbol) in todo.iter().enumerate() {
        if shutdown.is_stopping() {
            done.interrupted = true;
            progress.finish();
            return Ok(done);
        }
        let span = client
            .query_one(
                "SELECT min(timestamp), max(timestamp) FROM data_ingestion.market_data
                 WHERE symbol = $1",
                &[symbol],
            )
            .await?;
        if let (Some(first), Some(last)) = (span.get(0), span.get(1)) {
            for m in partitions::month_of(first)..=partitions::month_of(last) {
                if months.insert(m) {
                    partitions::create_partition(client, BUILDING, m).await?;
                }
            }
        }
        let tx = client.transaction().await?;
        let n = tx.execute(COPY_SYMBOL_SQL, &[symbol]).await?;
        tx.execute(
            "INSERT INTO data_ingestion.partition_copy (symbol, rows) VALUES ($1, $2)
             ON CONFLICT (symbol) DO UPDATE SET rows = EXCLUDED.rows",
            &[symbol, &(n as i64)],
        )
        .await?;
        tx.commit().await?;
        done.symbols_copied += 1;
        done.rows_copied += n;
        let rows = done.rows_copied;
        progress.update(i as u64 + 1, || format!("{rows} rows copied"));
    }
    progress.finish();
    if shutdown.is_stopping() {
        done.interrupted = true;
        return Ok(done);
    }
    if !swap(client, shutdown, &sequence).await? {
        done.interrupted = true;
    }
    Ok(done)
}

/// How long a DDL statement waits for market_data's lock before it steps back: writers queue
/// behind a waiting lock request, so a long transaction on the table (an analyst's query) must
/// not stall them through the DDL's wait.
const LOCK_WAIT: &str = "2s";
/// Tries before giving up (about five minutes of a table held by someone else).
const LOCK_TRIES: u32 = 100;

/// Runs `sql` in one transaction that waits at most [`LOCK_WAIT`] for its locks, trying again
/// until it gets them. False when a signal stopped the run first.
async fn locked_ddl(client: &mut Client, shutdown: &Shutdown, sql: &str) -> Result<bool, DbError> {
    for attempt in 1..=LOCK_TRIES {
        if shutdown.is_stopping() {
            return Ok(false);
        }
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
            .await?;
        match tx.batch_execute(sql).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(true);
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tx.rollback().await?;
                tracing::warn!(
                    attempt,
                    "another transaction holds data_ingestion.market_data: trying again in a second"
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::Migrate(format!(
        "another transaction held data_ingestion.market_data through {LOCK_TRIES} tries (see pg_locks and pg_stat_activity); nothing was swapped: run again"
    )))
}

/// One transaction: the plain table stops taking writes, and the partitioned one takes its
/// name, its constraint's name, its sequence and the triggers that keep `bar_counts` (the copy
/// counted nothing: the bars it copied were counted when first written). Writers waiting on the
/// lock then write to the new table (their statements name the table; PostgreSQL plans them
/// again).
async fn swap(client: &mut Client, shutdown: &Shutdown, sequence: &str) -> Result<bool, DbError> {
    let sql = format!(
        "LOCK TABLE data_ingestion.{TABLE} IN ACCESS EXCLUSIVE MODE;
             DROP TRIGGER market_data_to_partitioned ON data_ingestion.{TABLE};
             DROP FUNCTION data_ingestion.market_data_to_partitioned();
             SELECT data_ingestion.forget_bar_counts('data_ingestion.{TABLE}');
             ALTER TABLE data_ingestion.{TABLE} RENAME CONSTRAINT unique_symbol_timestamp_source
                 TO {KEPT}_unique_symbol_timestamp_source;
             ALTER TABLE data_ingestion.{TABLE} RENAME TO {KEPT};
             ALTER TABLE data_ingestion.{BUILDING}
                 RENAME CONSTRAINT {BUILDING}_unique_symbol_timestamp_source
                 TO unique_symbol_timestamp_source;
             ALTER TABLE data_ingestion.{BUILDING} RENAME TO {TABLE};
             ALTER SEQUENCE {sequence} OWNED BY data_ingestion.{TABLE}.id;
             SELECT data_ingestion.keep_bar_counts('data_ingestion.{TABLE}');
             DROP TABLE data_ingestion.partition_copy"
    );
    locked_ddl(client, shutdown, &sql).await
}
