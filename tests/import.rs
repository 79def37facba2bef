//! `mdingest import --format polygon-flatfile`, `status` and `check-config`, driven through the
//! built binary as an operator would.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

const MINUTE_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/polygon_minute_aggs.csv"
);
const DAY_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/polygon_day_aggs.csv"
);

fn gzip(src: &Path, dst: &Path) {
    let raw = std::fs::read(src).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(dst).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_csv_then_identical_csv_gz() {
    let db = TestDb::migrated("import").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");

    let out = import(&cfg, &[Path::new(MINUTE_FIXTURE)]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    assert_eq!(summary_value(&text, "rows read"), "9");
    assert_eq!(summary_value(&text, "inserted"), "5");
    assert_eq!(summary_value(&text, "rejected"), "4");
    assert!(
        text.contains("rows/s") && text.contains("seconds"),
        "{text}"
    );

    let client = db.client().await;
    let vols: Vec<i64> = db
        .column("SELECT volume FROM data_ingestion.market_data WHERE symbol = 'AAPL' ORDER BY timestamp")
        .await;
    assert_eq!(
        vols,
        [4930, 25934, 10_471_000],
        "fractional volumes rounded"
    );
    let low: String = db
        .value("SELECT low::text FROM data_ingestion.market_data WHERE symbol = 'AAPL' ORDER BY timestamp LIMIT 1")
        .await;
    assert_eq!(low, "185.4501");
    let logged: Vec<(String, Option<i64>)> = client
        .query(
            "SELECT check_name, (details->>'line')::bigint FROM data_ingestion.data_quality_logs ORDER BY 2 NULLS LAST",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        logged,
        [
            ("not_a_number".to_string(), Some(6)),
            ("malformed_row".to_string(), Some(7)),
            ("value_out_of_range".to_string(), Some(9)),
            ("high_below_open_close".to_string(), None),
        ]
    );
    let file: String = db
        .value("SELECT details->>'file' FROM data_ingestion.data_quality_logs WHERE check_name = 'not_a_number'")
        .await;
    assert!(file.ends_with("polygon_minute_aggs.csv"));

    // The same rows, gzipped: nothing changes.
    let gz = dir.path().join("minute.csv.gz");
    gzip(Path::new(MINUTE_FIXTURE), &gz);
    let out = import(&cfg, &[&gz]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary_value(&text, "inserted"), "0");
    assert_eq!(summary_value(&text, "updated"), "0");
    assert_eq!(summary_value(&text, "unchanged"), "5");
    assert_eq!(db.stored().await, 5);

    // Progress is recorded under mode 'backfill', completed.
    let out = mdingest(&["--config", cfg.to_str().unwrap(), "status"], &[]);
    let table = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("SOURCE") && header.contains("LAST BAR"));
    let aapl = table
        .lines()
        .find(|l| l.contains("AAPL"))
        .expect("AAPL row");
    let cells: Vec<&str> = aapl.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["polygon", "AAPL", "backfill", "1m", "completed"]
    );
    assert!(aapl.contains("2024-01-02 14:32:00Z"), "{aapl}");
    // Columns line up: every row's MODE starts where the header's does.
    let col = header.find("MODE").unwrap();
    for line in table.lines().skip(1) {
        assert_eq!(&line[col..col + 8], "backfill", "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_files_load_when_the_timeframe_is_1d_and_are_refused_when_1m() {
    let db = TestDb::migrated("dayfile").await;
    let dir = tempfile::tempdir().unwrap();
    let minute_cfg = db.config_file(dir.path(), "");
    let out = import(&minute_cfg, &[Path::new(DAY_FIXTURE)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("polygon_day_aggs.csv") && err.contains("line 2"),
        "{err}"
    );
    assert!(
        err.contains("day aggregates but sources.polygon.timeframe is 1m"),
        "{err}"
    );
    assert_eq!(db.stored().await, 0);

    let day_dir = tempfile::tempdir().unwrap();
    let day_cfg = db.config_file(
        day_dir.path(),
        "[sources.polygon]\nenabled = false\ntimeframe = \"1d\"\n",
    );
    let out = import(&day_cfg, &[Path::new(DAY_FIXTURE)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.market_data WHERE timestamp = '2024-01-02T05:00:00Z'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_files_are_named_and_load_nothing() {
    let db = TestDb::migrated("badfiles").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let good = Path::new(MINUTE_FIXTURE);
    let missing = dir.path().join("missing.csv.gz");
    let not_gzip = write(dir.path(), "plain.csv.gz", b"ticker,volume\n");
    let bad_header = write(
        dir.path(),
        "header.csv",
        b"sym,vol,o,c,h,l,t,n\nAAPL,1,1,1,1,1,1,1\n",
    );
    let empty = write(dir.path(), "empty.csv", b"");
    for (bad, expect) in [
        (&missing, "cannot open"),
        (&not_gzip, "not a gzip file"),
        (&bad_header, "line 1: header"),
        (&empty, "empty file"),
    ] {
        // The bad file comes second: the good one before it must not load either.
        let out = import(&cfg, &[good, bad]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(bad.to_str().unwrap()), "{err}");
        assert!(err.contains(expect), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panick"), "{err}");
    }
    assert_eq!(db.stored().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_gzip_loads_the_rows_before_the_cut_and_names_the_line() {
    let db = TestDb::migrated("truncated").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    // 20,000 rows.
    let csv = minute_csv((0..50).map(|n| format!("T{n}")), 400);
    let full = write(dir.path(), "full.csv", csv.as_bytes());
    let gz = dir.path().join("full.csv.gz");
    gzip(&full, &gz);
    let bytes = std::fs::read(&gz).unwrap();
    let cut = write(dir.path(), "cut.csv.gz", &bytes[..bytes.len() / 2]);

    let out = import(&cfg, &[&cut]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cut.csv.gz: line "), "{err}");
    let loaded = db
        .count("SELECT count(*) FROM data_ingestion.market_data")
        .await;
    assert!(loaded > 1000 && loaded < 20_000, "{loaded} rows loaded");
    let rows_read: i64 = summary_value(&stdout(&out), "rows read").parse().unwrap();
    assert_eq!(rows_read, loaded);
    // The feeds of a failed file are marked as such.
    let errors = db
        .count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'error' AND last_error LIKE '%cut.csv.gz%'")
        .await;
    assert!(errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rows_are_rejected_without_a_panic() {
    let db = TestDb::migrated("garbage").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let mut body = b"ticker,volume,open,close,high,low,window_start,transactions\n".to_vec();
    for line in [
        &b"AAPL,100,1,1,1,1,1704205800000000000,1"[..],
        b"",
        b",,,,,,,",
        b"\"AAPL\",\"1\"\"\",1,1,1,1,1704205860000000000,1",
        b"AAPL\x00,1,1,1,1,1,1704205920000000000,1",
        b"\xff\xfe,1,1,1,1,1,1704205980000000000,1",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ,1,1,1,1,1,1704206040000000000,1",
        b"AAPL,1,1,1,1,1,-9223372036854775808,1",
        b"AAPL,1,1,1,1,1,99999999999999999999999,1",
        b"AAPL,NaN,inf,-inf,1e400,-0,1704206100000000000,1",
        b"AAPL,1,79228162514264337593543950336,1,1,1,1704206160000000000,1",
        b"AAPL,-5,1,1,1,1,1704206220000000000,1",
        b"AAPL\\u0000,1,1,1,1,1,1704206280000000000,1",
        // A stray quote must not swallow the rows after it.
        b"AAPL,1\"00,1,1,1,1,1704206340000000000,1",
        b"MSFT,5,1,1,1,1,1704206400000000000,1",
    ] {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    let file = write(dir.path(), "garbage.csv", &body);
    let out = import(&cfg, &[&file]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panick"), "{err}");
    let text = stdout(&out);
    assert_eq!(summary_value(&text, "inserted"), "2");
    assert_eq!(summary_value(&text, "rejected"), "12");
    let logged = db
        .count("SELECT count(DISTINCT (details->>'line')) FROM data_ingestion.data_quality_logs")
        .await;
    assert_eq!(
        logged, 10,
        "every row rejected while parsing names its line"
    );
    let raw: String = db
        .value("SELECT details->>'row' FROM data_ingestion.data_quality_logs WHERE details->>'row' LIKE '%u0000%'")
        .await;
    assert_eq!(raw, "AAPL\\u0000,1,1,1,1,1,1704206280000000000,1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_an_unmigrated_database_says_to_migrate() {
    let db = TestDb::empty("unmigrated").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let out = import(&cfg, &[Path::new(MINUTE_FIXTURE)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mdingest migrate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_errors_name_the_key_and_env_overrides_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        b"[database]\nurl = \"postgres://u:s3cret@db.example:5432/trading_system\"\n[pipeline]\nwriters = 4\n",
    );
    let cfg = cfg.to_str().unwrap();

    let out = mdingest(&["--config", cfg, "check-config"], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("writers = 4"), "{text}");
    assert!(text.contains("u:REDACTED@db.example"), "{text}");
    assert!(!text.contains("s3cret"));

    let out = mdingest(
        &["--config", cfg, "check-config"],
        &[
            ("MDINGEST__PIPELINE__WRITERS", "3"),
            ("MDINGEST__SOURCES__POLYGON__API_KEY", "pk_live_1"),
            ("MDINGEST__SOURCES__POLYGON__SYMBOLS", "AAPL,NVDA"),
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("writers = 3"), "{text}");
    assert!(
        text.contains("[sources.polygon]") && text.contains("\"NVDA\""),
        "{text}"
    );
    assert!(!text.contains("pk_live_1"), "{text}");

    // The vendor's own variable fills a configured source's key, under MDINGEST__'s precedence.
    let out = mdingest(
        &["--config", cfg, "check-config"],
        &[
            ("MDINGEST__SOURCES__POLYGON__ENABLED", "true"),
            ("POLYGON_API_KEY", "pk_vendor"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pk_vendor"));

    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("MDINGEST__PIPELINE__WRITERS", "many")],
            "MDINGEST__PIPELINE__WRITERS",
        ),
        (
            &[("MDINGEST__PIPELINE__WRITRS", "2")],
            "MDINGEST__PIPELINE__WRITRS: unknown key",
        ),
        (
            &[("MDINGEST__SOURCES__ALPACA__TIMEFRAME", "2m")],
            "MDINGEST__SOURCES__ALPACA__TIMEFRAME",
        ),
        (
            &[("MDINGEST__SOURCES__POLYGON__ENABLED", "true")],
            "sources.polygon.api_key",
        ),
        (
            &[("MDINGEST__REDIS__URL", "http://x")],
            "MDINGEST__REDIS__URL",
        ),
    ];
    for (env, expect) in cases {
        let out = mdingest(&["--config", cfg, "check-config"], env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?}");
        assert!(err.contains(expect), "{env:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    for (body, expect) in [
        (
            "[database]\nurl = \"x\"\nbogus = 1\n",
            "database.bogus (in ",
        ),
        (
            "[pipeline]\nbatch_max_rows = 0\n",
            "pipeline.batch_max_rows (in ",
        ),
        (
            "[sources.yahoo]\ntimeframe = \"7m\"\n",
            "sources.yahoo.timeframe (in ",
        ),
        (
            "[sources.polygon]\nrest_url = \"not a url\"\napi_key = \"k\"\n",
            "sources.polygon.rest_url (in ",
        ),
        ("[metrics]\nlisten = \"nowhere\"\n", "metrics.listen (in "),
        (
            "[database]\nurl = \"postgres://u:pw@h:notaport/db\"\n",
            "database.url (in ",
        ),
        // Syntax errors name the file and place but never echo the line (it may hold a secret).
        (
            "[sources.polygon]\napi_key = pk_live_pw\n",
            "bad.toml: TOML parse error at line 2",
        ),
        (
            "[database]\nurl = \"postgres://u:pw@h/db\n",
            "bad.toml: TOML parse error at line 2",
        ),
        (
            "[pipeline]\nqueue_capacity = 9000000000000000000\n",
            "pipeline.queue_capacity (in ",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", body.as_bytes());
        let out = mdingest(&["--config", file.to_str().unwrap(), "check-config"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{body}");
        assert!(err.contains(expect), "{body}: {err}");
        assert!(!err.contains("pw@") && !err.contains("_pw"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    let out = mdingest(&["--config", "/nonexistent/mdingest.toml", "status"], &[]);
    assert!(stderr(&out).contains("/nonexistent/mdingest.toml not found"));
}

/// A signal during a load: reading stops, what was read commits, the summary says so, no feed is
/// left `running`, and the exit code is 128 + the signal.
async fn a_signal_commits_what_was_read_and_leaves_feeds_idle(sig: i32, code: i32, tag: &str) {
    let db = TestDb::migrated(tag).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let csv = minute_csv((0..1000).map(|s| format!("S{s:03}")), 600);
    let file = write(dir.path(), "big.csv", csv.as_bytes());
    let child = spawn_mdingest(&import_args(&cfg, &[&file]));
    wait_for_rows(&db, "SELECT count(*) FROM data_ingestion.market_data").await;
    signal(&child, sig);
    let out = wait_measured(child);
    assert_eq!(out.code, Some(code), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
    let read: i64 = summary_value(&out.stdout, "rows read").parse().unwrap();
    let inserted: i64 = summary_value(&out.stdout, "inserted").parse().unwrap();
    let stored = db.stored().await;
    assert!(read < 600_000, "the import was not interrupted");
    assert_eq!(stored, read, "every row read was committed, nothing more");
    assert_eq!(inserted, stored, "the summary counts what is in the table");
    let running = db
        .count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE state <> 'idle'")
        .await;
    assert_eq!(running, 0, "feeds left in another state than idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_commits_what_was_read_and_leaves_feeds_idle() {
    a_signal_commits_what_was_read_and_leaves_feeds_idle(libc::SIGINT, 130, "sigint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_handled_like_the_first_ctrl_c() {
    a_signal_commits_what_was_read_and_leaves_feeds_idle(libc::SIGTERM, 143, "sigterm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_fails_midway_leaves_no_feed_running() {
    let db = TestDb::migrated("midway").await;
    // An error retrying cannot fix (class 42), raised only for one symbol's rows.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION data_ingestion.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.symbol = 'ZZZ' THEN
                 RAISE EXCEPTION 'no privilege for ZZZ' USING ERRCODE = '42501';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER test_refuse BEFORE INSERT ON data_ingestion.market_data
               FOR EACH ROW EXECUTE FUNCTION data_ingestion.test_refuse();",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        "[pipeline]\nwriters = 1\nbatch_max_rows = 100\n",
    );
    let csv = minute_csv(["AAA", "ZZZ"], 300);
    let file = write(dir.path(), "midway.csv", csv.as_bytes());
    let out = import(&cfg, &[&file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no privilege for ZZZ"), "{err}");
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.market_data WHERE symbol = 'AAA'")
            .await,
        300
    );
    let states: Vec<String> = db
        .column("SELECT symbol || ' ' || state FROM data_ingestion.ingestion_status ORDER BY 1")
        .await;
    assert_eq!(states, ["AAA error"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_adds_up_when_rows_repeat() {
    let db = TestDb::migrated("import_dups").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    // Every row twice, the second with another volume: the later one wins.
    let once = minute_csv(["AAPL", "MSFT"], 50);
    let mut csv = once.clone();
    for line in once.lines().skip(1) {
        csv.push_str(&line.replacen(",100,", ",200,", 1));
        csv.push('\n');
    }
    let file = write(dir.path(), "dups.csv", csv.as_bytes());
    let out = import(&cfg, &[&file]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    let n = |k: &str| summary_value(&text, k).parse::<u64>().unwrap();
    assert_eq!(n("rows read"), 200, "{text}");
    assert_eq!(
        n("inserted") + n("updated") + n("unchanged") + n("rejected") + n("duplicates"),
        n("rows read"),
        "{text}"
    );
    assert_eq!(n("inserted"), 100, "{text}");
    let vols: Vec<i64> = db
        .column("SELECT DISTINCT volume FROM data_ingestion.market_data")
        .await;
    assert_eq!(vols, [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_json_is_one_object_matching_the_rows_stored() {
    let db = TestDb::migrated("import_json").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let mut args = import_args(&cfg, &[Path::new(MINUTE_FIXTURE)]);
    args.push("--json");
    let out = mdingest(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", stdout(&out)));
    assert_eq!(summary["command"], "import");
    assert_eq!(summary["inserted"], db.stored().await);
    assert_eq!(
        summary["by_source"]["polygon"]["inserted"],
        db.stored().await
    );
    let logged = db
        .count("SELECT count(*) FROM data_ingestion.data_quality_logs")
        .await;
    assert_eq!(summary["rejected"], logged);
    assert_eq!(summary["exit_code"], 0);
}
