//! `mdingest run`: the daemon. One supervisor for every enabled streaming source (today:
//! Polygon's stream), on the same driver as `import` and `backfill`:
//! - it starts while the database is down, retrying with backoff and saying so at most once a
//!   minute, and begins once the database answers;
//! - every configured symbol has its `stream` row in `ingestion_status` from the start;
//! - on start and after every reconnect, each feed gap-fills through REST from its committed
//!   `last_bar_timestamp` (inclusive) or `gap_fill_lookback_secs` back, up to now; the stream's
//!   data after the subscription covers the rest, so nothing falls between;
//! - SIGTERM/SIGINT: the sources stop, what is queued is committed, every feed becomes `idle`,
//!   exit 0; if that takes longer than `shutdown_timeout_secs`, the writers give up and the exit
//!   is 1, naming how many bars were not committed (the next start gap-fills them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, PolygonConfig};
use crate::db::{self, DbError};
use crate::domain::{DataSource, FeedState, Mode, Symbol, Timeframe};
use crate::ingest::{Chunk, Rejection};
use crate::shutdown::Shutdown;
use crate::sources::driver::{self, DriveError, Source, SourceContext, SourceEnd, Summary};
use crate::sources::polygon::stream::{PolygonEvent, PolygonStream, PolygonStreamError};
use crate::sources::polygon::{PolygonError, PolygonRest};
use crate::sources::ws::{Session, SessionEvent};

/// How often a database outage at start is logged.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Polygon(#[from] PolygonError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Stream(#[from] PolygonStreamError),
}

/// Runs the daemon until a signal. `None` when the signal came before the database answered.
pub async fn run(cfg: &Config, shutdown: &Shutdown) -> Result<Option<Summary>, RunError> {
    let polygon = streaming_polygon(cfg)?;
    let rest = PolygonRest::new(polygon)?;
    let stream = PolygonStream::new(polygon)?;
    if !wait_for_database(cfg, shutdown).await? {
        return Ok(None);
    }
    let deadline = arm_deadline(
        shutdown,
        Duration::from_secs(cfg.service.shutdown_timeout_secs),
    );
    let source = PolygonLive {
        rest,
        stream,
        timeframe: polygon.timeframe,
        symbols: polygon.symbols.clone(),
        lookback: Duration::from_secs(cfg.service.gap_fill_lookback_secs),
    };
    let summary = driver::drive(cfg, source, shutdown, false).await;
    deadline.abort();
    Ok(Some(summary?))
}

/// Polygon's live minute bars, gap-filled through REST on every (re)subscription.
struct PolygonLive {
    rest: PolygonRest,
    stream: PolygonStream,
    timeframe: Timeframe,
    symbols: Vec<Symbol>,
    lookback: Duration,
}

impl Source for PolygonLive {
    fn name(&self) -> &'static str {
        "run"
    }

    fn data_source(&self) -> DataSource {
        DataSource::Polygon
    }

    fn mode(&self) -> Mode {
        Mode::Stream
    }

    fn read_label(&self) -> &'static str {
        "received"
    }

    async fn run(self, ctx: SourceContext) -> SourceEnd {
        let mut end = SourceEnd::default();
        for s in &self.symbols {
            ctx.feeds().touched(s);
        }
        self.mark_running(&ctx).await;
        let session = match Session::new(self.stream.clone(), self.stream.session_config()) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                end.failed.push(format!("polygon stream: {e}"));
                return end;
            }
        };
        let (tx, mut rx) = mpsc::channel(64);
        let runner = {
            let (session, stop) = (session.clone(), ctx.stop().clone());
            tokio::spawn(async move { session.run(tx, stop).await })
        };
        // Gap-fills run beside the event loop: at 5 requests a minute they take minutes, and a
        // session that is not read is dropped by the vendor.
        let mut gap_fills = JoinSet::new();
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                Some(done) = gap_fills.join_next() => {
                    match done {
                        Ok(Err(e)) => tracing::error!(error = %e, "gap-fill failed; the next reconnect or start fills it"),
                        Ok(Ok(n)) => tracing::info!(bars = n, "gap-fill done"),
                        Err(_) => {}
                    }
                    continue;
                }
                _ = ctx.stop().cancelled() => break,
            };
            let Some(event) = event else { break };
            match event {
                SessionEvent::Subscribed { reconnect, at } => {
                    tracing::info!(
                        reconnect,
                        "polygon stream subscribed; gap-filling up to {at}"
                    );
                    self.mark_running(&ctx).await;
                    let (ctx, rest, symbols) =
                        (ctx.clone(), self.rest.clone(), self.symbols.clone());
                    let (timeframe, lookback) = (self.timeframe, self.lookback);
                    gap_fills.spawn(async move {
                        gap_fill(&ctx, &rest, &symbols, timeframe, lookback).await
                    });
                }
                SessionEvent::Data(events) => {
                    let (bars, rejections) = split(events);
                    if (!bars.is_empty() || !rejections.is_empty())
                        && ctx
                            .send(Chunk::new(Mode::Stream, bars, rejections))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                SessionEvent::Refused { refusal, retry_in } => {
                    tracing::error!(retry_in = ?retry_in, "{refusal}");
                    let text = refusal.to_string();
                    if let Err(e) = set_feeds(
                        &ctx,
                        &self.symbols,
                        self.timeframe,
                        FeedState::Error,
                        Some(&text),
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "cannot record the stream's error");
                    }
                }
                SessionEvent::Disconnected { reason, retry_in } => {
                    tracing::warn!(retry_in = ?retry_in, "polygon stream disconnected: {reason:?}");
                }
                // The session logged it already.
                SessionEvent::Notice { .. } => {}
            }
        }
        gap_fills.abort_all();
        let _ = runner.await;
        end
    }
}

