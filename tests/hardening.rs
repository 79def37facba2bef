//! What a hostile user and an operator throw at the spine: huge lines, gzip bombs, closed pipes,
//! chained errors, signals, a frozen database, out-of-range numbers, rejected rows on the console,
//! partial migrations, and config paths that are not files.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

const HEADER: &str = "ticker,volume,open,close,high,low,window_start,transactions\n";
/// The usual memory budget of the binary (SPEC: memory stays bounded whatever the input).
const RSS_BUDGET: u64 = 64 * 1024 * 1024;

fn row(symbol: &str, minute: i64) -> String {
    let ns = (1_704_186_000 + 60 * minute) * 1_000_000_000;
    format!("{symbol},100,10.5,10.6,10.7,10.4,{ns},5\n")
}

/// A gzip stream of `header` then `nul_mb` MiB of NUL bytes, as concatenated gzip members (one
/// compressed MiB repeated), so the test does not spend its time compressing.
fn gzip_bomb(path: &Path, header: &str, nul_mb: usize) {
    let member = |data: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    };
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&member(header.as_bytes())).unwrap();
    let mib = member(&vec![0u8; 1 << 20]);
    for _ in 0..nul_mb {
        f.write_all(&mib).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_is_one_small_quality_row_and_memory_stays_bounded() {
    let db = TestDb::migrated("longline").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let mut body = String::from(HEADER);
    body.push_str(&row("AAA", 0));
    body.push_str("BBB,");
    body.push_str(&"9".repeat(50 << 20));
    body.push('\n');
    body.push_str(&row("AAA", 1));
    let file = write(dir.path(), "long.csv", body.as_bytes());
    drop(body);
    let out = wait_measured(spawn_mdingest(&import_args(&cfg, &[&file])));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.peak_rss < RSS_BUDGET, "peak RSS {} bytes", out.peak_rss);
    assert_eq!(db.stored().await, 2);
    let (check, line, len, kept): (String, i64, i64, i32) = {
        let c = db.client().await;
        let r = c
            .query_one(
                "SELECT check_name, (details->>'line')::int8, (details->>'row_len')::int8,
                        length(details->>'row') FROM data_ingestion.data_quality_logs",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(check, "record_too_long");
    assert_eq!(line, 3);
    assert_eq!(len, (50 << 20) + 4);
    assert!(kept <= 1024, "{kept} characters of the row kept");
    let symbol_in_details = db
        .count("SELECT count(*) FROM data_ingestion.data_quality_logs WHERE details ? 'symbol'")
        .await;
    assert_eq!(symbol_in_details, 0, "the row is stored once");
    assert!(out.stderr.lines().all(|l| l.len() < 500), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_read_in_bounded_memory() {
    let db = TestDb::migrated("bomb").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let with_header = dir.path().join("bomb.csv.gz");
    gzip_bomb(&with_header, &format!("{HEADER}{}", row("AAA", 0)), 256);
    let out = wait_measured(spawn_mdingest(&import_args(&cfg, &[&with_header])));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.peak_rss < RSS_BUDGET, "peak RSS {} bytes", out.peak_rss);
    assert_eq!(db.stored().await, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.data_quality_logs WHERE check_name = 'record_too_long'")
            .await,
        1
    );

    // No header at all: refused at once, in one short line, without reading the rest.
    let headless = dir.path().join("headless.csv.gz");
    gzip_bomb(&headless, "", 256);
    let started = std::time::Instant::now();
    let out = wait_measured(spawn_mdingest(&import_args(&cfg, &[&headless])));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(out.peak_rss < RSS_BUDGET, "peak RSS {} bytes", out.peak_rss);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("header line longer than"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_junk_rows_is_held_back_like_one_of_bars() {
    let db = TestDb::migrated("junk").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let junk = dir.path().join("junk.csv.gz");
    let mut body = String::from(HEADER);
    for i in 0..300_000 {
        body.push_str(&format!("junk row {i} without a single comma\n"));
    }
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&junk).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(body.as_bytes()).unwrap();
    gz.finish().unwrap();
    drop(body);
    let out = wait_measured(spawn_mdingest(&import_args(&cfg, &[&junk])));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.peak_rss < RSS_BUDGET, "peak RSS {} bytes", out.peak_rss);
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.data_quality_logs")
            .await,
        300_000
    );
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.toml", b"[pipeline]\nwriters = 1\n");
    let mut child = spawn_mdingest(&["--config", cfg.to_str().unwrap(), "check-config"]);
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_import_to_a_closed_stdout_exit_quietly() {
    let db = TestDb::migrated("pipe").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let file = write(dir.path(), "a.csv", minute_csv(["AAA"], 10).as_bytes());
    for args in [
        vec!["--config", cfg.to_str().unwrap(), "status"],
        import_args(&cfg, &[&file]),
    ] {
        let mut child = spawn_mdingest(&args);
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(db.stored().await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_is_said_once_on_one_line() {
    let db = TestDb::migrated("oneline").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let bad = write(dir.path(), "h.csv", b"ticker,volume,open\nAAA,1,2\n");
    let out = import(&cfg, &[&bad]);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("h.csv").count(), 1, "{err}");
    assert_eq!(
        err.matches("is not a Polygon flat file").count(),
        1,
        "{err}"
    );

    let missing = dir.path().join("missing.csv");
    let out = import(&cfg, &[&missing]);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A database error: the server's message once.
    let c = db.client().await;
    c.batch_execute(
        "DROP ROLE IF EXISTS mdtest_nobody; CREATE ROLE mdtest_nobody LOGIN;
         REVOKE ALL ON SCHEMA data_ingestion FROM PUBLIC",
    )
    .await
    .unwrap();
    let nobody = db.url.replacen("postgres@", "mdtest_nobody@", 1);
    let out = mdingest(
        &["--config", cfg.to_str().unwrap(), "status"],
        &[("MDINGEST__DATABASE__URL", nobody.as_str())],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("permission denied").count(), 1, "{err}");

    // A file name that holds a newline and a long header are escaped and cut.
    let odd = write(
        dir.path(),
        "odd\nname.csv",
        format!("{}\n", "x".repeat(3000)).as_bytes(),
    );
    let out = import(&cfg, &[&odd]);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("odd\\nname.csv"), "{err}");
    assert!(err.len() < 600, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_counts_every_writer_and_the_queue() {
    let db = TestDb::migrated("giveup").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(
        dir.path(),
        "[pipeline]\nwriters = 2\nbatch_max_rows = 500\n",
    );
    let total = 40 * 500;
    let file = write(
        dir.path(),
        "g.csv",
        minute_csv((0..40).map(|s| format!("S{s:02}")), 500).as_bytes(),
    );
    // The database freezes: nothing commits while the lock is held, and whatever committed
    // before it is known exactly once the lock is granted.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE data_ingestion.market_data IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let child = spawn_mdingest(&import_args(&cfg, &[&file]));
    // Long enough for the whole file to be read, and for the wait to be reported.
    tokio::time::sleep(Duration::from_secs(9)).await;
    signal(&child, libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, libc::SIGINT);
    let out = wait_measured(child);
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(out.code, Some(130), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{total} bars read were not committed")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("waiting for the database since"),
        "no word of the wait: {}",
        out.stderr
    );
    assert_eq!(db.stored().await, 0);
    let running = db
        .count("SELECT count(*) FROM data_ingestion.ingestion_status WHERE state = 'running'")
        .await;
    assert_eq!(running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_are_named_on_the_console_up_to_20() {
    let db = TestDb::migrated("warnings").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let mut body = String::from(HEADER);
    body.push_str("BIG,1e30,10.5,10.6,10.7,10.4,1704186000000000000,5\n");
    body.push_str(
        "HUGE,100000000000000000000000000000,10.5,10.6,10.7,10.4,1704186000000000000,5\n",
    );
    body.push_str("PRICY,100,1e30,10.6,10.7,10.4,1704186000000000000,5\n");
    body.push_str(&row("OK", 0));
    let file = write(dir.path(), "w.csv", body.as_bytes());
    let out = import(&cfg, &[&file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{err}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("w.csv:2: value_out_of_range")),
        "{err}"
    );

    // More than 20: 20 lines, then how many more.
    let mut body = String::from(HEADER);
    for m in 0..25i64 {
        // high below open and close
        let ns = (1_704_186_000 + 60 * m) * 1_000_000_000;
        body.push_str(&format!("LOW,100,10.5,10.6,1.0,10.4,{ns},5\n"));
    }
    let file = write(dir.path(), "many.csv", body.as_bytes());
    let out = import(&cfg, &[&file]);
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 21, "{err}");
    assert!(warnings[20].contains("5 more rejected rows"), "{err}");
    assert!(
        warnings[0].contains("polygon LOW 2024-01-02T09:")
            && warnings[0].contains("high_below_open_close"),
        "{err}"
    );
    let checks: Vec<String> = db
        .column("SELECT check_name FROM data_ingestion.data_quality_logs WHERE symbol IN ('BIG', 'HUGE', 'PRICY') ORDER BY symbol")
        .await;
    assert_eq!(checks, ["value_out_of_range"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reimport_counts_no_unchanged_row_and_logs_no_notice() {
    let db = TestDb::migrated("rows_written").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "[pipeline]\nbatch_max_rows = 100\n");
    let file = write(
        dir.path(),
        "r.csv",
        minute_csv(["AAA", "BBB"], 300).as_bytes(),
    );
    for _ in 0..2 {
        let out = mdingest(&import_args(&cfg, &[&file]), &[("RUST_LOG", "info")]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stderr(&out).contains("NOTICE"), "{}", stderr(&out));
    }
    let written: Vec<i64> = db
        .column("SELECT rows_written FROM data_ingestion.ingestion_status ORDER BY symbol")
        .await;
    assert_eq!(written, [300, 300]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_migrated_database_says_to_run_migrate() {
    let db = TestDb::migrated("partial").await;
    db.client()
        .await
        .batch_execute(
            "DROP TABLE data_ingestion.committed_batches;
             DELETE FROM data_ingestion.refinery_schema_history WHERE version = 2",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let file = write(dir.path(), "p.csv", minute_csv(["AAA"], 5).as_bytes());
    for out in [
        import(&cfg, &[&file]),
        mdingest(&["--config", cfg.to_str().unwrap(), "status"], &[]),
    ] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("run `mdingest migrate`"), "{err}");
        assert!(err.contains("V2__committed_batches"), "{err}");
        assert!(!err.contains("42P01"), "{err}");
    }
}

#[test]
fn a_config_path_that_is_a_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = mdingest(
        &["--config", dir.path().to_str().unwrap(), "check-config"],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert!(!err.trim_end().ends_with(':'), "{err}");
}

#[test]
fn without_cargo_the_scripts_install_rust_with_rustup() {
    // A fake rustup installer stands in for the download (this machine has no route to it).
    let home = tempfile::tempdir().unwrap();
    let installer = write(
        home.path(),
        "rustup-init.sh",
        b"#!/bin/sh\necho \"$@\" > \"$HOME/installer-args\"\nmkdir -p \"$HOME/.cargo/bin\"\n\
          printf '#!/bin/sh\\necho rustc 1.95.0\\n' > \"$HOME/.cargo/bin/rustc\"\n\
          printf '#!/bin/sh\\necho cargo 1.95.0\\n' > \"$HOME/.cargo/bin/cargo\"\n\
          chmod +x \"$HOME/.cargo/bin/rustc\" \"$HOME/.cargo/bin/cargo\"\n",
    );
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            ". scripts/lib/services.sh && ensure_rust && command -v cargo && cargo --version",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home.path())
        .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUSTUP_INIT", &installer)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("{}/.cargo/bin/cargo", home.path().display())),
        "{text}"
    );
    let args = std::fs::read_to_string(home.path().join("installer-args")).unwrap();
    assert!(
        args.contains("-y") && args.contains("--profile minimal"),
        "{args}"
    );
}
