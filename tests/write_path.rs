//! The write path against a real PostgreSQL: COPY + merge, de-duplication, validation, status,
//! and batches that survive the database dropping their connections.

mod common;

use std::time::Duration;

use chrono::Duration as Span;
use common::*;
use mdingest::domain::{Bar, DataSource, Mode};
use mdingest::pipeline::{BatchReport, Chunk, Pipeline, Queue, Totals, WriteCounts};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn start(db: &TestDb, extra: &str) -> Pipeline {
    let cfg = db.config_with(extra);
    let pool = mdingest::db::pool(&cfg.database).unwrap();
    Pipeline::start(
        &cfg.pipeline,
        pool,
        cfg.timeframes(),
        CancellationToken::new(),
        mdingest::events::Announcer::disabled(),
    )
}

/// A pipeline whose database never answers (nothing listens on port 1), and its give-up token.
fn start_without_database(pipeline_toml: &str) -> (Pipeline, CancellationToken) {
    let cfg = mdingest::config::Config::from_toml_str(&format!(
        "[database]\nurl = \"postgres://postgres@127.0.0.1:1/nowhere\"\n{pipeline_toml}"
    ))
    .unwrap();
    let pool = mdingest::db::pool(&cfg.database).unwrap();
    let abandon = CancellationToken::new();
    let p = Pipeline::start(
        &cfg.pipeline,
        pool,
        cfg.timeframes(),
        abandon.clone(),
        mdingest::events::Announcer::disabled(),
    );
    (p, abandon)
}

async fn send(queue: &Queue, bars: Vec<Bar>) -> mpsc::UnboundedReceiver<BatchReport> {
    let (tx, rx) = mpsc::unbounded_channel();
    queue
        .send(Chunk {
            ack: Some(tx),
            ..Chunk::new(Mode::Stream, bars, vec![])
        })
        .await
        .unwrap();
    rx
}

/// Sends one chunk through a fresh pipeline and waits for everything to commit.
async fn write(db: &TestDb, bars: Vec<Bar>) -> Totals {
    let p = start(db, "");
    drop(send(&p.queue(), bars).await);
    p.finish().await.unwrap()
}

