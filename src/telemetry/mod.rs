//! Prometheus metrics: every name, its HELP text, unit and buckets in one place, and the
//! handful of calls the rest of the code makes. `http` serves them with `/healthz` and `/readyz`.
//!
//! Counters whose label values are known at start (the enabled sources, results) are registered
//! at 0 by [`install`], so that `rate()` and absence alerts work from the first scrape. No metric
//! has a symbol label: thousands of symbols would be thousands of series.
//!
//! Without an installed recorder (`backfill`, `import`, the library's tests) every call here is a
//! no-op of the `metrics` crate.

pub mod health;
pub mod http;

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{DataSource, Mode};
use crate::ingest::BatchReport;

pub const BARS_RECEIVED: &str = "mdingest_bars_received_total";
pub const BARS_WRITTEN: &str = "mdingest_bars_written_total";
pub const BARS_REJECTED: &str = "mdingest_bars_rejected_total";
pub const BATCHES: &str = "mdingest_batches_total";
pub const BATCH_WRITE_SECONDS: &str = "mdingest_batch_write_seconds";
pub const QUEUE_DEPTH: &str = "mdingest_queue_depth";
pub const SOURCE_CONNECTED: &str = "mdingest_source_connected";
pub const SOURCE_RECONNECTS: &str = "mdingest_source_reconnects_total";
pub const HTTP_REQUESTS: &str = "mdingest_http_requests_total";
pub const LAST_BAR_TIMESTAMP: &str = "mdingest_last_bar_timestamp_seconds";
pub const INGEST_LAG_SECONDS: &str = "mdingest_ingest_lag_seconds";
pub const EVENTS_PUBLISHED: &str = "mdingest_events_published_total";
pub const DB_POOL_CONNECTIONS: &str = "mdingest_db_pool_connections";
pub const DATABASE_UP: &str = "mdingest_database_up";
pub const BUILD_INFO: &str = "mdingest_build_info";

/// A batch of 10,000 rows commits in well under a second; a retried one can take minutes.
const WRITE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// From a live bar's end to its commit: tens of milliseconds when healthy, minutes in trouble.
const LAG_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// `result` of [`BATCHES`].
#[derive(Debug, Clone, Copy)]
pub enum BatchResult {
    Committed,
    /// One failed attempt (the batch is retried until it commits).
    Retried,
    /// Given up at the shutdown deadline (its stretch is a pending gap).
    Abandoned,
}

impl BatchResult {
    const ALL: [BatchResult; 3] = [
        BatchResult::Committed,
        BatchResult::Retried,
        BatchResult::Abandoned,
    ];
    fn as_str(self) -> &'static str {
        match self {
            BatchResult::Committed => "committed",
            BatchResult::Retried => "retried",
            BatchResult::Abandoned => "abandoned",
        }
    }
}

/// `result` of [`EVENTS_PUBLISHED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Published,
    /// Redis refused it, or did not answer in time.
    Failed,
    /// Never sent: the publisher was behind (its queue full) or Redis unreachable.
    Dropped,
}

impl EventResult {
    const ALL: [EventResult; 3] = [
        EventResult::Published,
        EventResult::Failed,
        EventResult::Dropped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Published => "published",
            EventResult::Failed => "failed",
            EventResult::Dropped => "dropped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct InstallError(String);

/// Installs the process's recorder: HELP texts, buckets, and the known series at 0. `sources`
/// are the enabled data sources, `streaming` the vendors that keep a connection.
pub fn install(
    sources: &[DataSource],
    streaming: &[&'static str],
) -> Result<PrometheusHandle, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_WRITE_SECONDS.into()), WRITE_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(INGEST_LAG_SECONDS.into()), LAG_BUCKETS)
        })
        .map_err(|e| InstallError(e.to_string()))?
        .install_recorder()
        .map_err(|e| InstallError(e.to_string()))?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for s in sources {
        let s = s.as_str();
        counter!(BARS_RECEIVED, "source" => s).absolute(0);
        counter!(BARS_WRITTEN, "source" => s).absolute(0);
    }
    for v in streaming {
        gauge!(SOURCE_CONNECTED, "source" => *v).set(0.0);
        counter!(SOURCE_RECONNECTS, "source" => *v).absolute(0);
    }
    for r in BatchResult::ALL {
        counter!(BATCHES, "result" => r.as_str()).absolute(0);
    }
    for r in EventResult::ALL {
        counter!(EVENTS_PUBLISHED, "result" => r.as_str()).absolute(0);
    }
    gauge!(QUEUE_DEPTH).set(0.0);
    gauge!(DATABASE_UP).set(0.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        BARS_RECEIVED,
        Unit::Count,
        "Bars taken in from the sources (before validation), by data source."
    );
    describe_counter!(
        BARS_WRITTEN,
        Unit::Count,
        "Bars committed to market_data (inserted, updated or unchanged), by data source."
    );
    describe_counter!(
        BARS_REJECTED,
        Unit::Count,
        "Rows logged to data_quality_logs, by data source and check."
    );
    describe_counter!(
        BATCHES,
        Unit::Count,
        "Batch attempts by result: committed, retried (an attempt failed), abandoned (at the shutdown deadline)."
    );
    describe_histogram!(
        BATCH_WRITE_SECONDS,
        Unit::Seconds,
        "Time from a batch's first attempt to its commit, retries included."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Bars waiting in the pipeline's queue (a quality record weighs more than a bar)."
    );
    describe_gauge!(
        SOURCE_CONNECTED,
        Unit::Count,
        "1 while the vendor's stream is connected and subscribed, else 0."
    );
    describe_counter!(
        SOURCE_RECONNECTS,
        Unit::Count,
        "Stream connections that ended and were attempted again, by vendor."
    );
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "Vendor REST requests by vendor and HTTP status (\"error\" when no status came back)."
    );
    describe_gauge!(
        LAST_BAR_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the newest committed bar, by data source."
    );
    describe_histogram!(
        INGEST_LAG_SECONDS,
        Unit::Seconds,
        "From the end of a batch's newest streamed or polled bar to its commit."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Sync events by result: published, failed (Redis refused or timed out), dropped (never sent)."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        Unit::Count,
        "Database pool connections by state: in_use, idle, max."
    );
    describe_gauge!(
        DATABASE_UP,
        Unit::Count,
        "1 while the database answers the daemon's probe, else 0."
    );
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; the version as a label.");
}

