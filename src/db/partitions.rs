//! Monthly partitions of `market_data` (`database.partitioning = "monthly"`): the seed's table
//! column for column, with the same unique constraint, partitioned by range of `timestamp` per
//! UTC month. Partitions are made ahead by `migrate` and by every writer before it writes a
//! month that has none; the layout is read from the catalogue, never assumed from the config,
//! so every path works on both layouts (and on a database converted under a running daemon).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use tokio_postgres::Client;

use super::DbError;

/// The live table, and the one `migrate --to-partitioned` fills before it takes its name.
pub const TABLE: &str = "market_data";
pub const BUILDING: &str = "market_data_partitioned";
/// Partitions are named by month alone (`market_data_p2024_01`), whichever table they belong
/// to: the one being built keeps its partitions when it takes the live table's name.
const PARTITION_PREFIX: &str = "market_data_p";
/// Fixed: two writers making the same month's partition queue on it (with the month as the
/// second key).
const LOCK_KEY: i32 = 0x6d64_7074; // "mdpt"

/// How far ahead `migrate` and the daemon make partitions: this month and the next ones.
pub const MONTHS_AHEAD: u32 = 3;

/// A month as a number (`year * 12 + month0`), the partitions' key here.
pub fn month_of(t: DateTime<Utc>) -> i32 {
    t.year() * 12 + t.month0() as i32
}

fn month_start(m: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(m.div_euclid(12), m.rem_euclid(12) as u32 + 1, 1)
}

/// The first migration, whose `market_data` statement the partitioned table is made from: the
/// same table column for column and constraint for constraint, by construction.
const SEED_SQL: &str = include_str!("../../migrations/V1__data_ingestion_schema.sql");
const SEED_CREATE: &str = "CREATE TABLE IF NOT EXISTS data_ingestion.market_data (";

/// The seed's `market_data` statement, partitioned by month, as `table`. A `table` other than
/// [`TABLE`] is the conversion's new table: its unique constraint's index needs a name of its
/// own until the swap, and it draws ids from the live table's sequence.
pub fn create_sql(table: &str, id_sequence: Option<&str>) -> String {
    let body = SEED_SQL
        .split_once(SEED_CREATE)
        .and_then(|(_, rest)| rest.split_once("\n);"))
        .map_or("", |(body, _)| body);
    let body = match id_sequence {
        None => body.to_string(),
        Some(seq) => body
            .replace(
                "id BIGSERIAL",
                &format!("id BIGINT NOT NULL DEFAULT nextval('{seq}'::regclass)"),
            )
            .replace(
                "CONSTRAINT unique_symbol_timestamp_source",
                &format!("CONSTRAINT {table}_unique_symbol_timestamp_source"),
            ),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS data_ingestion.{table} ({body}\n) PARTITION BY RANGE (timestamp)"
    )
}

/// Which of the two tables ([`TABLE`], [`BUILDING`]) exist partitioned.
pub async fn partitioned_tables(client: &Client) -> Result<Vec<&'static str>, DbError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'data_ingestion' AND c.relkind = 'p' AND c.relname = ANY($1)",
            &[&vec![TABLE, BUILDING]],
        )
        .await?;
    let has = |t: &str| rows.iter().any(|r| r.get::<_, String>(0) == t);
    Ok([TABLE, BUILDING].into_iter().filter(|t| has(t)).collect())
}

/// Whether `data_ingestion.<name>` exists (as any relation).
pub async fn exists(client: &Client, name: &str) -> Result<bool, DbError> {
    let found: Option<String> = client
        .query_one(
            "SELECT to_regclass('data_ingestion.' || quote_ident($1))::text",
            &[&name],
        )
        .await?
        .get(0);
    Ok(found.is_some())
}

/// Makes `table`'s partition of month `m` unless it exists. Safe to race: creators of one
/// month queue on an advisory lock, and the later ones find it made.
pub async fn create_partition(client: &mut Client, table: &str, m: i32) -> Result<(), DbError> {
    let (Some(from), Some(to)) = (month_start(m), month_start(m + 1)) else {
        return Err(DbError::Migrate(format!("no month numbered {m}")));
    };
    let name = format!("{PARTITION_PREFIX}{:04}_{:02}", from.year(), from.month());
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_KEY, &m])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS data_ingestion.{name} PARTITION OF data_ingestion.{table}
         FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The partitions of this month and the [`MONTHS_AHEAD`] after it, on whichever table is
