//! Sync events on Redis, published after commit: `<channel_prefix>:<type>` carries the seed's
//! envelope `{"type", "service", "data", "timestamp"}`.
//!
//! ```text
//! writer ──commit──► Announcer::committed ──try_send──► bounded queue ──► publisher ──► Redis
//!                    (never waits: a full queue drops the event and counts it)
//! ```
//! Redis down, slow or refusing never holds up a writer: the publisher counts what it could not
//! send (`mdingest_events_published_total{result}`), warns at most once a minute with how many,
//! and connects again by itself. Optionally each event is also appended to a Redis Stream
//! (`XADD <prefix>:events MAXLEN ~ N`), for consumers that must not miss one while they are away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::ingest::{BatchReport, StatusChanged};
use crate::logging::Throttled;
use crate::telemetry::{self, EventResult};

pub const MARKET_DATA_UPDATED: &str = "market_data_updated";
pub const INGESTION_STATUS_CHANGED: &str = "ingestion_status_changed";
pub const DATA_QUALITY_ALERT: &str = "data_quality_alert";

/// Events waiting for the publisher. At one per data source per batch this is minutes of a
/// busy stream's batches; beyond it Redis is not keeping up, and events are dropped.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A Redis that answers slower than this is treated as down until it reconnects.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// One event, ready to publish.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub payload: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn envelope(kind: &'static str, service: &str, data: Value) -> Event {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false);
    let payload = json!({"type": kind, "service": service, "data": data, "timestamp": now});
    Event {
        kind,
        payload: payload.to_string(),
    }
}

/// The events a committed batch makes: per data source, `market_data_updated` when it wrote
/// bars and `data_quality_alert` when it refused some; then its feeds' state changes.
pub fn of_batch(service: &str, report: &BatchReport) -> Vec<Event> {
    let mut out = Vec::new();
    for s in &report.sources {
        if s.rows() > 0 {
            out.push(envelope(
                MARKET_DATA_UPDATED,
                service,
                json!({
                    "data_source": s.source.as_str(),
                    "symbols": s.symbols.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                    "rows": s.rows(),
                    "inserted": s.counts.inserted,
                    "updated": s.counts.updated,
                    "unchanged": s.counts.unchanged,
                    "first_timestamp": s.first.map(rfc3339),
                    "last_timestamp": s.last.map(rfc3339),
                }),
            ));
        }
        if s.counts.rejected > 0 {
            let checks: serde_json::Map<String, Value> = s
                .checks
                .iter()
                .map(|(c, n)| (c.to_string(), json!(n)))
                .collect();
            out.push(envelope(
                DATA_QUALITY_ALERT,
                service,
                json!({
                    "data_source": s.source.as_str(),
                    "rejected": s.counts.rejected,
                    "checks": checks,
                    "symbols": s.flagged.symbols,
                    "first_timestamp": s.flagged.first.map(rfc3339),
                    "last_timestamp": s.flagged.last.map(rfc3339),
                }),
            ));
        }
    }
    out.extend(of_changes(service, &report.changed));
    out
}

pub fn of_changes(service: &str, changed: &[StatusChanged]) -> Vec<Event> {
    changed
        .iter()
        .map(|c| {
            envelope(
                INGESTION_STATUS_CHANGED,
                service,
                json!({
                    "data_source": c.source.as_str(),
                    "symbol": c.symbol,
                    "mode": c.mode.as_str(),
                    "state": c.state.as_str(),
                    "last_bar_timestamp": c.last_bar.map(rfc3339),
                    "last_error": c.last_error,
                }),
            )
        })
        .collect()
}

/// What the writers call after each commit; cheap to clone. Disabled, it does nothing.
#[derive(Clone)]
pub struct Announcer {
    inner: Option<(mpsc::Sender<Event>, Arc<Shared>)>,
}

/// Between the announcers and the publisher; the queue's sender is not in here, so that the
/// publisher ends once every announcer is dropped.
struct Shared {
    service: String,
    /// Events taken and not yet handled by the publisher.
    pending: AtomicU64,
    full: Throttled,
}

impl Announcer {
    /// Publishes nothing (tests of the write path alone).
    pub fn disabled() -> Announcer {
        Announcer { inner: None }
    }

    /// Starts the publisher. Nothing connects yet: a Redis that is down costs nothing until
    /// the first event.
    pub fn start(cfg: &RedisConfig, service: &str) -> (Announcer, Publisher) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            service: service.to_string(),
            pending: AtomicU64::new(0),
            full: Throttled::per_minute(),
        });
        let target = Target {
            url: cfg.url.expose().to_string(),
            shown: cfg.url.redacted(),
            prefix: cfg.channel_prefix.clone(),
            stream_maxlen: cfg.stream_maxlen,
        };
        let task = tokio::spawn(publish_all(rx, target, shared.clone()));
        let announcer = Announcer {
            inner: Some((tx, shared.clone())),
        };
        (announcer, Publisher { task, shared })
    }

    /// A committed batch: its events are queued for the publisher, or dropped (and counted)
    /// when the queue is full. Never waits.
    pub fn committed(&self, report: &BatchReport) {
        if let Some((tx, s)) = &self.inner {
            queue(tx, s, of_batch(&s.service, report));
        }
    }

    /// State changes committed outside a batch (the feeds' end after the writers stopped).
    pub fn status_changed(&self, changed: &[StatusChanged]) {
        if let Some((tx, s)) = &self.inner {
            queue(tx, s, of_changes(&s.service, changed));
        }
    }
}

