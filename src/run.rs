//! `mdingest run`: the daemon. Every enabled vendor's stream, and the polls of those without one
//! (`crate::poll`), at once, each a source of the same driver (one pool, one pipeline) as
//! `import` and `backfill`; one vendor refused never stops the others:
//! - it starts while the database is down, retrying with backoff and saying so at most once a
//!   minute, and begins once the database answers;
//! - every configured symbol has its `stream` row in `ingestion_status` from the start;
//! - on start and after every reconnect, each feed's gap (from its committed
//!   `last_bar_timestamp`, inclusive, or `gap_fill_lookback_secs` back, up to the subscription)
//!   is recorded as a `stream` task of the work queue before any bar of the new connection is
//!   sent on; gap workers fill pending gaps through REST, each done only once its bars are
//!   committed, a failed one retried with backoff (and on every start), one symbol's failure
//!   apart from the others'. The stream's data after the subscription covers the rest;
//! - only bars of subscribed symbols, at most a day older than their connection, are stored;
//! - SIGTERM/SIGINT: the sources stop, what is queued is committed, every feed becomes `idle`,
//!   exit 0; if that takes longer than `shutdown_timeout_secs`, the writers give up and the exit
//!   is 1, naming how many bars were not committed (the next start gap-fills them).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backfill::{feed_of, fetch_task, with_lease};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::db::backfill as queue;
use crate::db::{self, DbError};
use crate::domain::{Bar, DataSource, Mode, Symbol};
use crate::ingest::{Chunk, Feed, FeedChange, Rejection, Transition};
use crate::poll::PollFeed;
use crate::shutdown::Shutdown;
use crate::sources::driver::{self, DriveError, Ops, Source, SourceContext, SourceEnd, Summary};
use crate::sources::ws::SessionEvent;
use crate::sources::{window_text, Item, Live, SourceError, Vendor};
use crate::telemetry::{self, health::Health};

/// How often a database outage at start is logged.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);
/// The daemon's waits for the database (at start, for its gaps, in the gap workers).
const DB_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Drive(#[from] DriveError),
}

/// Runs the daemon until a signal. `None` when the signal came before the database answered.
pub async fn run(cfg: &Config, shutdown: &Shutdown) -> Result<Option<Summary>, RunError> {
    let vendors = daemon_vendors(cfg)?;
    // Up before the database: `/readyz` says why the daemon is not ready while it waits.
    let health = Arc::new(Health::with_sources(vendors.iter().map(|v| v.name)));
    let serving = CancellationToken::new();
    let _stop_serving = serving.clone().drop_guard();
    serve_operations(cfg, &vendors, &health, shutdown, &serving).await?;
    if !wait_for_database(cfg, shutdown).await? {
        return Ok(None);
    }
    forget_old_gaps(cfg).await;
    let deadline = arm_deadline(
        shutdown,
        Duration::from_secs(cfg.service.shutdown_timeout_secs),
    );
    let lookback = Duration::from_secs(cfg.service.gap_fill_lookback_secs);
    let max_age = chrono::Duration::seconds(
        i64::try_from(cfg.service.stream_max_bar_age_secs).unwrap_or(i64::MAX / 1000),
    );
    let mut sources = Vec::new();
    for vendor in vendors {
        if let Some(live) = vendor.live.clone() {
            sources.push(Daemon::Live(LiveFeed {
                vendor: vendor.clone(),
                live,
                lookback,
                max_age,
            }));
        }
        if let Some(every) = vendor.poll {
            sources.push(Daemon::Poll(PollFeed { vendor, every }));
        }
    }
    let ops = Ops {
        health,
        notify_ready: true,
    };
    let summary = driver::drive(cfg, sources, shutdown, false, ops).await;
    deadline.abort();
    Ok(Some(summary?))
}

