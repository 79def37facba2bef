//! One driver for every command (`import`, `backfill`, `run`): checks the database, starts the
//! pipeline, runs its sources side by side, then commits what was read, ends each feed
//! `completed`, `idle` or `error` (a state change queued behind the feed's last bar, applied by
//! the writer like every other), collects the rejected rows (up to 20) and returns the summary.
//!
//! Shutdown: the first signal stops the source (it stops reading and returns), and what was read
//! is committed; the second gives up waiting for the database and counts what was not committed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::domain::{DataSource, FeedState, Symbol};
use crate::events::Announcer;
use crate::ingest::{
    AckTx, BatchReport, Chunk, Feed, FeedChange, Transition, WriteCounts, NOTED_REJECTIONS,
};
use crate::pipeline::{Pipeline, PipelineClosed, PipelineError, Queue};
use crate::shutdown::{Shutdown, Signal};
use crate::telemetry::health::Health;

/// A blocked wait says so after this long, and again at this interval.
const WAIT_NOTICE: Duration = Duration::from_secs(5);
/// The feeds' end after the writers failed must not hold the exit when the database is gone.
const LATE_END_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the queued sync events may take to publish once everything is committed.
const EVENTS_GRACE: Duration = Duration::from_secs(2);
/// After giving up on the database, how long the feeds' end may still take.
const GIVEN_UP_GRACE: Duration = Duration::from_millis(500);
/// A producer of bars. `run` hands chunks to `ctx` until its input ends or `ctx.stop()` fires,
/// records each feed's outcome in `ctx.feeds()` (a feed may be of any data source and mode), and
/// returns the failures to report (one line each) and extra summary lines.
pub trait Source: Send {
    /// The command's name in logs and the summary (`import`, `backfill`).
    fn name(&self) -> &'static str;
    /// What the summary calls the rows taken in ("rows read", "fetched").
    fn read_label(&self) -> &'static str;
    fn run(self, ctx: SourceContext) -> impl Future<Output = SourceEnd> + Send;
}

/// A barrier queued by [`SourceContext::barrier`].
pub struct Barrier(mpsc::UnboundedReceiver<BatchReport>);

impl Barrier {
    /// Resolves once every bar sent before the barrier is committed; None if given up.
    pub async fn committed(mut self) -> Option<()> {
        self.0.recv().await.map(|_| ())
    }
}

/// What a source says when it returns.
#[derive(Debug, Default)]
pub struct SourceEnd {
    /// Failures to name on stderr (a file, a symbol); the rest loaded.
    pub failed: Vec<String>,
    /// Extra summary lines before the counts (`files 3`, `tasks 12`).
    pub lines: Vec<(&'static str, String)>,
}

/// What a source is given: where to send chunks, when to stop, where to record feed outcomes.
#[derive(Clone)]
pub struct SourceContext {
    queue: Queue,
    ack: AckTx,
    stop: CancellationToken,
    read: Arc<AtomicU64>,
    committed: Arc<Mutex<WriteCounts>>,
    feeds: FeedTracker,
    pool: Pool,
    config: Arc<Config>,
    show_progress: bool,
    health: Arc<Health>,
}

/// What the daemon adds around a drive; the other commands take the default.
#[derive(Clone, Default)]
pub struct Ops {
    /// Told which sources are healthy and how the pipeline moves (`/readyz`, the watchdog).
    pub health: Arc<Health>,
    /// Tell systemd READY=1 once the database is checked and the pipeline runs.
    pub notify_ready: bool,
}

impl SourceContext {
    /// Where a source says whether it is healthy (`/readyz`).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Queues a chunk (waiting while the queue is full, and saying so when that lasts); its
    /// batches report to the driver once committed.
    pub async fn send(&self, chunk: Chunk) -> Result<(), PipelineClosed> {
        let read = (chunk.bars.len() + chunk.rejections.len()) as u64;
        self.send_counted(chunk, read).await
    }

    /// [`send`](Self::send), counting `read` rows taken in (a vendor row that becomes bars of
    /// two data sources is one row read).
    pub async fn send_counted(&self, mut chunk: Chunk, read: u64) -> Result<(), PipelineClosed> {
        self.read.fetch_add(read, Ordering::Relaxed);
        if chunk.ack.is_none() {
            chunk.ack = Some(self.ack.clone());
        }
        chunk.received.get_or_insert_with(Instant::now);
        let depth = self.queue.clone();
        waiting_noted(self.queue.send(chunk), move || {
            format!(
                "the queue is full ({} bars waiting for the database)",
                depth.depth()
            )
        })
        .await
    }

