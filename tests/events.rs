//! Sync events on Redis: published only after commit, one per data source, with that source's
//! own counts; Redis down, cut or silent never holds up ingestion, and publishing resumes by
//! itself. Each test listens on its own channel prefix.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use mdingest::domain::{DataSource, Mode};
use mdingest::events::Announcer;
use mdingest::ingest::Chunk;
use mdingest::pipeline::Pipeline;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{bar, hold_commits, minute, Proxy, TestDb};

const REDIS: &str = "127.0.0.1:6379";

fn prefix(tag: &str) -> String {
    format!("test_{tag}_{}", std::process::id())
}

/// Every message on `<prefix>:*`, as (channel, parsed payload).
async fn subscribe(prefix: &str) -> mpsc::UnboundedReceiver<(String, Value)> {
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe(format!("{prefix}:*")).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            let payload: String = m.get_payload().unwrap();
            let value: Value = serde_json::from_str(&payload).expect("an event is JSON");
            if tx.send((m.get_channel_name().to_string(), value)).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the subscription lives")
}

/// Every event that arrives within `quiet` of the previous one.
async fn drain(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(Some((_, v))) = tokio::time::timeout(quiet, rx.recv()).await {
        out.push(v);
    }
    out
}

fn start(db: &TestDb, redis_url: &str, prefix: &str) -> (Pipeline, mdingest::events::Publisher) {
    start_with(db, redis_url, prefix, "")
}

fn start_with(
    db: &TestDb,
    redis_url: &str,
    prefix: &str,
    redis_toml: &str,
) -> (Pipeline, mdingest::events::Publisher) {
    // One writer: the whole chunk is one batch, one transaction.
    let cfg = db.config_with(&format!(
        "[pipeline]\nwriters = 1\n[redis]\nurl = \"{redis_url}\"\nchannel_prefix = \"{prefix}\"\n{redis_toml}"
    ));
    let pool = mdingest::db::pool(&cfg.database).unwrap();
    let (announcer, publisher) = Announcer::start(&cfg.redis, "data_ingestion");
    let p = Pipeline::start(
        &cfg.pipeline,
        pool,
        cfg.timeframes(),
        CancellationToken::new(),
        announcer,
    );
    (p, publisher)
}

fn bar_of(
    source: DataSource,
    symbol: &str,
    t: DateTime<Utc>,
    price: &str,
) -> mdingest::domain::Bar {
    let mut b = bar(symbol, t, price, 100);
    b.source = source;
    b
}

