//! `mdingest run` against the simulator's stream and REST API and a real PostgreSQL: every bar
//! once with its final values through a disconnect (the gap-fill recovers what the stream
//! skipped), a refused login shown in `ingestion_status` and backed off, a start while the
//! database is down, and a SIGTERM that drains what was received.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use mdingest::sim::{SimConfig, Simulator, SymbolFault, WsConfig, WsFault};

const KEY: &str = "sim-stream-key-2718";

fn sim_config(from: DateTime<Utc>, to: DateTime<Utc>, ws: WsConfig) -> SimConfig {
    SimConfig {
        api_key: KEY.into(),
        symbols: vec!["AAPL".into(), "MSFT".into()],
        data_from: Some(from),
        data_to: Some(to),
        ws,
        ..SimConfig::default()
    }
}

fn config(db: &TestDb, dir: &Path, sim: &Simulator) -> PathBuf {
    config_with(db, dir, sim, 10)
}

fn config_with(db: &TestDb, dir: &Path, sim: &Simulator, shutdown_timeout: u64) -> PathBuf {
    db.config_file(
        dir,
        &format!(
            // The stretch replayed is the latest session's, days old on a Monday morning.
            "[service]\ngap_fill_lookback_secs = 60\nshutdown_timeout_secs = {shutdown_timeout}\n\
             stream_max_bar_age_secs = 864000\n\
             [sources.polygon]\napi_key = \"{KEY}\"\nrest_url = \"{}\"\nws_url = \"{}\"\n\
             symbols = [\"AAPL\", \"MSFT\"]\ntimeframe = \"1m\"\nrequests_per_minute = 6000\n\
             stale_after_secs = 5\n",
            sim.base_url(),
            sim.ws_url()
        ),
    )
}

async fn start_sim(from: DateTime<Utc>, to: DateTime<Utc>, ws: WsConfig) -> Simulator {
    Simulator::start(sim_config(from, to, ws)).await.unwrap()
}

/// The stretch replayed from its start at 6 bars a second.
fn replay(from: DateTime<Utc>) -> WsConfig {
    WsConfig {
        live_from: Some(from),
        bars_per_sec: 6.0,
        ..WsConfig::default()
    }
}

async fn replay_sim(from: DateTime<Utc>, to: DateTime<Utc>) -> Simulator {
    start_sim(from, to, replay(from)).await
}

fn run_args(cfg: &Path) -> Vec<&str> {
    vec!["--config", cfg.to_str().unwrap(), "run"]
}

fn expected(from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeMap<(String, i64), Row> {
    series_rows(&["AAPL", "MSFT"], from, to)
}

async fn wait_until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until at least as many polygon bars as `want` holds are stored.
async fn wait_for_bars(db: &TestDb, want: &BTreeMap<(String, i64), Row>, secs: u64) {
    wait_until("every bar stored", secs, async || {
        stored_bars(db).await.len() >= want.len()
    })
    .await;
}

/// Waits until the count `sql` answers is `n`.
async fn wait_for_count(db: &TestDb, sql: &str, n: i64, secs: u64) {
    wait_until(sql, secs, async || db.count(sql).await == n).await;
}

/// Stops the daemon, which must exit 0 with exactly `want` stored.
async fn stop_with_every_bar(
    child: std::process::Child,
    db: &TestDb,
    want: &BTreeMap<(String, i64), Row>,
) -> Measured {
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stored_bars(db).await == *want,
        "stored rows differ from the series"
    );
    out
}

