//! One driver for every source (`import` now, `backfill` and `run` on the same road): checks the
//! database, starts the pipeline, runs the source, then commits what was read, marks each feed
//! `completed`, `idle` or `error` (after that feed's last batch, so a late batch can never turn
//! an `error` back into `running`), prints the rejected rows (up to 20) and returns the summary.
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
use crate::domain::{DataSource, FeedState, Mode, Symbol};
use crate::ingest::{AckTx, BatchReport, Chunk, WriteCounts, NOTED_REJECTIONS};
use crate::pipeline::{Pipeline, PipelineClosed, PipelineError, Queue};
use crate::shutdown::{Shutdown, Signal};

/// A blocked wait says so after this long, and again at this interval.
const WAIT_NOTICE: Duration = Duration::from_secs(5);
/// Marking feeds at the end must not hold the exit when the database is gone.
const FINISH_FEEDS_TIMEOUT: Duration = Duration::from_secs(10);
/// After giving up on the database, how long the feeds' final state may still take.
const GIVEN_UP_GRACE: Duration = Duration::from_millis(500);

/// A producer of bars. `run` hands chunks to `ctx` until its input ends or `ctx.stop()` fires,
/// records each feed's outcome in `ctx.feeds()`, and returns the failures to report (one line
/// each) and extra summary lines.
pub trait Source: Send {
    /// The command's name in logs and the summary (`import`, `backfill`).
    fn name(&self) -> &'static str;
    fn data_source(&self) -> DataSource;
    fn mode(&self) -> Mode {
        Mode::Backfill
    }
    /// What the summary calls the rows taken in ("rows read", "fetched").
    fn read_label(&self) -> &'static str;
    fn run(self, ctx: SourceContext) -> impl Future<Output = SourceEnd> + Send;
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
}