/// Queues `events` for the publisher; those that do not fit are dropped and counted.
fn queue(tx: &mpsc::Sender<Event>, s: &Shared, events: Vec<Event>) {
    let mut dropped = 0;
    for e in events {
        s.pending.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(e).is_err() {
            s.pending.fetch_sub(1, Ordering::Relaxed);
            dropped += 1;
        }
    }
    if dropped > 0 {
        telemetry::event(EventResult::Dropped, dropped);
        if let Some(n) = s.full.hit_many(dropped) {
            tracing::warn!(
                dropped = n,
                "sync events dropped in the last minute: the Redis publisher is behind (Redis slow or down); ingestion goes on"
            );
        }
    }
}

/// The publisher task; [`Publisher::close`] lets it send what is queued, for a moment.
pub struct Publisher {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Waits up to `within` for the queued events once every [`Announcer`] is dropped; what is
    /// still queued then is dropped and counted. Returns how many were dropped so.
    pub async fn close(mut self, within: Duration) -> u64 {
        if tokio::time::timeout(within, &mut self.task).await.is_ok() {
            return 0;
        }
        self.task.abort();
        let left = self.shared.pending.swap(0, Ordering::Relaxed);
        if left > 0 {
            telemetry::event(EventResult::Dropped, left);
            tracing::warn!(
                dropped = left,
                "sync events not published before exit: Redis did not take them in time"
            );
        }
        left
    }
}

struct Target {
    url: String,
    /// The URL with its password redacted, for messages.
    shown: String,
    prefix: String,
    stream_maxlen: u64,
}

/// Publishes events in order until every sender is gone.
async fn publish_all(mut rx: mpsc::Receiver<Event>, target: Target, shared: Arc<Shared>) {
    let client = match redis::Client::open(target.url.as_str()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(url = %target.shown, error = %e, "redis.url cannot be used; no sync events will be published");
            None
        }
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut retry_at = Instant::now();
    let mut wait = RECONNECT_MIN;
    let mut was_up = false;
    let trouble = Throttled::per_minute();
    while let Some(event) = rx.recv().await {
        shared.pending.fetch_sub(1, Ordering::Relaxed);
        if conn.is_none() && Instant::now() >= retry_at {
            if let Some(client) = &client {
                let attempt = client.get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                    Ok(Ok(c)) => {
                        if was_up {
                            tracing::info!(url = %target.shown, "redis: connected again; publishing sync events");
                        }
                        conn = Some(c);
                        wait = RECONNECT_MIN;
                        was_up = true;
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                        };
                        note_trouble(&trouble, &target, &why);
                        retry_at = Instant::now() + wait;
                        wait = (wait * 2).min(RECONNECT_MAX);
                    }
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            telemetry::event(EventResult::Dropped, 1);
            note_trouble(&trouble, &target, "not connected");
            continue;
        };
        match publish(c, &target, &event).await {
            Ok(()) => telemetry::event(EventResult::Published, 1),
            Err(why) => {
                telemetry::event(EventResult::Failed, 1);
                note_trouble(&trouble, &target, &why);
                // A connection that timed out may still deliver a late reply to the next
                // command: start afresh.
                conn = None;
                retry_at = Instant::now() + wait;
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}

fn note_trouble(trouble: &Throttled, target: &Target, why: &str) {
    if let Some(n) = trouble.hit() {
        tracing::warn!(
            url = %target.shown,
            error = %why,
            events = n,
            "redis: sync events not published (counted in mdingest_events_published_total); ingestion goes on, reconnecting"
        );
    }
}

async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    target: &Target,
    event: &Event,
) -> Result<(), String> {
    let channel = format!("{}:{}", target.prefix, event.kind);
    let mut pipe = redis::pipe();
    pipe.cmd("PUBLISH")
        .arg(&channel)
        .arg(&event.payload)
        .ignore();
    if target.stream_maxlen > 0 {
        pipe.cmd("XADD")
            .arg(format!("{}:events", target.prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(target.stream_maxlen)
            .arg("*")
            .arg("type")
            .arg(event.kind)
            .arg("event")
            .arg(&event.payload)
            .ignore();
    }
    let sent = pipe.query_async::<()>(conn);
    match tokio::time::timeout(RESPONSE_TIMEOUT, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {RESPONSE_TIMEOUT:?}")),
    }
}
