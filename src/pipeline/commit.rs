//! A writer: commits each batch of its shard, retrying database trouble until it succeeds, and
//! only then tells the producers.
//!
//! Errors are handled by kind (`db::classify`): connection loss, restarts, failovers and
//! serialization failures are retried with capped exponential backoff, forever (a batch is never
//! dropped; each attempt is bounded by a timeout); bad data, which validation should have caught,
//! is isolated by halving the batch until the one refused bar is found and logged; errors only an
//! operator can fix (a missing table, no privilege) stop the pipeline with the database's message.
//! Every attempt of a batch carries the same token, so an attempt whose COMMIT went through
//! unanswered is never written or counted twice (see `db::writer`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;

use super::{Batch, PipelineError, Totals, WriterContext};
use crate::db::writer::{self, WriteOptions};
use crate::db::{self, DbError, Fault};
use crate::ingest::{bar_details, BatchReport, Rejection, NOTED_REJECTIONS};
use crate::telemetry::{self, BatchResult};

const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two attempts, jitter included.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// One attempt at one batch; a 10,000-row batch normally takes well under a second.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of one batch after which each further one is logged as an error, not a warning.
const LOUD_AFTER: u64 = 10;

pub(crate) async fn write_loop(
    shard: usize,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    busy: tokio::sync::watch::Sender<bool>,
    ctx: WriterContext,
) -> Result<Totals, PipelineError> {
    let mut state = WriterState {
        totals: Totals::default(),
        expect_new: true,
        seq: 0,
    };
    let mut uncommitted = 0u64;
    while let Some(batch) = rx.recv().await {
        // Rows given up on: bars, and the quality records of rows refused.
        let rows = (batch.entries.len() + batch.rejections.len()) as u64;
        if ctx.abandon.is_cancelled() {
            uncommitted += rows;
            continue;
        }
        let acks = batch.acks.clone();
        let n = batch.entries.len() as u64;
        let oldest = batch.oldest_received;
        if !batch.has_writes() {
            // Only barriers: every earlier batch of this writer is committed.
            let report = BatchReport::default();
            for ack in &acks {
                let _ = ack.send(report.clone());
            }
            continue;
        }
        busy.send_replace(true);
        ctx.on_batch.begin(shard);
        let started = std::time::Instant::now();
        let committed = commit(&ctx, batch, &mut state).await;
        ctx.on_batch.end(shard);
        busy.send_replace(false);
        match committed {
            Ok(report) => {
                telemetry::batch_committed(&report, started.elapsed());
                ctx.announcer.committed(&report);
                if let Some(t) = oldest {
                    // The batch's worst receipt-to-commit lag (its oldest row's): what the
                    // stream benchmark reads, and the future `mdingest_ingest_lag_seconds`.
                    tracing::debug!(target: "mdingest::lag", shard, rows = n, lag_us = t.elapsed().as_micros() as u64, "batch committed");
                }
                let totals = &mut state.totals;
                totals.batches += 1;
                totals.counts.add(&report.counts);
                for ack in &acks {
                    let _ = ack.send(report.clone());
                }
            }
            Err(Failure::Abandoned) => {
                telemetry::batch_result(BatchResult::Abandoned);
                uncommitted += rows
            }
            Err(Failure::Fatal(e)) => {
                tracing::error!(shard, error = %e, "writer stopped");
                return Err(PipelineError::Fatal(e));
            }
        }
    }
    if uncommitted > 0 {
        return Err(PipelineError::Abandoned { uncommitted });
    }
    Ok(state.totals)
}

struct WriterState {
    totals: Totals,
    /// Whether the last batch held only new rows: then the next one first tries the cheap
    /// plain insert (see `writer::write_batch`).
    expect_new: bool,
    /// Batches attempted by this writer (pruning cadence).
    seq: u64,
}

/// Numbers every batch of this process, across pipelines and writers.
static BATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Tells this process's batches from any other's in `committed_batches`.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    })
}

/// `committed_batches` rows older than a day are deleted every this many batches per writer.
const PRUNE_EVERY: u64 = 1000;

enum Failure {
    Abandoned,
    Fatal(String),
}

type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<BatchReport, Failure>> + Send + 'a>>;