    /// Queues feed state changes behind every bar sent before them (see `Transition`).
    pub async fn change(&self, changes: Vec<FeedChange>) -> Result<(), PipelineClosed> {
        self.send(Chunk::changes(changes)).await
    }

    /// The same change for each of `feeds`.
    pub async fn change_all(
        &self,
        feeds: impl IntoIterator<Item = Feed>,
        to: &Transition,
    ) -> Result<(), PipelineClosed> {
        let changes = feeds
            .into_iter()
            .map(|feed| FeedChange {
                feed,
                to: to.clone(),
            })
            .collect();
        self.change(changes).await
    }

    /// One feed of a load failed: shown at once, and it ends `error` whatever else loads.
    pub async fn failed(&self, feed: &Feed, error: &str) -> Result<(), PipelineClosed> {
        self.feeds.failed(feed, error);
        self.change(vec![FeedChange {
            feed: feed.clone(),
            to: Transition::Failed(error.to_string()),
        }])
        .await
    }

    /// Resolves once every bar of `symbol` sent before it (on this queue) is committed: the
    /// barrier rides behind them through the symbol's one writer. None if given up.
    pub async fn committed_through(&self, symbol: &Symbol) -> Option<()> {
        self.barrier(symbol).await?.committed().await
    }

    /// Queues a barrier behind every bar of `symbol` sent so far, to be awaited later (a
    /// backfill worker goes on to its next window meanwhile). None if the queue is closed.
    pub async fn barrier(&self, symbol: &Symbol) -> Option<Barrier> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.queue
            .send(Chunk::barrier(symbol.clone(), tx))
            .await
            .ok()?;
        Some(Barrier(rx))
    }

    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn feeds(&self) -> &FeedTracker {
        &self.feeds
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn show_progress(&self) -> bool {
        self.show_progress
    }

    /// Rows handed to the pipeline so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// What committed batches have reported so far.
    pub fn committed(&self) -> WriteCounts {
        self.committed.lock().map(|c| *c).unwrap_or_default()
    }
}

/// Each feed's outcome, kept by the sources as they go and queued by the driver at the end.
#[derive(Clone, Default)]
pub struct FeedTracker {
    outcomes: Arc<Mutex<HashMap<Feed, Option<String>>>>,
}

impl FeedTracker {
    /// The feed took bars (it ends `completed`, or `idle` if interrupted) unless it failed.
    pub fn touched(&self, feed: &Feed) {
        if let Ok(mut m) = self.outcomes.lock() {
            m.entry(feed.clone()).or_insert(None);
        }
    }

    /// The feed failed: it ends `error` with this message, whatever else loaded it.
    pub fn failed(&self, feed: &Feed, error: &str) {
        if let Ok(mut m) = self.outcomes.lock() {
            m.insert(feed.clone(), Some(error.to_string()));
        }
    }

