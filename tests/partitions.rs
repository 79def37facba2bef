//! `database.partitioning = "monthly"`: the same table partitioned by month, partitions made
//! ahead and on demand (racing writers included), and `migrate --to-partitioned` converting a
//! plain table through a SIGTERM. `scripts/test` also runs the write paths' suites on this layout.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::*;
use mdingest::config::Partitioning;
use mdingest::db::partitions::Partitions;
use mdingest::domain::Mode;
use mdingest::pipeline::{Chunk, Pipeline};
use tokio_util::sync::CancellationToken;

const MINUTE_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/polygon_minute_aggs.csv"
);

async fn relkind(db: &TestDb, table: &str) -> Option<String> {
    db.client()
        .await
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'data_ingestion' AND c.relname = $1",
            &[&table],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn partition_names(db: &TestDb) -> Vec<String> {
    db.column(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'data_ingestion.market_data'::regclass ORDER BY 1",
    )
    .await
}

/// Columns (name, type, nullability, default) and constraints (name, definition) of market_data.
async fn shape(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let columns = db
        .column(
            "SELECT column_name || ' ' || data_type || ' ' || is_nullable || ' ' ||
                    coalesce(column_default, '-')
             FROM information_schema.columns
             WHERE table_schema = 'data_ingestion' AND table_name = 'market_data'
             ORDER BY ordinal_position",
        )
        .await;
    let constraints = db
        .column(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'data_ingestion.market_data'::regclass ORDER BY 1",
        )
        .await;
    (columns, constraints)
}

async fn write(db: &TestDb, bars: Vec<mdingest::domain::Bar>) -> mdingest::pipeline::Totals {
    let cfg = db.config();
    let pool = mdingest::db::pool(&cfg.database).unwrap();
    let p = Pipeline::start(
        &cfg.pipeline,
        pool,
        cfg.timeframes(),
        CancellationToken::new(),
        mdingest::events::Announcer::disabled(),
    );
    p.queue()
        .send(Chunk::new(Mode::Stream, bars, vec![]))
        .await
        .unwrap();
    p.finish().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_is_the_seed_table_partitioned_and_a_new_month_makes_its_partition() {
    let plain = TestDb::migrated_with("part_plain", Partitioning::None).await;
    let monthly = TestDb::migrated_with("part_monthly", Partitioning::Monthly).await;
    assert_eq!(relkind(&plain, "market_data").await.as_deref(), Some("r"));
    assert_eq!(relkind(&monthly, "market_data").await.as_deref(), Some("p"));
    assert_eq!(shape(&plain).await, shape(&monthly).await);
    // This month and three ahead, made by migrate.
    let now = Utc
        .timestamp_opt(Utc::now().timestamp() / 60 * 60, 0)
        .unwrap();
    let this_month = format!("market_data_p{}", now.format("%Y_%m"));
    let made = partition_names(&monthly).await;
    assert_eq!(made.len(), 4, "{made:?}");
    assert_eq!(made[0], this_month);

    // A month without a partition gets one; a bar from before 1900 is a quality record.
    let old = Utc.with_ymd_and_hms(2019, 3, 4, 15, 0, 0).unwrap();
    let ancient = Utc.with_ymd_and_hms(1850, 1, 2, 15, 0, 0).unwrap();
    let totals = write(
        &monthly,
        vec![
            bar("AAPL", old, "10", 100),
            bar("AAPL", now, "10", 100),
            bar("AAPL", ancient, "10", 100),
        ],
    )
    .await;
    assert_eq!(totals.counts.inserted, 2);
    assert!(partition_names(&monthly)
        .await
        .contains(&"market_data_p2019_03".to_string()));
    assert_eq!(
        partition_names(&monthly).await.len(),
        5,
        "no partition for 1850"
    );
    let logged: Vec<String> = monthly
        .column("SELECT check_name::text FROM data_ingestion.data_quality_logs")
        .await;
    assert_eq!(logged, ["timestamp_before_1900"]);
    // The rows sit in their months' partitions.
    let n: i64 = monthly
        .value("SELECT count(*) FROM data_ingestion.market_data_p2019_03")
        .await;
    assert_eq!(n, 1);

    // Migrating again changes nothing; a plain table asked to be monthly says how to convert.
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain.config_file(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[database]\n", "[database]\npartitioning = \"monthly\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = mdingest(&["--config", cfg.to_str().unwrap(), "migrate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("--to-partitioned"),
        "{}",
        stdout(&out)
    );
    assert_eq!(relkind(&plain, "market_data").await.as_deref(), Some("r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_to_create_the_same_partitions_both_succeed() {
    let db = TestDb::migrated_with("part_race", Partitioning::Monthly).await;
    let months: Vec<_> = (1..=12)
        .map(|m| Utc.with_ymd_and_hms(2015, m, 3, 15, 0, 0).unwrap())
        .collect();
    for _ in 0..3 {
        // Each writer with its own knowledge, as two processes have.
        let (mut a, mut b) = (db.client().await, db.client().await);
        let (pa, pb) = (Partitions::default(), Partitions::default());
        let (ra, rb) = tokio::join!(
            pa.ensure(&mut a, months.iter().copied()),
            pb.ensure(&mut b, months.iter().rev().copied())
        );
        ra.unwrap();
        rb.unwrap();
    }
    let made = partition_names(&db).await;
    assert_eq!(made.iter().filter(|p| p.contains("2015")).count(), 12);

    // Two pipelines writing the same new month at once both commit.
    let t = Utc.with_ymd_and_hms(2012, 6, 5, 15, 0, 0).unwrap();
    let bars = |sym: &str| {
        (0..500)
            .map(|i| bar(sym, t + chrono::Duration::minutes(i), "10", 1))
            .collect::<Vec<_>>()
    };
    let (x, y) = tokio::join!(write(&db, bars("AAA")), write(&db, bars("BBB")));
    assert_eq!(x.counts.inserted + y.counts.inserted, 1000);
    assert_eq!(db.stored().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_lands_the_same_rows_on_both_layouts() {
    let mut stored = Vec::new();
    for layout in [Partitioning::None, Partitioning::Monthly] {
        let db = TestDb::migrated_with("part_import", layout).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = db.config_file(dir.path(), "");
        let out = import(&cfg, &[Path::new(MINUTE_FIXTURE)]);
        assert!(out.status.success(), "{}", stderr(&out));
        stored.push((stored_bars(&db).await, db.stored().await));
    }
    assert!(stored[0].1 > 0);
    assert_eq!(stored[0], stored[1]);
}

/// Plain rows: `symbols` symbols, each with a bar an hour over three months.
async fn fill_plain(db: &TestDb, symbols: usize) {
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO data_ingestion.market_data
                 (symbol, timestamp, open, high, low, close, volume, data_source)
             SELECT 'S' || lpad(s::text, 4, '0'), t, 10 + s, 11 + s, 9, 10.5, s, 'polygon'
             FROM generate_series(1, {symbols}) AS s,
                  generate_series('2024-01-02 14:30+00'::timestamptz,
                                  '2024-03-29 20:30+00', '1 hour') AS t"
        ))
        .await
        .unwrap();
}

/// Symbols `migrate --to-partitioned` has copied so far (0 before it made its table).
async fn copied(db: &TestDb) -> i64 {
    let client = db.client().await;
    let exists: Option<String> = client
        .query_one(
            "SELECT to_regclass('data_ingestion.partition_copy')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    match exists {
        None => 0,
        Some(_) => client
            .query_one("SELECT count(*) FROM data_ingestion.partition_copy", &[])
            .await
            .unwrap()
            .get(0),
    }
}

/// Waits (a minute at most) until `migrate --to-partitioned` has copied `n` symbols.
async fn wait_copied(db: &TestDb, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while copied(db).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} symbols copied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn to_partitioned(cfg: &Path) -> [&str; 4] {
    [
        "--config",
        cfg.to_str().unwrap(),
        "migrate",
        "--to-partitioned",
    ]
}

const DIGEST_SQL: &str = "SELECT count(*)::text || ' ' || md5(string_agg(
    id::text || symbol || timestamp::text || open::text || close::text || volume::text, ','
    ORDER BY symbol, timestamp)) FROM data_ingestion.market_data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_partitioned_stopped_by_sigterm_and_run_again_finishes_with_every_row() {
    let db = TestDb::migrated_with("part_convert", Partitioning::None).await;
    fill_plain(&db, 300).await;
    let before: String = db.value(DIGEST_SQL).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let args = to_partitioned(&cfg);

    let child = spawn_mdingest(&args);
    // Stopped once some symbols are copied.
    wait_copied(&db, 3).await;
    signal(&child, 15);
    let first = wait_measured(child);
    assert_eq!(first.code, Some(143), "{}", first.stderr);
    assert!(first
        .stderr
        .contains("run `mdingest migrate --to-partitioned` again"));
    assert_eq!(relkind(&db, "market_data").await.as_deref(), Some("r"));
    let copied: i64 = db
        .value("SELECT count(*) FROM data_ingestion.partition_copy")
        .await;
    assert!(copied < 300, "the whole table was copied before the signal");

    // A write while the conversion is half done reaches the new table through the trigger.
    let late = Utc.with_ymd_and_hms(2024, 4, 1, 14, 30, 0).unwrap();
    let written = write(
        &db,
        vec![bar("S0001", late, "99", 7), bar("NEW", late, "5", 1)],
    )
    .await;
    assert_eq!(written.counts.inserted, 2);
    let before_late: String = db.value(DIGEST_SQL).await;
    assert_ne!(before, before_late);

    // A writer that learned the layout mid-conversion...
    let stale = Partitions::default();
    let mut client = db.client().await;
    stale.ensure(&mut client, [late].into_iter()).await.unwrap();

    let out = mdingest(&args, &[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // ...makes a new month's partition on the table as it is after the swap.
    let june = Utc.with_ymd_and_hms(2024, 6, 3, 14, 30, 0).unwrap();
    stale.ensure(&mut client, [june].into_iter()).await.unwrap();
    assert!(partition_names(&db)
        .await
        .contains(&"market_data_p2024_06".to_string()));
    assert!(
        stdout(&out).contains("market_data_unpartitioned"),
        "{}",
        stdout(&out)
    );
    assert_eq!(relkind(&db, "market_data").await.as_deref(), Some("p"));
    let after: String = db.value(DIGEST_SQL).await;
    assert_eq!(after, before_late, "rows differ after the conversion");
    assert!(partition_names(&db)
        .await
        .contains(&"market_data_p2024_02".to_string()));

    // The converted table takes writes, ids go on from the same sequence, and a third run has
    // nothing to do.
    let next = Utc.with_ymd_and_hms(2024, 4, 2, 14, 30, 0).unwrap();
    assert_eq!(
        write(&db, vec![bar("S0001", next, "1", 1)])
            .await
            .counts
            .inserted,
        1
    );
    let fresh: bool = db
        .value(&format!(
            "SELECT (SELECT id FROM data_ingestion.market_data WHERE timestamp = '{}')
                  > (SELECT max(id) FROM data_ingestion.{})",
            next.to_rfc3339(),
            mdingest::db::convert::KEPT
        ))
        .await;
    assert!(fresh);
    let out = mdingest(&args, &[]);
    assert!(
        stdout(&out).contains("partitioned already"),
        "{}",
        stdout(&out)
    );
    // The plain table is kept, untouched by the writes after the swap.
    let kept: i64 = db
        .value(&format!(
            "SELECT count(*) FROM data_ingestion.{}",
            mdingest::db::convert::KEPT
        ))
        .await;
    assert_eq!(kept.to_string(), before_late.split(' ').next().unwrap());
    // The counts followed the bars through the copy, the writes meanwhile and the swap; the
    // partitioned table now keeps them, and the kept one no longer does.
    assert_eq!(db.miscounted_slots().await.0, 0);
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO data_ingestion.{} (symbol, timestamp, data_source)
             VALUES ('KEPT', '2024-04-03 14:30Z', 'polygon')",
            mdingest::db::convert::KEPT
        ))
        .await
        .unwrap();
    let (wrong, slots) = db.miscounted_slots().await;
    assert_eq!(wrong, 0, "a write to the kept table was counted");
    assert!(slots > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reader_delays_the_swap_without_stalling_writers() {
    let db = TestDb::migrated_with("part_reader", Partitioning::None).await;
    fill_plain(&db, 5).await;
    // An analyst's long transaction on the table: its lock conflicts with the swap's alone.
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM data_ingestion.market_data")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = db.config_file(dir.path(), "");
    let args = to_partitioned(&cfg);
    let child = spawn_mdingest(&args);
    // Every symbol copied: the swap is waiting for the reader, a lock timeout at a time.
    wait_copied(&db, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Meanwhile the writers go on, through the trigger into the new table as well.
    let t = Utc.with_ymd_and_hms(2024, 4, 1, 14, 30, 0).unwrap();
    let w = tokio::time::timeout(
        Duration::from_secs(20),
        write(&db, vec![bar("S0001", t, "9", 1)]),
    )
    .await
    .expect("a writer stalled behind the conversion's lock");
    assert_eq!(w.counts.inserted, 1);
    assert_eq!(relkind(&db, "market_data").await.as_deref(), Some("r"));
    reader.batch_execute("COMMIT").await.unwrap();
    let out = tokio::task::spawn_blocking(move || wait_measured(child))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("trying again"), "{}", out.stderr);
    assert_eq!(relkind(&db, "market_data").await.as_deref(), Some("p"));
    let n: i64 = db
        .value("SELECT count(*) FROM data_ingestion.market_data WHERE timestamp = '2024-04-01 14:30+00'")
        .await;
    assert_eq!(n, 1);
}
