//! `mdingest coverage`: bars held against the NYSE calendar, driven through the built binary.
//! The fixture spans the autumn 2024 DST change (Nov 3), Thanksgiving (Nov 28, closed) and the
//! early close after it (Nov 29, 13:00).

mod common;

use common::*;
use mdingest::config::Partitioning;
use serde_json::Value;

/// Every regular-session minute of `symbol` on the NYSE sessions between the two dates, stamped
/// from New York wall-clock times, so the DST change and the early close shape it exactly as the
/// calendar does; `keep` thins the minutes (minute-of-session modulo).
fn session_minutes_sql(symbol: &str, source: &str, from: &str, to: &str, keep: &str) -> String {
    format!(
        "INSERT INTO data_ingestion.market_data
             (symbol, timestamp, open, high, low, close, volume, data_source)
         SELECT '{symbol}', t, 10, 11, 9, 10.5, 100, '{source}'
         FROM generate_series('{from}'::date, '{to}'::date, '1 day') AS day,
         LATERAL generate_series(
             (day::date + time '09:30') AT TIME ZONE 'America/New_York',
             (day::date + CASE WHEN day::date = '2024-11-29' THEN time '12:59' ELSE time '15:59' END)
                 AT TIME ZONE 'America/New_York',
             '1 minute') AS t
         WHERE extract(isodow FROM day) < 6 AND day::date <> '2024-11-28'
           AND (extract(epoch FROM t)::bigint / 60) % {keep} = 0"
    )
}

