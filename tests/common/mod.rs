//! Shared test plumbing: every test gets its own PostgreSQL database, dropped when it ends, so
//! tests run in parallel against the real server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use mdingest::config::Config;
use mdingest::domain::{Bar, DataSource};
use rust_decimal::Decimal;
use tokio_postgres::{Client, NoTls};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A superuser URL of the test server (`scripts/test` exports it).
pub fn admin_url() -> String {
    std::env::var("MDINGEST_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A unique database name that does not exist yet (for tests of database creation).
    pub fn unique_name(tag: &str) -> (String, String) {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "mdtest_{tag}_{}_{n}_{}",
            std::process::id(),
            Utc::now().timestamp_micros() % 1_000_000
        );
        let url = url_for(&name);
        (name, url)
    }

    /// Registers a database that the test will create (or has created) for dropping.
    pub fn adopt(name: String, url: String) -> TestDb {
        TestDb { name, url }
    }

    pub async fn empty(tag: &str) -> TestDb {
        let (name, url) = Self::unique_name(tag);
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        TestDb { name, url }
    }

    pub async fn migrated(tag: &str) -> TestDb {
        let db = Self::empty(tag).await;
        mdingest::db::migrate::migrate(&db.url)
            .await
            .expect("migrate");
        db
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The default configuration pointed at this database.
    pub fn config(&self) -> Config {
        self.config_with("")
    }

    pub fn config_with(&self, extra_toml: &str) -> Config {
        Config::from_toml_str(&self.config_toml(extra_toml)).expect("test config")
    }

    pub fn config_toml(&self, extra_toml: &str) -> String {
        format!(
            "[database]\nurl = \"{}\"\npool_max_size = 8\n{extra_toml}\n",
            self.url
        )
    }

    /// Writes a config file for the binary into `dir`.
    pub fn config_file(&self, dir: &Path, extra_toml: &str) -> PathBuf {
        let path = dir.join("mdingest.toml");
        std::fs::write(&path, self.config_toml(extra_toml)).unwrap();
        path
    }

    /// The first column of every row `sql` returns.
    pub async fn column<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let rows = self.client().await.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// The one value `sql` returns.
    pub async fn value<T>(&self, sql: &str) -> T
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.value(sql).await
    }

    /// Rows in `market_data`.
    pub async fn stored(&self) -> i64 {
        self.count("SELECT count(*) FROM data_ingestion.market_data")
            .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn minute(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 2, h, m, 0).unwrap()
}

/// A consistent polygon minute bar around `price`.
pub fn bar(symbol: &str, ts: DateTime<Utc>, price: &str, volume: i64) -> Bar {
    let p = d(price);
    Bar::new(
        symbol.parse().unwrap(),
        ts,
        p,
        p + d("0.5"),
        p - d("0.5"),
        p + d("0.25"),
        Decimal::from(volume),
        DataSource::Polygon,
    )
    .unwrap()
}

/// Runs the built binary with `args` and extra environment variables.
pub fn mdingest(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mdingest"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("RUST_LOG");
    cmd.output().expect("run mdingest")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
