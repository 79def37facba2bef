//! Shared test plumbing: every test gets its own PostgreSQL database, dropped when it ends, so
//! tests run in parallel against the real server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use mdingest::config::{Config, Partitioning};
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

    /// Migrated in the layout `MDINGEST_TEST_LAYOUT` names (`monthly`, or the plain table):
    /// `scripts/test` runs the write paths' tests on both.
    pub async fn migrated(tag: &str) -> TestDb {
        let layout = match std::env::var("MDINGEST_TEST_LAYOUT").as_deref() {
            Ok("monthly") => Partitioning::Monthly,
            _ => Partitioning::None,
        };
        Self::migrated_with(tag, layout).await
    }

    pub async fn migrated_with(tag: &str, layout: Partitioning) -> TestDb {
        let db = Self::empty(tag).await;
        mdingest::db::migrate::migrate_with(&db.url, layout)
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

    /// The `bar_counts` rows that disagree with a count of the bars themselves, either way
    /// (none, when the triggers kept up with every write); and how many slots hold bars.
    pub async fn miscounted_slots(&self) -> (i64, i64) {
        let wrong = self
            .count(
                "WITH bars AS (
                     SELECT data_source::text, symbol::text, data_ingestion.bar_slot(timestamp) AS slot,
                            count(*)::int AS bars
                     FROM data_ingestion.market_data GROUP BY 1, 2, 3
                 ), counted AS (
                     SELECT data_source::text, symbol::text, slot, bars FROM data_ingestion.bar_counts
                 )
                 SELECT count(*) FROM ((TABLE bars EXCEPT TABLE counted)
                                       UNION ALL (TABLE counted EXCEPT TABLE bars)) d",
            )
            .await;
        let slots = self
            .count("SELECT count(*) FROM data_ingestion.bar_counts")
            .await;
        (wrong, slots)
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

/// Daemons of tests running side by side each serve metrics on a port of their own (a test
/// that wants a known one sets `MDINGEST__METRICS__LISTEN` itself, which wins).
fn own_metrics_port(cmd: &mut std::process::Command, args: &[&str]) {
    if args.contains(&"run") {
        cmd.env("MDINGEST__METRICS__LISTEN", "127.0.0.1:0");
    }
}

/// Runs the built binary with `args` and extra environment variables.
pub fn mdingest(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mdingest"));
    cmd.args(args);
    own_metrics_port(&mut cmd, args);
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

pub fn import(cfg: &Path, files: &[&Path]) -> Output {
    mdingest(&import_args(cfg, files), &[])
}

pub fn import_args<'a>(cfg: &'a Path, files: &[&'a Path]) -> Vec<&'a str> {
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "import",
        "--format",
        "polygon-flatfile",
    ];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args
}

/// The value printed on the summary line `name`.
pub fn summary_value(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {name:?} in summary:\n{out}"))
        .to_string()
}

/// A minute-aggregates flat file: `minutes` consecutive bars from 2024-01-02 09:00Z for each symbol.
pub fn minute_csv<S: std::fmt::Display>(
    symbols: impl IntoIterator<Item = S>,
    minutes: i64,
) -> String {
    let mut csv = String::from("ticker,volume,open,close,high,low,window_start,transactions\n");
    for sym in symbols {
        for m in 0..minutes {
            let ns = (1_704_186_000 + 60 * m) * 1_000_000_000;
            csv.push_str(&format!("{sym},100,10.5,10.6,10.7,10.4,{ns},5\n"));
        }
    }
    csv
}

pub fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// The binary started with `args`, its output piped.
pub fn spawn_mdingest(args: &[&str]) -> std::process::Child {
    spawn_mdingest_env(args, &[])
}

/// The binary started with `args` and extra environment variables, its output piped.
pub fn spawn_mdingest_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mdingest"));
    own_metrics_port(&mut cmd, args);
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mdingest")
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is shared.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

/// What a finished child printed, its exit code and its peak RSS in bytes.
pub struct Measured {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub peak_rss: u64,
}

/// `VmHWM` of a live process, in bytes.
fn high_water_mark(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Waits for `child`, reading its peak RSS from `/proc/PID/status` (`VmHWM`, which only grows)
/// every few milliseconds while it lives. Not `wait4`'s `ru_maxrss`: a child spawned with
/// vfork inherits the test process's own peak in it.
pub fn wait_measured(mut child: std::process::Child) -> Measured {
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = high_water_mark(child.id()) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Measured {
        code: status.code(),
        stdout: String::from_utf8_lossy(&o.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&e.join().unwrap()).into_owned(),
        peak_rss: peak,
    }
}

/// Polls `sql` (a count) until it is positive, for at most a minute.
pub async fn wait_for_rows(db: &TestDb, sql: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.count(sql).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in 60 s: {sql}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection reset, new ones
/// refused) and restore on the same port: a database that goes away and comes back.
pub struct Proxy {
    pub port: u16,
    target: std::net::SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let target: std::net::SocketAddr = target.parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            target,
            task: Default::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target;
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Every connection through the proxy is dropped and the port refuses new ones.
    pub fn cut(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    /// `url` (a PostgreSQL URL on 127.0.0.1:5432) through this proxy.
    pub fn url(&self, url: &str) -> String {
        url.replacen(
            &format!("127.0.0.1:{}", self.target.port()),
            &format!("127.0.0.1:{}", self.port),
            1,
        )
    }
}

/// A stored bar's values: open, high, low, close, volume.
pub type Row = (Decimal, Decimal, Decimal, Decimal, i64);

/// Every polygon row of `market_data` by (symbol, epoch ms).
pub async fn stored_bars(db: &TestDb) -> std::collections::BTreeMap<(String, i64), Row> {
    stored_bars_of(db, "polygon").await
}

/// Every row of `source` in `market_data` by (symbol, epoch ms).
pub async fn stored_bars_of(
    db: &TestDb,
    source: &str,
) -> std::collections::BTreeMap<(String, i64), Row> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT symbol, (extract(epoch FROM timestamp) * 1000)::int8, open, high, low, close, volume
             FROM data_ingestion.market_data WHERE data_source = $1",
            &[&source],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect()
}

/// The simulator's bars of `symbols` in `[from, to]` as stored rows.
pub fn series_rows(
    symbols: &[&str],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> std::collections::BTreeMap<(String, i64), Row> {
    let mut out = std::collections::BTreeMap::new();
    for s in symbols {
        for b in mdingest::sim::series(s, mdingest::domain::Timeframe::M1, from, to) {
            out.insert(
                (s.to_string(), b.t_ms),
                (b.open, b.high, b.low, b.close, b.volume),
            );
        }
    }
    out
}

/// Every text the database holds, as `pg_dump` writes it.
pub fn pg_dump(db: &TestDb) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--data-only", "--schema=data_ingestion", &db.url])
        .output()
        .expect("pg_dump (PostgreSQL's client tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary to its end, with `env` set and the vendors' own key variables and
/// `RUST_LOG` removed (a developer's shell must not change what a test sees).
pub async fn run_measured(args: &[&str], env: &[(&str, &str)]) -> Measured {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mdingest"));
    own_metrics_port(&mut cmd, args);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in [
        "RUST_LOG",
        "POLYGON_API_KEY",
        "APCA_API_KEY_ID",
        "APCA_API_SECRET_KEY",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap()
}

fn wire_decimal(s: &str) -> Decimal {
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(s).unwrap()
    } else {
        s.parse().unwrap()
    }
}

fn round4(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// What the simulator serves as Yahoo's daily chart of `symbol` for `[from, to]` (its data
/// range), split into the rows that must be stored as `yahoo` and as `yahoo_adjusted` by epoch
/// ms, computed here from the wire's text (yfinance's auto-adjust: ratio = adjclose / close,
/// open, high and low times it, close = adjclose, rounded once), and the count of rows with a
/// `null` (which must not be stored).
pub fn yahoo_expected(
    symbol: &str,
    actions: &[mdingest::sim::YahooAction],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (
    std::collections::BTreeMap<i64, Row>,
    std::collections::BTreeMap<i64, Row>,
    usize,
) {
    let rows = mdingest::sim::chart_rows(
        symbol,
        mdingest::domain::Timeframe::D1,
        from.timestamp() - 86_400,
        to.timestamp() + 86_400,
        actions,
        (Some(from.timestamp_millis()), Some(to.timestamp_millis())),
    );
    let (mut raw, mut adjusted, mut nulls) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
        0,
    );
    for r in rows {
        let (Some(o), Some(h), Some(l), Some(c), Some(v), Some(a)) =
            (&r.open, &r.high, &r.low, &r.close, &r.volume, &r.adjclose)
        else {
            nulls += 1;
            continue;
        };
        let [o, h, l, c, a] = [o, h, l, c, a].map(|t| wire_decimal(t));
        let v: i64 = v.parse().unwrap();
        raw.insert(r.t * 1000, (round4(o), round4(h), round4(l), round4(c), v));
        let ratio = a / c;
        adjusted.insert(
            r.t * 1000,
            (
                round4(o * ratio),
                round4(h * ratio),
                round4(l * ratio),
                round4(a),
                v,
            ),
        );
    }
    (raw, adjusted, nulls)
}

/// A forward proxy on a loopback port that records what it is asked for: HTTP (absolute-form
/// requests, and `CONNECT` tunnels) and SOCKS5 (no authentication, `CONNECT`), told apart by
/// the first byte. Each request line (or `SOCKS5 host:port`) is recorded with the
/// `Proxy-Authorization` header when one came.
pub struct RecordingProxy {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingProxy {
    pub async fn start() -> RecordingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if client.peek(&mut first).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upstream = if first[0] == 5 {
                        socks5(&mut client, &log).await
                    } else {
                        http_proxy(&mut client, &log).await
                    };
                    if let Some(mut up) = upstream {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                });
            }
        });

        async fn socks5(
            c: &mut tokio::net::TcpStream,
            log: &std::sync::Mutex<Vec<String>>,
        ) -> Option<tokio::net::TcpStream> {
            let mut head = [0u8; 2];
            c.read_exact(&mut head).await.ok()?;
            let mut methods = vec![0u8; head[1] as usize];
            c.read_exact(&mut methods).await.ok()?;
            // Username and password (RFC 1929) when offered: the client has credentials.
            let mut user = String::new();
            if methods.contains(&2) {
                c.write_all(&[5, 2]).await.ok()?;
                let mut v = [0u8; 2];
                c.read_exact(&mut v).await.ok()?;
                let mut name = vec![0u8; v[1] as usize];
                c.read_exact(&mut name).await.ok()?;
                let mut n = [0u8; 1];
                c.read_exact(&mut n).await.ok()?;
                let mut pass = vec![0u8; n[0] as usize];
                c.read_exact(&mut pass).await.ok()?;
                c.write_all(&[1, 0]).await.ok()?;
                user = format!(" [user {}]", String::from_utf8_lossy(&name));
            } else {
                c.write_all(&[5, 0]).await.ok()?;
            }
            let mut req = [0u8; 4];
            c.read_exact(&mut req).await.ok()?;
            let host = match req[3] {
                1 => {
                    let mut a = [0u8; 4];
                    c.read_exact(&mut a).await.ok()?;
                    std::net::Ipv4Addr::from(a).to_string()
                }
                3 => {
                    let mut n = [0u8; 1];
                    c.read_exact(&mut n).await.ok()?;
                    let mut name = vec![0u8; n[0] as usize];
                    c.read_exact(&mut name).await.ok()?;
                    String::from_utf8(name).ok()?
                }
                _ => return None,
            };
            let mut p = [0u8; 2];
            c.read_exact(&mut p).await.ok()?;
            let target = format!("{host}:{}", u16::from_be_bytes(p));
            log.lock().unwrap().push(format!("SOCKS5 {target}{user}"));
            let up = tokio::net::TcpStream::connect(&target).await.ok()?;
            c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await.ok()?;
            Some(up)
        }

        async fn http_proxy(
            c: &mut tokio::net::TcpStream,
            log: &std::sync::Mutex<Vec<String>>,
        ) -> Option<tokio::net::TcpStream> {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if c.read(&mut byte).await.ok()? == 0 || buf.len() > 65_536 {
                    return None;
                }
                buf.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next()?.to_string();
            let auth = lines
                .clone()
                .find(|l| l.to_ascii_lowercase().starts_with("proxy-authorization:"))
                .map(|l| format!(" [{}]", l.trim()))
                .unwrap_or_default();
            log.lock().unwrap().push(format!("{line}{auth}"));
            let mut parts = line.split(' ');
            let (method, target) = (parts.next()?, parts.next()?);
            if method == "CONNECT" {
                let up = tokio::net::TcpStream::connect(target).await.ok()?;
                c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .ok()?;
                return Some(up);
            }
            // Absolute-form: to the origin server in origin-form, one request per connection.
            let rest = target.strip_prefix("http://")?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            let mut up = tokio::net::TcpStream::connect(authority).await.ok()?;
            let mut out = format!("{method} {path} HTTP/1.1\r\n");
            for l in lines.filter(|l| !l.is_empty()) {
                let lower = l.to_ascii_lowercase();
                if !lower.starts_with("proxy-") && !lower.starts_with("connection:") {
                    out.push_str(l);
                    out.push_str("\r\n");
                }
            }
            out.push_str("Connection: close\r\n\r\n");
            up.write_all(out.as_bytes()).await.ok()?;
            let _ = tokio::io::copy(&mut up, c).await;
            None
        }

        RecordingProxy { port, seen, task }
    }

    /// What the proxy was asked for, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// One symbol's rows of `stored_bars_of`, by epoch ms.
pub fn of_symbol(
    rows: &std::collections::BTreeMap<(String, i64), Row>,
    symbol: &str,
) -> std::collections::BTreeMap<i64, Row> {
    rows.iter()
        .filter(|((s, _), _)| s == symbol)
        .map(|((_, t), r)| (*t, *r))
        .collect()
}

/// A recent stretch of 30 minutes of one session (whatever the time of day now): bars exist
/// only in it, on REST and on the stream, and it ended over half an hour ago, so the start's
/// gap-fill (a minute back) finds nothing and only the stream and the reconnect's gap-fill
/// can bring its bars.
pub fn recent_session_stretch() -> (DateTime<Utc>, DateTime<Utc>) {
    let latest = Utc::now() - chrono::Duration::minutes(35);
    let bars = mdingest::sim::series(
        "AAPL",
        mdingest::domain::Timeframe::M1,
        latest - chrono::Duration::days(6),
        latest,
    );
    let at = |i: usize| DateTime::from_timestamp_millis(bars[i].t_ms).unwrap();
    // The latest bar with a full half hour of its session before it (not one just after an
    // open, which would leave only a few bars).
    let last = (0..bars.len())
        .rev()
        .find(|&i| {
            let from = at(i) - chrono::Duration::minutes(29);
            let first = bars.partition_point(|b| b.t_ms < from.timestamp_millis());
            i + 1 - first >= 25
        })
        .map(at)
        .unwrap();
    (last - chrono::Duration::minutes(29), last)
}

/// A free port on 127.0.0.1 (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Holds every commit of `db`'s writers (their first statement waits on this lock) until the
/// returned session runs `COMMIT`.
pub async fn hold_commits(db: &TestDb) -> Client {
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN; LOCK TABLE data_ingestion.committed_batches IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    holder
}

/// A server that accepts connections and never answers: Redis frozen.
pub async fn silent_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}