/// The daemon's side for operators: metrics, `/healthz` and `/readyz` on `metrics.listen` (a
/// port already taken is an error now), the database probe behind readiness, and systemd's
/// watchdog, STATUS= and STOPPING=1. All stop with `serving`.
async fn serve_operations(
    cfg: &Config,
    vendors: &[Vendor],
    health: &Arc<Health>,
    shutdown: &Shutdown,
    serving: &CancellationToken,
) -> Result<(), RunError> {
    let listener = telemetry::http::bind(&cfg.metrics.listen)
        .await
        .map_err(|e| RunError::Usage(e.to_string()))?;
    let sources: Vec<DataSource> = vendors
        .iter()
        .flat_map(|v| v.history.writes(v.source))
        .collect();
    let streaming: Vec<&'static str> = vendors
        .iter()
        .filter(|v| v.live.is_some())
        .map(|v| v.name)
        .collect();
    let handle =
        telemetry::install(&sources, &streaming).map_err(|e| RunError::Usage(e.to_string()))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("metrics on http://{addr}/metrics (and /healthz, /readyz)");
    }
    telemetry::http::serve(listener, handle, health.clone(), serving.clone());
    let pool = db::pool(&cfg.database)?;
    let (probe, stop) = (health.clone(), serving.clone());
    tokio::spawn(async move { probe.probe_database(pool, stop).await });
    if let Some(period) = crate::systemd::watchdog_period() {
        tokio::spawn(crate::systemd::watchdog(
            health.clone(),
            period,
            serving.clone(),
        ));
    }
    tokio::spawn(crate::systemd::report_status(
        health.clone(),
        serving.clone(),
    ));
    let (stopping, stop) = (shutdown.stop_token(), serving.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = stopping.cancelled() => crate::systemd::stopping(),
            _ = stop.cancelled() => {}
        }
    });
    Ok(())
}

/// The enabled vendors that stream or poll; an error when there is none.
pub fn daemon_vendors(cfg: &Config) -> Result<Vec<Vendor>, RunError> {
    let vendors: Vec<Vendor> = crate::sources::enabled(cfg)?
        .into_iter()
        .filter(|v| v.live.is_some() || v.poll.is_some())
        .collect();
    if vendors.is_empty() {
        return Err(RunError::Usage(
            "no streaming or polling source is enabled: enable a source that streams (stream = true) or polls (see config/mdingest.toml)"
                .into(),
        ));
    }
    Ok(vendors)
}

/// What the daemon runs side by side: streams (with their gap-fills) and polls.
enum Daemon {
    Live(LiveFeed),
    Poll(PollFeed),
}

impl Source for Daemon {
    fn name(&self) -> &'static str {
        "run"
    }

    fn read_label(&self) -> &'static str {
        "received"
    }

    async fn run(self, ctx: SourceContext) -> SourceEnd {
        match self {
            Daemon::Live(l) => l.run(ctx).await,
            Daemon::Poll(p) => p.run(ctx).await,
        }
    }
}

/// Every reconnect records a gap a feed: the done ones are forgotten after a week.
async fn forget_old_gaps(cfg: &Config) {
    let pruned = async {
        let pool = db::pool(&cfg.database)?;
        let client = db::get(&pool).await?;
        queue::prune_gaps(&client).await
    };
    match pruned.await {
        Ok(n) => tracing::debug!(gaps = n, "old done gaps forgotten"),
        Err(e) => tracing::warn!(error = %e, "cannot forget old gaps"),
    }
}

/// One vendor's live bars, gap-filled through its history on every (re)subscription.
struct LiveFeed {
    vendor: Vendor,
    live: Arc<dyn Live>,
    lookback: Duration,
    /// `service.stream_max_bar_age_secs`.
    max_age: chrono::Duration,
}

/// Gap workers per vendor: each fetches one gap at a time, so a symbol whose gap keeps failing
/// holds up one of them at most; the vendor's rate limit paces them all together.
const GAP_WORKERS: usize = 4;
/// A gap worker with nothing to do looks for gaps whose backoff has passed this often.
const GAP_POLL: Duration = Duration::from_secs(2);

impl LiveFeed {
    /// A connection (or an attempt at one) ended; the session tries again.
    fn disconnected(&self, ctx: &SourceContext) {
        telemetry::connected(self.vendor.name, false);
        telemetry::reconnected(self.vendor.name);
        ctx.health().source(self.vendor.name, false);
    }