async fn stop(child: std::process::Child) -> Measured {
    signal(&child, libc::SIGTERM);
    tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_disconnect_every_bar_lands_once_with_its_final_values() {
    let db = TestDb::migrated("run_stream").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 4.0,
            rebroadcast_every: Some(3),
            faults: vec![WsFault::DisconnectAfterFrames(8)],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    let want = expected(from, to);
    wait_for_bars(&db, &want, 60).await;
    let out = stop_with_every_bar(child, &db, &want).await;
    assert!(sim.ws_connections().len() >= 2, "no reconnect happened");
    // Every bar received was committed before the exit (a re-broadcast and its preliminary
    // version in one batch are one row, so received counts more than were written).
    let received: u64 = summary_value(&out.stdout, "received").parse().unwrap();
    assert!(received as usize >= want.len(), "{}", out.stdout);
    assert!(!out.stderr.contains("not committed"), "{}", out.stderr);
    let states: Vec<String> = db
        .column("SELECT symbol || ' ' || mode || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(states, ["AAPL stream idle", "MSFT stream idle"]);
    assert!(!out.stderr.contains(KEY), "the key is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_shows_in_ingestion_status_and_is_backed_off() {
    let db = TestDb::migrated("run_auth").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            faults: vec![WsFault::AuthFailed; 10],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'error' AND last_error LIKE '%auth_failed%'", 2, 20).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = sim.ws_connections();
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // At least 1 s, then 2 s between attempts: no tight loop that would evict another session.
    assert!(attempts.len() <= 4, "{} attempts", attempts.len());
    for w in attempts.windows(2) {
        assert!(w[1].at.duration_since(w[0].at) >= Duration::from_millis(900));
    }
    assert!(!out.stderr.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_starts_while_the_database_is_down_and_catches_up() {
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 20.0,
            ..WsConfig::default()
        },
    )
    .await;
    // The database does not exist yet.
    let (name, url) = TestDb::unique_name("run_down");
    let db = TestDb::adopt(name.clone(), url);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    tokio::time::sleep(Duration::from_secs(3)).await;
    connect(&admin_url())
        .await
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    mdingest::db::migrate::migrate(&db.url).await.unwrap();
    let want = expected(from, to);
    wait_for_bars(&db, &want, 90).await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars(&db).await == want);
    assert_eq!(
        out.stderr.matches("the database is unavailable").count(),
        1,
        "logged at most once a minute: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_holds_bars_back_and_the_next_start_gap_fills_them() {
    let db = TestDb::migrated("run_frozen").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 3.0,
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(&db, dir.path(), &sim, 3);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_until("some bars stored", 30, async || {
        stored_bars(&db).await.len() >= 6
    })
    .await;
    // The database freezes: nothing commits, and no feed's state can be written, while the
    // locks are held.
    let locker = db.client().await;
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE data_ingestion.market_data, data_ingestion.ingestion_status,
             data_ingestion.backfill_tasks IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = std::time::Instant::now();
    let out = stop(child).await;
    // SPEC: within shutdown_timeout_secs + 2 s, writing the feeds' final state included.
    let took = stopped.elapsed();
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("bars received were not committed"),
        "{}",
        out.stderr
    );
    let before = stored_bars(&db).await.len();
    assert!(before < expected(from, to).len());

    // The next start gap-fills from the last committed bar: nothing is lost for good.
    let child = spawn_mdingest(&run_args(&cfg));
    let want = expected(from, to);
    wait_for_bars(&db, &want, 60).await;
    stop_with_every_bar(child, &db, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_while_bars_stream_loses_nothing() {
    let db = TestDb::migrated("run_cut").await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 3.0,
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let through = proxy.url(&db.url);
    let child = spawn_mdingest_env(&run_args(&cfg), &[("MDINGEST__DATABASE__URL", &through)]);
    wait_until("some bars stored", 30, async || {
        stored_bars(&db).await.len() >= 6
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;
    let want = expected(from, to);
    wait_for_bars(&db, &want, 60).await;
    stop_with_every_bar(child, &db, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_replaced_by_the_watchdog_and_nothing_is_missed() {
    let db = TestDb::migrated("run_silent").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 4.0,
            faults: vec![WsFault::Silence {
                after_frames: 6,
                for_: Duration::from_secs(30),
            }],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // stale_after_secs = 2: a connection silent that long is replaced within a few seconds.
    let cfg = config(&db, dir.path(), &sim);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("stale_after_secs = 5", "stale_after_secs = 2"),
    )
    .unwrap();
    let child = spawn_mdingest(&run_args(&cfg));
    wait_until("a second connection", 15, async || {
        sim.ws_connections().len() >= 2
    })
    .await;
    let conns = sim.ws_connections();
    let silent_for = conns[1].at.duration_since(conns[0].at);
    assert!(
        silent_for < Duration::from_secs(10),
        "replaced after {silent_for:?}"
    );
    let want = expected(from, to);
    wait_for_bars(&db, &want, 60).await;
    stop_with_every_bar(child, &db, &want).await;
}

/// The stream rows' states, `SYMBOL state`, sorted.
async fn stream_states(db: &TestDb) -> Vec<String> {
    db.column("SELECT symbol || ' ' || state FROM data_ingestion.ingestion_status WHERE mode = 'stream' ORDER BY 1")
        .await
}

/// A stream that sends its bars at 4 a second and drops its first connection after 8 frames,
/// with REST answering after `latency`.
async fn start_dropping_sim(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    latency: Duration,
    symbol_faults: &[(&str, SymbolFault)],
) -> Simulator {
    let mut cfg = sim_config(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 4.0,
            faults: vec![WsFault::DisconnectAfterFrames(8)],
            ..WsConfig::default()
        },
    );
    cfg.latency = latency;
    cfg.symbol_faults = symbol_faults
        .iter()
        .map(|(s, f)| (s.to_string(), *f))
        .collect();
    Simulator::start(cfg).await.unwrap()
}

/// Waits until the stream sent every bar and the second connection's bars committed past a
/// gap still pending: the hole only the gap's task can fill.
async fn wait_for_a_hole(db: &TestDb, sim: &Simulator, from: DateTime<Utc>, to: DateTime<Utc>) {
    wait_until(
        "the stream's bars after the gap committed",
        60,
        async || {
            let behind_gap = db
                .count(&format!(
                    "SELECT count(*) FROM data_ingestion.backfill_tasks t
                 WHERE mode = 'stream' AND state = 'pending' AND window_start >= '{from}'
                   AND EXISTS (SELECT 1 FROM data_ingestion.market_data m
                               WHERE m.symbol = t.symbol AND m.timestamp >= '{to}')"
                ))
                .await;
            sim.ws_connections().len() >= 2 && behind_gap > 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_while_a_gap_fill_waits_fills_the_gap_on_its_next_start() {
    let db = TestDb::migrated("run_kill_gap").await;
    let (from, to) = recent_session_stretch();
    // Every gap-fill takes 15 s to answer: the kill comes while the reconnect's is in flight.
    let sim = start_dropping_sim(from, to, Duration::from_secs(15), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let mut child = spawn_mdingest(&run_args(&cfg));
    wait_for_a_hole(&db, &sim, from, to - chrono::Duration::minutes(2)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let want = expected(from, to);
    assert!(
        stored_bars(&db).await.len() < want.len(),
        "no hole to fill: the test proves nothing"
    );
    // The next start takes the pending gap up: every bar, once, with its final values.
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_bars(&db, &want, 90).await;
    // Each gap is done once its bars are committed.
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.backfill_tasks WHERE mode = 'stream' AND state = 'pending'", 0, 60).await;
    stop_with_every_bar(child, &db, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_fill_failing_on_server_errors_stays_pending_and_the_next_start_fills_it() {
    let db = TestDb::migrated("run_5xx_gap").await;
    let (from, to) = recent_session_stretch();
    let sim = start_dropping_sim(
        from,
        to,
        Duration::ZERO,
        &[("AAPL", SymbolFault::ServerError)],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_a_hole(&db, &sim, from, to - chrono::Duration::minutes(2)).await;
    // MSFT's gap is filled while AAPL's keeps failing.
    let want = expected(from, to);
    let msft = |rows: &BTreeMap<(String, i64), Row>| {
        rows.iter()
            .filter(|((s, _), _)| s == "MSFT")
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    wait_until("MSFT whole", 60, async || {
        msft(&stored_bars(&db).await) == msft(&want)
    })
    .await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stored_bars(&db).await.len() < want.len(),
        "AAPL has no hole"
    );
    sim.set_symbol_fault("AAPL", None);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_bars(&db, &want, 90).await;
    stop_with_every_bar(child, &db, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_symbol_among_three_holds_up_no_other_gap_fill() {
    let db = TestDb::migrated("run_unknown").await;
    let (from, to) = recent_session_stretch();
    let sim =
        start_dropping_sim(from, to, Duration::ZERO, &[("NOPE", SymbolFault::NotFound)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "symbols = [\"AAPL\", \"MSFT\"]",
            "symbols = [\"AAPL\", \"NOPE\", \"MSFT\"]",
        ),
    )
    .unwrap();
    let child = spawn_mdingest(&run_args(&cfg));
    let want = expected(from, to);
    wait_for_bars(&db, &want, 90).await;
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.ingestion_status WHERE symbol = 'NOPE' AND state = 'error' AND last_error LIKE '%404%'", 1, 30).await;
    stop_with_every_bar(child, &db, &want).await;
    // NOPE's gaps stay pending for the next start; no feed is left running.
    assert!(
        db.count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE symbol = 'NOPE' AND state = 'pending'")
            .await
            > 0
    );
    assert!(!stream_states(&db)
        .await
        .iter()
        .any(|s| s.ends_with("running")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_not_subscribed_or_from_1970_are_quality_records_not_rows() {
    let db = TestDb::migrated("run_strays").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 20.0,
            faults: vec![WsFault::Strays],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    let want = expected(from, to);
    wait_for_bars(&db, &want, 60).await;
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.data_quality_logs WHERE check_name IN ('unsubscribed_symbol', 'stale_stream_bar')", 6, 30).await;
    stop_with_every_bar(child, &db, &want).await;
    let checks: Vec<String> = db
        .column(
            "SELECT check_name || ' ' || symbol FROM data_ingestion.data_quality_logs ORDER BY 1",
        )
        .await;
    assert_eq!(
        checks,
        [
            "stale_stream_bar AAPL",
            "stale_stream_bar AAPL",
            "stale_stream_bar MSFT",
            "stale_stream_bar MSFT",
            "unsubscribed_symbol Q",
            "unsubscribed_symbol ZZZZ"
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'running'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_authenticates_shows_in_ingestion_status() {
    for (tag, fault) in [
        ("run_closes", WsFault::DisconnectAfterFrames(1)),
        (
            "run_mute",
            WsFault::Silence {
                after_frames: 1,
                for_: Duration::from_secs(60),
            },
        ),
    ] {
        let db = TestDb::migrated(tag).await;
        let (from, to) = recent_session_stretch();
        let sim = start_sim(
            from,
            to,
            WsConfig {
                faults: vec![fault; 20],
                ..WsConfig::default()
            },
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&db, dir.path(), &sim);
        let child = spawn_mdingest(&run_args(&cfg));
        // The first failed attempt shows (the mute one ends at the 5 s watchdog).
        wait_until("the failure shown", 15, async || {
            stream_states(&db).await == ["AAPL error", "MSFT error"]
        })
        .await;
        let errors: Vec<String> = db
            .column("SELECT last_error FROM data_ingestion.ingestion_status")
            .await;
        assert!(
            errors.iter().all(|e| e.starts_with("polygon stream: ")),
            "{errors:?}"
        );
        let out = stop(child).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_in_no_log_even_at_tungstenite_trace() {
    let db = TestDb::migrated("run_trace").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 20.0,
            faults: vec![WsFault::DisconnectAfterFrames(6)],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim);
    for rust_log in [
        "tungstenite::protocol=trace",
        "trace,tokio_tungstenite=trace",
    ] {
        let child = spawn_mdingest_env(&run_args(&cfg), &[("RUST_LOG", rust_log)]);
        wait_until("a reconnect", 30, async || sim.ws_connections().len() >= 2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = stop(child).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(!out.stderr.is_empty(), "nothing logged at {rust_log}");
        assert!(!out.stderr.contains(KEY), "the key is logged at {rust_log}");
        assert!(!out.stdout.contains(KEY));
    }
    assert!(!pg_dump(&db).contains(KEY), "the key is in the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_in_bars_under_a_burst_of_big_frames_while_the_database_is_frozen() {
    let db = TestDb::migrated("run_burst").await;
    let symbols: Vec<String> = (0..2000).map(|i| format!("S{i:04}")).collect();
    let now = Utc::now();
    let sim = Simulator::start(SimConfig {
        api_key: KEY.into(),
        symbols: symbols.clone(),
        data_to: Some(now - chrono::Duration::minutes(5)),
        ws: WsConfig {
            live_from: Some(now - chrono::Duration::days(4)),
            bars_per_sec: 2000.0,
            // About 50,000 events a frame.
            frame_bytes: 8 << 20,
            record_bars: false,
            ..WsConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        &format!(
            "[service]\ngap_fill_lookback_secs = 60\nshutdown_timeout_secs = 2\n\
             [sources.polygon]\napi_key = \"{KEY}\"\nrest_url = \"{}\"\nws_url = \"{}\"\n\
             symbols = \"{}\"\ntimeframe = \"1m\"\nrequests_per_minute = 6000\n\
             stale_after_secs = 30\n",
            sim.base_url(),
            sim.ws_url(),
            symbols.join(",")
        ),
    );
    // Frozen: no bar and no quality row can be written.
    let locker = db.client().await;
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE data_ingestion.market_data, data_ingestion.data_quality_logs
             IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let child = spawn_mdingest(&run_args(&cfg));
    let pid = child.id() as i32;
    let measured = tokio::task::spawn_blocking(move || wait_measured(child));
    // The simulator sends until the daemon stops reading (and drops a reader that stays
    // stuck, as Polygon does; the daemon then reconnects): far more than the queue holds.
    let sent = || {
        sim.ws_connections()
            .iter()
            .map(|c| c.bars_sent)
            .sum::<u64>()
    };
    wait_until("a burst of big frames", 60, async || sent() >= 150_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = sent();
    // SAFETY: kill(2) on our own child's pid; no memory is shared.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = measured.await.unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let mb = out.peak_rss as f64 / 1e6;
    eprintln!("{sent} events sent; peak RSS {mb:.1} MB");
    assert!(mb < 128.0, "peak RSS {mb:.1} MB");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
}

/// Polygon streams AAPL and Alpaca MSFT from the same simulator; `polygon_key` lets a test
/// give Polygon a key the simulator refuses.
fn two_vendor_config(db: &TestDb, dir: &Path, sim: &Simulator, polygon_key: &str) -> PathBuf {
    db.config_file(
        dir,
        &format!(
            "[service]\ngap_fill_lookback_secs = 60\nshutdown_timeout_secs = 10\n\
             stream_max_bar_age_secs = 864000\n\
             [sources.polygon]\napi_key = \"{polygon_key}\"\nrest_url = \"{rest}\"\nws_url = \"{ws}\"\n\
             symbols = [\"AAPL\"]\ntimeframe = \"1m\"\nrequests_per_minute = 6000\nstale_after_secs = 5\n\
             [sources.alpaca]\nkey_id = \"{KEY}\"\nsecret_key = \"{KEY}\"\nrest_url = \"{rest}\"\n\
             ws_url = \"{alpaca_ws}\"\nsymbols = [\"MSFT\"]\ntimeframe = \"1m\"\n\
             requests_per_minute = 6000\nstale_after_secs = 5\n",
            rest = sim.base_url(),
            ws = sim.ws_url(),
            alpaca_ws = sim.alpaca_ws_url(),
        ),
    )
}

/// Alpaca alone, streaming AAPL and MSFT.
fn alpaca_config(db: &TestDb, dir: &Path, sim: &Simulator) -> PathBuf {
    db.config_file(
        dir,
        &format!(
            "[service]\ngap_fill_lookback_secs = 60\nshutdown_timeout_secs = 10\n\
             stream_max_bar_age_secs = 864000\n\
             [sources.alpaca]\nkey_id = \"{KEY}\"\nsecret_key = \"{KEY}\"\nrest_url = \"{}\"\n\
             ws_url = \"{}\"\nsymbols = [\"AAPL\", \"MSFT\"]\ntimeframe = \"1m\"\n\
             requests_per_minute = 6000\nstale_after_secs = 5\n",
            sim.base_url(),
            sim.alpaca_ws_url(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_and_alpaca_stream_at_once_and_both_series_land_exactly() {
    let db = TestDb::migrated("run_two").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 4.0,
            // Corrections: Polygon's bar again, Alpaca's `u` after its `b`.
            rebroadcast_every: Some(3),
            // Whichever connects first is cut, reconnects and gap-fills.
            faults: vec![WsFault::DisconnectAfterFrames(8)],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_vendor_config(&db, dir.path(), &sim, KEY);
    let child = spawn_mdingest(&run_args(&cfg));
    let polygon = series_rows(&["AAPL"], from, to);
    let alpaca = series_rows(&["MSFT"], from, to);
    wait_until("both series stored", 60, async || {
        stored_bars_of(&db, "polygon").await.len() >= polygon.len()
            && stored_bars_of(&db, "alpaca").await.len() >= alpaca.len()
    })
    .await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars_of(&db, "polygon").await == polygon);
    assert!(stored_bars_of(&db, "alpaca").await == alpaca);
    assert!(sim.ws_connections().len() >= 3, "no reconnect happened");
    let states: Vec<String> = db
        .column("SELECT data_source || ' ' || symbol || ' ' || mode || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(
        states,
        ["alpaca MSFT stream idle", "polygon AAPL stream idle"]
    );
    assert!(!out.stderr.contains(KEY) && !out.stdout.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_refused_never_stops_alpaca_and_its_error_stands() {
    let db = TestDb::migrated("run_refused_one").await;
    let (from, to) = recent_session_stretch();
    let sim = replay_sim(from, to).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_vendor_config(&db, dir.path(), &sim, "a-key-polygon-refuses");
    let child = spawn_mdingest(&run_args(&cfg));
    let alpaca = series_rows(&["MSFT"], from, to);
    wait_until("alpaca's series stored", 60, async || {
        stored_bars_of(&db, "alpaca").await.len() >= alpaca.len()
    })
    .await;
    let polygon_state = "SELECT state || ' ' || coalesce(last_error, '') FROM data_ingestion.ingestion_status WHERE data_source = 'polygon'";
    let states: Vec<String> = db.column(polygon_state).await;
    assert_eq!(states.len(), 1);
    assert!(
        states[0].starts_with("error ") && states[0].contains("auth_failed"),
        "{states:?}"
    );
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars_of(&db, "alpaca").await == alpaca);
    assert_eq!(stored_bars_of(&db, "polygon").await.len(), 0);
    // The end of the run leaves Polygon's error standing; Alpaca's feed is idle.
    let states: Vec<String> = db.column(polygon_state).await;
    assert!(states[0].starts_with("error "), "{states:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE data_source = 'alpaca' AND state = 'idle'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpaca_connection_limit_backs_off_and_a_bad_key_is_one_clear_error() {
    let db = TestDb::migrated("run_alpaca_406").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            faults: vec![WsFault::MaxConnections; 10],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = alpaca_config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'error' AND last_error LIKE '%406%connection limit%'", 2, 20).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = sim.ws_connections();
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // At least 2 s, then 4 s between attempts: no storm that would evict the other session.
    assert!(attempts.len() <= 3, "{} attempts", attempts.len());
    for w in attempts.windows(2) {
        assert!(w[1].at.duration_since(w[0].at) >= Duration::from_millis(1900));
    }
    assert!(!out.stderr.contains(KEY));

    // A refused key: `auth failed`, shown on the feeds, retried slowly.
    let db = TestDb::migrated("run_alpaca_402").await;
    let sim = start_sim(
        from,
        to,
        WsConfig {
            faults: vec![WsFault::AuthFailed; 10],
            ..WsConfig::default()
        },
    )
    .await;
    let cfg = alpaca_config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    wait_for_count(&db, "SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'error' AND last_error = 'alpaca: 402: auth failed'", 2, 20).await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpaca_slow_client_reconnects_and_the_gap_fill_misses_nothing() {
    let db = TestDb::migrated("run_alpaca_407").await;
    let (from, to) = recent_session_stretch();
    let sim = start_sim(
        from,
        to,
        WsConfig {
            live_from: Some(from),
            bars_per_sec: 4.0,
            // The first connection is told 407 after a few frames, and closed: the bars that
            // go live meanwhile come back through the gap-fill.
            faults: vec![WsFault::SlowClient],
            ..WsConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = alpaca_config(&db, dir.path(), &sim);
    let child = spawn_mdingest(&run_args(&cfg));
    let want = expected(from, to);
    wait_until("every bar stored", 60, async || {
        stored_bars_of(&db, "alpaca").await.len() >= want.len()
    })
    .await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars_of(&db, "alpaca").await == want);
    assert!(sim.ws_connections().len() >= 2);
    // The gap-fill went through Alpaca's REST, keys in headers only.
    let rest: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/v2/stocks/bars"))
        .collect();
    assert!(!rest.is_empty());
    assert!(rest.iter().all(|r| !r.target.contains(KEY)));
}

/// Polygon (AAPL) and Alpaca (MSFT) streaming, and Yahoo (`yahoo_symbol`, daily, adjusted)
/// polled every second.
fn three_vendor_config(db: &TestDb, dir: &Path, sim: &Simulator, yahoo_symbol: &str) -> PathBuf {
    let two = std::fs::read_to_string(two_vendor_config(db, dir, sim, KEY)).unwrap();
    let path = dir.join("three.toml");
    std::fs::write(
        &path,
        format!(
            "{two}[sources.yahoo]\nrest_url = \"{}\"\nsymbols = [\"{yahoo_symbol}\"]\n\
             timeframe = \"1d\"\nadjusted = true\npoll_interval_secs = 1\nrequests_per_minute = 6000\n",
            sim.base_url()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polygon_alpaca_and_yahoo_at_once_land_all_four_sources() {
    let db = TestDb::migrated("run_three").await;
    let (from, to) = recent_session_stretch();
    let sim = replay_sim(from, to).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = three_vendor_config(&db, dir.path(), &sim, "AAPL");
    let child = spawn_mdingest(&run_args(&cfg));
    let polygon = series_rows(&["AAPL"], from, to);
    let alpaca = series_rows(&["MSFT"], from, to);
    let (yahoo, adjusted, _) = yahoo_expected("AAPL", &[], from, to);
    assert_eq!(yahoo.len(), 1, "the stretch's day");
    wait_until("all four sources stored", 60, async || {
        stored_bars_of(&db, "polygon").await.len() >= polygon.len()
            && stored_bars_of(&db, "alpaca").await.len() >= alpaca.len()
            && !stored_bars_of(&db, "yahoo_adjusted").await.is_empty()
    })
    .await;
    // Polls go on meanwhile: a few more rewrite nothing.
    wait_until("three polls", 30, async || {
        sim.requests()
            .iter()
            .filter(|r| r.target.starts_with("/v8/finance/chart/AAPL"))
            .count()
            >= 3
    })
    .await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars_of(&db, "polygon").await == polygon);
    assert!(stored_bars_of(&db, "alpaca").await == alpaca);
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"),
        yahoo
    );
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo_adjusted").await, "AAPL"),
        adjusted
    );
    let states: Vec<String> = db
        .column("SELECT data_source || ' ' || mode || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(
        states,
        [
            "alpaca stream idle",
            "polygon stream idle",
            "yahoo poll idle",
            "yahoo_adjusted poll idle"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yahoo_outage_leaves_the_streams_untouched_and_shows_in_its_poll_rows() {
    let db = TestDb::migrated("run_yahoo_429").await;
    let (from, to) = recent_session_stretch();
    let sim = Simulator::start(SimConfig {
        symbols: vec!["AAPL".into(), "MSFT".into(), "IBM".into()],
        ..sim_config(from, to, replay(from))
    })
    .await
    .unwrap();
    // Yahoo refuses this client: 429 with a plain-text body, on every request.
    sim.set_symbol_fault("IBM", Some(SymbolFault::RateLimited));
    let dir = tempfile::tempdir().unwrap();
    let cfg = three_vendor_config(&db, dir.path(), &sim, "IBM");
    let child = spawn_mdingest(&run_args(&cfg));
    let polygon = series_rows(&["AAPL"], from, to);
    let alpaca = series_rows(&["MSFT"], from, to);
    let refused = "SELECT count(*) FROM data_ingestion.ingestion_status WHERE mode = 'poll' AND state = 'error' AND last_error LIKE '%Yahoo refuses this client%'";
    wait_for_count(&db, refused, 2, 60).await;
    wait_until("both streams stored", 60, async || {
        stored_bars_of(&db, "polygon").await.len() >= polygon.len()
            && stored_bars_of(&db, "alpaca").await.len() >= alpaca.len()
    })
    .await;
    let streams = "SELECT count(*) FROM data_ingestion.ingestion_status WHERE mode = 'stream' AND state = 'running'";
    assert_eq!(db.count(streams).await, 2);
    assert!(stored_bars_of(&db, "yahoo").await.is_empty());
    // Yahoo lets us in again: the next poll's bars make its rows running.
    sim.set_symbol_fault("IBM", None);
    wait_for_count(
        &db,
        "SELECT count(*) FROM data_ingestion.ingestion_status WHERE mode = 'poll' AND state = 'running'",
        2,
        60,
    )
    .await;
    let out = stop(child).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stored_bars_of(&db, "polygon").await == polygon);
    assert!(stored_bars_of(&db, "alpaca").await == alpaca);
    assert_eq!(stored_bars_of(&db, "yahoo").await.len(), 1);
}
