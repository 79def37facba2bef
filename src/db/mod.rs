//! PostgreSQL: connections, the pool, migrations, the COPY-merge writer, status and quality log.

pub mod backfill;
pub mod convert;
pub mod migrate;
pub mod partitions;
pub mod status;
pub mod tls;
pub mod writer;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{redact_url, DatabaseConfig};

/// `migrate`, `import` and `status` must fail within 10 s when the database is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Below 10 s, with room for process start and a second address of the host.
const CONNECT_DEADLINE: Duration = Duration::from_secs(8);
/// Shown in `pg_stat_activity`, so operators (and tests) can find our sessions.
pub const APPLICATION_NAME: &str = "mdingest";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {url} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the database at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// Not a `#[source]`: `describe` already says all it says, and a chain would repeat it.
    #[error("database error: {}", describe(.0))]
    Query(tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
    #[error("the database is not migrated (missing {0}): run `mdingest migrate`")]
    NotMigrated(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        DbError::Query(e)
    }
}

/// What to do about a failed database operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Connection trouble, a restart, a failover, a cancelled statement, lack of resources:
    /// the same work can succeed later.
    Transient,
    /// The data itself (SQLSTATE classes 22 and 23): retrying the same rows cannot succeed.
    BadData,
    /// Our SQL against this database cannot work (class 42: a missing table, no privilege;
    /// class 0A: unsupported): an operator must act.
    Fatal,
}

impl DbError {
    pub fn fault(&self) -> Fault {
        match self {
            DbError::Query(e) => classify(e),
            DbError::Pool(_) | DbError::Connect { .. } | DbError::Timeout(_) => Fault::Transient,
            DbError::BadUrl { .. } | DbError::Migrate(_) | DbError::NotMigrated(_) => Fault::Fatal,
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.fault() == Fault::Transient
    }

    pub fn is_missing_partition(&self) -> bool {
        matches!(self, DbError::Query(e) if partitions::is_missing_partition(e))
    }
}

/// Classifies by SQLSTATE class, as timescaledb-parallel-copy does, but from the other side:
/// what is not known to be about the rows or about our SQL is retried, because a long-lived
/// writer must ride out whatever a server, a failover or an operator throws at it (08 connection,
/// 57 shutdown or cancel, 40 serialization, 25006 read-only after failover, 53 resources, …). An
/// error without a SQLSTATE is a closed socket or I/O failure: transient.
pub fn classify(e: &tokio_postgres::Error) -> Fault {
    let Some(state) = e.code() else {
        return Fault::Transient;
    };
    // A month without its partition: the writer makes it on the next attempt.
    if partitions::is_missing_partition(e) {
        return Fault::Transient;
    }
    match state.code().get(..2) {
        // Data exceptions, constraints, cardinality, triggered changes, check options, program
        // limits (a row too large), routine and trigger exceptions (an operator's trigger
        // refusing a row): about particular rows, so the batch is split to find them.
        Some("21" | "22" | "23" | "27" | "38" | "39" | "44" | "54" | "P0") => Fault::BadData,
        // Our SQL against this schema (missing table, no privilege), unsupported features,
        // internal errors and corruption: an operator must act.
        Some("42" | "0A" | "XX") => Fault::Fatal,
        _ => Fault::Transient,
    }
}

/// Where and how to connect: tokio-postgres' settings and the TLS connector `sslmode` asks for.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

pub fn parse_url(url: &str) -> Result<Target, DbError> {
    let bad = |reason: String| DbError::BadUrl {
        url: redact_url(url),
        reason: redact_url(&reason),
    };
    // These name a parameter or a file, never a password: shown as they are.
    let tls_bad = |reason: String| DbError::BadUrl {
        url: redact_url(url),
        reason,
    };
    let split = tls::split(url).map_err(tls_bad)?;
    let tls = tls::connector(split.mode, split.root_cert.as_deref()).map_err(tls_bad)?;
    let mut cfg: tokio_postgres::Config = split.url.parse().map_err(|e| bad(format!("{e}")))?;
    // Explicitly: tokio-postgres would otherwise `prefer`.
    cfg.ssl_mode(split.mode.ssl_mode());
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name(APPLICATION_NAME);
    }
    // Notice a dead peer in about a minute, not the kernel's two hours.
    if cfg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        cfg.keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(Duration::from_secs(60));
    }
    Ok(Target { pg: cfg, tls })
}

/// One connection outside the pool (migrations, short commands), with a hard deadline.
pub async fn connect(target: &Target, shown_url: &str) -> Result<Client, DbError> {
    let attempt = target.pg.connect(target.tls.clone());
    let fail = |reason: String| DbError::Connect {
        url: shown_url.to_string(),
        reason,
    };
    match tokio::time::timeout(CONNECT_DEADLINE, attempt).await {
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            CONNECT_DEADLINE.as_secs()
        ))),
        Ok(Err(e)) => Err(fail(describe(&e))),
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "database connection closed");
                }
            });
            Ok(client)
        }
    }
}

/// The server's message when there is one; tokio-postgres' own Display says only "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// The pool per SPEC: `pool_max_size` connections, verified on checkout, and recycled once older
/// than `pool_recycle_secs` (deadpool has no max-lifetime setting, so a pre-recycle hook drops
/// connections past their age and the pool opens fresh ones).
pub fn pool(cfg: &DatabaseConfig) -> Result<Pool, DbError> {
    let target = parse_url(cfg.url.expose())?;
    let manager = Manager::from_config(
        target.pg,
        target.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let max_age = Duration::from_secs(cfg.pool_recycle_secs);
    Pool::builder(manager)
        .max_size(cfg.pool_max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_DEADLINE))
        .recycle_timeout(Some(CONNECT_DEADLINE))
        .wait_timeout(Some(Duration::from_secs(60)))
        .pre_recycle(Hook::sync_fn(move |_, metrics| {
            if metrics.age() > max_age {
                Err(HookError::message("connection past pool_recycle_secs"))
            } else {
                Ok(())
            }
        }))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Checks that the database answers, within the connect deadline, so a short-lived command fails
/// fast with one clear line instead of waiting on the pool.
pub async fn ping(pool: &Pool, shown_url: &str) -> Result<(), DbError> {
    let client = pool.get().await.map_err(|e| DbError::Connect {
        url: shown_url.to_string(),
        reason: pool_error_reason(&e),
    })?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// A pooled connection, or why there is none.
pub async fn get(pool: &Pool) -> Result<deadpool_postgres::Object, DbError> {
    pool.get()
        .await
        .map_err(|e| DbError::Pool(pool_error_reason(&e)))
}

pub fn pool_error_reason(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        deadpool_postgres::PoolError::Timeout(_) => "no answer in time".into(),
        other => other.to_string(),
    }
}
