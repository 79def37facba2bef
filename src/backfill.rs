//! `mdingest backfill --source S --symbols A,B --from D --to D [--timeframe T] [--force]`:
//! plans the range as tasks on a fixed grid of windows (sized by the vendor's [`History`]) in
//! `data_ingestion.backfill_tasks`, then workers claim them (`db::backfill`), fetch each window
//! through the vendor's history and hand the bars to the shared driver. A task is done once its bars are committed, so a backfill killed
//! (even with `kill -9`) and run again fetches only what is left, and several processes share
//! one range without fetching a window twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use futures_util::future::join_all;

use crate::calendar::new_york_midnight;
use crate::config::Config;
use crate::coverage::{self, CoverageError, CoverageOptions};
use crate::db::backfill::{self as queue, Cells, Range, Task};
use crate::db::{self, DbError};
use crate::domain::{DataSource, Symbol, Timeframe};
use crate::ingest::{Chunk, Feed};
use crate::progress::{Progress, Unit};
use crate::restate::{self, Fetch};
use crate::shutdown::Shutdown;
use crate::sources::driver::{self, DriveError, Source, SourceContext, SourceEnd, Summary};
use crate::sources::{window_text, Blame, FetchError, History, SourceError};

/// The grid's origin, a Sunday 00:00 UTC; windows start every `window_len` from it.
const GRID_ORIGIN_SECS: i64 = 3 * 86_400; // 1970-01-04
/// Workers fetching at once; the vendor's rate limit paces them all together.
const WORKERS: usize = 4;

/// The grid's windows of `window_len` that overlap `[from, to)`, none starting after `now`.
pub fn windows(
    window_len: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let len = window_len.num_seconds().max(60);
    let origin = GRID_ORIGIN_SECS;
    let first = (from.timestamp() - origin).div_euclid(len);
    let mut out = Vec::new();
    let mut k = first;
    loop {
        let start = origin + k * len;
        let (Some(s), Some(e)) = (
            DateTime::from_timestamp(start, 0),
            DateTime::from_timestamp(start + len, 0),
        ) else {
            break;
        };
        if s >= to || s > now {
            break;
        }
        out.push((s, e));
        k += 1;
    }
    out
}

/// `--from`/`--to`: an exchange date (New York; `--from` its start, `--to` its end, both
/// inclusive) or an RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateArg {
    Date(NaiveDate),
    Instant(DateTime<Utc>),
}

impl std::str::FromStr for DateArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(DateArg::Date(d));
        }
        if let Some(d) = relative_day(s, new_york_today()) {
            return d.map(DateArg::Date);
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| DateArg::Instant(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "\"{}\" is neither a date (2024-01-02, today, yesterday, today-7d) nor an RFC 3339 time (2024-01-02T14:30:00Z)",
                    crate::text::excerpt(s, 40)
                )
            })
    }
}

/// Today's exchange date: what a scheduler's `--to today` means, wherever the host's clock is.
fn new_york_today() -> NaiveDate {
    Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive()
}

/// `today`, `yesterday` or `today-Nd` (N days before today), for schedulers: `None` when `s` is
/// none of them.
fn relative_day(s: &str, today: NaiveDate) -> Option<Result<NaiveDate, String>> {
    let days = match s {
        "today" => 0,
        "yesterday" => 1,
        _ => {
            let n = s.strip_prefix("today-")?.strip_suffix('d')?;
            match n.parse::<u32>() {
                Ok(n) if n <= 36_500 => n,
                _ => {
                    return Some(Err(format!(
                        "\"{}\": the days in today-Nd must be a number from 0 to 36500",
                        crate::text::excerpt(s, 40)
                    )))
                }
            }
        }
    };
    Some(Ok(today - Duration::days(i64::from(days))))
}