    async fn run(self, ctx: SourceContext) -> SourceEnd {
        let mut end = SourceEnd::default();
        let name = self.vendor.name;
        let feeds = self.feeds();
        for f in &feeds {
            ctx.feeds().touched(f);
        }
        // Every configured symbol has its row from the start, so an error shows before the
        // first bar.
        if self.change(&ctx, Transition::Start).await.is_err() {
            return end;
        }
        let gaps = Arc::new(GapFill {
            ctx: ctx.clone(),
            vendor: self.vendor.clone(),
            wake: Notify::new(),
            fetched: AtomicU64::new(0),
        });
        // Gap-fills run beside the event loop: at 5 requests a minute they take minutes, and a
        // session that is not read is dropped by the vendor. Pending gaps of an earlier run
        // are taken up at once.
        let mut workers = JoinSet::new();
        for _ in 0..GAP_WORKERS {
            workers.spawn(gaps.clone().worker());
        }
        // Memory is bounded in bars, not frames: a frame may carry a hundred thousand events
        // (16 MiB), so the session hands over one at a time, and the queue (bounded in bars)
        // holds the rest back.
        let (tx, mut rx) = mpsc::channel(1);
        let runner = {
            let (live, stop) = (self.live.clone(), ctx.stop().clone());
            tokio::spawn(async move { live.run(tx, stop).await })
        };
        let subscribed: HashSet<Symbol> = self.vendor.symbols.iter().cloned().collect();
        // When the current connection was subscribed; `None` between connections.
        let mut connection: Option<DateTime<Utc>> = None;
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = ctx.stop().cancelled() => break,
            };
            let Some(event) = event else { break };
            let sent = match event {
                SessionEvent::Subscribed { reconnect, at } => {
                    telemetry::connected(name, true);
                    ctx.health().source(name, true);
                    tracing::info!(
                        reconnect,
                        "{name} stream subscribed; gap-filling up to {at}"
                    );
                    // Recorded before this connection's first bar goes to the writers: once
                    // one commits, `last_bar_timestamp` is past the gap.
                    if !self.record_gaps(&ctx, at).await {
                        break;
                    }
                    gaps.wake.notify_waiters();
                    connection = Some(at);
                    Ok(())
                }
                SessionEvent::Data(items) => {
                    // Older bars are history, which comes through REST: a stream sending them
                    // is confused or lying.
                    let since = connection.unwrap_or_else(Utc::now) - self.max_age;
                    send_frame(&ctx, items, &subscribed, since).await
                }
                SessionEvent::Refused { refusal, retry_in } => {
                    self.disconnected(&ctx);
                    tracing::error!(retry_in = ?retry_in, "{refusal}");
                    connection = None;
                    self.change(&ctx, Transition::Failed(refusal.to_string()))
                        .await
                }
                SessionEvent::Disconnected { reason, retry_in } => {
                    self.disconnected(&ctx);
                    tracing::warn!(retry_in = ?retry_in, "{name} stream disconnected: {reason:?}");
                    // A connection that never got as far as its subscription (no answer to
                    // the login, closed at once) is a failure the feeds must show.
                    if connection.take().is_none() {
                        let text = format!(
                            "{name} stream: {reason}; retrying in {:.0} s",
                            retry_in.as_secs_f64()
                        );
                        self.change(&ctx, Transition::Failed(text)).await
                    } else {
                        Ok(())
                    }
                }
                // The session logged it already.
                SessionEvent::Notice { .. } => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        let _ = runner.await;
        end.lines.push((
            "gap-filled",
            gaps.fetched.load(Ordering::Relaxed).to_string(),
        ));
        end
    }
}

impl LiveFeed {
    fn feeds(&self) -> Vec<Feed> {
        let v = &self.vendor;
        v.symbols
            .iter()
            .map(|s| Feed {
                source: v.source,
                symbol: s.clone(),
                mode: Mode::Stream,
                timeframe: v.timeframe,
            })
            .collect()
    }

    /// The same change for every configured symbol's `stream` feed, behind its queued bars.
    async fn change(
        &self,
        ctx: &SourceContext,
        to: Transition,
    ) -> Result<(), crate::pipeline::PipelineClosed> {
        ctx.change_all(self.feeds(), &to).await
    }

    /// Records every feed's gap up to the subscription at `at`, retrying while the database
    /// does not answer. False when the run stopped first (then no bar of the new connection
    /// was sent, and the next start gap-fills from the same last bar).
    async fn record_gaps(&self, ctx: &SourceContext, at: DateTime<Utc>) -> bool {
        let v = &self.vendor;
        let default_from =
            at - chrono::Duration::from_std(self.lookback).unwrap_or(chrono::Duration::days(1));
        let mut waits = DB_RETRY.waits();
        loop {
            let wait = waits.next_wait();
            let recorded = async {
                let client = db::get(ctx.pool()).await?;
                queue::record_gaps(&client, v.source, v.timeframe, &v.symbols, default_from, at)
                    .await
            };
            match recorded.await {
                Ok(n) => {
                    tracing::debug!(gaps = n, "stream gaps recorded");
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait,
                    "cannot record the stream's gaps yet; holding its data until they are"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.stop().cancelled() => return false,
            }
        }
    }
}

/// The daemon's gap-fills: pending `stream` tasks of the work queue, claimed and fetched
/// through the vendor's history into the feeds' `stream` rows, each done only once its bars are
/// committed. A gap that fails waits out its backoff (kept in the queue) and is tried again;
/// the others go on meanwhile.
struct GapFill {
    ctx: SourceContext,
    vendor: Vendor,
    /// Told when new gaps are recorded.
    wake: Notify,
    /// Bars fetched by gap-fills.
    fetched: AtomicU64,
}

impl GapFill {
    /// Claims and fills gaps until the run stops. Its session is its own, outside the pool
    /// (the claim belongs to it: if the process dies, the gap is free at once); a database
    /// error costs the session and is retried on a new one.
    async fn worker(self: Arc<Self>) {
        let mut waits = DB_RETRY.waits();
        while !self.ctx.stop().is_cancelled() {
            let wait = waits.next_wait();
            match self.fill_gaps().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait,
                    "a gap-fill worker lost the database; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.ctx.stop().cancelled() => return,
            }
        }
    }