    fn take(&self) -> HashMap<Feed, Option<String>> {
        self.outcomes
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("write pipeline failed: {0}")]
    Pipeline(PipelineError),
}

#[derive(Debug, Default)]
pub struct Summary {
    pub what: &'static str,
    pub read_label: &'static str,
    pub lines: Vec<(&'static str, String)>,
    pub read: u64,
    pub counts: WriteCounts,
    /// The same counts per data source (in `DataSource` order), shown when there are several.
    pub by_source: Vec<(DataSource, WriteCounts)>,
    pub seconds: f64,
    pub failed: Vec<String>,
    /// Warning lines for the console (the rejected rows, named), printed before the summary.
    pub warnings: Vec<String>,
    /// The signal that stopped the run early.
    pub interrupted: Option<Signal>,
    /// Bars read but given up on (a second signal while the database did not answer).
    pub not_committed: Option<u64>,
}

impl Summary {
    /// 0, 1 when something failed, 128 + the signal's number when a signal stopped the run.
    pub fn exit_code(&self) -> u8 {
        match self.interrupted {
            Some(s) => s.exit_code(),
            None if !self.failed.is_empty() || self.not_committed.is_some() => 1,
            None => 0,
        }
    }
}

impl Summary {
    /// The summary as one JSON object (`backfill --json`, `import --json`): the counts in all
    /// and per data source, the command's own lines, what failed, and how the run ended.
    pub fn to_json(&self) -> serde_json::Value {
        let counts = |c: &WriteCounts| {
            serde_json::json!({
                "inserted": c.inserted,
                "updated": c.updated,
                "unchanged": c.unchanged,
                "rejected": c.rejected,
            })
        };
        let by_source: serde_json::Map<String, serde_json::Value> = self
            .by_source
            .iter()
            .map(|(s, c)| (s.as_str().to_string(), counts(c)))
            .collect();
        let lines: serde_json::Map<String, serde_json::Value> = self
            .lines
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
            .collect();
        serde_json::json!({
            "command": self.what,
            "read_label": self.read_label,
            "read": self.read,
            "inserted": self.counts.inserted,
            "updated": self.counts.updated,
            "unchanged": self.counts.unchanged,
            "rejected": self.counts.rejected,
            "duplicates": self.counts.duplicates,
            "by_source": by_source,
            "details": lines,
            "failed": self.failed,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "interrupted_by": self.interrupted.map(|s| s.name()),
            "not_committed": self.not_committed,
            "exit_code": self.exit_code(),
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.seconds > 0.0 {
            self.read as f64 / self.seconds
        } else {
            0.0
        };
        let mut lines = self.lines.clone();
        lines.extend([
            (self.read_label, self.read.to_string()),
            ("inserted", self.counts.inserted.to_string()),
            ("updated", self.counts.updated.to_string()),
            ("unchanged", self.counts.unchanged.to_string()),
            ("rejected", self.counts.rejected.to_string()),
            ("duplicates", self.counts.duplicates.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("rows/s", format!("{rate:.0}")),
        ]);
        writeln!(f, "{} summary", self.what)?;
        for (k, v) in lines {
            writeln!(f, "  {k:<10} {v:>12}")?;
        }
        if self.by_source.len() > 1 {
            for (source, c) in &self.by_source {
                writeln!(
                    f,
                    "  {source}: inserted {}, updated {}, unchanged {}, rejected {}",
                    c.inserted, c.updated, c.unchanged, c.rejected
                )?;
            }
        }
        for failed in &self.failed {
            writeln!(f, "  failed: {failed}")?;
        }
        Ok(())
    }
}

/// A command's one source (`import`, `backfill`): no health to serve, no systemd to tell.
pub async fn drive_command<S: Source>(
    cfg: &Config,
    source: S,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Summary, DriveError> {
    drive(cfg, vec![source], shutdown, show_progress, Ops::default()).await
}

/// Runs `sources` side by side through one pipeline to the end (see the module's doc). The
/// summary is named after the first.
pub async fn drive<S: Source>(
    cfg: &Config,
    sources: Vec<S>,
    shutdown: &Shutdown,
    show_progress: bool,
    ops: Ops,
) -> Result<Summary, DriveError> {
    let started = Instant::now();
    let pool = db::pool(&cfg.database)?;
    db::ping(&pool, &cfg.database.url.redacted()).await?;
    {
        let client = db::get(&pool).await?;
        db::migrate::check_current(&client).await?;
    }
    let (announcer, publisher) = Announcer::start(&cfg.redis, &cfg.service.name);
    let pipeline = Pipeline::start(
        &cfg.pipeline,
        pool.clone(),
        cfg.timeframes(),
        shutdown.abandon_token(),
        announcer.clone(),
    );
    ops.health.set_pipeline(pipeline.watch());
    ops.health.set_pool(pool.clone());
    if ops.notify_ready {
        crate::systemd::ready();
    }
    let (ack, acks) = mpsc::unbounded_channel();
    let committed = Arc::new(Mutex::new(WriteCounts::default()));
    let collector = tokio::spawn(collect(acks, committed.clone()));
    let ctx = SourceContext {
        queue: pipeline.queue(),
        ack,
        stop: shutdown.stop_token(),
        read: Arc::default(),
        committed,
        feeds: FeedTracker::default(),
        pool: pool.clone(),
        config: Arc::new(cfg.clone()),
        show_progress,
        health: ops.health.clone(),
    };
    let mut summary = Summary {
        what: sources.first().map_or("run", |s| s.name()),
        read_label: sources.first().map_or("read", |s| s.read_label()),
        ..Summary::default()
    };
    let ends =
        futures_util::future::join_all(sources.into_iter().map(|s| s.run(ctx.clone()))).await;
    for end in ends {
        summary.lines.extend(end.lines);
        summary.failed.extend(end.failed);
    }
    summary.interrupted = shutdown.signal();
    // Each feed's end, behind its last bar. A stop by signal leaves the feeds `idle`.
    let ending = match summary.interrupted {
        Some(_) => FeedState::Idle,
        None => FeedState::Completed,
    };
    let outcomes = ctx.feeds.take();
    let feeds: Vec<Feed> = outcomes.keys().cloned().collect();
    let changes = outcomes
        .into_iter()
        .map(|(feed, error)| FeedChange {
            feed,
            to: match error {
                Some(e) => Transition::Failed(e),
                None => Transition::Ended(ending, None),
            },
        })
        .collect::<Vec<_>>();
    let read = ctx.read.clone();
    if !changes.is_empty() {
        let abandon = shutdown.abandon_token();
        tokio::select! {
            _ = ctx.send(Chunk::changes(changes)) => {}
            _ = abandon.cancelled() => {}
        }
    }
    // The sources have returned their contexts; this was the queue's last sender.
    drop(ctx);
    let finished =
        waiting_noted(pipeline.finish(), || "committing what was read".to_string()).await;
    let (counts, by_source, noted) = collector.await.unwrap_or_default();
    summary.warnings = noted_warnings(noted, counts.rejected);
    summary.read = read.load(Ordering::Relaxed);
    summary.counts = counts;
    summary.by_source = by_source;
    // A signal may also have come while the driver waited for the commits.
    summary.interrupted = shutdown.signal();
    // The writers are gone without applying the feeds' end: it is applied here, after them
    // (no bar can follow), to the feeds still `running`.
    let (fatal, late_end) = match finished {
        Ok(_) => (None, None),
        Err(PipelineError::Abandoned { uncommitted }) => {
            summary.not_committed = Some(uncommitted);
            let why = format!(
                "{} gave up with {uncommitted} bars not committed",
                summary.what
            );
            (None, Some((FeedState::Idle, why)))
        }
        Err(e) => {
            let why = format!("{} failed: {e}", summary.what);
            (Some(e), Some((FeedState::Error, why)))
        }
    };
    if let Some((state, why)) = late_end {
        let changes = feeds
            .into_iter()
            .map(|feed| FeedChange {
                feed,
                to: Transition::Ended(state, Some(why.clone())),
            })
            .collect::<Vec<_>>();
        // Once the run has given up on the database, this gets a moment, no more: the exit
        // must come within the shutdown deadline.
        let wait = if shutdown.abandon_token().is_cancelled() {
            GIVEN_UP_GRACE
        } else {
            LATE_END_TIMEOUT
        };
        match tokio::time::timeout(wait, crate::pipeline::end_feeds(&pool, &changes)).await {
            Ok(Ok(changed)) => announcer.status_changed(&changed),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the feeds' final state"),
            Err(_) => {
                tracing::warn!("cannot record the feeds' final state: the database did not answer")
            }
        }
    }
    // The writers are gone; this was the last announcer. Redis gets a moment for what is
    // queued (nothing waits on it when it is down: those events are dropped at once).
    drop(announcer);
    publisher.close(EVENTS_GRACE).await;
    summary.seconds = started.elapsed().as_secs_f64();
    match fatal {
        Some(e) => Err(DriveError::Pipeline(e)),
        None => Ok(summary),
    }
}

/// Takes every committed batch's report: the running counts (in all and per data source), and
/// the first rejections.
async fn collect(
    mut acks: mpsc::UnboundedReceiver<BatchReport>,
    committed: Arc<Mutex<WriteCounts>>,
) -> (WriteCounts, Vec<(DataSource, WriteCounts)>, Vec<String>) {
    let mut noted = Vec::new();
    let mut total = WriteCounts::default();
    let mut by_source: Vec<(DataSource, WriteCounts)> = Vec::new();
    while let Some(report) = acks.recv().await {
        total.add(&report.counts);
        for s in &report.sources {
            match by_source.binary_search_by_key(&s.source, |(k, _)| *k) {
                Ok(i) => by_source[i].1.add(&s.counts),
                Err(i) => by_source.insert(i, (s.source, s.counts)),
            }
        }
        if let Ok(mut c) = committed.lock() {
            *c = total;
        }
        let room = NOTED_REJECTIONS.saturating_sub(noted.len());
        noted.extend(report.noted.into_iter().take(room));
    }
    (total, by_source, noted)
}

/// One warning per rejected row, up to `NOTED_REJECTIONS`, then how many more there are.
fn noted_warnings(mut noted: Vec<String>, rejected: u64) -> Vec<String> {
    let more = rejected.saturating_sub(noted.len() as u64);
    if more > 0 {
        noted.push(format!(
            "{more} more rejected rows are in data_ingestion.data_quality_logs"
        ));
    }
    noted
}

/// Awaits `fut`; while it is blocked for long, logs what it waits for and since when.
pub async fn waiting_noted<F: Future>(fut: F, what: impl Fn() -> String) -> F::Output {
    let since = chrono::Utc::now();
    let started = Instant::now();
    tokio::pin!(fut);
    let mut tick = tokio::time::interval_at((started + WAIT_NOTICE).into(), WAIT_NOTICE);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => tracing::info!(
                "waiting for the database since {} ({}s): {}",
                since.format("%H:%M:%SZ"),
                started.elapsed().as_secs(),
                what()
            ),
        }
    }
}
