//! `mdingest backfill --source alpaca` against the simulator's Alpaca endpoint and a real
//! PostgreSQL: many symbols per request chain, paging by `next_page_token` where a page holds
//! only some of the symbols, empty answers, exact values with whole volumes, the keys only in
//! headers, and Alpaca's refusals named with their symbols.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use mdingest::sim::{Fault, SimConfig, Simulator, SymbolFault};

const KEY: &str = "alpaca-sim-key-2718";
/// Two weeks of Alpaca's weekly minute windows (weekdays only in the simulator).
const FROM: &str = "2024-01-08";
const TO: &str = "2024-01-19";

async fn setup(tag: &str, sim: SimConfig) -> (TestDb, Simulator, tempfile::TempDir, PathBuf) {
    let db = TestDb::migrated(tag).await;
    let sim = Simulator::start(SimConfig {
        api_key: KEY.into(),
        ..sim
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        &format!(
            "[sources.alpaca]\nkey_id = \"{KEY}\"\nsecret_key = \"{KEY}\"\nrest_url = \"{}\"\n\
             symbols = [\"AAPL\"]\ntimeframe = \"1m\"\nstream = false\nrequests_per_minute = 6000\n",
            sim.base_url()
        ),
    );
    (db, sim, dir, cfg)
}

fn args<'a>(cfg: &'a Path, symbols: &'a str, from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        cfg.to_str().unwrap(),
        "backfill",
        "--source",
        "alpaca",
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

fn instant(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chain_serves_many_symbols_and_lands_every_bar_exactly() {
    // 1,000 bars a page: a week of AAPL's minutes fills the first pages alone.
    let (db, sim, _dir, cfg) = setup(
        "alpaca_paging",
        SimConfig {
            page_size: 1_000,
            symbols: vec!["AAPL".into(), "MSFT".into()],
            ..SimConfig::default()
        },
    )
    .await;
    let out = run(
        &args(&cfg, "AAPL,MSFT,NOPE", FROM, TO),
        &[("RUST_LOG", "trace")],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // New York days 2024-01-08 .. 2024-01-19.
    let want = series_rows(
        &["AAPL", "MSFT"],
        instant("2024-01-08T05:00:00Z"),
        instant("2024-01-20T04:59:59.999Z"),
    );
    let got = stored_bars_of(&db, "alpaca").await;
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "stored rows differ from the simulator's series"
    );
    assert_eq!(
        summary_value(&out.stdout, "inserted"),
        want.len().to_string()
    );

    let requests = sim.requests();
    // Every request asked for all three symbols at once, the keys only in headers.
    for r in &requests {
        assert!(r.target.starts_with("/v2/stocks/bars?"), "{}", r.target);
        assert!(
            r.target.contains("symbols=AAPL%2CMSFT%2CNOPE"),
            "{}",
            r.target
        );
        assert!(r.target.contains("adjustment=raw") && r.target.contains("limit=10000"));
        assert!(!r.target.contains(KEY), "a key in a URL: {}", r.target);
        assert_eq!(r.status, 200);
    }
    let followed = requests
        .iter()
        .filter(|r| r.target.contains("page_token="))
        .count();
    let first_pages = requests.len() - followed;
    // Two (or three, where a window reaches past the range) weekly windows, many pages each.
    assert!((2..=4).contains(&first_pages), "{first_pages} chains");
    assert!(followed >= 4, "{followed} pages followed");
    assert!(
        !out.stderr.contains(KEY) && !out.stdout.contains(KEY),
        "a key in the log"
    );
    let states: Vec<String> = db
        .column("SELECT symbol || ' ' || state || ' ' || mode FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(
        states,
        ["AAPL completed backfill", "MSFT completed backfill"]
    );
    // Each symbol's window is its own task, done once its bars committed.
    let done = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE data_source = 'alpaca' AND state = 'done'")
        .await;
    let tasks = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE data_source = 'alpaca'")
        .await;
    assert_eq!(done, tasks);
    assert_eq!(tasks as usize, 3 * first_pages);

    // Again: nothing is fetched.
    let before = sim.requests().len();
    let again = run(&args(&cfg, "AAPL,MSFT,NOPE", FROM, TO), &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(sim.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_loads_nothing_and_fails_nothing() {
    // No data before 2030: the simulator answers `"bars":{}`.
    let (db, sim, _dir, cfg) = setup(
        "alpaca_empty",
        SimConfig {
            data_from: Some(instant("2030-01-01T00:00:00Z")),
            ..SimConfig::default()
        },
    )
    .await;
    let out = run(&args(&cfg, "AAPL", FROM, TO), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(summary_value(&out.stdout, "fetched"), "0");
    assert_eq!(db.stored().await, 0);
    assert!(sim
        .requests()
        .iter()
        .all(|r| r.status == 200 && r.bars == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_the_rate_limit_reset_then_loads() {
    let (db, sim, _dir, cfg) = setup("alpaca_429", SimConfig::default()).await;
    sim.push_faults([Fault::TooManyRequests {
        retry_after_secs: 2,
    }]);
    let out = run(&args(&cfg, "AAPL", "2024-01-08", "2024-01-08"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r = sim.requests();
    assert_eq!(r[0].status, 429);
    assert_eq!(r[1].status, 200);
    // X-Ratelimit-Reset is whole seconds: at least one of the two passed.
    let waited = r[1].at - r[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert!(db.stored().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_plan_is_one_error_naming_the_symbols_on_their_feeds() {
    let (db, sim, _dir, cfg) = setup("alpaca_403", SimConfig::default()).await;
    sim.set_symbol_fault("MSFT", Some(SymbolFault::Forbidden));
    let out = run(&args(&cfg, "AAPL,MSFT", FROM, TO), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("subscription does not permit querying recent SIP data"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("alpaca AAPL,MSFT:"), "{}", out.stderr);
    // The plan refuses every request alike: the run stops (a worker that had already claimed
    // the other window meets the same answer).
    let requests = sim.requests();
    assert!(requests.len() <= 2 && requests.iter().all(|r| r.status == 403));
    let states: Vec<String> = db
        .column("SELECT symbol || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(states, ["AAPL error", "MSFT error"]);
    let pending = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'pending' AND last_error LIKE '%SIP%'")
        .await;
    assert!(pending >= 2, "{pending}");

    // A key the vendor echoes back in its refusal is never shown.
    sim.set_symbol_fault("MSFT", Some(SymbolFault::EchoKey));
    let out = run(&args(&cfg, "AAPL,MSFT", FROM, TO), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("***"), "{}", out.stderr);
    assert!(!out.stderr.contains(KEY) && !pg_dump(&db).contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_that_never_ends_stops_the_window_with_an_error() {
    let (db, sim, _dir, cfg) = setup(
        "alpaca_endless",
        SimConfig {
            page_size: 100,
            ..SimConfig::default()
        },
    )
    .await;
    sim.set_symbol_fault("AAPL", Some(SymbolFault::EndlessCursor));
    let out = run(&args(&cfg, "AAPL", "2024-01-08", "2024-01-08"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("repeats a page token"),
        "{}",
        out.stderr
    );
    // The first page, then the token seen again: two requests, not an endless chain.
    assert_eq!(sim.requests().len(), 2);
    let pending = db
        .count("SELECT count(*) FROM data_ingestion.backfill_tasks WHERE state = 'pending' AND last_error LIKE '%page token%'")
        .await;
    assert_eq!(pending, 1);
}