/// partitioned (none on a plain layout).
pub async fn make_ahead(client: &mut Client, now: DateTime<Utc>) -> Result<Vec<String>, DbError> {
    let mut made = Vec::new();
    let first = month_of(now);
    for table in partitioned_tables(client).await? {
        for m in first..=first + MONTHS_AHEAD as i32 {
            create_partition(client, table, m).await?;
        }
        made.push(table.to_string());
    }
    Ok(made)
}

/// The months each writer knows have partitions, shared by a process's writers: a batch of
/// known months costs a set lookup. Forgotten when a write finds a partition missing (an
/// operator dropped one, or the table was converted under the daemon): the next attempt looks
/// again.
#[derive(Debug, Clone, Default)]
pub struct Partitions(Arc<Mutex<Known>>);

#[derive(Debug, Default)]
struct Known {
    /// `None` until read from the catalogue.
    tables: Option<Vec<&'static str>>,
    months: HashSet<i32>,
}

impl Partitions {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the partitions the stamps need that are not known to exist.
    pub async fn ensure(
        &self,
        client: &mut Client,
        stamps: impl Iterator<Item = DateTime<Utc>>,
    ) -> Result<(), DbError> {
        // A plain table (and no conversion under way) needs nothing; a conversion that starts
        // later shows as a missing partition, which makes the writer forget this.
        let cached = self.known().tables.clone();
        let cached = match cached {
            Some(t) => t,
            None => {
                let t = partitioned_tables(client).await?;
                self.known().tables = Some(t.clone());
                t
            }
        };
        if cached.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<i32> = {
            let known = self.known();
            let mut last = None;
            let mut w = HashSet::new();
            for m in stamps.map(month_of) {
                // Batches are mostly sorted: most stamps repeat the month before.
                if last != Some(m) && !known.months.contains(&m) {
                    w.insert(m);
                }
                last = Some(m);
            }
            w.into_iter().collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        // Which tables are partitioned, read again: a conversion may have begun or swapped
        // since (after a swap, the table being built has taken the live table's name).
        let tables = partitioned_tables(client).await?;
        self.known().tables = Some(tables.clone());
        for m in wanted {
            for table in &tables {
                create_partition(client, table, m).await?;
            }
            self.known().months.insert(m);
        }
        Ok(())
    }

    /// After a write found a month without a partition.
    pub fn forget(&self) {
        *self.known() = Known::default();
    }
}

/// PostgreSQL's refusal of a row whose month has no partition (SQLSTATE 23514, like a CHECK).
pub fn is_missing_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message().starts_with("no partition of relation"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn months_number_consecutively_across_years() {
        let dec = Utc.with_ymd_and_hms(2023, 12, 31, 23, 59, 0).unwrap();
        let jan = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(month_of(jan), month_of(dec) + 1);
        assert_eq!(
            month_start(month_of(dec)),
            NaiveDate::from_ymd_opt(2023, 12, 1)
        );
        assert_eq!(
            month_start(month_of(dec) + 1),
            NaiveDate::from_ymd_opt(2024, 1, 1)
        );
    }

    #[test]
    fn the_partitioned_table_is_the_seed_statement() {
        let live = create_sql(TABLE, None);
        assert!(live.contains("id BIGSERIAL"), "{live}");
        assert!(live.contains(
            "CONSTRAINT unique_symbol_timestamp_source UNIQUE (symbol, timestamp, data_source)"
        ));
        assert!(live.contains("CONSTRAINT valid_data_source CHECK"));
        assert!(live.ends_with(") PARTITION BY RANGE (timestamp)"));
        let building = create_sql(BUILDING, Some("data_ingestion.market_data_id_seq"));
        assert!(building.contains("nextval('data_ingestion.market_data_id_seq'::regclass)"));
        assert!(
            building.contains("CONSTRAINT market_data_partitioned_unique_symbol_timestamp_source")
        );
    }
}