/// `coverage` with `extra` arguments: its table, which must say it exited 0.
fn coverage_table(cfg: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["--config", cfg.to_str().unwrap(), "coverage"];
    args.extend_from_slice(extra);
    let out = mdingest(&args, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    text
}

fn coverage(cfg: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.push("--json");
    serde_json::from_str(&coverage_table(cfg, &args)).unwrap()
}

const NOVEMBER: [&str; 6] = [
    "--source",
    "polygon",
    "--from",
    "2024-10-28",
    "--to",
    "2024-12-06",
];

fn dates(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .map_or_else(|| d["date"].to_string(), String::from)
        })
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_exactly_the_missing_and_sparse_sessions_across_dst_holiday_and_early_close() {
    let db = TestDb::migrated("coverage").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let client = db.client().await;
    // FULL: every minute of every session, plus pre-market and holiday bars that never count.
    client
        .batch_execute(&session_minutes_sql(
            "FULL",
            "polygon",
            "2024-10-28",
            "2024-12-06",
            "1",
        ))
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO data_ingestion.market_data
                 (symbol, timestamp, open, high, low, close, volume, data_source)
             VALUES ('FULL', '2024-11-04 08:00 America/New_York', 1, 1, 1, 1, 1, 'polygon'),
                    ('FULL', '2024-11-28 10:00 America/New_York', 1, 1, 1, 1, 1, 'polygon'),
                    ('FULL', '2024-11-29 14:00 America/New_York', 1, 1, 1, 1, 1, 'polygon')",
        )
        .await
        .unwrap();
    // THIN: Nov 5 missing entirely; every other minute on Nov 12 and 13; whole elsewhere.
    for (from, to, keep) in [
        ("2024-10-28", "2024-11-04", "1"),
        ("2024-11-06", "2024-11-11", "1"),
        ("2024-11-12", "2024-11-13", "2"),
        ("2024-11-14", "2024-12-06", "1"),
    ] {
        client
            .batch_execute(&session_minutes_sql("THIN", "polygon", from, to, keep))
            .await
            .unwrap();
    }
    // Another source's bars are not this source's coverage.
    client
        .batch_execute(&session_minutes_sql(
            "THIN",
            "alpaca",
            "2024-11-05",
            "2024-11-05",
            "1",
        ))
        .await
        .unwrap();

    let r = coverage(&cfg, &NOVEMBER);
    // 30 weekdays, less Thanksgiving.
    assert_eq!(r["sessions"], 29);
    let syms = r["symbols"].as_array().unwrap();
    assert_eq!(syms.len(), 2, "{r}");
    let (full, thin) = (&syms[0], &syms[1]);
    assert_eq!(full["symbol"], "FULL");
    let expected = 28 * 390 + 210;
    assert_eq!(full["bars_expected"], expected);
    assert_eq!(
        full["bars_held"], expected,
        "pre-market and holiday bars never count"
    );
    assert_eq!(full["percent"], 100.0);
    assert!(dates(&full["missing"]).is_empty());
    assert!(dates(&full["sparse"]).is_empty(), "{full}");
    assert!(full["holes"].as_array().unwrap().is_empty());

    assert_eq!(thin["symbol"], "THIN");
    assert_eq!(dates(&thin["missing"]), ["2024-11-05"]);
    assert_eq!(dates(&thin["sparse"]), ["2024-11-12", "2024-11-13"]);
    assert_eq!(thin["sparse"][0]["held"], 195);
    assert_eq!(thin["sessions_held"], 28);
    assert_eq!(
        thin["holes"],
        serde_json::json!([{"first": "2024-11-05", "last": "2024-11-05", "sessions": 1}])
    );

    // A threshold makes the thin sessions holes too: one run of two sessions, first.
    let r = coverage(
        &cfg,
        &[
            "--source",
            "polygon",
            "--symbols",
            "THIN,ABSENT,THIN",
            "--from",
            "2024-11-01",
            "--to",
            "2024-11-15",
            "--hole-below",
            "60",
        ],
    );
    let syms = r["symbols"].as_array().unwrap();
    let names: Vec<&str> = syms.iter().map(|s| s["symbol"].as_str().unwrap()).collect();
    assert_eq!(names, ["ABSENT", "THIN"], "FULL not asked for, THIN once");
    let absent = syms.iter().find(|s| s["symbol"] == "ABSENT").unwrap();
    assert_eq!(
        absent["holes"][0]["sessions"], 11,
        "a named symbol with no bar"
    );
    let thin = syms.iter().find(|s| s["symbol"] == "THIN").unwrap();
    assert_eq!(
        thin["holes"],
        serde_json::json!([
            {"first": "2024-11-12", "last": "2024-11-13", "sessions": 2},
            {"first": "2024-11-05", "last": "2024-11-05", "sessions": 1}
        ])
    );

    // The table an operator reads.
    let table = coverage_table(&cfg, &NOVEMBER);
    let thin_line = table.lines().find(|l| l.starts_with("THIN")).unwrap();
    assert!(
        thin_line.contains("28/29") && thin_line.ends_with("2024-11-05"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_bars_are_one_per_session_and_bad_ranges_are_named() {
    let db = TestDb::migrated("coverage_daily").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    // Yahoo's daily bars are stamped at the session's open; Thanksgiving has none, and Dec 2
    // is lost.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO data_ingestion.market_data
                 (symbol, timestamp, open, high, low, close, volume, data_source)
             SELECT 'SPY', (day::date + time '09:30') AT TIME ZONE 'America/New_York',
                    1, 1, 1, 1, 1, 'yahoo'
             FROM generate_series('2024-11-25'::date, '2024-12-06'::date, '1 day') AS day
             WHERE extract(isodow FROM day) < 6
               AND day::date NOT IN ('2024-11-28', '2024-12-02')",
        )
        .await
        .unwrap();
    let r = coverage(
        &cfg,
        &[
            "--source",
            "yahoo",
            "--from",
            "2024-11-25",
            "--to",
            "2024-12-06",
        ],
    );
    assert_eq!(r["timeframe"], "1d", "{r}");
    let spy = &r["symbols"][0];
    assert_eq!(spy["bars_expected"], 9);
    assert_eq!(spy["bars_held"], 8);
    assert_eq!(dates(&spy["missing"]), ["2024-12-02"]);
    assert!(dates(&spy["sparse"]).is_empty(), "the early close is whole");

    for (args, says) in [
        (
            ["--from", "2024-12-06", "--to", "2024-11-25"],
            "--from is after --to",
        ),
        (["--from", "1999-01-04", "--to", "1999-01-08"], "1999-01-04"),
    ] {
        let mut all = vec![
            "--config",
            cfg.to_str().unwrap(),
            "coverage",
            "--source",
            "yahoo",
        ];
        all.extend_from_slice(&args);
        let out = mdingest(&all, &[]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

/// `bar_counts`, which `coverage` reads, is kept by triggers whoever writes: plain inserts, an
/// upsert that inserts some rows and updates others, mdingest's own COPY and merge, deletes, a
/// bar moved to another slot (across partitions, on the monthly layout), a truncate; and
/// `recount_bars()` rebuilds it. After every step it agrees with a count of the bars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bar_counts_follow_every_kind_of_write_on_both_layouts() {
    for layout in [Partitioning::None, Partitioning::Monthly] {
        let db = TestDb::migrated_with("bar_counts", layout).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = db.config_file(dir.path(), "");
        let mut client = db.client().await;
        if layout == Partitioning::Monthly {
            for day in ["2024-11-01", "2024-12-01"] {
                let t = format!("{day}T12:00:00Z").parse().unwrap();
                let m = mdingest::db::partitions::month_of(t);
                mdingest::db::partitions::create_partition(&mut client, "market_data", m)
                    .await
                    .unwrap();
            }
        }
        let agree = |step: &'static str| {
            let db = &db;
            async move {
                let (wrong, slots) = db.miscounted_slots().await;
                assert_eq!(
                    wrong, 0,
                    "{layout:?}, after {step}: counts disagree with the bars"
                );
                let held: i64 = db
                    .count("SELECT coalesce(sum(bars), 0)::int8 FROM data_ingestion.bar_counts")
                    .await;
                assert_eq!(held, db.stored().await, "{layout:?}, after {step}");
                slots
            }
        };
        client
            .batch_execute(&session_minutes_sql(
                "A",
                "polygon",
                "2024-11-25",
                "2024-11-27",
                "1",
            ))
            .await
            .unwrap();
        // Three sessions of 13 half-hour slots.
        assert_eq!(agree("an insert").await, 39);

        // Every A bar again with a new price (updated, not counted twice) and two new B bars.
        client
            .batch_execute(
                "INSERT INTO data_ingestion.market_data AS m
                     (symbol, timestamp, open, high, low, close, volume, data_source)
                 SELECT symbol, timestamp, 20, 21, 19, 20.5, 7, data_source
                 FROM data_ingestion.market_data
                 UNION ALL
                 VALUES ('B', '2024-11-25 10:00 America/New_York'::timestamptz, 1, 1, 1, 1, 1, 'polygon'),
                        ('B', '2024-11-25 10:01 America/New_York'::timestamptz, 1, 1, 1, 1, 1, 'polygon')
                 ON CONFLICT (symbol, timestamp, data_source) DO UPDATE SET open = EXCLUDED.open",
            )
            .await
            .unwrap();
        assert_eq!(agree("an upsert").await, 40);

        // mdingest's own writer: the all-new COPY, then the same file merged (all unchanged).
        let file = write(dir.path(), "c.csv", minute_csv(["C"], 45).as_bytes());
        for _ in 0..2 {
            let out = import(&cfg, &[&file]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        assert_eq!(agree("imports").await, 42, "45 minutes from 09:00 UTC");

        client
            .batch_execute(
                "DELETE FROM data_ingestion.market_data
                 WHERE symbol = 'A' AND timestamp >= '2024-11-26 09:30 America/New_York'
                   AND timestamp < '2024-11-26 12:15 America/New_York'",
            )
            .await
            .unwrap();
        // 09:30..12:00 gone (5 slots), 12:00..12:30 left with its last 15 minutes.
        assert_eq!(agree("a delete").await, 37);

        // One B bar to the next day, the other into December (another partition).
        client
            .batch_execute(
                "UPDATE data_ingestion.market_data SET timestamp = timestamp + interval '1 day'
                 WHERE symbol = 'B' AND timestamp = '2024-11-25 10:00 America/New_York';
                 UPDATE data_ingestion.market_data SET timestamp = '2024-12-02 10:00 America/New_York'
                 WHERE symbol = 'B' AND timestamp = '2024-11-25 10:01 America/New_York';",
            )
            .await
            .unwrap();
        assert_eq!(agree("bars moved").await, 38);

        // The counts answer what a count of the bars answers.
        let range = [
            "--source",
            "polygon",
            "--from",
            "2024-11-25",
            "--to",
            "2024-12-03",
        ];
        let counted = coverage(&cfg, &range);
        let mut exact_args = range.to_vec();
        exact_args.push("--exact");
        assert_eq!(counted, coverage(&cfg, &exact_args));
        assert_eq!(counted["symbols"][0]["bars_held"], 3 * 390 - 165);

        // Counts lost (a partition dropped by hand, say) come back whole.
        client
            .batch_execute("DELETE FROM data_ingestion.bar_counts WHERE symbol = 'A'")
            .await
            .unwrap();
        assert_ne!(db.miscounted_slots().await.0, 0);
        let slots: i64 = db.value("SELECT data_ingestion.recount_bars()").await;
        assert_eq!(slots, 38);
        assert_eq!(agree("a recount").await, 38);

        client
            .batch_execute("TRUNCATE data_ingestion.market_data")
            .await
            .unwrap();
        assert_eq!(agree("a truncate").await, 0);
    }
}
