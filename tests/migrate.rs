//! `migrate`: the seed's DDL, idempotence, concurrency, database creation, unreachable servers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mdingest::db::migrate::migrate;

/// The files in `migrations/`.
const MIGRATIONS: usize = 7;

#[tokio::test]
async fn market_data_matches_the_seed_column_for_column() {
    let db = TestDb::migrated("ddl").await;
    let columns: Vec<String> = db
        .column(
            "SELECT column_name || ' ' || data_type
                    || coalesce('(' || character_maximum_length || ')', '')
                    || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', '')
                    || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
                    || coalesce(' DEFAULT ' || column_default, '')
             FROM information_schema.columns
             WHERE table_schema = 'data_ingestion' AND table_name = 'market_data'
             ORDER BY ordinal_position",
        )
        .await;
    assert_eq!(
        columns,
        [
            "id bigint(64,0) NOT NULL DEFAULT nextval('data_ingestion.market_data_id_seq'::regclass)",
            "symbol character varying(20) NOT NULL",
            "timestamp timestamp with time zone NOT NULL",
            "open numeric(15,4)",
            "high numeric(15,4)",
            "low numeric(15,4)",
            "close numeric(15,4)",
            "volume bigint(64,0)",
            "created_at timestamp with time zone DEFAULT now()",
            "data_source character varying(20) NOT NULL DEFAULT 'polygon'::character varying",
        ]
    );
    let constraints: Vec<String> = db
        .column(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'data_ingestion.market_data'::regclass ORDER BY conname",
        )
        .await;
    assert_eq!(
        constraints,
        [
            "unique_symbol_timestamp_source UNIQUE (symbol, \"timestamp\", data_source)",
            "valid_data_source CHECK (((data_source)::text = ANY ((ARRAY['polygon'::character varying, 'yahoo'::character varying, 'yahoo_adjusted'::character varying, 'alpaca'::character varying])::text[])))",
        ]
    );
    // SPEC's columns of the other two tables (at least these, with these types).
    for (table, expected) in [
        (
            "data_quality_logs",
            &[
                "id bigint NOT NULL",
                "logged_at timestamp with time zone NOT NULL",
                "data_source character varying(20) NOT NULL",
                "symbol character varying(20)",
                "bar_timestamp timestamp with time zone",
                "check_name character varying(50) NOT NULL",
                "severity character varying(10) NOT NULL",
                "action character varying(20) NOT NULL",
                "details jsonb",
            ][..],
        ),
        (
            "ingestion_status",
            &[
                "data_source character varying(20) NOT NULL",
                "symbol character varying(20) NOT NULL",
                "mode character varying(10) NOT NULL",
                "timeframe character varying(5) NOT NULL",
                "state character varying(12) NOT NULL",
                "last_bar_timestamp timestamp with time zone",
                "rows_written bigint NOT NULL",
                "last_success_at timestamp with time zone",
                "last_error text",
                "last_error_at timestamp with time zone",
                "updated_at timestamp with time zone NOT NULL",
            ][..],
        ),
    ] {
        let columns: Vec<String> = db
            .column(&format!(
                "SELECT column_name || ' ' || data_type
                        || coalesce('(' || character_maximum_length || ')', '')
                        || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
                 FROM information_schema.columns
                 WHERE table_schema = 'data_ingestion' AND table_name = '{table}'
                 ORDER BY ordinal_position"
            ))
            .await;
        assert_eq!(columns, expected, "{table}");
    }
    let keys: Vec<String> = db
        .column(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'data_ingestion.ingestion_status'::regclass AND contype = 'p'",
        )
        .await;
    assert_eq!(keys, ["PRIMARY KEY (data_source, symbol, mode)"]);
}

#[tokio::test]
async fn everything_lives_in_the_data_ingestion_schema() {
    let db = TestDb::migrated("schema").await;
    let outside: i64 = db
        .count(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('data_ingestion', 'pg_catalog', 'information_schema', 'pg_toast')",
        )
        .await;
    assert_eq!(outside, 0, "migrate created objects outside data_ingestion");
    let history = db
        .count("SELECT count(*) FROM data_ingestion.refinery_schema_history")
        .await;
    assert_eq!(history, MIGRATIONS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_and_concurrently_creating_the_database() {
    let (name, url) = TestDb::unique_name("concurrent");
    let db = TestDb::adopt(name, url.clone());
    // Four instances at once against a database that does not exist yet.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { migrate(&url).await })
        })
        .collect();
    let mut created = 0;
    let mut applied = 0;
    for r in runs {
        let report = r.await.unwrap().expect("concurrent migrate failed");
        created += report.created_database as usize;
        applied += report.applied.len();
    }
    assert_eq!(created, 1, "exactly one instance creates the database");
    assert_eq!(applied, MIGRATIONS, "each migration applied exactly once");
    let again = migrate(&url).await.expect("second migrate");
    assert!(again.applied.is_empty() && !again.created_database);
    assert_eq!(
        db.count("SELECT count(*) FROM data_ingestion.refinery_schema_history")
            .await,
        MIGRATIONS as i64
    );
}

#[tokio::test]
async fn unreachable_database_fails_fast_with_a_clear_error() {
    let started = Instant::now();
    let err = migrate("postgres://postgres:hunter2@127.0.0.1:1/trading_system")
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

#[test]
fn binary_reports_an_unreachable_database_in_one_line_within_10s() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // 192.0.2.0/24 is TEST-NET-1: packets go nowhere, so this exercises the timeout.
    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgres://postgres:hunter2@192.0.2.1:5432/x\"\n",
    )
    .unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/polygon_minute_aggs.csv"
    );
    let commands: [&[&str]; 3] = [
        &["migrate"],
        &["status"],
        &["import", "--format", "polygon-flatfile", fixture],
    ];
    for cmd in commands {
        let started = Instant::now();
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend_from_slice(cmd);
        let out = mdingest(&args, &[]);
        let elapsed = started.elapsed();
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            elapsed < Duration::from_secs(11),
            "{cmd:?} took {elapsed:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: {err}");
        assert!(err.contains("cannot connect to the database"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("panick"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_status_need_no_vendor_credentials_and_vendor_commands_do() {
    let db = TestDb::empty("no_keys").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "[sources.polygon]\nenabled = true\n");
    let cfg = cfg.to_str().unwrap();
    let no_key = [("POLYGON_API_KEY", "")];
    for command in ["migrate", "status"] {
        let out = mdingest(&["--config", cfg, command], &no_key);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
    }
    let backfill = [
        "backfill",
        "--source",
        "polygon",
        "--symbols",
        "AAPL",
        "--from",
        "2024-01-02",
        "--to",
        "2024-01-02",
    ];
    for command in [&["check-config"][..], &["run"], &backfill] {
        let args: Vec<&str> = ["--config", cfg].iter().chain(command).copied().collect();
        let out = mdingest(&args, &no_key);
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        assert!(
            stderr(&out).contains("sources.polygon.api_key"),
            "{command:?}: {}",
            stderr(&out)
        );
    }
}
