//! A writer: commits each batch of its shard, retrying database trouble until it succeeds, and
//! only then tells the producers.
//!
//! Errors are handled by kind: connection loss, restarts and serialization failures are retried
//! with capped exponential backoff, forever (a batch is never dropped); bad data (SQLSTATE classes
//! 22 and 23, which validation should have caught) is isolated by halving the batch until the one
//! refused bar is found and logged; anything else (a missing table, no privilege) stops the
//! pipeline with the database's message, since retrying cannot fix it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;

use super::{Batch, BatchReport, PipelineError, Rejection, Totals, WriterContext};
use crate::db::{self, writer, DbError};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(crate) async fn write_loop(
    shard: usize,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    ctx: WriterContext,
) -> Result<Totals, PipelineError> {
    let mut state = WriterState {
        totals: Totals::default(),
        expect_new: true,
    };
    let mut uncommitted = 0u64;
    while let Some(batch) = rx.recv().await {
        if ctx.abandon.is_cancelled() {
            uncommitted += batch.entries.len() as u64;
            continue;
        }
        let acks = batch.acks.clone();
        let n = batch.entries.len() as u64;
        match commit(&ctx, batch, &mut state).await {
            Ok(report) => {
                let totals = &mut state.totals;
                totals.batches += 1;
                totals.counts.add(&report.counts);
                for ack in &acks {
                    let _ = ack.send(report.clone());
                }
            }
            Err(Failure::Abandoned) => uncommitted += n,
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
}

enum Failure {
    Abandoned,
    Fatal(String),
}

type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<BatchReport, Failure>> + Send + 'a>>;

/// Boxed because it recurses on the halves of a batch the database refuses.
fn commit<'a>(
    ctx: &'a WriterContext,
    mut batch: Batch,
    state: &'a mut WriterState,
) -> CommitFuture<'a> {
    Box::pin(async move {
        batch.dedup();
        let feeds = batch.feeds(|s| ctx.timeframes.of(s));
        let expect_new = state.expect_new;
        let attempt = || async {
            let mut client = ctx
                .pool
                .get()
                .await
                .map_err(|e| DbError::Pool(db::pool_error_reason(&e)))?;
            writer::write_batch(&mut client, &batch, &feeds, expect_new).await
        };
        let mut retries = 0u64;
        let retried = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(RETRY_MIN)
                    .with_max_delay(RETRY_MAX)
                    .with_jitter()
                    .without_max_times(),
            )
            .when(|e: &DbError| e.is_retriable())
            .notify(|e, wait| {
                retries += 1;
                tracing::warn!(error = %e, retry_in = ?wait, rows = batch.entries.len(), "batch not committed; retrying");
            });
        let result = tokio::select! {
            r = retried => r,
            _ = ctx.abandon.cancelled() => return Err(Failure::Abandoned),
        };
        match result {
            Ok(mut counts) => {
                state.totals.retries += retries;
                state.expect_new = counts.inserted == batch.entries.len() as u64;
                counts.rejected = batch.rejected_bars;
                Ok(BatchReport { counts, feeds })
            }
            Err(e) if is_bad_data(&e) => bisect(ctx, batch, e, state).await,
            Err(e) => Err(Failure::Fatal(e.to_string())),
        }
    })
}

fn is_bad_data(e: &DbError) -> bool {
    match e {
        DbError::Query(pg) => pg
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
        _ => false,
    }
}

/// Halves the batch until the refused bar is alone, then logs it instead of writing it.
async fn bisect(
    ctx: &WriterContext,
    batch: Batch,
    err: DbError,
    state: &mut WriterState,
) -> Result<BatchReport, Failure> {
    if batch.entries.len() <= 1 {
        let mut only_log = Batch::new();
        only_log.rejections = batch.rejections;
        only_log.rejected_bars = batch.rejected_bars;
        if let Some(e) = batch.entries.first() {
            only_log.rejections.push(Rejection {
                check: "database_refused",
                details: json!({
                    "reason": err.to_string(),
                    "bar": super::validate::bar_details(&e.bar, "refused by the database".into()),
                }),
                ..Rejection::of_bar(&e.bar, "database_refused", String::new())
            });
            only_log.rejected_bars += 1;
        } else {
            // The quality-log rows themselves were refused: nothing smaller to try.
            return Err(Failure::Fatal(err.to_string()));
        }
        return commit(ctx, only_log, state).await;
    }
    let (first, second) = batch.split();
    let mut a = commit(ctx, first, state).await?;
    let b = commit(ctx, second, state).await?;
    a.counts.add(&b.counts);
    a.feeds.extend(b.feeds);
    Ok(a)
}