/// Bars a source handed the pipeline.
pub fn received(source: DataSource, bars: u64) {
    counter!(BARS_RECEIVED, "source" => source.as_str()).increment(bars);
}

static BARS_COMMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bars committed by this process so far (systemd's STATUS= line).
pub fn bars_committed() -> u64 {
    BARS_COMMITTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a committed batch did, and how long it took.
pub fn batch_committed(report: &BatchReport, took: Duration) {
    BARS_COMMITTED.fetch_add(
        report.counts.written(),
        std::sync::atomic::Ordering::Relaxed,
    );
    counter!(BATCHES, "result" => BatchResult::Committed.as_str()).increment(1);
    metrics::histogram!(BATCH_WRITE_SECONDS).record(took.as_secs_f64());
    let now = chrono::Utc::now();
    for s in &report.sources {
        let source = s.source.as_str();
        counter!(BARS_WRITTEN, "source" => source).increment(s.rows());
        for (check, n) in &s.checks {
            counter!(BARS_REJECTED, "source" => source, "check" => *check).increment(*n);
        }
        let Some(last) = s.last else { continue };
        newest_bar(s.source, last);
        // History (backfills, gap-fills in their own batches) says nothing about how late live
        // data is.
        let live = s.producers.iter().any(|(m, _)| *m != Mode::Backfill);
        let end = report
            .feeds
            .iter()
            .find(|f| f.source == s.source)
            .map_or(last, |f| last + f.timeframe.duration());
        if live {
            let lag = (now - end).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(INGEST_LAG_SECONDS).record(lag);
        }
    }
}

/// The gauge only moves forward: an older batch committed later (another writer, a backfill)
/// does not make the source look stale.
fn newest_bar(source: DataSource, last: chrono::DateTime<chrono::Utc>) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static NEWEST: [AtomicI64; DataSource::ALL.len()] = [const { AtomicI64::new(i64::MIN) }; 4];
    let i = DataSource::ALL
        .iter()
        .position(|s| *s == source)
        .unwrap_or(0);
    let t = last.timestamp();
    if NEWEST[i].fetch_max(t, Ordering::Relaxed) < t {
        gauge!(LAST_BAR_TIMESTAMP, "source" => source.as_str()).set(t as f64);
    }
}

pub fn batch_result(result: BatchResult) {
    counter!(BATCHES, "result" => result.as_str()).increment(1);
}

pub fn event(result: EventResult, n: u64) {
    counter!(EVENTS_PUBLISHED, "result" => result.as_str()).increment(n);
}

pub fn connected(vendor: &'static str, up: bool) {
    gauge!(SOURCE_CONNECTED, "source" => vendor).set(if up { 1.0 } else { 0.0 });
}

pub fn reconnected(vendor: &'static str) {
    counter!(SOURCE_RECONNECTS, "source" => vendor).increment(1);
}

/// A vendor request's outcome: its HTTP status, or `None` when none came back.
pub fn http_request(vendor: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!(HTTP_REQUESTS, "source" => vendor, "status" => status).increment(1);
}

pub fn queue_depth(bars: usize) {
    gauge!(QUEUE_DEPTH).set(bars as f64);
}

pub fn database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn pool(status: deadpool_postgres::Status) {
    let in_use = status.size.saturating_sub(status.available);
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    gauge!(DB_POOL_CONNECTIONS, "state" => "max").set(status.max_size as f64);
}
