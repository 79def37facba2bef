//! The vendor-neutral seam as an operator meets it: which commands need which credentials, and
//! sources that are enabled but cannot run are named at once, never skipped.

mod common;

use common::*;

const BOTH_ENABLED: &str = "[sources.polygon]\nenabled = true\n[sources.alpaca]\nenabled = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_status_need_no_vendor_key() {
    let db = TestDb::migrated("nokey").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), BOTH_ENABLED);
    let cfg = cfg.to_str().unwrap();
    let no_keys = [
        ("POLYGON_API_KEY", ""),
        ("APCA_API_KEY_ID", ""),
        ("APCA_API_SECRET_KEY", ""),
    ];
    for args in [
        vec!["--config", cfg, "migrate"],
        vec!["--config", cfg, "status"],
    ] {
        let out = mdingest(&args[..], &no_keys);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    // The commands that talk to vendors say which key is missing, in one line.
    for args in [
        vec!["--config", cfg, "check-config"],
        vec!["--config", cfg, "run"],
        vec![
            "--config",
            cfg,
            "backfill",
            "--source",
            "polygon",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-03",
        ],
    ] {
        let out = mdingest(&args[..], &no_keys);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("POLYGON_API_KEY"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_vendor_is_not_enabled_is_refused_at_once_by_name() {
    let db = TestDb::migrated("notenabled").await;
    let dir = tempfile::tempdir().unwrap();
    // `backfill --source` takes a data source; one whose vendor is not enabled is refused
    // before anything is planned (`yahoo_adjusted` is Yahoo's, like `yahoo`).
    let cfg = db.config_file(
        dir.path(),
        "[sources.polygon]\nenabled = true\napi_key = \"k\"\n[sources.yahoo]\nenabled = false\n",
    );
    let cfg = cfg.to_str().unwrap();
    for source in ["yahoo_adjusted", "yahoo", "alpaca"] {
        let out = mdingest(
            &[
                "--config",
                cfg,
                "backfill",
                "--source",
                source,
                "--symbols",
                "AAPL",
                "--from",
                "2024-01-02",
                "--to",
                "2024-01-03",
            ],
            &[],
        );
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{source}");
        assert_eq!(err.lines().count(), 1, "{source}: {err}");
        let vendor = if source == "alpaca" {
            "alpaca"
        } else {
            "yahoo"
        };
        assert!(
            err.contains(&format!(
                "sources.{vendor} is not configured or not enabled"
            )),
            "{source}: {err}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.backfill_tasks")
            .await,
        0
    );
}

#[test]
fn a_proxy_password_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mdingest.toml");
    std::fs::write(
        &path,
        "[sources.polygon]\nenabled = true\napi_key = \"k\"\nproxy_url = \"http://me:hunter2@127.0.0.1:3128\"\n",
    )
    .unwrap();
    let out = mdingest(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("proxy_url = \"http://me:REDACTED@127.0.0.1:3128/\""),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    // Nor when it is not a URL at all.
    std::fs::write(
        &path,
        "[sources.polygon]\nenabled = true\napi_key = \"k\"\nproxy_url = \"ftp://me:hunter2@x\"\n",
    )
    .unwrap();
    let out = mdingest(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("sources.polygon.proxy_url"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn the_shipped_config_loads_and_enables_nothing_that_needs_a_key() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mdingest.toml");
    let cfg = mdingest::config::Config::load(std::path::Path::new(shipped)).unwrap();
    assert!(mdingest::sources::enabled(&cfg).unwrap().is_empty());
    cfg.check_credentials().unwrap();
    let out = mdingest(&["--config", shipped, "check-config"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