impl DateArg {
    /// The first instant of the range it starts.
    pub fn start(self) -> Option<DateTime<Utc>> {
        match self {
            DateArg::Date(d) => new_york_midnight(d),
            DateArg::Instant(t) => Some(t),
        }
    }

    /// The first instant after the range it ends.
    pub fn end_exclusive(self) -> Option<DateTime<Utc>> {
        match self {
            DateArg::Date(d) => new_york_midnight(d.succ_opt()?),
            DateArg::Instant(t) => Some(t + Duration::milliseconds(1)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub source: DataSource,
    /// Empty: the source's configured symbols.
    pub symbols: Vec<Symbol>,
    pub from: DateArg,
    pub to: DateArg,
    pub timeframe: Option<Timeframe>,
    pub force: bool,
    /// `--holes`: only the sessions `coverage` calls holes (a sparse session filled below this
    /// percentage is one too).
    pub holes: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Drive(#[from] DriveError),
}

pub async fn backfill(
    cfg: &Config,
    opts: BackfillOptions,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Summary, BackfillError> {
    let usage = |m: String| BackfillError::Usage(m);
    let vendor = crate::sources::serving(cfg, opts.source)?;
    if let Some(tf) = opts.timeframe {
        if tf != vendor.timeframe {
            return Err(usage(format!(
                "--timeframe {tf} differs from sources.{}.timeframe {}: market_data holds one timeframe per source",
                vendor.name, vendor.timeframe
            )));
        }
    }
    let symbols = if opts.symbols.is_empty() {
        vendor.symbols.clone()
    } else {
        opts.symbols.clone()
    };
    if symbols.is_empty() {
        return Err(usage("no symbols: give --symbols A,B".into()));
    }
    let (Some(from), Some(to)) = (opts.from.start(), opts.to.end_exclusive()) else {
        return Err(usage("--from or --to is out of range".into()));
    };
    if from >= to {
        return Err(usage("--from is after --to".into()));
    }
    if from.timestamp() < 0 {
        return Err(usage(
            "--from is before 1970: no vendor has minute or daily bars that old".into(),
        ));
    }
    let timeframe = vendor.timeframe;
    let holes =
        match (opts.holes, opts.from, opts.to) {
            (None, ..) => None,
            (Some(hole_below), DateArg::Date(from), DateArg::Date(to)) => {
                // The calendar's reach is checked before any work starts.
                crate::calendar::sessions(from, to).map_err(|e| usage(e.to_string()))?;
                Some(CoverageOptions {
                    source: vendor.source,
                    timeframe,
                    symbols: symbols.clone(),
                    from,
                    to,
                    hole_below,
                    exact: false,
                })
            }
            _ => return Err(usage(
                "--holes takes exchange dates (2024-01-02) for --from and --to: holes are sessions"
                    .into(),
            )),
        };
    let grid = windows(vendor.history.window_len(timeframe), from, to, Utc::now());
    let range = Range {
        source: vendor.source,
        timeframe,
        symbols,
        first: grid.first().map_or(from, |w| w.0),
        last: grid.last().map_or(from, |w| w.0),
        // Set from the database's clock when the run starts.
        since: from,
        cells: None,
    };
    let source = RestBackfill {
        history: vendor.history,
        range,
        grid,
        force: opts.force,
        holes,
    };
    Ok(driver::drive_command(cfg, source, shutdown, show_progress).await?)
}

struct RestBackfill {
    history: Arc<dyn History>,
    range: Range,
    grid: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    force: bool,
    holes: Option<CoverageOptions>,
}

/// What the workers share.
struct Shared {
    ctx: SourceContext,
    history: Arc<dyn History>,
    range: Range,
    /// Symbols that failed this run, with why: their other windows are not claimed.
    failed: Mutex<HashMap<Symbol, String>>,
    /// Symbols with a window that failed (the first error of each): the others still load.
    window_failures: Mutex<HashMap<Symbol, String>>,
    /// A failure every request would meet (the key, the plan): all workers stop.
    fatal: Mutex<Option<String>>,
    tasks_done: AtomicU64,
    fetched: AtomicU64,
    progress: Mutex<Progress>,
}

impl Source for RestBackfill {
    fn name(&self) -> &'static str {
        "backfill"
    }

    fn read_label(&self) -> &'static str {
        "fetched"
    }

    async fn run(self, ctx: SourceContext) -> SourceEnd {
        let mut end = SourceEnd::default();
        let mut range = self.range;
        let holes = self.holes.as_ref();
        let planned = match plan(&ctx, &mut range, &self.grid, self.force, holes).await {
            Ok(c) => c,
            Err(e) => {
                end.failed.push(format!("cannot plan the backfill: {e}"));
                return end;
            }
        };
        let todo = (planned.total - planned.done).max(0) as u64;
        end.lines
            .push(("tasks", format!("{todo} of {}", planned.total)));
        if let Some(c) = &range.cells {
            end.lines
                .push(("hole sessions", c.starts.len().to_string()));
        }
        if planned.total == 0 {
            if holes.is_some() {
                tracing::info!("nothing to fetch: the range has no hole");
            } else {
                tracing::info!("nothing to fetch: the range holds no window that has begun");
            }
            return end;
        }
        if todo == 0 {
            tracing::info!(
                "nothing to fetch: all {} windows of this range are done (--force fetches them again)",
                planned.total
            );
            return end;
        }
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::new(
                "backfill",
                todo,
                Unit::Tasks,
                ctx.show_progress(),
            )),
            ctx,
            history: self.history,
            range,
            failed: Mutex::default(),
            window_failures: Mutex::default(),
            fatal: Mutex::default(),
            tasks_done: AtomicU64::default(),
            fetched: AtomicU64::default(),
        });
        let workers = (0..WORKERS.min(todo as usize)).map(|_| worker(shared.clone()));
        for result in join_all(workers).await {
            if let Err(e) = result {
                lock(&shared.fatal).get_or_insert(e.to_string());
            }
        }
        if let Ok(p) = shared.progress.lock() {
            p.finish();
        }
        let mut failed: Vec<(Symbol, String)> = lock(&shared.failed).drain().collect();
        for (symbol, e) in lock(&shared.window_failures).drain() {
            if !failed.iter().any(|(s, _)| *s == symbol) {
                failed.push((symbol, e));
            }
        }
        failed.sort();
        end.failed.extend(failed.into_iter().map(|(_, e)| e));
        end.failed.extend(lock(&shared.fatal).take());
        end
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Plans the range's tasks: the grid's windows, or with `holes` one task per hole session
/// (New York midnight to midnight: never a window of the grid, which starts on UTC midnights,
/// so the two never share a task, and a session stays the same task run after run).
async fn plan(
    ctx: &SourceContext,
    range: &mut Range,
    grid: &[(DateTime<Utc>, DateTime<Utc>)],
    force: bool,
    holes: Option<&CoverageOptions>,
) -> Result<queue::Counts, CoverageError> {
    let client = db::get(ctx.pool()).await?;
    range.since = queue::now(&client).await?;
    if let Some(opts) = holes {
        let report = coverage::report(&client, opts).await?;
        let mut cells = Cells::default();
        for (symbol, date) in report.hole_sessions() {
            let (Some(start), Some(end)) = (
                new_york_midnight(date),
                date.succ_opt().and_then(new_york_midnight),
            ) else {
                continue;
            };
            // A session not begun yet is not a hole.
            if start <= range.since {
                cells.symbols.push(symbol.to_string());
                cells.starts.push(start);
                cells.ends.push(end);
            }
        }
        if cells.starts.is_empty() {
            range.cells = Some(cells);
            return Ok(queue::Counts::default());
        }
        range.first = cells.starts.iter().min().copied().unwrap_or(range.first);
        range.last = cells.starts.iter().max().copied().unwrap_or(range.last);
        range.cells = Some(cells);
    }
    Ok(queue::plan(&client, range, grid, force).await?)
}

/// Database errors a worker rides out (a reset, a failover) before it gives up.
const WORKER_DB_RETRIES: u32 = 5;
const WORKER_DB_RETRY: crate::backoff::Backoff = crate::backoff::Backoff::new(
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(32),
);

/// Claims and works tasks until none is left, the run stops, or a failure stops every worker.
/// Its session is its own, outside the pool (whose connections the writers need): the claims
/// belong to it, so if the process dies, so does the session, and its task is free at once. A
/// database error costs the session (its task is then free too) and is retried on a new one.
async fn worker(shared: Arc<Shared>) -> Result<(), DbError> {
    let mut failures = 0;
    let mut waits = WORKER_DB_RETRY.waits();
    loop {
        match work_tasks(&shared).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retriable() && failures < WORKER_DB_RETRIES => {
                failures += 1;
                let wait = waits.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "backfill worker lost the database; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.ctx.stop().cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn work_tasks(shared: &Shared) -> Result<(), DbError> {
    let database = &shared.ctx.config().database;
    let client = db::connect(
        &db::parse_url(database.url.expose())?,
        &database.url.redacted(),
    )
    .await?;
    let most = shared.history.symbols_per_request();
    // The window sent last, waiting for its commit while the next one is fetched: a worker
    // never idles on the database, and a writer gathers several windows into one transaction.
    let mut pending: Option<(Vec<Task>, Sent)> = None;
    loop {
        let stopping = shared.ctx.stop().is_cancelled() || lock(&shared.fatal).is_some();
        let tasks = if stopping {
            Vec::new()
        } else {
            let skip: Vec<Symbol> = lock(&shared.failed).keys().cloned().collect();
            queue::claim(&client, &shared.range, &skip, most).await?
        };
        if tasks.is_empty() {
            if let Some((done, sent)) = pending.take() {
                complete(shared, &client, &done, sent, &[]).await?;
            }
            return Ok(());
        }
        let leased: Vec<Task> = pending
            .iter()
            .flat_map(|(t, _)| t.iter().cloned())
            .chain(tasks.iter().cloned())
            .collect();
        let work = send_tasks(&shared.ctx, &*shared.history, &tasks, &shared.fetched);
        let sent = with_lease(&client, &leased, work).await;
        if let Some((done, earlier)) = pending.take() {
            if !complete(shared, &client, &done, earlier, &tasks).await? {
                for task in &tasks {
                    queue::release(&client, task, None).await?;
                }
                return Ok(());
            }
        }
        match sent {
            Ok(Some(sent)) => pending = Some((tasks, sent)),
            // Stopped, or the database given up: the tasks stay pending for the next run.
            Ok(None) => {
                for task in &tasks {
                    queue::release(&client, task, None).await?;
                }
                return Ok(());
            }
            Err(e) => {
                for task in &tasks {
                    task_failed(shared, &client, task, &e).await?;
                }
            }
        }
    }
}

/// Waits for a sent window's commit and ends its tasks: done (with their bars), or failed.
/// `next` (the window sent since) keeps its lease meanwhile. False when the run gave up first
/// (the tasks are released, pending for the next run).
async fn complete(
    shared: &Shared,
    client: &tokio_postgres::Client,
    tasks: &[Task],
    sent: Sent,
    next: &[Task],
) -> Result<bool, DbError> {
    let leased: Vec<Task> = tasks.iter().chain(next).cloned().collect();
    let Some(ends) = with_lease(client, &leased, sent.committed(tasks)).await else {
        for task in tasks {
            queue::release(client, task, None).await?;
        }
        return Ok(false);
    };
    for (task, end) in tasks.iter().zip(ends) {
        match end {
            Ok((bars, settled)) => {
                queue::finish(client, task, bars, settled).await?;
                let done = shared.tasks_done.fetch_add(1, Ordering::Relaxed) + 1;
                let fetched = shared.fetched.load(Ordering::Relaxed);
                let committed = shared.ctx.committed().written();
                lock(&shared.progress).update(done, || {
                    format!("{fetched} bars fetched, {committed} committed")
                });
            }
            Err(e) => task_failed(shared, client, task, &e).await?,
        }
    }
    Ok(true)
}

/// A task's window failed: it stays pending (the next run retries it), its feed shows the
/// error, and the failure decides what the other workers do.
async fn task_failed(
    shared: &Shared,
    client: &tokio_postgres::Client,
    task: &Task,
    e: &FetchError,
) -> Result<(), DbError> {
    let text = e.to_string();
    queue::release(client, task, Some(&text)).await?;
    // Shown at once, also for a symbol that failed before its first bar; a fetch's every
    // data source alike.
    for source in shared.history.writes(task.source) {
        let feed = Feed {
            source,
            ..feed_of(task)
        };
        let _ = shared.ctx.failed(&feed, &text).await;
    }
    match e.blame {
        // Every request would fail alike (the key, the plan): all workers stop.
        Blame::Account => {
            lock(&shared.fatal).get_or_insert(text);
        }
        // An unknown ticker: none of its windows will load.
        _ if e.unknown_symbol => {
            lock(&shared.failed).insert(task.symbol.clone(), text);
        }
        // This window failed (it is retried by the next run); the symbol's other windows go
        // on, and the symbol is reported as failed at the end.
        Blame::Request | Blame::Unavailable => {
            lock(&shared.window_failures)
                .entry(task.symbol.clone())
                .or_insert(text);
        }
    }
    Ok(())
}

/// Runs `work` while renewing the tasks' leases.
pub async fn with_lease<T>(
    client: &tokio_postgres::Client,
    tasks: &[Task],
    work: impl std::future::Future<Output = T>,
) -> T {
    // A loop of its own, polled beside `work`: a slow renewal never holds up the fetch.
    let renewals = async {
        let mut tick = tokio::time::interval(queue::RENEW_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            for task in tasks {
                match queue::renew(client, task).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(symbol = %task.symbol, window = %task.start,
                        "a backfill task's lease was lost (another worker may fetch it too; rows are upserted)"),
                    Err(e) => tracing::warn!(error = %e, symbol = %task.symbol,
                        "cannot renew a backfill task's lease"),
                }
            }
        }
    };
    tokio::select! {
        out = work => out,
        never = renewals => never,
    }
}

/// The feed a task fills.
pub fn feed_of(task: &Task) -> Feed {
    Feed {
        source: task.source,
        symbol: task.symbol.clone(),
        mode: task.mode,
        timeframe: task.timeframe,
    }
}

/// [`fetch_tasks`] for one task.
pub async fn fetch_task(
    ctx: &SourceContext,
    history: &dyn History,
    task: &Task,
    fetched: &AtomicU64,
) -> Result<Option<(i64, bool)>, FetchError> {
    let ends = fetch_tasks(ctx, history, std::slice::from_ref(task), fetched).await?;
    match ends.and_then(|e| e.into_iter().next()) {
        Some(end) => end.map(Some),
        None => Ok(None),
    }
}

/// One task's end: its bars and whether every page was settled, or why it failed.
pub type TaskEnd = Result<(i64, bool), FetchError>;

/// Fetches the tasks' window (one window, one request chain for all their symbols: a backfill
/// window or a stream gap) into their feeds and waits until its bars are committed. `Ok(None)`
/// when the run stopped first; `Err` when the chain failed (every task failed alike); else each
/// task's end, in order. A task for which the vendor sent bars and none could be stored failed
/// (its quality rows are committed first).
pub async fn fetch_tasks(
    ctx: &SourceContext,
    history: &dyn History,
    tasks: &[Task],
    fetched: &AtomicU64,
) -> Result<Option<Vec<TaskEnd>>, FetchError> {
    match send_tasks(ctx, history, tasks, fetched).await? {
        Some(sent) => Ok(sent.committed(tasks).await),
        None => Ok(None),
    }
}

/// A window's bars, sent: its barriers are queued behind them, and [`Sent::committed`] tells
/// each task's end once they have passed.
pub struct Sent {
    /// Per task, in order: bars sent and rows refused.
    counts: Vec<(i64, u64)>,
    settled: bool,
    barriers: Vec<driver::Barrier>,
    /// The window, as errors name it.
    window: String,
}

impl Sent {
    /// Waits until every bar of the window is committed; each task's end, in order, or None
    /// if the run gave up first.
    pub async fn committed(self, tasks: &[Task]) -> Option<Vec<TaskEnd>> {
        let Sent {
            counts,
            settled,
            barriers,
            window,
        } = self;
        let barriers = join_all(barriers.into_iter().map(driver::Barrier::committed));
        let source = tasks.first().map_or("", |t| t.source.as_str());
        let committed = driver::waiting_noted(barriers, || {
            format!("committing the bars of {source} {window}")
        });
        if committed.await.iter().any(Option::is_none) {
            return None;
        }
        let ends = tasks
            .iter()
            .zip(counts)
            .map(|(task, (bars, refused))| {
                if bars == 0 && refused > 0 {
                    return Err(FetchError::new(
                        format!(
                            "{} {} {window}: none of the {refused} bars received could be stored (see data_quality_logs); the window stays pending",
                            task.source, task.symbol,
                        ),
                        Blame::Request,
                    ));
                }
                Ok((bars, settled))
            })
            .collect();
        Some(ends)
    }
}

/// [`fetch_tasks`] up to the commit: the window's pages sent, its barriers queued.
pub async fn send_tasks(
    ctx: &SourceContext,
    history: &dyn History,
    tasks: &[Task],
    fetched: &AtomicU64,
) -> Result<Option<Sent>, FetchError> {
    let Some(first) = tasks.first() else {
        return Ok(Some(Sent {
            counts: Vec::new(),
            settled: true,
            barriers: Vec::new(),
            window: String::new(),
        }));
    };
    // Nothing exists before 1970 (the grid's first window starts in 1969), and the window's
    // future part has no bars yet (and a simulator would invent them).
    let from = first.start.max(DateTime::UNIX_EPOCH);
    let to = (first.end - Duration::milliseconds(1)).min(Utc::now());
    let symbols: Vec<Symbol> = tasks.iter().map(|t| t.symbol.clone()).collect();
    let mut settled = true;
    let mut pages = history.pages(&symbols, first.timeframe, from, to);
    // Per task: bars sent, rows refused.
    let mut sent: HashMap<&str, (i64, u64)> =
        symbols.iter().map(|s| (s.as_str(), (0, 0))).collect();
    let mut actions = Vec::new();
    loop {
        let page = tokio::select! {
            p = pages.next() => p?,
            _ = ctx.stop().cancelled() => return Ok(None),
        };
        let Some(mut page) = page else { break };
        actions.append(&mut page.actions);
        settled &= page.settled;
        if page.bars.is_empty() && page.rejections.is_empty() {
            continue;
        }
        let n = page.vendor_rows(first.source);
        fetched.fetch_add(n as u64, Ordering::Relaxed);
        for b in &page.bars {
            if let Some(c) = sent.get_mut(b.symbol.as_str()) {
                // A fetch may write a second data source (Yahoo's adjusted series): its feed
                // is tracked too, so that it ends with the task's.
                if c.0 == 0 || b.source != first.source {
                    ctx.feeds().touched(&Feed {
                        source: b.source,
                        symbol: b.symbol.clone(),
                        ..feed_of(first)
                    });
                }
                c.0 += 1;
            }
        }
        for r in &page.rejections {
            if let Some(c) = r.symbol.as_deref().and_then(|s| sent.get_mut(s)) {
                c.1 += 1;
            }
        }
        let chunk = Chunk::new(first.mode, page.bars, page.rejections);
        if ctx.send_counted(chunk, n as u64).await.is_err() {
            return Ok(None);
        }
    }
    if !actions.is_empty() {
        let fetch = Fetch {
            history,
            sources: history.writes(first.source),
            timeframe: first.timeframe,
            mode: first.mode,
            from,
        };
        for symbol in &symbols {
            if let Err(e) = restate::on_actions(ctx, &fetch, symbol, &actions).await {
                return e.into_fetch_error().map_or(Ok(None), Err);
            }
        }
    }
    // Done only once every bar of the window is committed: the barriers ride behind them.
    let mut barriers = Vec::with_capacity(symbols.len());
    for symbol in &symbols {
        match ctx.barrier(symbol).await {
            Some(b) => barriers.push(b),
            None => return Ok(None),
        }
    }
    let counts = tasks
        .iter()
        .map(|t| sent.get(t.symbol.as_str()).copied().unwrap_or_default())
        .collect();
    Ok(Some(Sent {
        counts,
        settled,
        barriers,
        window: window_text(from, to),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn windows_lie_on_a_fixed_grid() {
        let now = t("2030-01-01T00:00:00Z");
        let month = Duration::days(30);
        let a = windows(
            month,
            t("2024-01-02T05:00:00Z"),
            t("2024-03-01T05:00:00Z"),
            now,
        );
        let b = windows(
            month,
            t("2024-01-20T05:00:00Z"),
            t("2024-02-10T05:00:00Z"),
            now,
        );
        assert!(a.len() >= 2);
        // Overlapping ranges share their windows.
        assert!(b.iter().all(|w| a.contains(w)));
        for (s, e) in &a {
            assert_eq!(*e - *s, Duration::days(30));
            assert_eq!((s.timestamp() - GRID_ORIGIN_SECS) % (30 * 86_400), 0);
        }
        assert!(a[0].0 <= t("2024-01-02T05:00:00Z"));
        assert!(a.last().unwrap().1 >= t("2024-03-01T05:00:00Z"));
        // None starts in the future.
        let soon = windows(month, now, now + Duration::days(100), now);
        assert_eq!(soon.len(), 1);
    }

    #[test]
    fn dates_are_new_york_days_and_instants_exact() {
        let d: DateArg = "2024-01-02".parse().unwrap();
        assert_eq!(d.start(), Some(t("2024-01-02T05:00:00Z")));
        assert_eq!(d.end_exclusive(), Some(t("2024-01-03T05:00:00Z")));
        let summer: DateArg = "2024-07-01".parse().unwrap();
        assert_eq!(summer.start(), Some(t("2024-07-01T04:00:00Z")));
        let i: DateArg = "2024-01-02T14:30:00Z".parse().unwrap();
        assert_eq!(i.start(), Some(t("2024-01-02T14:30:00Z")));
        assert!("2024-13-01".parse::<DateArg>().is_err());
    }

    #[test]
    fn schedulers_name_days_relative_to_the_exchange_date() {
        let today = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        let day = |s| relative_day(s, today).map(|r| r.unwrap());
        assert_eq!(day("today"), Some(today));
        assert_eq!(day("yesterday"), NaiveDate::from_ymd_opt(2024, 2, 29));
        assert_eq!(day("today-7d"), NaiveDate::from_ymd_opt(2024, 2, 23));
        assert_eq!(relative_day("tomorrow", today), None);
        let err = relative_day("today-xd", today).unwrap().unwrap_err();
        assert!(err.contains("today-xd"), "{err}");
        assert!(relative_day("today-99999d", today).unwrap().is_err());
        assert!("today".parse::<DateArg>().is_ok());
    }
}
