//! Yahoo against the simulator's chart endpoint and a real PostgreSQL: `yahoo` and
//! `yahoo_adjusted` from one fetch, exactly (checked against values computed here from the
//! wire's text), null rows logged, an unknown symbol named while the others load, a plain-text
//! 429 retried, a 429 that persists reported as Yahoo refusing the client, and a range without
//! trading.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::*;
use mdingest::domain::{Symbol, Timeframe};
use mdingest::sim::{Fault, SimConfig, Simulator, YahooAction};

const FROM: &str = "2024-01-02";
const TO: &str = "2024-06-28";

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// AAPL pays a dividend in March and splits 4:1 a week later; MSFT has neither.
fn actions() -> Vec<YahooAction> {
    vec![
        YahooAction::Dividend {
            day: day("2024-03-06"),
            amount: 2_400,
        },
        YahooAction::Split {
            day: day("2024-03-13"),
            numerator: 4,
            denominator: 1,
        },
    ]
}

fn data_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        "2024-01-02T05:00:00Z".parse().unwrap(),
        "2024-06-29T03:59:59.999Z".parse().unwrap(),
    )
}

async fn setup(tag: &str, symbols: &[&str]) -> (TestDb, Simulator, tempfile::TempDir, PathBuf) {
    let db = TestDb::migrated(tag).await;
    let (from, to) = data_range();
    let sim = Simulator::start(SimConfig {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        data_from: Some(from),
        data_to: Some(to),
        yahoo_actions: [("AAPL".to_string(), actions())].into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        &format!(
            "[sources.yahoo]\nrest_url = \"{}\"\nsymbols = [\"AAPL\"]\ntimeframe = \"1d\"\n\
             adjusted = true\nrequests_per_minute = 6000\n",
            sim.base_url()
        ),
    );
    (db, sim, dir, cfg)
}

fn args<'a>(cfg: &'a Path, source: &'a str, symbols: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        cfg.to_str().unwrap(),
        "backfill",
        "--source",
        source,
        "--symbols",
        symbols,
        "--from",
        FROM,
        "--to",
        TO,
    ]
}

