//! `mdingest migrate`: creates the database when it is missing, then applies `migrations/` under
//! an advisory lock so that two instances started together do not race.

use tokio_postgres::error::SqlState;

use super::{connect, describe, parse_url, partitions, DbError};
use crate::config::{redact_url, Partitioning};

refinery::embed_migrations!("migrations");

pub const SCHEMA: &str = "data_ingestion";
/// refinery's history table lives in our schema too: the service owns nothing outside it.
const HISTORY_TABLE: &str = "data_ingestion.refinery_schema_history";
/// Arbitrary but fixed: every mdingest instance takes the same lock.
const MIGRATION_LOCK_KEY: i64 = 0x6d64_696e_6765_7374; // "mdingest"

#[derive(Debug, Default)]
pub struct MigrateReport {
    pub created_database: bool,
    pub applied: Vec<String>,
    /// What the operator should know about the table's layout.
    pub notes: Vec<String>,
}

/// [`migrate_with`] the seed's plain layout.
pub async fn migrate(url: &str) -> Result<MigrateReport, DbError> {
    migrate_with(url, Partitioning::None).await
}

/// Creates the database and the schema if missing, with `market_data` in `layout` when it does
/// not exist yet (an existing one keeps its own), applies the migrations, and makes the
/// partitions of the coming months on a partitioned table.
pub async fn migrate_with(url: &str, layout: Partitioning) -> Result<MigrateReport, DbError> {
    let cfg = parse_url(url)?;
    let shown = redact_url(url);
    let mut report = MigrateReport::default();
    let mut client = match connect(&cfg, &shown).await {
        Ok(c) => c,
        Err(e) if missing_database(&cfg.pg, &e) => {
            report.created_database = create_database(&cfg, &shown).await?;
            connect(&cfg, &shown).await?
        }
        Err(e) => return Err(e),
    };
    client
        .query("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply(&mut client, layout, &mut report.notes).await;
    // The lock is session-scoped; release it even when a migration failed.
    let _ = client
        .query("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    report.applied = result?;
    Ok(report)
}

async fn apply(
    client: &mut tokio_postgres::Client,
    layout: Partitioning,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, DbError> {
    // The first migration's `CREATE TABLE IF NOT EXISTS` meets a partitioned market_data made
    // just before: PostgreSQL's "already exists, skipping" is no news to an operator.
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
        ))
        .await?;
    if layout == Partitioning::Monthly {
        if !partitions::exists(client, partitions::TABLE).await? {
            // Before the first migration, whose CREATE TABLE IF NOT EXISTS then leaves it be.
            client
                .batch_execute(&partitions::create_sql(partitions::TABLE, None))
                .await?;
            notes.push("created market_data partitioned by month".into());
        } else if !partitions::partitioned_tables(client)
            .await?
            .contains(&partitions::TABLE)
        {
            notes.push(
                "market_data is a plain table and stays one: database.partitioning = \"monthly\" \
                 applies to a new table. `mdingest migrate --to-partitioned` converts it (copies \
                 in chunks with progress, resumable, swaps at the end)"
                    .into(),
            );
        }
    }
    let report = migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await
        .map_err(|e| DbError::Migrate(e.to_string()))?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    for table in partitions::make_ahead(client, chrono::Utc::now()).await? {
        notes.push(format!(
            "{table}: partitions up to {} months ahead",
            partitions::MONTHS_AHEAD
        ));
    }
    Ok(applied)
}

/// Refuses a database on which any of this build's migrations is missing, so that a command
/// fails with what to do instead of a raw "relation does not exist" (42P01) mid-way.
pub async fn check_current(client: &tokio_postgres::Client) -> Result<(), DbError> {
    let applied: Vec<i32> = match client
        .query(&format!("SELECT version FROM {HISTORY_TABLE}"), &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let missing: Vec<String> = migrations::runner()
        .get_migrations()
        .iter()
        .filter(|m| !applied.contains(&(m.version() as i32)))
        .map(|m| m.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DbError::NotMigrated(missing.join(", ")))
    }
}

fn missing_database(cfg: &tokio_postgres::Config, e: &DbError) -> bool {
    // tokio-postgres reports the server's 3D000 inside the connect error's text only.
    let DbError::Connect { reason, .. } = e else {
        return false;
    };
    cfg.get_dbname().is_some() && reason.contains(SqlState::UNDEFINED_DATABASE.code())
}

/// Creates the configured database from the `postgres` maintenance database. Returns false when
/// another instance created it first.
async fn create_database(cfg: &super::Target, shown: &str) -> Result<bool, DbError> {
    let name = cfg.pg.get_dbname().unwrap_or_default().to_string();
    let mut admin = cfg.clone();
    admin.pg.dbname("postgres");
    let client = connect(&admin, shown).await?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(true)
        }
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(e) => Err(DbError::Migrate(format!(
            "database {name:?} does not exist and cannot be created: {}",
            describe(&e)
        ))),
    }
}