    async fn fill_gaps(&self) -> Result<(), DbError> {
        let database = &self.ctx.config().database;
        let client = db::connect(
            &db::parse_url(database.url.expose())?,
            &database.url.redacted(),
        )
        .await?;
        let v = &self.vendor;
        loop {
            if self.ctx.stop().is_cancelled() {
                return Ok(());
            }
            let claimed = queue::claim_gap(&client, v.source, v.timeframe, &v.symbols);
            let Some(task) = claimed.await? else {
                let woken = self.wake.notified();
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(GAP_POLL) => {}
                    _ = self.ctx.stop().cancelled() => return Ok(()),
                }
                continue;
            };
            let window = window_text(task.start, task.end);
            let work = fetch_task(&self.ctx, &*v.history, &task, &self.fetched);
            match with_lease(&client, std::slice::from_ref(&task), work).await {
                Ok(Some((bars, settled))) => {
                    let done = queue::finish(&client, &task, bars, settled).await?;
                    tracing::info!(symbol = %task.symbol, bars, done, "gap-filled {window}");
                }
                // Stopped: the gap stays pending for the next start.
                Ok(None) => {
                    let released = queue::release(&client, &task, None);
                    let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
                    return Ok(());
                }
                Err(e) => {
                    let text =
                        format!("gap-fill {window} failed: {e}; it stays pending and is retried");
                    tracing::error!(symbol = %task.symbol, "{text}");
                    queue::release(&client, &task, Some(&text)).await?;
                    let change = FeedChange {
                        feed: feed_of(&task),
                        to: Transition::Failed(text),
                    };
                    if self.ctx.change(vec![change]).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Items of a frame turned into bars and rejections at a time: a rejection holds about 1 KB,
/// so a frame of 100,000 refused events is never held as rejections all at once.
const SEND_SLICE: usize = 4096;

/// Hands a frame's items to the pipeline, a slice at a time (each waits for room in the
/// queue, which is bounded in bars).
async fn send_frame(
    ctx: &SourceContext,
    items: Vec<Item>,
    subscribed: &HashSet<Symbol>,
    since: DateTime<Utc>,
) -> Result<(), crate::pipeline::PipelineClosed> {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let slice = items.by_ref().take(SEND_SLICE);
        let (bars, rejections) = split(slice, subscribed, since);
        if !bars.is_empty() || !rejections.is_empty() {
            ctx.send(Chunk::new(Mode::Stream, bars, rejections)).await?;
        }
    }
    Ok(())
}

/// A frame's bars and rejections. Only bars of subscribed symbols, and not older than `since`,
/// are stored: anything else is a quality record.
fn split(
    items: impl Iterator<Item = Item>,
    subscribed: &HashSet<Symbol>,
    since: DateTime<Utc>,
) -> (Vec<Bar>, Vec<Rejection>) {
    let mut bars = Vec::with_capacity(items.size_hint().0);
    let mut rejections = Vec::new();
    for item in items {
        match item {
            Item::Bar(b) if !subscribed.contains(&b.symbol) => {
                rejections.push(Rejection::of_bar(
                    &b,
                    "unsubscribed_symbol",
                    "the stream sent a bar for a symbol that was not subscribed".into(),
                ));
            }
            Item::Bar(b) if b.timestamp < since => {
                rejections.push(Rejection::of_bar(
                    &b,
                    "stale_stream_bar",
                    format!(
                        "the stream sent a bar from before {}: history comes through REST",
                        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ));
            }
            Item::Bar(b) => bars.push(b),
            Item::Rejected(r) => rejections.push(r),
        }
    }
    (bars, rejections)
}

/// Waits until the database answers and is migrated. `Ok(false)` when a signal came first.
pub async fn wait_for_database(cfg: &Config, shutdown: &Shutdown) -> Result<bool, RunError> {
    let pool = db::pool(&cfg.database)?;
    let shown = cfg.database.url.redacted();
    let mut waits = DB_RETRY.waits();
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
            _ = tokio::time::sleep(waits.next_wait()) => {}
            _ = stop.cancelled() => return Ok(false),
        }
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

/// Exit code of the daemon: a signal is its normal end.
pub fn exit_code(summary: &Summary) -> u8 {
    u8::from(summary.not_committed.is_some() || !summary.failed.is_empty())
}