async fn xmins(db: &TestDb) -> Vec<(String, String)> {
    db.client()
        .await
        .query(
            "SELECT symbol || '@' || timestamp::text, xmin::text FROM data_ingestion.market_data ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_inserts_updates_changed_and_leaves_identical_rows_untouched() {
    let db = TestDb::migrated("upsert").await;
    let bars = vec![
        bar("AAPL", minute(14, 30), "185.10", 1000),
        bar("AAPL", minute(14, 31), "185.20", 1100),
        bar("MSFT", minute(14, 30), "370.00", 900),
    ];
    let first = write(&db, bars.clone()).await;
    assert_eq!(
        (
            first.counts.inserted,
            first.counts.updated,
            first.counts.unchanged
        ),
        (3, 0, 0)
    );
    let before = xmins(&db).await;

    let mut second = bars.clone();
    second[1].close = d("185.3333");
    second[1].volume = 1200;
    let t = write(&db, second).await;
    assert_eq!(
        (t.counts.inserted, t.counts.updated, t.counts.unchanged),
        (0, 1, 2)
    );
    let after = xmins(&db).await;
    assert_eq!(before.len(), 3);
    assert_eq!(
        after[0], before[0],
        "identical AAPL 14:30 row was rewritten"
    );
    assert_eq!(after[2], before[2], "identical MSFT row was rewritten");
    assert_ne!(after[1].1, before[1].1, "changed row was not updated");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT close::text, volume FROM data_ingestion.market_data WHERE symbol='AAPL' AND timestamp = $1",
            &[&minute(14, 31)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "185.3333");
    assert_eq!(row.get::<_, i64>(1), 1200);

    // New rows after an existing one: the all-new fast path fails and the merge takes over.
    let mixed = vec![
        bars[0].clone(),
        bar("AAPL", minute(14, 40), "186", 10),
        bar("AAPL", minute(14, 41), "186", 10),
    ];
    let t = write(&db, mixed).await;
    assert_eq!(
        (t.counts.inserted, t.counts.updated, t.counts.unchanged),
        (2, 0, 1)
    );
    assert_eq!(xmins(&db).await[0], before[0]);
    assert_eq!(db.stored().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_in_one_batch_last_one_wins() {
    let db = TestDb::migrated("dup").await;
    let mut corrected = bar("AAPL", minute(14, 30), "185.10", 1000);
    corrected.volume = 4242;
    let t = write(
        &db,
        vec![
            bar("AAPL", minute(14, 30), "185.10", 1000),
            bar("AAPL", minute(14, 31), "185.10", 1000),
            corrected,
        ],
    )
    .await;
    assert_eq!(t.counts.inserted, 2);
    let v: i64 = db
        .count("SELECT volume FROM data_ingestion.market_data WHERE timestamp = '2024-01-02T14:30:00Z'")
        .await;
    assert_eq!(v, 4242);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_bar_is_logged_and_the_good_ones_commit() {
    let db = TestDb::migrated("badbar").await;
    let mut inverted = bar("MSFT", minute(14, 32), "370", 10);
    inverted.high = d("300");
    let mut huge = bar("NVDA", minute(14, 33), "1", 10);
    huge.high = d("100000000000"); // 1e11: one digit more than DECIMAL(15,4) holds
    let mut off_grid = bar("TSLA", minute(14, 34), "250", 10);
    off_grid.timestamp += Span::seconds(17);
    let t = write(
        &db,
        vec![
            bar("AAPL", minute(14, 30), "185", 10),
            inverted,
            bar("AAPL", minute(14, 31), "185", 10),
            huge,
            off_grid,
            bar("AAPL", minute(14, 32), "185", 10),
        ],
    )
    .await;
    assert_eq!(t.counts.inserted, 3);
    assert_eq!(t.counts.rejected, 3);
    assert_eq!(db.stored().await, 3);
    let client = db.client().await;
    let logged: Vec<(String, String, String, String)> = client
        .query(
            "SELECT symbol, check_name, severity, action FROM data_ingestion.data_quality_logs ORDER BY symbol",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let checks: Vec<(&str, &str)> = logged
        .iter()
        .map(|(s, c, _, _)| (s.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        checks,
        [
            ("MSFT", "high_below_open_close"),
            ("NVDA", "price_out_of_range"),
            ("TSLA", "off_timeframe_grid"),
        ]
    );
    assert!(logged.iter().all(|l| l.2 == "error" && l.3 == "rejected"));
    let details: String = db
        .value(
            "SELECT details->>'high' FROM data_ingestion.data_quality_logs WHERE symbol = 'MSFT'",
        )
        .await;
    assert_eq!(details, "300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_advances_after_commit_and_never_backwards() {
    let db = TestDb::migrated("status").await;
    write(
        &db,
        vec![
            bar("AAPL", minute(14, 30), "185", 10),
            bar("AAPL", minute(14, 35), "185", 10),
        ],
    )
    .await;
    // A late correction of an older bar must not move the feed back.
    write(&db, vec![bar("AAPL", minute(14, 31), "186", 10)]).await;
    let row = db
        .client()
        .await
        .query_one(
            "SELECT mode, timeframe, state, last_bar_timestamp, rows_written
             FROM data_ingestion.ingestion_status WHERE data_source = 'polygon' AND symbol = 'AAPL'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "stream");
    assert_eq!(row.get::<_, String>(1), "1m");
    assert_eq!(row.get::<_, String>(2), "running");
    assert_eq!(
        row.get::<_, chrono::DateTime<chrono::Utc>>(3),
        minute(14, 35)
    );
    assert_eq!(row.get::<_, i64>(4), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_is_told_only_after_commit() {
    let db = TestDb::migrated("ack").await;
    let p = start(&db, "[pipeline]\nbatch_max_age_ms = 20\n");
    let mut acks = send(&p.queue(), vec![bar("AAPL", minute(14, 30), "185", 10)]).await;
    let report = tokio::time::timeout(Duration::from_secs(10), acks.recv())
        .await
        .expect("no report within 10 s")
        .expect("report");
    // The report arrives after commit: another session already sees the row.
    assert_eq!(report.counts.inserted, 1);
    assert_eq!(report.feeds[0].last_bar, minute(14, 30));
    assert_eq!(db.stored().await, 1);
    p.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_several_data_sources_reports_each_source_on_its_own() {
    use mdingest::pipeline::{Rejection, SourceReport};
    let db = TestDb::migrated("by_source").await;
    let p = start(&db, "[pipeline]\nbatch_max_age_ms = 20\n");
    let queue = p.queue();
    let mut acks = send(
        &queue,
        vec![
            bar("AAPL", minute(14, 30), "185", 10),
            bar("AAPL", minute(14, 31), "185", 10),
        ],
    )
    .await;
    acks.recv().await.expect("first batch committed");
    let of = |source: DataSource, b: Bar| Bar { source, ..b };
    let yahoo = |m: u32, price: &str| of(DataSource::Yahoo, bar("AAPL", minute(15, m), price, 7));
    let adjusted = |m: u32, price: &str| {
        of(
            DataSource::YahooAdjusted,
            bar("AAPL", minute(15, m), price, 7),
        )
    };
    let bars = vec![
        bar("AAPL", minute(14, 30), "185", 10), // unchanged
        bar("AAPL", minute(14, 31), "186", 10), // updated
        bar("AAPL", minute(14, 32), "185", 10), // new
        yahoo(0, "190"),
        yahoo(1, "191"),
        adjusted(0, "189.5"),
        adjusted(1, "190.5"),
        adjusted(2, "191.5"),
    ];
    let junk = Rejection::rejected(
        DataSource::Yahoo,
        Some("AAPL".into()),
        Some(minute(15, 2)),
        "missing_value",
        serde_json::json!({"reason": "null close"}),
    );
    let (tx, mut acks) = mpsc::unbounded_channel();
    queue
        .send(Chunk {
            ack: Some(tx),
            ..Chunk::new(Mode::Poll, bars, vec![junk])
        })
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), acks.recv())
        .await
        .expect("no report within 10 s")
        .unwrap();
    let counts = |inserted, updated, unchanged, rejected| WriteCounts {
        inserted,
        updated,
        unchanged,
        rejected,
        duplicates: 0,
    };
    let aapl: Vec<mdingest::domain::Symbol> = vec!["AAPL".parse().unwrap()];
    // The quality row's symbol and bar time, for `data_quality_alert`.
    let mut sources = report.sources.clone();
    assert_eq!(sources[1].flagged.symbols, ["AAPL"]);
    assert_eq!(sources[1].flagged.first, Some(minute(15, 2)));
    for s in &mut sources {
        s.flagged = Default::default();
    }
    assert_eq!(
        sources,
        [
            SourceReport {
                counts: counts(1, 1, 1, 0),
                symbols: aapl.clone(),
                first: Some(minute(14, 30)),
                last: Some(minute(14, 32)),
                producers: vec![(Mode::Poll, 3)],
                ..SourceReport::new(DataSource::Polygon)
            },
            SourceReport {
                counts: counts(2, 0, 0, 1),
                symbols: aapl.clone(),
                first: Some(minute(15, 0)),
                last: Some(minute(15, 1)),
                checks: vec![("missing_value", 1)],
                producers: vec![(Mode::Poll, 2)],
                ..SourceReport::new(DataSource::Yahoo)
            },
            SourceReport {
                counts: counts(3, 0, 0, 0),
                symbols: aapl,
                first: Some(minute(15, 0)),
                last: Some(minute(15, 2)),
                producers: vec![(Mode::Poll, 3)],
                ..SourceReport::new(DataSource::YahooAdjusted)
            },
        ]
    );
    assert_eq!(report.counts, counts(6, 1, 1, 1));
    drop(queue);
    p.finish().await.unwrap();
}

/// Terminates every mdingest session of database `name`, as a server restart would.
async fn terminate_writers(admin: &tokio_postgres::Client, name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'mdingest'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_between_batches_loses_nothing() {
    let db = TestDb::migrated("restart").await;
    let p = start(&db, "[pipeline]\nbatch_max_age_ms = 20\n");
    let queue = p.queue();
    let mut acks = send(&queue, vec![bar("AAPL", minute(14, 30), "185", 10)]).await;
    acks.recv().await.expect("first batch committed");
    assert!(
        terminate_writers(&connect(&admin_url()).await, &db.name).await >= 1,
        "no writer session to terminate"
    );
    let mut acks = send(&queue, vec![bar("AAPL", minute(14, 31), "185", 10)]).await;
    let report = tokio::time::timeout(Duration::from_secs(30), acks.recv())
        .await
        .expect("second batch not committed within 30 s")
        .unwrap();
    assert_eq!(report.counts.inserted, 1);
    drop(queue);
    p.finish().await.unwrap();
    assert_eq!(db.stored().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_during_a_load_lose_nothing() {
    let db = TestDb::migrated("killer").await;
    let p = start(
        &db,
        "[pipeline]\nbatch_max_rows = 500\nbatch_max_age_ms = 10\n",
    );
    let queue = p.queue();
    let stop = CancellationToken::new();
    let killer = {
        let stop = stop.clone();
        let name = db.name.clone();
        tokio::spawn(async move {
            let admin = connect(&admin_url()).await;
            let mut killed = 0i64;
            // Enough kills to hit COPYs, merges and commits; bounded so backoff stays short.
            while !stop.is_cancelled() && killed < 8 {
                killed += terminate_writers(&admin, &name).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            killed
        })
    };
    let symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "SPY", "QQQ", "IWM"];
    for m in 0..300i64 {
        let ts = minute(14, 30) + Span::minutes(m);
        let bars = symbols.iter().map(|s| bar(s, ts, "100", m)).collect();
        drop(send(&queue, bars).await);
        // Paced like a feed, so the load spans the killer's rounds (about 1.5 s).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(queue);
    let totals = p.finish().await.unwrap();
    stop.cancel();
    let killed = killer.await.unwrap();
    assert_eq!(db.stored().await, 2400);
    // A commit whose reply was lost is retried and then finds its rows unchanged.
    assert_eq!(totals.counts.written(), 2400);
    assert!(
        killed > 0,
        "the load finished before any session was killed"
    );
    eprintln!("killed {killed} sessions; {} retries", totals.retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_keeps_the_batch_until_given_up() {
    let (p, abandon) = start_without_database("[pipeline]\nbatch_max_age_ms = 10\n");
    let mut acks = send(
        &p.queue(),
        vec![
            bar("AAPL", minute(14, 30), "185", 10),
            bar("AAPL", minute(14, 31), "185", 10),
        ],
    )
    .await;
    // Retrying, not dropping: no report arrives while the database is away.
    let waited = tokio::time::timeout(Duration::from_millis(800), acks.recv()).await;
    assert!(waited.is_err(), "a batch was reported without a database");
    abandon.cancel();
    match p.finish().await {
        Err(mdingest::pipeline::PipelineError::Abandoned { uncommitted }) => {
            assert_eq!(uncommitted, 2)
        }
        other => panic!("expected Abandoned, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_recycled_after_pool_recycle_secs() {
    let db = TestDb::migrated("recycle").await;
    let cfg = db.config_with("");
    let mut short = cfg.database.clone();
    short.pool_recycle_secs = 1;
    let pool = mdingest::db::pool(&short).unwrap();
    let pid = |pool: deadpool_postgres::Pool| async move {
        let c = pool.get().await.unwrap();
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let first = pid(pool.clone()).await;
    assert_eq!(
        pid(pool.clone()).await,
        first,
        "a young connection is reused"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ne!(
        pid(pool.clone()).await,
        first,
        "an old connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bar_the_database_refuses_is_isolated_and_logged() {
    let db = TestDb::migrated("refused").await;
    // A rule validation does not know about, so only PostgreSQL can refuse the bar.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE data_ingestion.market_data ADD CONSTRAINT test_no_13 CHECK (volume <> 13)",
        )
        .await
        .unwrap();
    let mut inverted = bar("MSFT", minute(14, 30), "370", 10);
    inverted.low = d("371");
    let bars = (0..7)
        .map(|m| {
            bar(
                "AAPL",
                minute(14, 30 + m),
                "185",
                if m == 4 { 13 } else { 10 },
            )
        })
        .chain([inverted])
        .collect();
    let t = write(&db, bars).await;
    assert_eq!(t.counts.inserted, 6);
    assert_eq!(t.counts.rejected, 2);
    let checks: Vec<String> = db
        .column(
            "SELECT check_name || ' ' || symbol FROM data_ingestion.data_quality_logs ORDER BY 1",
        )
        .await;
    assert_eq!(
        checks,
        ["database_refused AAPL", "low_above_open_close MSFT"]
    );
    let reason: Vec<String> = db
        .column("SELECT details->>'reason' FROM data_ingestion.data_quality_logs WHERE check_name = 'database_refused'")
        .await;
    assert!(reason[0].contains("test_no_13"), "{reason:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_close_at_batch_max_rows() {
    let db = TestDb::migrated("rows").await;
    let p = start(
        &db,
        "[pipeline]\nbatch_max_rows = 3\nbatch_max_age_ms = 60000\nwriters = 1\n",
    );
    let bars: Vec<Bar> = (0..10)
        .map(|m| bar("AAPL", minute(14, 30 + m), "185", 10))
        .collect();
    let mut acks = send(&p.queue(), bars).await;
    // Three full batches commit long before the 60 s age limit; the tenth bar waits.
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("a full batch was not written")
            .unwrap();
        assert_eq!(r.counts.inserted, 3);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), acks.recv())
            .await
            .is_err(),
        "a partial batch closed before its age"
    );
    let totals = p.finish().await.unwrap();
    assert_eq!(totals.batches, 4);
    assert_eq!(totals.counts.inserted, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_whose_commit_already_landed_is_not_counted_twice() {
    use mdingest::db::writer::{write_batch, Rows, WriteOptions};
    use mdingest::pipeline::{Batch, Staged};
    let db = TestDb::migrated("token").await;
    let cfg = db.config();
    let pool = mdingest::db::pool(&cfg.database).unwrap();
    let mut batch = Batch::new();
    batch.entries = (0..3)
        .map(|m| Staged {
            bar: bar("AAPL", minute(14, 30 + m), "185", 10),
            mode: Mode::Stream,
        })
        .collect();
    let feeds = batch.feeds(|s| cfg.timeframes().of(s));
    let partitions = mdingest::db::partitions::Partitions::default();
    let opts = || WriteOptions {
        token: "test-token-1",
        expect_new: true,
        prune: false,
        partitions: &partitions,
    };
    let mut client = pool.get().await.unwrap();
    let rows = || Rows {
        changes: &[],
        entries: &batch.entries,
        rejections: &[],
        feeds: &feeds,
    };
    let first = write_batch(&mut client, rows(), opts()).await.unwrap();
    // As if COMMIT's reply had been lost: the retry finds the token and writes nothing.
    let again = write_batch(&mut client, rows(), opts()).await.unwrap();
    assert_eq!(first.counts.inserted, 3);
    assert_eq!(
        first.by_source,
        [(
            DataSource::Polygon,
            WriteCounts {
                inserted: 3,
                ..WriteCounts::default()
            }
        )]
    );
    assert_eq!(
        (again.counts, &again.by_source),
        (first.counts, &first.by_source),
        "the retry reports each source's counts too"
    );
    // The first attempt's state changes are known to it alone.
    assert_eq!(first.changed.len(), 1);
    assert!(again.changed.is_empty());
    assert_eq!(
        db.count("SELECT rows_written FROM data_ingestion.ingestion_status")
            .await,
        3
    );

    // The earlier attempt is still in flight (its COMMIT not yet through): the retry waits for
    // it, then reports its counts instead of writing.
    let mut other = batch;
    for e in &mut other.entries {
        e.bar.timestamp += chrono::Duration::hours(1);
    }
    let earlier = db.client().await;
    earlier
        .batch_execute(
            "BEGIN; INSERT INTO data_ingestion.committed_batches VALUES ('test-token-2', 7, 0, 0)",
        )
        .await
        .unwrap();
    let retry = tokio::spawn(async move {
        let mut client = pool.get().await.unwrap();
        let partitions = mdingest::db::partitions::Partitions::default();
        let opts = WriteOptions {
            token: "test-token-2",
            expect_new: true,
            prune: false,
            partitions: &partitions,
        };
        let rows = Rows {
            changes: &[],
            entries: &other.entries,
            rejections: &[],
            feeds: &[],
        };
        write_batch(&mut client, rows, opts).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !retry.is_finished(),
        "the retry did not wait for the attempt in flight"
    );
    earlier.batch_execute("COMMIT").await.unwrap();
    let counts = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.counts.inserted, 7);
    assert!(counts.by_source.is_empty(), "{counts:?}");
    assert_eq!(db.stored().await, 3, "the retry wrote the batch again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_producers_back() {
    // A database that never answers: nothing drains.
    let (p, abandon) = start_without_database(
        "[pipeline]\nwriters = 1\nbatch_max_rows = 2\nqueue_capacity = 4\nbatch_max_age_ms = 60000\n",
    );
    let queue = p.queue();
    let mut accepted = 0;
    for m in 0..20 {
        let chunk = Chunk::new(
            Mode::Stream,
            vec![bar("AAPL", minute(14, 30 + m), "185", 10)],
            vec![],
        );
        match tokio::time::timeout(Duration::from_millis(300), queue.send(chunk)).await {
            Ok(sent) => {
                sent.unwrap();
                accepted += 1;
            }
            Err(_) => break,
        }
    }
    // The writer's batch (2), the batch waiting for it (2), the router's full batch (2) and the
    // queue (4): then the producer waits.
    assert_eq!(accepted, 10);
    assert_eq!(queue.depth(), 4);
    drop(queue);
    abandon.cancel();
    assert!(matches!(
        p.finish().await,
        Err(mdingest::pipeline::PipelineError::Abandoned { uncommitted: 10 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_error_holds_until_a_bar_sent_after_it_commits() {
    use mdingest::domain::{DataSource, Timeframe};
    use mdingest::ingest::{Feed, FeedChange, Transition};
    let db = TestDb::migrated("one_owner").await;
    let feed = Feed {
        source: DataSource::Polygon,
        symbol: "AAPL".parse().unwrap(),
        mode: Mode::Stream,
        timeframe: Timeframe::M1,
    };
    let change = |to: Transition| {
        Chunk::changes(vec![FeedChange {
            feed: feed.clone(),
            to,
        }])
    };
    let state = || async {
        db.column::<String>(
            "SELECT state || ' ' || coalesce(last_error, '-') || ' ' || rows_written
             FROM data_ingestion.ingestion_status",
        )
        .await
    };
    // One long-lived batch would hold all of it: bars, then the refusal, then the end.
    let slow = "[pipeline]\nwriters = 1\nbatch_max_age_ms = 60000\nbatch_max_rows = 10000\n";
    let p = start(&db, slow);
    let q = p.queue();
    drop(send(&q, vec![bar("AAPL", minute(14, 30), "185", 10)]).await);
    q.send(change(Transition::Failed("refused".into())))
        .await
        .unwrap();
    q.send(change(Transition::Ended(
        mdingest::domain::FeedState::Completed,
        None,
    )))
    .await
    .unwrap();
    drop(q);
    p.finish().await.unwrap();
    // The bar queued before the refusal committed first: the refusal stands.
    assert_eq!(state().await, ["error refused 1"]);

    // A bar sent after the error, in the same batch: running again.
    let p = start(&db, slow);
    let q = p.queue();
    q.send(change(Transition::Failed("again".into())))
        .await
        .unwrap();
    drop(send(&q, vec![bar("AAPL", minute(14, 31), "185", 10)]).await);
    drop(q);
    p.finish().await.unwrap();
    assert_eq!(state().await, ["running again 2"]);

    // The database frozen while bars and then a refusal wait: once it answers, the order holds.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE data_ingestion.market_data IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let p = start(&db, "[pipeline]\nwriters = 2\nbatch_max_age_ms = 50\n");
    let q = p.queue();
    drop(send(&q, vec![bar("AAPL", minute(14, 32), "185", 10)]).await);
    q.send(change(Transition::Failed("refused while frozen".into())))
        .await
        .unwrap();
    drop(q);
    tokio::time::sleep(Duration::from_millis(300)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    p.finish().await.unwrap();
    assert_eq!(state().await, ["error refused while frozen 3"]);
}