/// AAPL's bar `i` minutes after 14:30, alone in its chunk.
fn one_bar(i: i64) -> Chunk {
    let t = minute(14, 30) + chrono::Duration::minutes(i);
    Chunk::new(Mode::Backfill, vec![bar("AAPL", t, "10.5", 1)], Vec::new())
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn of_source<'a>(events: &[&'a Value], source: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["data"]["data_source"] == source)
        .unwrap_or_else(|| panic!("no event of {source} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_of_a_batch_is_announced_with_its_own_counts_and_never_before_commit() {
    let db = TestDb::migrated("events_commit").await;
    let prefix = prefix("commit");
    let mut events = subscribe(&prefix).await;
    let (pipeline, publisher) = start(&db, &format!("redis://{REDIS}"), &prefix);
    let queue = pipeline.queue();

    // A Yahoo-like batch: one fetch, two data sources, plus a bar validation refuses.
    let t0 = minute(14, 30);
    let day = |d: i64| {
        t0.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc() + chrono::Duration::days(d)
    };
    // Daily bars of yahoo sit at the session open, 14:30 UTC in winter.
    let at = |d: i64| day(d) + chrono::Duration::minutes(14 * 60 + 30);
    let first = vec![
        bar_of(DataSource::Yahoo, "AAPL", at(0), "10.50"),
        bar_of(DataSource::Yahoo, "AAPL", at(1), "10.60"),
        bar_of(DataSource::Yahoo, "MSFT", at(0), "20.00"),
        bar_of(DataSource::YahooAdjusted, "AAPL", at(0), "10.40"),
        bar_of(DataSource::YahooAdjusted, "AAPL", at(1), "10.55"),
        bar_of(DataSource::YahooAdjusted, "MSFT", at(0), "19.90"),
        // Off the minute grid: refused by validation.
        bar_of(
            DataSource::Yahoo,
            "MSFT",
            at(1) + chrono::Duration::seconds(30),
            "20.10",
        ),
    ];

    // Hold the commit: the writer's first statement waits on this lock.
    let holder = hold_commits(&db).await;
    queue
        .send(Chunk::new(Mode::Backfill, first, Vec::new()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(db.stored().await, 0, "the batch is held");
    assert!(
        events.try_recv().is_err(),
        "nothing may be announced before the commit"
    );
    holder.batch_execute("COMMIT").await.unwrap();

    let got = {
        let mut got = vec![next_event(&mut events).await.1];
        got.extend(drain(&mut events, Duration::from_millis(500)).await);
        got
    };
    assert_eq!(db.stored().await, 6);
    for e in &got {
        assert_eq!(e["service"], "data_ingestion");
        assert!(e["timestamp"].as_str().unwrap().ends_with("+00:00"), "{e}");
    }
    let updated = of_type(&got, "market_data_updated");
    assert_eq!(updated.len(), 2, "one per data source: {got:#?}");
    let yahoo = &of_source(&updated, "yahoo")["data"];
    assert_eq!(yahoo["rows"], 3);
    assert_eq!(yahoo["inserted"], 3);
    assert_eq!(yahoo["updated"], 0);
    assert_eq!(yahoo["symbols"], serde_json::json!(["AAPL", "MSFT"]));
    assert_eq!(yahoo["first_timestamp"], at(0).to_rfc3339());
    assert_eq!(yahoo["last_timestamp"], at(1).to_rfc3339());
    let adjusted = &of_source(&updated, "yahoo_adjusted")["data"];
    assert_eq!(adjusted["rows"], 3);
    assert_eq!(adjusted["inserted"], 3);

    let alerts = of_type(&got, "data_quality_alert");
    assert_eq!(alerts.len(), 1, "{got:#?}");
    let alert = &alerts[0]["data"];
    assert_eq!(alert["data_source"], "yahoo");
    assert_eq!(alert["rejected"], 1);
    assert_eq!(alert["symbols"], serde_json::json!(["MSFT"]));
    assert!(alert["checks"]
        .as_object()
        .unwrap()
        .values()
        .all(|n| n.as_u64() >= Some(1)));

    // Four new feeds (two sources × two symbols) started running.
    let changed = of_type(&got, "ingestion_status_changed");
    assert_eq!(changed.len(), 4, "{got:#?}");
    assert!(changed
        .iter()
        .all(|c| c["data"]["state"] == "running" && c["data"]["mode"] == "backfill"));

    // A second batch: one value corrected, one the same; the feeds already run.
    let second = vec![
        bar_of(DataSource::Yahoo, "AAPL", at(0), "10.51"),
        bar_of(DataSource::Yahoo, "AAPL", at(1), "10.60"),
    ];
    queue
        .send(Chunk::new(Mode::Backfill, second, Vec::new()))
        .await
        .unwrap();
    let (channel, e) = next_event(&mut events).await;
    assert_eq!(channel, format!("{prefix}:market_data_updated"));
    let d = &e["data"];
    assert_eq!(
        (
            d["rows"].as_u64(),
            d["inserted"].as_u64(),
            d["updated"].as_u64(),
            d["unchanged"].as_u64()
        ),
        (Some(2), Some(0), Some(1), Some(1))
    );
    assert!(
        drain(&mut events, Duration::from_millis(500))
            .await
            .is_empty(),
        "no state changed, nothing refused"
    );
    drop(queue);
    pipeline.finish().await.unwrap();
    assert_eq!(publisher.close(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_refusing_connections_every_batch_commits_and_the_publisher_ends_at_once() {
    let db = TestDb::migrated("events_down").await;
    // Nothing listens on port 1.
    let (pipeline, publisher) = start(&db, "redis://127.0.0.1:1", &prefix("down"));
    let queue = pipeline.queue();
    for i in 0..200 {
        queue.send(one_bar(i)).await.unwrap();
    }
    drop(queue);
    pipeline.finish().await.unwrap();
    assert_eq!(db.stored().await, 200);
    let started = std::time::Instant::now();
    publisher.close(Duration::from_secs(30)).await;
    // Dropping events is immediate: the publisher does not wait for a Redis that is not there.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_silent_batches_commit_and_with_redis_back_publishing_resumes() {
    let db = TestDb::migrated("events_back").await;
    let prefix = prefix("back");
    let mut events = subscribe(&prefix).await;
    let proxy = Proxy::start(REDIS).await;
    let (pipeline, publisher) = start(&db, &proxy.url(&format!("redis://{REDIS}")), &prefix);
    let queue = pipeline.queue();
    let send = |i: i64| {
        let queue = queue.clone();
        async move { queue.send(one_bar(i)).await.unwrap() }
    };
    send(0).await;
    let (_, first) = next_event(&mut events).await;
    assert_eq!(first["type"], "market_data_updated");
    drain(&mut events, Duration::from_millis(300)).await;

    // Redis goes away: the batches commit all the same.
    proxy.cut();
    for i in 1..=20 {
        send(i).await;
    }
    common::wait_for_rows(&db, "SELECT count(*) / 21 FROM data_ingestion.market_data").await;

    // Back: a later batch is announced, without anyone reconnecting anything.
    proxy.restore().await;
    let mut heard = false;
    for i in 21..60 {
        send(i).await;
        if let Ok(Some((_, e))) =
            tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            assert_eq!(e["type"], "market_data_updated");
            heard = true;
            break;
        }
    }
    assert!(heard, "publishing resumed once Redis was back");
    drop(queue);
    pipeline.finish().await.unwrap();
    publisher.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_holds_up_no_batch() {
    let db = TestDb::migrated("events_silent").await;
    let port = common::silent_server().await;
    let (pipeline, publisher) = start(&db, &format!("redis://127.0.0.1:{port}"), &prefix("silent"));
    let queue = pipeline.queue();
    let mut acks = Vec::new();
    for i in 0..100 {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut chunk = one_bar(i);
        chunk.ack = Some(tx);
        queue.send(chunk).await.unwrap();
        acks.push(rx);
    }
    // Every batch is acknowledged to its producer although no event could be published.
    for mut rx in acks {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("acknowledged")
            .expect("committed");
    }
    assert_eq!(db.stored().await, 100);
    drop(queue);
    pipeline.finish().await.unwrap();
    publisher.close(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_also_kept_in_a_capped_stream_when_asked() {
    let db = TestDb::migrated("events_stream").await;
    let prefix = prefix("stream");
    let (pipeline, publisher) = start_with(
        &db,
        &format!("redis://{REDIS}"),
        &prefix,
        "stream_maxlen = 1000\n",
    );
    let queue = pipeline.queue();
    for i in 0..3 {
        queue.send(one_bar(i)).await.unwrap();
    }
    drop(queue);
    pipeline.finish().await.unwrap();
    assert_eq!(publisher.close(Duration::from_secs(5)).await, 0);
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:events");
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .filter(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "market_data_updated")
            .count()
            >= 1
            && kinds.contains(&"ingestion_status_changed"),
        "{kinds:?}"
    );
    for (_, fields) in &entries {
        let event = &fields.iter().find(|(k, _)| k == "event").unwrap().1;
        let v: Value = serde_json::from_str(event).unwrap();
        assert_eq!(v["service"], "data_ingestion");
    }
}