impl SourceContext {
    /// Queues a chunk (waiting while the queue is full, and saying so when that lasts); its
    /// batches report to the driver once committed.
    pub async fn send(&self, mut chunk: Chunk) -> Result<(), PipelineClosed> {
        self.read.fetch_add(
            (chunk.bars.len() + chunk.rejections.len()) as u64,
            Ordering::Relaxed,
        );
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

    /// Resolves once every bar of `symbol` sent before it (on this queue) is committed: the
    /// barrier rides behind them through the symbol's one writer. None if given up.
    pub async fn committed_through(&self, symbol: &Symbol) -> Option<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.queue
            .send(Chunk::barrier(symbol.clone(), tx))
            .await
            .ok()?;
        rx.recv().await.map(|_| ())
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

/// Each feed's outcome, kept by the source as it goes and applied by the driver at the end.
#[derive(Clone, Default)]
pub struct FeedTracker {
    outcomes: Arc<Mutex<HashMap<Symbol, Option<String>>>>,
}

impl FeedTracker {
    /// The feed took bars (it ends `completed`, or `idle` if interrupted) unless it failed.
    pub fn touched(&self, symbol: &Symbol) {
        if let Ok(mut m) = self.outcomes.lock() {
            m.entry(symbol.clone()).or_insert(None);
        }
    }

    /// The feed failed: it ends `error` with this message, whatever else loaded it.
    pub fn failed(&self, symbol: &Symbol, error: &str) {
        if let Ok(mut m) = self.outcomes.lock() {
            m.insert(symbol.clone(), Some(error.to_string()));
        }
    }

    fn take(&self) -> HashMap<Symbol, Option<String>> {
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
        for failed in &self.failed {
            writeln!(f, "  failed: {failed}")?;
        }
        Ok(())
    }
}

/// Runs `source` through the pipeline to the end (see the module's doc).
pub async fn drive<S: Source>(
    cfg: &Config,
    source: S,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Summary, DriveError> {
    let started = Instant::now();
    let pool = db::pool(&cfg.database)?;
    db::ping(&pool, &cfg.database.url.redacted()).await?;
    {
        let client = db::get(&pool).await?;
        db::migrate::check_current(&client).await?;
    }
    let pipeline = Pipeline::start(
        &cfg.pipeline,
        pool.clone(),
        cfg.timeframes(),
        shutdown.abandon_token(),
    );
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
    };
    let (read, feeds) = (ctx.read.clone(), ctx.feeds.clone());
    let mut summary = Summary {
        what: source.name(),
        read_label: source.read_label(),
        ..Summary::default()
    };
    let (data_source, mode) = (source.data_source(), source.mode());
    let end = source.run(ctx).await;
    // The source has returned its context: the queue's last sender is gone with it.
    let finished =
        waiting_noted(pipeline.finish(), || "committing what was read".to_string()).await;
    let (counts, noted) = collector.await.unwrap_or_default();
    summary.warnings = noted_warnings(noted, counts.rejected);
    summary.lines = end.lines;
    summary.failed = end.failed;
    summary.read = read.load(Ordering::Relaxed);
    summary.counts = counts;
    summary.interrupted = shutdown.signal();
    summary.seconds = started.elapsed().as_secs_f64();
    let outcomes = feeds.take();
    let fatal = match finished {
        Ok(_) => None,
        Err(PipelineError::Abandoned { uncommitted }) => {
            summary.not_committed = Some(uncommitted);
            None
        }
        Err(e) => Some(e),
    };
    // A stop by signal leaves the feeds `idle` without an error; giving up or failing says why.
    let end = match (&fatal, summary.not_committed, summary.interrupted) {
        (Some(e), _, _) => Ending::Failed(format!("{} failed: {e}", summary.what)),
        (None, Some(n), _) => Ending::Stopped(Some(format!(
            "{} gave up with {n} bars not committed",
            summary.what
        ))),
        (None, None, Some(_)) => Ending::Stopped(None),
        (None, None, None) => Ending::Completed,
    };
    let finish = finish_feeds(&pool, data_source, mode, outcomes, end);
    // Once the run has given up on the database, its final state gets a moment, no more: the
    // exit must come within the shutdown deadline (the feeds' stretch is a pending gap anyway).
    let abandon = shutdown.abandon_token();
    let given_up = async {
        abandon.cancelled().await;
        tokio::time::sleep(GIVEN_UP_GRACE).await;
    };
    tokio::select! {
        r = tokio::time::timeout(FINISH_FEEDS_TIMEOUT, finish) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the feeds' final state"),
            Err(_) => {
                tracing::warn!("cannot record the feeds' final state: the database did not answer")
            }
        },
        _ = given_up => {
            tracing::warn!("cannot record the feeds' final state: the database did not answer in time")
        }
    }
    match fatal {
        Some(e) => Err(DriveError::Pipeline(e)),
        None => Ok(summary),
    }
}

/// Takes every committed batch's report: the running counts, and the first rejections.
async fn collect(
    mut acks: mpsc::UnboundedReceiver<BatchReport>,
    committed: Arc<Mutex<WriteCounts>>,
) -> (WriteCounts, Vec<String>) {
    let mut noted = Vec::new();
    let mut total = WriteCounts::default();
    while let Some(report) = acks.recv().await {
        total.add(&report.counts);
        if let Ok(mut c) = committed.lock() {
            *c = total;
        }
        let room = NOTED_REJECTIONS.saturating_sub(noted.len());
        noted.extend(report.noted.into_iter().take(room));
    }
    (total, noted)
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

/// How a run ended, for its feeds.
enum Ending {
    Completed,
    /// Stopped early (a signal), with why when it is worth recording.
    Stopped(Option<String>),
    Failed(String),
}

/// Moves the run's feeds out of `running`: failed ones to `error` with their message, the rest
/// to `completed`, or `idle` when stopped early, or `error` when the run itself failed.
async fn finish_feeds(
    pool: &Pool,
    source: DataSource,
    mode: Mode,
    outcomes: HashMap<Symbol, Option<String>>,
    end: Ending,
) -> Result<(), DbError> {
    let client = db::get(pool).await?;
    let mut groups: HashMap<(FeedState, Option<String>), Vec<Symbol>> = HashMap::new();
    for (symbol, error) in outcomes {
        let key = match (error, &end) {
            (Some(e), _) => (FeedState::Error, Some(e)),
            (None, Ending::Failed(e)) => (FeedState::Error, Some(e.clone())),
            (None, Ending::Stopped(why)) => (FeedState::Idle, why.clone()),
            (None, Ending::Completed) => (FeedState::Completed, None),
        };
        groups.entry(key).or_default().push(symbol);
    }
    for ((state, error), symbols) in groups {
        db::status::finish_feeds(&client, source, mode, &symbols, state, error.as_deref()).await?;
    }
    Ok(())
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
