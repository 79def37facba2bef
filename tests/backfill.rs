//! `mdingest backfill --source polygon` against the simulator (`mdingest::sim`) and a real
//! PostgreSQL: paging, faults, exact values, the key kept out of URLs and logs, the work queue
//! through `kill -9` and concurrent runs, failing symbols and rejected rows.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use mdingest::domain::Timeframe;
use mdingest::sim::{self, Fault, SimConfig, Simulator, SymbolFault};

const KEY: &str = "sim-secret-key-3141";
/// Three windows of the 30-day grid (2024-01-03 .. 2024-04-01), weekdays only in the simulator.
const FROM: &str = "2024-01-10";
const TO: &str = "2024-03-05";

fn sim_config(symbols: &[&str]) -> SimConfig {
    SimConfig {
        api_key: KEY.into(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        ..SimConfig::default()
    }
}

/// A migrated database, a simulator and a config file for the binary pointing at both.
async fn setup(tag: &str, sim: SimConfig) -> (TestDb, Simulator, tempfile::TempDir, PathBuf) {
    let db = TestDb::migrated(tag).await;
    let sim = Simulator::start(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim, "");
    (db, sim, dir, cfg)
}

/// A config file for the binary: the test database and the simulator as Polygon.
fn config(db: &TestDb, dir: &Path, sim: &Simulator, extra: &str) -> PathBuf {
    db.config_file(
        dir,
        &format!(
            "[sources.polygon]\napi_key = \"{KEY}\"\nrest_url = \"{}\"\nsymbols = [\"AAPL\"]\n\
             timeframe = \"1m\"\nstream = false\nrequests_per_minute = 6000\n{extra}",
            sim.base_url()
        ),
    )
}

fn args<'a>(cfg: &'a Path, symbols: &'a str, from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        cfg.to_str().unwrap(),
        "backfill",
        "--source",
        "polygon",
        "--symbols",
        symbols,
        "--from",
        from,
        "--to",
        to,
    ]
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Measured {
    run_measured(args, env).await
}

/// The grid windows the range covers.
fn grid(from: &str, to: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let from: mdingest::backfill::DateArg = from.parse().unwrap();
    let to: mdingest::backfill::DateArg = to.parse().unwrap();
    // Polygon's minute windows are 30 days.
    mdingest::backfill::windows(
        chrono::Duration::days(30),
        from.start().unwrap(),
        to.end_exclusive().unwrap(),
        Utc::now(),
    )
}

/// What the simulator holds for `symbols` over the range's windows, as stored rows.
fn expected(symbols: &[&str], from: &str, to: &str) -> BTreeMap<(String, i64), Row> {
    let mut out = BTreeMap::new();
    for (start, end) in grid(from, to) {
        out.extend(series_rows(
            symbols,
            start,
            end - chrono::Duration::milliseconds(1),
        ));
    }
    out
}

