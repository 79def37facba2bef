//! Operating `mdingest run`: `/metrics` (promtool-clean, scraped by a real Prometheus),
//! `/healthz`, `/readyz` following the database, a port already taken, JSON logs, and systemd's
//! notify protocol with a watchdog that a wedged writer stops and a quiet market does not.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use mdingest::sim::{SimConfig, Simulator, WsConfig};

const KEY: &str = "ops-stream-key-1618";

/// The latest session's stretch of 30 minutes, replayed on the stream from its start at
/// `bars_per_sec`; then the stream is quiet.
async fn replay_sim(bars_per_sec: f64) -> (Simulator, DateTime<Utc>, DateTime<Utc>) {
    let (from, to) = recent_session_stretch();
    let sim = Simulator::start(SimConfig {
        api_key: KEY.into(),
        symbols: vec!["AAPL".into()],
        data_from: Some(from),
        data_to: Some(to),
        ws: WsConfig {
            live_from: Some(from),
            bars_per_sec,
            ..WsConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    (sim, from, to)
}

fn config(db_url: &str, dir: &Path, sim: &Simulator, extra: &str) -> PathBuf {
    let path = dir.join("mdingest.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{db_url}\"\npool_max_size = 8\n\
             [service]\ngap_fill_lookback_secs = 60\nshutdown_timeout_secs = 10\n\
             stream_max_bar_age_secs = 864000\n\
             [redis]\nchannel_prefix = \"ops_{}\"\n\
             [sources.polygon]\napi_key = \"{KEY}\"\nrest_url = \"{}\"\nws_url = \"{}\"\n\
             symbols = [\"AAPL\"]\ntimeframe = \"1m\"\nrequests_per_minute = 6000\n{extra}",
            std::process::id(),
            sim.base_url(),
            sim.ws_url()
        ),
    )
    .unwrap();
    path
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

async fn wait_for(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one series in Prometheus text (`name{labels}` exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// promtool, installed by `scripts/lib/promtool.sh` where that can be done; `None` (with why on
/// stderr) where it cannot.
fn promtool() -> Option<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/promtool.sh");
    let ok = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && ensure_promtool", script.display()))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: promtool is not available and cannot be installed here (see the line above)"
        );
    }
    ok.then_some(())
}

fn promtool_check_metrics(text: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_follow_the_daemon_and_its_database() {
    let db = TestDb::migrated("ops_metrics").await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let (sim, _, _) = replay_sim(2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(
        &proxy.url(&db.url),
        dir.path(),
        &sim,
        "[log]\nformat = \"json\"\n",
    );
    let listen = format!("127.0.0.1:{port}");
    let child = spawn_mdingest_env(
        &["--config", cfg.to_str().unwrap(), "run"],
        &[("MDINGEST__METRICS__LISTEN", &listen)],
    );
    let base = format!("http://{listen}");

    wait_for("/readyz says ready", 30, async || {
        get(&format!("{base}/readyz")).await.map(|r| r.0) == Some(200)
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    assert_eq!(get(&format!("{base}/nowhere")).await.unwrap().0, 404);

    let written = r#"mdingest_bars_written_total{source="polygon"}"#;
    let mut first = 0.0;
    wait_for("bars written", 30, async || {
        let text = get(&format!("{base}/metrics")).await.unwrap().1;
        first = sample(&text, written).unwrap_or(0.0);
        first > 0.0
    })
    .await;
    let text = get(&format!("{base}/metrics")).await.unwrap().1;
    for name in [
        "mdingest_bars_received_total",
        "mdingest_bars_written_total",
        "mdingest_batches_total",
        "mdingest_batch_write_seconds",
        "mdingest_queue_depth",
        "mdingest_source_connected",
        "mdingest_source_reconnects_total",
        "mdingest_http_requests_total",
        "mdingest_last_bar_timestamp_seconds",
        "mdingest_events_published_total",
        "mdingest_db_pool_connections",
        "mdingest_database_up",
        "mdingest_build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            &format!(
                "mdingest_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"mdingest_source_connected{source="polygon"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "mdingest_database_up"), Some(1.0));
    // Known at start, exported at zero.
    assert!(
        sample(&text, r#"mdingest_batches_total{result="abandoned"}"#).is_some(),
        "{text}"
    );
    assert!(!text.contains("AAPL"), "no symbol label: {text}");
    assert!(!text.contains(KEY), "no secret in metrics");
    if promtool().is_some() {
        let checked = promtool_check_metrics(&text);
        assert!(
            checked.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    wait_for("the written counter moves", 30, async || {
        let text = get(&format!("{base}/metrics")).await.unwrap().1;
        sample(&text, written).unwrap_or(0.0) > first
    })
    .await;

    // The database goes away: not ready, with the reason; still alive.
    proxy.cut();
    wait_for("/readyz says 503", 20, async || {
        get(&format!("{base}/readyz")).await.map(|r| r.0) == Some(503)
    })
    .await;
    let (_, why) = get(&format!("{base}/readyz")).await.unwrap();
    assert!(why.contains("database"), "{why}");
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    let text = get(&format!("{base}/metrics")).await.unwrap().1;
    assert_eq!(sample(&text, "mdingest_database_up"), Some(0.0));
    proxy.restore().await;
    wait_for("/readyz says ready again", 30, async || {
        get(&format!("{base}/readyz")).await.map(|r| r.0) == Some(200)
    })
    .await;

    signal(&child, libc::SIGTERM);
    let out = tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // log.format = "json": every log line is one JSON object.
    let logs: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("mdingest: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["level"] == "INFO"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("metrics on http://"))),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(KEY), "no secret in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_already_taken_is_an_error_at_start() {
    let db = TestDb::migrated("ops_port").await;
    let (sim, _, _) = replay_sim(1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let cfg = config(&db.url, dir.path(), &sim, "");
    let out = run_measured(
        &["--config", cfg.to_str().unwrap(), "run"],
        &[("MDINGEST__METRICS__LISTEN", &listen)],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("metrics.listen") && out.stderr.contains("already in use"),
        "{}",
        out.stderr
    );
}

/// What the daemon told systemd, line by line, as it arrives.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket { socket, path }
    }

    /// Every message received within `d`.
    fn collect(&self, d: Duration) -> Vec<String> {
        let until = Instant::now() + d;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_string),
                );
            }
        }
        out
    }

    fn wait_for(&self, line: &str, secs: u64) -> Vec<String> {
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            seen.extend(self.collect(Duration::from_millis(200)));
            if seen.iter().any(|l| l == line) {
                return seen;
            }
        }
        panic!("no {line} within {secs} s; got {seen:?}");
    }
}

fn pings(lines: &[String]) -> usize {
    lines.iter().filter(|l| *l == "WATCHDOG=1").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_stops_for_a_wedged_writer_and_keeps_pinging_through_a_quiet_market() {
    let db = TestDb::migrated("ops_watchdog").await;
    let (sim, from, to) = replay_sim(10.0).await;
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    // And Redis frozen: it holds up nothing, and what it drops is counted.
    let redis = silent_server().await;
    let redis = format!("redis://127.0.0.1:{redis}");
    let cfg = config(&db.url, dir.path(), &sim, "");
    let listen = format!("127.0.0.1:{}", free_port());
    // The writer's first statement waits on this lock: a wedged writer.
    let holder = hold_commits(&db).await;
    let child = spawn_mdingest_env(
        &["--config", cfg.to_str().unwrap(), "run"],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            // Pings every half second while the pipeline moves.
            ("WATCHDOG_USEC", "1000000"),
            ("MDINGEST__METRICS__LISTEN", &listen),
            ("MDINGEST__REDIS__URL", &redis),
        ],
    );
    notify.wait_for("READY=1", 30);
    // The feeds' first rows wait on the lock: after a period, no more pings.
    std::thread::sleep(Duration::from_secs(2));
    notify.collect(Duration::from_millis(100));
    let wedged = notify.collect(Duration::from_secs(3));
    assert_eq!(pings(&wedged), 0, "pinging while wedged: {wedged:?}");

    holder.batch_execute("COMMIT").await.unwrap();
    notify.wait_for("WATCHDOG=1", 10);

    // Every bar of the replay lands; then the stream is quiet, and the pings go on.
    let want = series_rows(&["AAPL"], from, to);
    wait_for("every bar stored", 60, async || {
        stored_bars(&db).await.len() >= want.len()
    })
    .await;
    notify.collect(Duration::from_millis(100));
    let quiet = notify.collect(Duration::from_secs(3));
    assert!(
        pings(&quiet) >= 3,
        "a quiet market is not a stall: {quiet:?}"
    );

    signal(&child, libc::SIGTERM);
    notify.wait_for("STOPPING=1", 10);
    let out = tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("longer than the watchdog period"),
        "{}",
        out.stderr
    );
}