/// What the simulator served for `symbol` over the data range (see `yahoo_expected`).
fn expected(
    symbol: &str,
    actions: &[YahooAction],
) -> (BTreeMap<i64, Row>, BTreeMap<i64, Row>, usize) {
    let (from, to) = data_range();
    yahoo_expected(symbol, actions, from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_stores_yahoo_and_yahoo_adjusted_exactly() {
    let (db, sim, _dir, cfg) = setup("yahoo_exact", &["AAPL", "MSFT"]).await;
    let out = run_measured(&args(&cfg, "yahoo", "AAPL,MSFT"), &[]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let yahoo = stored_bars_of(&db, "yahoo").await;
    let adjusted = stored_bars_of(&db, "yahoo_adjusted").await;
    let mut vendor_rows = 0;
    let mut null_rows = 0;
    for (symbol, actions) in [("AAPL", actions()), ("MSFT", Vec::new())] {
        let (want_raw, want_adj, nulls) = expected(symbol, &actions);
        assert!(want_raw.len() > 100, "{symbol}: {} rows", want_raw.len());
        assert_eq!(of_symbol(&yahoo, symbol), want_raw, "{symbol}: yahoo");
        assert_eq!(
            of_symbol(&adjusted, symbol),
            want_adj,
            "{symbol}: yahoo_adjusted"
        );
        vendor_rows += want_raw.len() + nulls;
        null_rows += nulls;
    }
    assert!(null_rows > 0, "the simulator served no null row");
    // Before the split, AAPL's adjusted prices are a quarter of what was traded, less the
    // dividend: the adjustment really happened.
    let first = yahoo.keys().find(|(s, _)| s == "AAPL").unwrap();
    assert!(adjusted[first].3 < yahoo[first].3);
    // Every row with a null is in the quality log, under `yahoo` and named.
    let logged = db
        .count("SELECT count(*) FROM data_ingestion.data_quality_logs WHERE data_source = 'yahoo' AND check_name IN ('null_row', 'missing_value')")
        .await;
    assert_eq!(logged as usize, null_rows);
    // The summary: fetched in vendor rows, inserted in rows of both sources.
    assert_eq!(
        summary_value(&out.stdout, "fetched"),
        vendor_rows.to_string()
    );
    assert_eq!(
        summary_value(&out.stdout, "inserted"),
        (yahoo.len() + adjusted.len()).to_string()
    );
    assert!(
        out.stdout.contains("yahoo_adjusted: inserted"),
        "{}",
        out.stdout
    );
    let states: Vec<String> = db
        .column("SELECT data_source || ' ' || symbol || ' ' || mode || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(
        states,
        [
            "yahoo AAPL backfill completed",
            "yahoo MSFT backfill completed",
            "yahoo_adjusted AAPL backfill completed",
            "yahoo_adjusted MSFT backfill completed",
        ]
    );
    // One request per symbol and window, with a browser's User-Agent and no trailing bar kept.
    let requests = sim.requests();
    assert!(requests
        .iter()
        .all(|r| r.target.starts_with("/v8/finance/chart/")));
    assert!(requests.iter().all(|r| r.target.contains("interval=1d")));
    let latest = yahoo.keys().map(|(_, t)| *t).max().unwrap();
    assert!(latest <= data_range().1.timestamp_millis());

    // `--source yahoo_adjusted` is the same fetch: the same windows are done already.
    let out = run_measured(&args(&cfg, "yahoo_adjusted", "AAPL,MSFT"), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sim.requests().len(), requests.len(), "fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_symbol_is_named_while_the_others_load() {
    let (db, _sim, _dir, cfg) = setup("yahoo_404", &["AAPL"]).await;
    let out = run_measured(&args(&cfg, "yahoo", "AAPL,NOPE"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("NOPE: unknown symbol"), "{all}");
    assert!(
        all.contains("No data found, symbol may be delisted"),
        "{all}"
    );
    let (want, _, _) = expected("AAPL", &actions());
    assert_eq!(of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"), want);
    let states: Vec<String> = db
        .column("SELECT data_source || ' ' || symbol || ' ' || state FROM data_ingestion.ingestion_status WHERE symbol = 'NOPE' ORDER BY 1")
        .await;
    assert_eq!(states, ["yahoo NOPE error", "yahoo_adjusted NOPE error"]);
}

/// A simulator that knows AAPL, with all of history.
async fn aapl_sim() -> Simulator {
    Simulator::start(SimConfig {
        symbols: vec!["AAPL".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn client(sim: &Simulator) -> mdingest::sources::yahoo::rest::YahooRest {
    let cfg = mdingest::config::Config::from_toml_str(&format!(
        "[sources.yahoo]\nrest_url = \"{}\"\nrequests_per_minute = 6000\n",
        sim.base_url()
    ))
    .unwrap();
    mdingest::sources::yahoo::rest::YahooRest::new(cfg.sources.yahoo.as_ref().unwrap())
        .unwrap()
        .with_retry(mdingest::sources::http::RetryPolicy::fast())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_text_429_is_retried_and_one_that_persists_is_yahoo_refusing_the_client() {
    let sim = aapl_sim().await;
    let rest = client(&sim);
    let aapl: Symbol = "AAPL".parse().unwrap();
    let (from, to) = (
        Utc.with_ymd_and_hms(2024, 6, 3, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 6, 8, 0, 0, 0).unwrap(),
    );
    let throttled = Fault::TooManyRequests {
        retry_after_secs: 0,
    };
    sim.push_faults([throttled.clone(), throttled.clone()]);
    let chart = rest.chart(&aapl, Timeframe::D1, from, to).await.unwrap();
    assert!(!chart.bars.is_empty());
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);

    sim.push_faults(std::iter::repeat_n(throttled, 40));
    let err = rest
        .chart(&aapl, Timeframe::D1, from, to)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Yahoo refuses this client"), "{text}");
    assert!(text.contains("proxy_url"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekend_has_no_bars_and_no_error() {
    let sim = aapl_sim().await;
    let rest = client(&sim);
    let aapl: Symbol = "AAPL".parse().unwrap();
    // Saturday and Sunday, 2024-06-08 and 09 (New York).
    let chart = rest
        .chart(
            &aapl,
            Timeframe::D1,
            Utc.with_ymd_and_hms(2024, 6, 8, 4, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 6, 10, 4, 0, 0).unwrap(),
        )
        .await
        .unwrap();
    assert!(chart.bars.is_empty() && chart.rejections.is_empty());
    assert!(chart.adjusted.is_empty());
}

/// The latest weekdays before today (New York), newest first.
fn recent_weekdays(n: usize) -> Vec<NaiveDate> {
    use chrono::Datelike;
    let today = Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive();
    let mut out = Vec::new();
    let mut d = today;
    while out.len() < n {
        d = d.pred_opt().unwrap();
        if !matches!(d.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun) {
            out.push(d);
        }
    }
    out
}

/// Waits (up to a minute) until `sql` counts `n`.
async fn wait_for(db: &TestDb, sql: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.count(sql).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 60 s: {sql}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dividend_rewrites_the_adjusted_history_and_a_new_split_both_sources() {
    let db = TestDb::migrated("yahoo_actions").await;
    let days = recent_weekdays(3);
    let ny = |d: NaiveDate, h: u32| {
        chrono_tz::America::New_York
            .from_local_datetime(&d.and_hms_opt(h, 0, 0).unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    // Sixty days of history up to the end of the last weekday, so no bar is still forming.
    let (from, to) = (
        ny(days[0] - chrono::Duration::days(60), 0),
        ny(days[0], 23) + chrono::Duration::minutes(59),
    );
    let sim = Simulator::start(SimConfig {
        symbols: vec!["AAPL".into()],
        data_from: Some(from),
        data_to: Some(to),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        &format!(
            "[service]\nshutdown_timeout_secs = 10\n[sources.yahoo]\nrest_url = \"{}\"\n\
             symbols = [\"AAPL\"]\ntimeframe = \"1d\"\nadjusted = true\npoll_interval_secs = 1\n\
             requests_per_minute = 6000\n",
            sim.base_url()
        ),
    );
    let (from_day, to_day) = (
        (days[0] - chrono::Duration::days(60)).to_string(),
        days[0].to_string(),
    );
    let out = run_measured(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "backfill",
            "--source",
            "yahoo",
            "--symbols",
            "AAPL",
            "--from",
            &from_day,
            "--to",
            &to_day,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let (raw, adjusted, _) = yahoo_expected("AAPL", &[], from, to);
    assert!(raw.len() > 30);
    assert_eq!(of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"), raw);

    let child = spawn_mdingest(&["--config", cfg.to_str().unwrap(), "run"]);
    let dividend = YahooAction::Dividend {
        day: days[1],
        amount: 5_000,
    };
    sim.add_yahoo_action("AAPL", dividend);
    let logged = "SELECT count(*) FROM data_ingestion.data_quality_logs WHERE check_name = 'corporate_action' AND severity = 'info' AND action = 'repaired'";
    wait_for(&db, logged, 1).await;
    wait_for(
        &db,
        "SELECT count(*) FROM data_ingestion.corporate_actions WHERE kind = 'dividend'",
        1,
    )
    .await;
    // Every stored adjusted bar before the dividend now carries it; the quote is unchanged.
    let (raw_d, adjusted_d, _) = yahoo_expected("AAPL", &[dividend], from, to);
    assert_eq!(raw_d, raw, "a dividend does not change the quote");
    assert_ne!(adjusted_d, adjusted);
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo_adjusted").await, "AAPL"),
        adjusted_d
    );
    assert_eq!(of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"), raw);

    let split = YahooAction::Split {
        day: days[2],
        numerator: 3,
        denominator: 1,
    };
    sim.add_yahoo_action("AAPL", split);
    wait_for(&db, logged, 2).await;
    wait_for(
        &db,
        "SELECT count(*) FROM data_ingestion.corporate_actions",
        2,
    )
    .await;
    let (raw_s, adjusted_s, _) = yahoo_expected("AAPL", &[dividend, split], from, to);
    assert_ne!(raw_s, raw);
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"),
        raw_s
    );
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo_adjusted").await, "AAPL"),
        adjusted_s
    );
    signal(&child, libc::SIGTERM);
    let out = tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // Seen once: later polls show the same actions and rewrite nothing more.
    assert_eq!(db.count(logged).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_the_configured_proxy_http_or_socks5() {
    let sim = aapl_sim().await;
    let aapl: Symbol = "AAPL".parse().unwrap();
    let (from, to) = (
        Utc.with_ymd_and_hms(2024, 6, 3, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 6, 8, 0, 0, 0).unwrap(),
    );
    for scheme in ["http", "socks5"] {
        let proxy = RecordingProxy::start().await;
        let cfg = mdingest::config::Config::from_toml_str(&format!(
            "[sources.yahoo]\nrest_url = \"{}\"\nrequests_per_minute = 6000\n\
             proxy_url = \"{scheme}://scott:tiger-secret@127.0.0.1:{}\"\n",
            sim.base_url(),
            proxy.port
        ))
        .unwrap();
        let rest =
            mdingest::sources::yahoo::rest::YahooRest::new(cfg.sources.yahoo.as_ref().unwrap())
                .unwrap();
        let chart = rest.chart(&aapl, Timeframe::D1, from, to).await.unwrap();
        assert!(!chart.bars.is_empty(), "{scheme}");
        let seen = proxy.seen();
        assert_eq!(seen.len(), 1, "{scheme}: {seen:?}");
        match scheme {
            "http" => {
                assert!(
                    seen[0].starts_with(&format!(
                        "GET {}/v8/finance/chart/AAPL?period1=",
                        sim.base_url()
                    )),
                    "{seen:?}"
                );
                // The proxy's credentials go to the proxy only.
                assert!(
                    seen[0]
                        .to_ascii_lowercase()
                        .contains("proxy-authorization: basic"),
                    "{seen:?}"
                );
            }
            _ => assert_eq!(seen[0], format!("SOCKS5 {} [user scott]", sim.local_addr())),
        }
        // The request reached the vendor through it.
        assert_eq!(sim.requests().last().unwrap().status, 200);
    }
    // check-config shows the proxy with its password redacted.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mdingest.toml");
    std::fs::write(
        &path,
        "[sources.yahoo]\nproxy_url = \"socks5h://scott:tiger-secret@127.0.0.1:1080\"\n",
    )
    .unwrap();
    let out = mdingest(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("tiger-secret"), "{all}");
}

/// Whether `tool` runs here.
fn has(tool: &str, arg: &str) -> bool {
    std::process::Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The `impersonate` build (Yahoo through wreq with Chrome's TLS fingerprint) loads Yahoo's
/// chart like the default one. Building it compiles BoringSSL, which needs cmake and libclang:
/// without them this says why it skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_impersonate_build_loads_yahoo_when_it_can_be_built_here() {
    let libclang = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|o| {
            // libclang itself (bindgen loads it), not libclang-cpp.
            let libs = String::from_utf8_lossy(&o.stdout).into_owned();
            libs.contains("libclang.so") || libs.contains("libclang-1")
        });
    let missing: Vec<&str> = [("cmake", has("cmake", "--version")), ("libclang", libclang)]
        .into_iter()
        .filter(|(_, there)| !there)
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: the impersonate feature builds BoringSSL, which needs {} (apt-get install -y cmake libclang-dev)",
            missing.join(" and ")
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("impersonate");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cargo)
            .args([
                "build",
                "--locked",
                "--features",
                "impersonate",
                "--bin",
                "mdingest",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (db, _sim, _dir, cfg) = setup("yahoo_impersonate", &["AAPL"]).await;
    let bin = root.join("target/impersonate/debug/mdingest");
    let out = std::process::Command::new(bin)
        .args(args(&cfg, "yahoo", "AAPL"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, adjusted, _) = expected("AAPL", &actions());
    assert_eq!(of_symbol(&stored_bars_of(&db, "yahoo").await, "AAPL"), want);
    assert_eq!(
        of_symbol(&stored_bars_of(&db, "yahoo_adjusted").await, "AAPL"),
        adjusted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_status_speak_json_for_schedulers() {
    let (db, _sim, _dir, cfg) = setup("yahoo_json", &["AAPL"]).await;
    let mut a = args(&cfg, "yahoo", "AAPL,NOPE");
    a.push("--json");
    let out = run_measured(&a, &[]).await;
    // NOPE is unknown: the same exit code as without --json, the failure in the object.
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", out.stdout));
    let yahoo = stored_bars_of(&db, "yahoo").await.len() as u64;
    let adjusted = stored_bars_of(&db, "yahoo_adjusted").await.len() as u64;
    assert_eq!(summary["command"], "backfill");
    assert_eq!(summary["inserted"], yahoo + adjusted);
    assert_eq!(summary["by_source"]["yahoo"]["inserted"], yahoo);
    assert_eq!(summary["by_source"]["yahoo_adjusted"]["inserted"], adjusted);
    assert_eq!(summary["exit_code"], 1);
    let failed = summary["failed"].as_array().unwrap();
    assert!(
        failed.iter().any(|f| f.as_str().unwrap().contains("NOPE")),
        "{failed:?}"
    );
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);

    let out = mdingest(
        &["--config", cfg.to_str().unwrap(), "status", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let feeds: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let row = |source: &str, symbol: &str| {
        feeds
            .iter()
            .find(|f| f["data_source"] == source && f["symbol"] == symbol)
            .unwrap_or_else(|| panic!("no {source} {symbol} in {feeds:?}"))
            .clone()
    };
    let aapl = row("yahoo", "AAPL");
    assert_eq!(aapl["state"], "completed");
    assert_eq!(aapl["rows_written"], yahoo);
    assert_eq!(row("yahoo_adjusted", "AAPL")["rows_written"], adjusted);
    // The last bar is months old: its lag says so.
    assert!(
        aapl["lag_seconds"].as_i64().unwrap() > 86_400 * 30,
        "{aapl}"
    );
    let nope = row("yahoo", "NOPE");
    assert_eq!(nope["state"], "error");
    assert!(
        nope["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown symbol"),
        "{nope}"
    );
    assert!(nope["lag_seconds"].is_null());
}