/// `(symbol, from_ms)` of every aggregates request that got an answer with bars or none.
fn windows_requested(sim: &Simulator) -> Vec<(String, i64)> {
    let mut w: Vec<(String, i64)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.status == 200 && !r.target.contains("cursor="))
        .filter_map(|r| Some((r.symbol?, r.from_ms?)))
        .collect();
    w.sort();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_pages_and_lands_every_bar_exactly_with_the_key_only_in_a_header() {
    let (db, sim, _dir, cfg) = setup(
        "bf_paging",
        SimConfig {
            page_size: 3000,
            ..sim_config(&["AAPL", "MSFT"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL,MSFT", FROM, TO), &[("RUST_LOG", "trace")]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let want = expected(&["AAPL", "MSFT"], FROM, TO);
    let got = stored_bars(&db).await;
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "stored rows differ from the simulator's series"
    );
    // Fractional and scientific volumes were among them, rounded half away from zero.
    let wires: Vec<String> = grid(FROM, TO)
        .iter()
        .flat_map(|(s, e)| sim::series("AAPL", Timeframe::M1, *s, *e))
        .map(|b| b.volume_wire)
        .collect();
    assert!(
        wires.iter().any(|v| v.contains('e')),
        "no scientific volume"
    );
    assert!(
        wires.iter().any(|v| v.contains('.') && !v.ends_with(".0")),
        "no fractional volume"
    );
    let requests = sim.requests();
    let pages = requests
        .iter()
        .filter(|r| r.target.contains("cursor="))
        .count();
    assert!(pages >= 3, "{pages} follow-up pages");
    for r in &requests {
        assert!(!r.target.contains(KEY), "key in a URL: {}", r.target);
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
        assert!(r.target.contains("adjusted=false") && r.target.contains("sort=asc"));
    }
    assert!(!out.stderr.contains(KEY), "the key is in the log");
    assert!(!out.stdout.contains(KEY));
    assert_eq!(
        summary_value(&out.stdout, "inserted"),
        want.len().to_string()
    );
    let states: Vec<String> = db
        .column("SELECT DISTINCT state || ' ' || mode FROM data_ingestion.ingestion_status")
        .await;
    assert_eq!(states, ["completed backfill"]);

    // The same range again: every window is done, nothing is fetched.
    let before = sim.requests().len();
    let again = run(&args(&cfg, "AAPL,MSFT", FROM, TO), &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        sim.requests().len(),
        before,
        "a finished range fetched again"
    );
    assert!(
        again.stderr.contains("nothing to fetch"),
        "{}",
        again.stderr
    );
    // --force plans it again; identical rows are left unchanged.
    let mut forced = args(&cfg, "AAPL,MSFT", FROM, TO);
    forced.push("--force");
    let forced = run(&forced, &[]).await;
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert_eq!(
        summary_value(&forced.stdout, "unchanged"),
        want.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_and_retry_after_is_honoured() {
    let (db, sim, _dir, cfg) = setup(
        "bf_faults",
        SimConfig {
            faults: vec![
                Fault::TooManyRequests {
                    retry_after_secs: 2,
                },
                Fault::ServerError,
                Fault::TruncatedBody,
                Fault::ConnectionReset,
            ],
            ..sim_config(&["AAPL"])
        },
    )
    .await;
    // The smallest pool the writers accept: the workers' sessions are their own.
    let small_pool = [("MDINGEST__DATABASE__POOL_MAX_SIZE", "2")];
    let out = run(&args(&cfg, "AAPL", "2024-01-10", "2024-01-12"), &small_pool).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        stored_bars(&db).await,
        expected(&["AAPL"], "2024-01-10", "2024-01-12")
    );
    let requests = sim.requests();
    assert_eq!(requests[0].status, 429);
    assert!(
        requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(2),
        "retried before Retry-After"
    );
    assert_eq!(requests[1].status, 500);
    assert_eq!(requests.last().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_one_clear_error() {
    let (_db, sim, _dir, cfg) = setup(
        "bf_401",
        SimConfig {
            api_key: "another-key".into(),
            ..sim_config(&["AAPL"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL,MSFT", "2024-01-10", "2024-03-05"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("401"), "{}", out.stderr);
    assert!(errors[0].contains("api_key"), "{}", out.stderr);
    assert!(!out.stderr.contains(KEY));
    // Not retried, and the other workers stopped too.
    assert!(
        sim.requests().len() <= 4,
        "{} requests",
        sim.requests().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekend_has_no_bars_and_a_failing_symbol_is_named_while_the_rest_load() {
    let (db, _sim, dir, cfg) = setup(
        "bf_symbol",
        SimConfig {
            symbol_faults: HashMap::from([("NOPE".to_string(), SymbolFault::NotFound)]),
            ..sim_config(&["AAPL", "MSFT", "NOPE"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL,NOPE,MSFT", FROM, TO), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("NOPE"), "{}", out.stderr);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    assert_eq!(
        stored_bars(&db).await,
        expected(&["AAPL", "MSFT"], FROM, TO)
    );
    let nope: Vec<String> = db
        .column("SELECT state FROM data_ingestion.ingestion_status WHERE symbol = 'NOPE'")
        .await;
    assert!(nope.iter().all(|s| s == "error"), "{nope:?}");

    // A window without a bar (answers without `results`): fetched, empty, and done.
    let empty = Simulator::start(SimConfig {
        data_to: Some("2023-01-01T00:00:00Z".parse().unwrap()),
        ..sim_config(&["AAPL"])
    })
    .await
    .unwrap();
    let db = TestDb::migrated("bf_empty").await;
    let cfg = config(&db, dir.path(), &empty, "");
    let out = run(&args(&cfg, "AAPL", "2024-01-06", "2024-01-07"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(summary_value(&out.stdout, "fetched"), "0");
    assert_eq!(empty.requests().len(), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'done'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_a_rerun_fetches_only_what_is_left() {
    let (db, sim, _dir, cfg) = setup(
        "bf_kill",
        SimConfig {
            latency: Duration::from_millis(400),
            page_size: 2000,
            ..sim_config(&["AAPL", "MSFT", "IBM"])
        },
    )
    .await;
    let a = args(&cfg, "AAPL,MSFT,IBM", FROM, TO);
    let child = spawn_mdingest(&a);
    wait_for_rows(
        &db,
        "SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'done'",
    )
    .await;
    signal(&child, libc::SIGKILL);
    let _ = tokio::task::spawn_blocking(move || wait_measured(child)).await;
    let left: Vec<(String, i64)> = {
        let rows = db
            .client()
            .await
            .query(
                "SELECT symbol, (extract(epoch FROM window_start) * 1000)::int8
                 FROM data_ingestion.backfill_tasks WHERE state = 'pending' ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let total = 3 * grid(FROM, TO).len();
    assert!(!left.is_empty() && left.len() < total, "{left:?}");
    // A request the killed process sent just before it died may still be on its way into the
    // simulator: it belongs to the first run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_run = sim.requests().len();
    let out = run(&a, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut rerun: Vec<(String, i64)> = sim.requests()[first_run..]
        .iter()
        .filter(|r| !r.target.contains("cursor="))
        .filter_map(|r| Some((r.symbol.clone()?, r.from_ms?)))
        .collect();
    rerun.sort();
    assert_eq!(
        rerun, left,
        "the re-run fetched other windows than those left"
    );
    assert_eq!(
        stored_bars(&db).await,
        expected(&["AAPL", "MSFT", "IBM"], FROM, TO)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_backfills_share_the_work_and_fetch_each_window_once() {
    let db = TestDb::migrated("bf_shared").await;
    let symbols = ["AAPL", "MSFT", "IBM", "ORCL"];
    let sim = Simulator::start(SimConfig {
        latency: Duration::from_millis(100),
        ..sim_config(&symbols)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&db, dir.path(), &sim, "");
    let a = args(&cfg, "AAPL,MSFT,IBM,ORCL", FROM, TO);
    let (one, two) = tokio::join!(run(&a, &[]), run(&a, &[]));
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert_eq!(two.code, Some(0), "{}", two.stderr);
    let fetched = windows_requested(&sim);
    let mut unique = fetched.clone();
    unique.dedup();
    assert_eq!(fetched, unique, "a window was fetched twice");
    assert_eq!(fetched.len(), symbols.len() * grid(FROM, TO).len());
    assert_eq!(stored_bars(&db).await, expected(&symbols, FROM, TO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeframe_other_than_the_configured_one_is_refused() {
    let (_db, sim, _dir, cfg) = setup("bf_tf", sim_config(&["AAPL"])).await;
    let mut a = args(&cfg, "AAPL", FROM, TO);
    a.extend(["--timeframe", "1d"]);
    let out = run(&a, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("sources.polygon.timeframe"),
        "{}",
        out.stderr
    );
    assert!(sim.requests().is_empty());
    let bad = run(&args(&cfg, "AAPL", "2024-02-30", TO), &[]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_reaching_past_now_is_fetched_again_by_the_next_run() {
    let (db, sim, _dir, cfg) = setup("bf_today", sim_config(&["AAPL"])).await;
    let ny = Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive();
    let today = ny.to_string();
    let a = args(&cfg, "AAPL", &today, &today);
    let out = run(&a, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let pending = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'pending' AND window_end > now()")
        .await;
    assert_eq!(pending, 1, "today's window was marked done");
    let before = sim.requests().len();
    let again = run(&a, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        sim.requests().len() > before,
        "today's window was not fetched again"
    );
    // Nothing in the future was asked for or stored.
    let future = db
        .count("SELECT count(*) FROM data_ingestion.market_data WHERE timestamp > now()")
        .await;
    assert_eq!(future, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_fetching_commits_what_was_fetched_and_exits_143() {
    let (db, _sim, _dir, cfg) = setup(
        "bf_sigterm",
        SimConfig {
            latency: Duration::from_millis(300),
            page_size: 500,
            ..sim_config(&["AAPL", "MSFT"])
        },
    )
    .await;
    let child = spawn_mdingest(&args(&cfg, "AAPL,MSFT", FROM, TO));
    wait_for_rows(&db, "SELECT count(*) FROM data_ingestion.market_data").await;
    signal(&child, libc::SIGTERM);
    let out = tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap();
    assert_eq!(out.code, Some(143), "{}\n{}", out.stdout, out.stderr);
    let inserted: i64 = summary_value(&out.stdout, "inserted").parse().unwrap();
    let fetched: i64 = summary_value(&out.stdout, "fetched").parse().unwrap();
    assert_eq!(inserted, db.stored().await);
    assert_eq!(fetched, inserted, "every bar fetched was committed");
    assert!(inserted < expected(&["AAPL", "MSFT"], FROM, TO).len() as i64);
    let running = db
        .count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'running'")
        .await;
    assert_eq!(running, 0);
    let leased = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE lease_pid IS NOT NULL")
        .await;
    assert_eq!(leased, 0, "a stopped run keeps no task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_bars_are_logged_named_on_the_console_and_the_rest_load() {
    let (db, _sim, _dir, cfg) = setup(
        "bf_rejects",
        SimConfig {
            symbol_faults: HashMap::from([("AAPL".to_string(), SymbolFault::InconsistentBars)]),
            ..sim_config(&["AAPL"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL", "2024-01-10", "2024-01-12"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let all = expected(&["AAPL"], "2024-01-10", "2024-01-12");
    let (bad, good): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|((_, t), _)| sim::is_inconsistent(*t));
    assert!(bad.len() > 21, "{} spoiled bars", bad.len());
    assert_eq!(stored_bars(&db).await, good.into_iter().collect());
    assert_eq!(
        summary_value(&out.stdout, "rejected"),
        bad.len().to_string()
    );
    let logged = db
        .count("SELECT count(DISTINCT bar_timestamp) FROM data_ingestion.data_quality_logs WHERE check_name = 'high_below_open_close' AND symbol = 'AAPL'")
        .await;
    assert_eq!(logged, bad.len() as i64);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .collect();
    assert_eq!(warnings.len(), 21, "{}", out.stderr);
    assert!(
        warnings[0].contains("polygon AAPL 20") && warnings[0].contains("high_below_open_close"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[20].contains(&format!("{} more rejected rows", bad.len() - 20)),
        "{}",
        warnings[20]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_outside_the_window_are_quality_rows_and_the_window_stays_pending() {
    // A vendor that sends `t` in seconds: every bar lands in January 1970.
    let (db, _sim, _dir, cfg) = setup(
        "bf_seconds",
        SimConfig {
            symbol_faults: HashMap::from([("AAPL".to_string(), SymbolFault::SecondsTimestamps)]),
            ..sim_config(&["AAPL"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL", "2024-01-10", "2024-01-11"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("none of the") && out.stderr.contains("stays pending"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("outside_window"), "{}", out.stderr);
    let fetched: u64 = summary_value(&out.stdout, "fetched").parse().unwrap();
    let rejected: u64 = summary_value(&out.stdout, "rejected").parse().unwrap();
    assert!(fetched > 1000, "{}", out.stdout);
    assert_eq!(fetched, rejected, "{}", out.stdout);
    assert_eq!(stored_bars(&db).await.len(), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.data_quality_logs WHERE check_name = 'outside_window'")
            .await as u64,
        rejected
    );
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'pending' AND last_error LIKE '%none of the%'")
            .await,
        1
    );
    let state: Vec<String> = db
        .column("SELECT state FROM data_ingestion.ingestion_status WHERE symbol = 'AAPL'")
        .await;
    assert_eq!(state, ["error"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_page_chain_ends_the_window_with_an_error_naming_it() {
    let (db, sim, _dir, cfg) = setup(
        "bf_endless",
        SimConfig {
            page_size: 500,
            symbol_faults: HashMap::from([("AAPL".to_string(), SymbolFault::EndlessCursor)]),
            ..sim_config(&["AAPL"])
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL", "2024-01-10", "2024-01-11"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("page chain stopped advancing"),
        "{}",
        out.stderr
    );
    // The window is named: its start on the grid.
    let (start, _) = grid("2024-01-10", "2024-01-11")[0];
    let shown = start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert!(out.stderr.contains(&shown), "{shown}: {}", out.stderr);
    assert!(
        sim.requests().len() <= 5,
        "{} requests",
        sim.requests().len()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'pending' AND last_error LIKE '%page chain%'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_echoed_in_a_200_body_reaches_no_output_or_table_and_failures_show_in_status() {
    let (db, _sim, _dir, cfg) = setup(
        "bf_echo",
        SimConfig {
            symbol_faults: HashMap::from([
                ("AAPL".to_string(), SymbolFault::EchoKey),
                ("NOPE".to_string(), SymbolFault::NotFound),
            ]),
            ..sim_config(&["AAPL", "NOPE"])
        },
    )
    .await;
    for rust_log in ["trace", "tungstenite::protocol=trace,trace"] {
        let out = run(
            &args(&cfg, "AAPL,NOPE", "2024-01-10", "2024-01-11"),
            &[("RUST_LOG", rust_log)],
        )
        .await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains("is not entitled"), "{}", out.stderr);
        assert!(
            out.stderr.contains("key *** is not entitled"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains(KEY), "the key is on stderr");
        assert!(!out.stdout.contains(KEY), "the key is on stdout");
    }
    // Both symbols failed before their first bar, and both show it.
    let rows: Vec<String> = db
        .column("SELECT symbol || ' ' || state || ' ' || last_error FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].starts_with("AAPL error ") && rows[0].contains("***"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("NOPE error ") && rows[1].contains("404"),
        "{rows:?}"
    );
    let dump = pg_dump(&db);
    assert!(
        dump.contains("is not entitled"),
        "the dump misses the error"
    );
    assert!(!dump.contains(KEY), "the key is in the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_page_behind_a_200_is_retried_and_1970_is_asked_as_1970() {
    let (db, sim, _dir, cfg) = setup("bf_html", sim_config(&["AAPL"])).await;
    sim.push_faults([Fault::Html]);
    let out = run(&args(&cfg, "AAPL", FROM, "2024-01-12"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("not aggregates JSON"), "{}", out.stderr);
    assert_eq!(
        stored_bars(&db).await,
        expected(&["AAPL"], FROM, "2024-01-12")
    );

    // The grid's first window starts in 1969; nothing before 1970 is asked for.
    let out = run(&args(&cfg, "AAPL", "1970-01-01", "1970-01-02"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let firsts: Vec<i64> = sim.requests().iter().filter_map(|r| r.from_ms).collect();
    assert!(firsts.iter().all(|&f| f >= 0), "{firsts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_31_mb_pages_for_four_symbols() {
    let symbols = ["AAPL", "MSFT", "IBM", "ORCL"];
    for (tag, fault) in [
        ("bf_padded", SymbolFault::Padded),
        ("bf_oversized", SymbolFault::Oversized),
    ] {
        let (db, sim, _dir, cfg) = setup(
            tag,
            SimConfig {
                symbol_faults: symbols.iter().map(|s| (s.to_string(), fault)).collect(),
                ..sim_config(&symbols)
            },
        )
        .await;
        let out = run(&args(&cfg, "AAPL,MSFT,IBM,ORCL", FROM, TO), &[]).await;
        let mb = out.peak_rss as f64 / 1e6;
        eprintln!("{tag}: peak RSS {mb:.1} MB");
        assert!(mb < 128.0, "{tag}: peak RSS {mb:.1} MB");
        let most = sim.requests().iter().map(|r| r.bars).max().unwrap();
        if fault == SymbolFault::Padded {
            // 31 MB pages (3,500 bytes of padding a result) load whole.
            assert!(
                most * 3_500 > 28_000_000,
                "pages of {most} bars prove nothing"
            );
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            assert_eq!(stored_bars(&db).await, expected(&symbols, FROM, TO));
        } else {
            // Five times more results than a page may hold: refused before they are decoded.
            assert!(most >= 250_000, "{most}");
            assert_eq!(out.code, Some(1), "{}", out.stderr);
            assert!(out.stderr.contains("more than the 50000"), "{}", out.stderr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_fetches_exactly_the_missing_session_and_a_second_run_nothing() {
    // Jan 15 is Martin Luther King Day: the simulator has bars that weekday, the NYSE no
    // session, so the calendar never calls it a hole.
    let (from, to) = ("2024-01-10", "2024-01-19");
    let (db, sim, _dir, cfg) = setup("bf_holes", sim_config(&["AAPL", "MSFT"])).await;
    let out = run(&args(&cfg, "AAPL,MSFT", from, to), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let whole = stored_bars(&db).await;
    // MSFT loses the session of Jan 17; AAPL's grid windows are pending again, as after an
    // interrupted backfill: --holes must not fetch them either.
    db.client()
        .await
        .batch_execute(
            "DELETE FROM data_ingestion.market_data WHERE symbol = 'MSFT'
               AND timestamp >= '2024-01-17 00:00 America/New_York'
               AND timestamp < '2024-01-18 00:00 America/New_York';
             UPDATE data_ingestion.backfill_tasks SET state = 'pending', fetched_at = NULL
               WHERE symbol = 'AAPL'",
        )
        .await
        .unwrap();
    assert!(stored_bars(&db).await.len() < whole.len());

    let before = sim.requests().len();
    let mut holes = args(&cfg, "AAPL,MSFT", from, to);
    holes.push("--holes");
    let out = run(&holes, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(summary_value(&out.stdout, "hole sessions"), "1");
    let fetched: Vec<(String, Option<i64>)> = sim.requests()[before..]
        .iter()
        .map(|r| (r.symbol.clone().unwrap_or_default(), r.from_ms))
        .collect();
    let jan17 = "2024-01-17T05:00:00Z"
        .parse::<DateTime<Utc>>()
        .unwrap()
        .timestamp_millis();
    assert_eq!(fetched, [("MSFT".to_string(), Some(jan17))]);
    assert!(
        stored_bars(&db).await == whole,
        "the hole is not refilled exactly"
    );

    // Right after: no hole is left, nothing is fetched.
    let before = sim.requests().len();
    let out = run(&holes, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sim.requests().len(), before);
    assert!(out.stderr.contains("no hole"), "{}", out.stderr);

    // A range only the calendar's dates can name.
    let mut bad = args(&cfg, "AAPL", "2024-01-10T00:00:00Z", to);
    bad.push("--holes");
    let out = run(&bad, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--holes takes exchange dates"),
        "{}",
        out.stderr
    );
}