/// Boxed because it recurses on the parts of a batch the database refuses.
fn commit<'a>(
    ctx: &'a WriterContext,
    mut batch: Batch,
    state: &'a mut WriterState,
) -> CommitFuture<'a> {
    Box::pin(async move {
        let duplicates = batch.dedup();
        let feeds = batch.feeds(|s| ctx.timeframes.of(s));
        state.seq += 1;
        let token = format!(
            "{}-{}",
            process_tag(),
            BATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let expect_new = state.expect_new;
        let prune = state.seq % PRUNE_EVERY == 1;
        let attempts = AtomicU64::new(0);
        // Through an outage of hours a batch is retried thousands of times: a line a minute.
        let noted = crate::logging::Throttled::per_minute();
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let opts = WriteOptions {
                token: &token,
                expect_new,
                prune,
                partitions: &ctx.partitions,
            };
            let write = async {
                let mut client = ctx
                    .pool
                    .get()
                    .await
                    .map_err(|e| DbError::Pool(db::pool_error_reason(&e)))?;
                let rows = writer::Rows {
                    changes: &batch.changes,
                    entries: &batch.entries,
                    rejections: &batch.rejections,
                    feeds: &feeds,
                };
                writer::write_batch(&mut client, rows, opts).await
            };
            // A silent network (a partition, a failover without a reset) would otherwise hold
            // the attempt for as long as TCP keepalive takes to notice.
            tokio::time::timeout(ATTEMPT_TIMEOUT, write)
                .await
                .unwrap_or(Err(DbError::Timeout(ATTEMPT_TIMEOUT)))
        };
        let retried = attempt
            .retry(retry_policy())
            .when(|e: &DbError| e.is_retriable())
            .notify(|e, wait| {
                telemetry::batch_result(BatchResult::Retried);
                let Some(failed) = noted.hit() else { return };
                let rows = batch.entries.len();
                let tried = attempts.load(Ordering::Relaxed);
                if tried >= LOUD_AFTER {
                    tracing::error!(error = %e, retry_in = ?wait, rows, tried, failed_since_last_line = failed, "batch still not committed; retrying (logged once a minute)");
                } else {
                    tracing::warn!(error = %e, retry_in = ?wait, rows, failed_since_last_line = failed, "batch not committed; retrying (logged once a minute)");
                }
            });
        let result = tokio::select! {
            r = retried => r,
            _ = ctx.abandon.cancelled() => return Err(Failure::Abandoned),
        };
        state.totals.retries += attempts.load(Ordering::Relaxed).saturating_sub(1);
        match result {
            Ok(written) => {
                let mut counts = written.counts;
                state.expect_new = counts.inserted == batch.entries.len() as u64;
                counts.rejected = batch.rejected_bars;
                counts.duplicates = duplicates;
                let noted = batch
                    .rejections
                    .iter()
                    .take(NOTED_REJECTIONS)
                    .map(Rejection::console_line)
                    .collect();
                let sources = crate::ingest::source_reports(
                    &batch.entries,
                    &batch.rejections,
                    &written.by_source,
                );
                Ok(BatchReport {
                    counts,
                    sources,
                    feeds,
                    noted,
                    changed: written.changed,
                })
            }
            Err(e) if e.fault() == Fault::BadData => {
                let mut report = isolate(ctx, batch, e, state).await?;
                report.counts.duplicates += duplicates;
                Ok(report)
            }
            Err(e) => Err(Failure::Fatal(e.to_string())),
        }
    })
}

/// Capped exponential backoff with jitter, forever.
fn retry_policy() -> ExponentialBuilder {
    crate::backoff::Backoff::new(RETRY_MIN, RETRY_MAX).builder()
}

/// Finds what the database refused. The quality-log rows are tried apart from the bars; the
/// bars are halved until the refused one is alone, and that one is logged instead of written.
async fn isolate(
    ctx: &WriterContext,
    mut batch: Batch,
    err: DbError,
    state: &mut WriterState,
) -> Result<BatchReport, Failure> {
    tracing::warn!(error = %err, rows = batch.entries.len(), "the database refused a batch; isolating the row");
    if !batch.entries.is_empty() && !batch.rejections.is_empty() {
        let mut log = Batch::new();
        log.rejections = std::mem::take(&mut batch.rejections);
        log.rejected_bars = std::mem::take(&mut batch.rejected_bars);
        let mut a = commit(ctx, log, state).await?;
        a.merge(commit(ctx, batch, state).await?);
        return Ok(a);
    }
    match batch.entries.len() {
        0 if batch.rejections.is_empty() => Err(Failure::Fatal(format!(
            "the database refuses the feeds' state changes: {err}"
        ))),
        0 => {
            if batch.rejections.iter().all(|r| r.check == SANITIZED) {
                return Err(Failure::Fatal(format!(
                    "the database refuses even minimal quality-log rows: {err}"
                )));
            }
            // Keep the fact of each rejection, in a form that cannot be refused.
            for r in &mut batch.rejections {
                *r = sanitized(r, &err);
            }
            commit(ctx, batch, state).await
        }
        1 => {
            let e = &batch.entries[0];
            let mut log = Batch::new();
            log.rejections.push(Rejection {
                details: json!({
                    "reason": err.to_string(),
                    "bar": bar_details(&e.bar, "refused by the database".into()),
                }),
                ..Rejection::of_bar(&e.bar, "database_refused", String::new())
            });
            log.rejected_bars = 1;
            log.acks = batch.acks;
            log.changes = batch.changes;
            commit(ctx, log, state).await
        }
        _ => {
            let (first, second) = batch.split();
            let mut a = commit(ctx, first, state).await?;
            a.merge(commit(ctx, second, state).await?);
            Ok(a)
        }
    }
}

const SANITIZED: &str = "unstorable_rejection";

fn sanitized(r: &Rejection, err: &DbError) -> Rejection {
    Rejection::rejected(
        r.source,
        r.symbol.as_ref().map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_graphic())
                .collect::<String>()
        }),
        // The timestamp itself may be what was refused (out of PostgreSQL's range).
        None,
        SANITIZED,
        json!({
            "original_check": r.check,
            "bar_timestamp": r.bar_timestamp.map(|t| t.to_rfc3339()),
            "reason": err.to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn retry_waits_never_pass_the_documented_cap() {
        let waits: Vec<Duration> = retry_policy().build().take(200).collect();
        assert_eq!(waits.len(), 200, "retries forever");
        assert!(waits.iter().all(|w| *w <= RETRY_MAX), "{waits:?}");
        assert!(waits.iter().any(|w| *w > RETRY_MAX / 2), "{waits:?}");
        assert!(waits[0] >= RETRY_MIN / 2);
    }
}