impl PolygonLive {
    /// Every configured symbol's `stream` row, created if missing, `running`: at start (so an
    /// error shows before the first bar) and after every subscription (clearing an `error`).
    async fn mark_running(&self, ctx: &SourceContext) {
        let marked = set_feeds(ctx, &self.symbols, self.timeframe, FeedState::Running, None);
        if let Err(e) = marked.await {
            tracing::warn!(error = %e, "cannot mark the stream feeds running");
        }
    }
}

fn split(events: Vec<PolygonEvent>) -> (Vec<crate::domain::Bar>, Vec<Rejection>) {
    let mut bars = Vec::with_capacity(events.len());
    let mut rejections = Vec::new();
    for e in events {
        match e {
            PolygonEvent::Bar(b) => bars.push(b),
            PolygonEvent::Rejected(r) => rejections.push(r),
            PolygonEvent::Status(_) => {}
        }
    }
    (bars, rejections)
}

/// The stream rows of every configured symbol: created if missing, set to `state` (and
/// `last_error`, when given).
async fn set_feeds(
    ctx: &SourceContext,
    symbols: &[Symbol],
    timeframe: Timeframe,
    state: FeedState,
    error: Option<&str>,
) -> Result<(), DbError> {
    let client = db::get(ctx.pool()).await?;
    db::status::ensure_feeds(
        &client,
        DataSource::Polygon,
        Mode::Stream,
        timeframe,
        symbols,
        state,
    )
    .await?;
    if let Some(e) = error {
        db::status::record_error(
            &client,
            DataSource::Polygon,
            Mode::Stream,
            symbols,
            state,
            e,
        )
        .await?;
    }
    Ok(())
}

/// The streaming source to run: `sources.polygon`, enabled, with `stream = true`.
pub fn streaming_polygon(cfg: &Config) -> Result<&PolygonConfig, RunError> {
    cfg.sources
        .polygon
        .as_ref()
        .filter(|p| p.enabled && p.stream)
        .ok_or_else(|| {
            RunError::Usage(
                "no streaming source is enabled: set sources.polygon.enabled and stream = true"
                    .into(),
            )
        })
}

/// Waits until the database answers and is migrated. `Ok(false)` when a signal came first.
pub async fn wait_for_database(cfg: &Config, shutdown: &Shutdown) -> Result<bool, RunError> {
    let pool = db::pool(&cfg.database)?;
    let shown = cfg.database.url.redacted();
    let mut wait = Duration::from_secs(1);
    let mut last_log: Option<Instant> = None;
    let since = Utc::now();
    let stop = shutdown.stop_token();
    loop {
        let answer = async {
            db::ping(&pool, &shown).await?;
            db::migrate::check_current(&*db::get(&pool).await?).await
        };
        match answer.await {
            Ok(()) => {
                if last_log.is_some() {
                    tracing::info!(
                        "the database answers again (down since {})",
                        since.format("%H:%M:%SZ")
                    );
                }
                return Ok(true);
            }
            // Only an operator can fix that: say so and stop.
            Err(e @ DbError::NotMigrated(_)) => return Err(e.into()),
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= OUTAGE_LOG_EVERY) {
                    tracing::error!(error = %e, "the database is unavailable; retrying (logged once a minute)");
                    last_log = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return Ok(false),
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Gives up on uncommitted bars `timeout` after the first signal.
pub fn arm_deadline(shutdown: &Shutdown, timeout: Duration) -> tokio::task::JoinHandle<()> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let stop = shutdown.stop_token();
        stop.cancelled().await;
        tokio::time::sleep(timeout).await;
        if !shutdown.abandon_token().is_cancelled() {
            tracing::error!(
                "shutdown_timeout_secs ({}s) passed: giving up on what is not committed",
                timeout.as_secs()
            );
            shutdown.give_up();
        }
    })
}

/// Fetches every symbol's bars through REST from its committed last bar (inclusive, so a
/// corrected last bar is picked up) or `lookback` back, up to now, into the stream feeds.
/// Returns the bars fetched.
pub async fn gap_fill(
    ctx: &SourceContext,
    rest: &PolygonRest,
    symbols: &[Symbol],
    timeframe: Timeframe,
    lookback: Duration,
) -> Result<u64, RunError> {
    let last = {
        let client = db::get(ctx.pool()).await?;
        db::status::last_bars(&client, DataSource::Polygon, Mode::Stream, symbols).await?
    };
    let now = Utc::now();
    let default_from: DateTime<Utc> =
        now - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::days(1));
    let mut fetched = 0u64;
    for symbol in symbols {
        let from = last.get(symbol.as_str()).copied().unwrap_or(default_from);
        let mut pages = rest.pages(symbol, timeframe, from, now);
        while let Some(page) = pages.next().await? {
            fetched += (page.bars.len() + page.rejections.len()) as u64;
            if page.bars.is_empty() && page.rejections.is_empty() {
                continue;
            }
            let chunk = Chunk::new(Mode::Stream, page.bars, page.rejections);
            if ctx.send(chunk).await.is_err() {
                return Ok(fetched);
            }
        }
        tracing::debug!(symbol = %symbol, from = %from, "gap-filled");
    }
    Ok(fetched)
}

/// Exit code of the daemon: a signal is its normal end.
pub fn exit_code(summary: &Summary) -> u8 {
    u8::from(summary.not_committed.is_some() || !summary.failed.is_empty())
}
