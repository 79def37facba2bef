//! The write path: sources → bounded queue → router (validate, shard, batch) → writers.
//!
//! ```text
//! Queue::send ──► router ──► shard 0 batch ──► writer 0 ──► COPY + merge + quality log + status
//!   (bounded in bars)   └──► shard 1 batch ──► writer 1 ──► …            (one transaction each)
//! ```
//! Bars are sharded by symbol, so every bar of one symbol goes through one writer, in order: a
//! later correction can never be overtaken by the bar it corrects, and writers never contend for
//! the same rows. Nothing is reported to a producer before its batch commits.

pub mod batch;
mod commit;
pub mod validate;

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::ingest::{
    AckTx, BatchReport, Chunk, FeedProgress, Rejection, SourceReport, Staged, WriteCounts,
};
pub use batch::Batch;

use crate::config::{PipelineConfig, Timeframes};
use crate::db::partitions::Partitions;
use crate::events::Announcer;

use crate::ingest::{weight, REJECTION_WEIGHT};

/// A batch's room reserved up front; a larger `batch_max_rows` grows past it only when used.
const INITIAL_BATCH_CAPACITY: usize = 16_384;

#[derive(Debug, thiserror::Error)]
#[error("the write pipeline has stopped")]
pub struct PipelineClosed;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Fatal(String),
    #[error("given up before committing {uncommitted} bars (nothing was acknowledged for them)")]
    Abandoned { uncommitted: u64 },
}

struct Queued {
    chunk: Chunk,
    _room: OwnedSemaphorePermit,
}

/// The sources' side of the bounded queue. Capacity is counted in bars, so a producer of large
/// chunks and a stream of single bars see the same bound.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl Queue {
    /// Waits while the queue is full (backpressure). Cancellation-safe for a chunk no larger
    /// than the queue: it is queued whole or not at all (a larger one goes in queue-sized parts).
    pub async fn send(&self, mut chunk: Chunk) -> Result<(), PipelineClosed> {
        // A chunk heavier than the whole queue would wait forever for room.
        while weight(chunk.bars.len(), chunk.rejections.len()) > self.capacity {
            // At least one row a part, so that a tiny queue still makes progress.
            let rejections = chunk
                .rejections
                .len()
                .min((self.capacity / REJECTION_WEIGHT).max(1));
            let bars = self.capacity.saturating_sub(rejections * REJECTION_WEIGHT);
            let rest_rejections = chunk.rejections.split_off(rejections);
            let rest_bars = chunk.bars.split_off(bars.min(chunk.bars.len()));
            let head = Chunk {
                mode: chunk.mode,
                bars: std::mem::replace(&mut chunk.bars, rest_bars),
                rejections: std::mem::replace(&mut chunk.rejections, rest_rejections),
                // Before any of the chunk's rows, as the sender asked.
                changes: std::mem::take(&mut chunk.changes),
                ack: chunk.ack.clone(),
                barrier: None,
                received: chunk.received,
            };
            self.send_one(head).await?;
        }
        self.send_one(chunk).await
    }

    async fn send_one(&self, chunk: Chunk) -> Result<(), PipelineClosed> {
        let n = weight(chunk.bars.len(), chunk.rejections.len()).clamp(1, self.capacity) as u32;
        let room = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| PipelineClosed)?;
        self.tx
            .send(Queued { chunk, _room: room })
            .await
            .map_err(|_| PipelineClosed)
    }

    /// Bars waiting in the queue (a rejection counts as `REJECTION_WEIGHT`).
    pub fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }
}

/// Counters over the pipeline's life.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub counts: WriteCounts,
    pub batches: u64,
    pub retries: u64,
}

pub struct Pipeline {
    queue: Queue,
    router: JoinHandle<()>,
    writers: Vec<JoinHandle<Result<Totals, PipelineError>>>,
    on_batch: Arc<OnBatch>,
}

/// What the writers need to know besides the batch.
#[derive(Clone)]
pub(crate) struct WriterContext {
    pool: Pool,
    timeframes: Timeframes,
    /// Cancelled when the operator gives up on uncommitted batches (shutdown deadline).
    abandon: CancellationToken,
    /// Told of every commit (sync events); never waits.
    announcer: Announcer,
    /// The months whose partitions exist (on a partitioned `market_data`).
    partitions: Partitions,
    on_batch: Arc<OnBatch>,
}

/// Since when each writer has been on its current batch: what the systemd watchdog watches.
struct OnBatch {
    epoch: Instant,
    /// Per writer: milliseconds since `epoch` when its current batch began, plus one; 0 while
    /// it waits for a batch.
    since: Vec<AtomicU64>,
}

impl OnBatch {
    fn begin(&self, shard: usize) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.since[shard].store(ms, Ordering::Relaxed);
    }

    fn end(&self, shard: usize) {
        self.since[shard].store(0, Ordering::Relaxed);
    }
}

/// A look at a running pipeline from outside: its queue's depth and its writers' progress.
/// It holds no sender: the pipeline finishes whether or not a watch is still around.
#[derive(Clone)]
pub struct PipelineWatch {
    room: Arc<Semaphore>,
    capacity: usize,
    on_batch: Arc<OnBatch>,
}

impl PipelineWatch {
    /// Bars waiting in the queue (see [`Queue::depth`]).
    pub fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }

    /// The longest any writer has been on its current batch (retries included), if one is on
    /// a batch. A quiet market leaves every writer waiting: `None`.
    pub fn longest_batch(&self) -> Option<Duration> {
        let now = self.on_batch.epoch.elapsed().as_millis() as u64 + 1;
        self.on_batch
            .since
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s != 0)
            .map(|s| Duration::from_millis(now.saturating_sub(s)))
            .max()
    }
}

impl Pipeline {
    pub fn start(
        cfg: &PipelineConfig,
        pool: Pool,
        timeframes: Timeframes,
        abandon: CancellationToken,
        announcer: Announcer,
    ) -> Pipeline {
        let room = Arc::new(Semaphore::new(cfg.queue_capacity));
        // The semaphore bounds bars; this only bounds the number of chunk envelopes.
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.clamp(1, 4096));
        let on_batch = Arc::new(OnBatch {
            epoch: Instant::now(),
            since: (0..cfg.writers).map(|_| AtomicU64::new(0)).collect(),
        });
        let ctx = WriterContext {
            pool,
            timeframes,
            abandon,
            announcer,
            on_batch: on_batch.clone(),
            partitions: Partitions::default(),
        };
        let mut shards = Vec::with_capacity(cfg.writers);
        let mut busy = Vec::with_capacity(cfg.writers);
        let mut writers = Vec::with_capacity(cfg.writers);
        for shard in 0..cfg.writers {
            // One batch waiting while one is written: enough to keep a writer busy.
            let (btx, brx) = mpsc::channel::<Batch>(1);
            let (busy_tx, busy_rx) = tokio::sync::watch::channel(false);
            shards.push(btx);
            busy.push(busy_rx);
            writers.push(tokio::spawn(commit::write_loop(
                shard,
                brx,
                busy_tx,
                ctx.clone(),
            )));
        }
        let router = Router {
            shards,
            busy,
            open: (0..cfg.writers)
                .map(|_| Batch::with_capacity(cfg.batch_max_rows.min(INITIAL_BATCH_CAPACITY)))
                .collect(),
            max_rows: cfg.batch_max_rows,
            max_age: Duration::from_millis(cfg.batch_max_age_ms),
            timeframes,
            hasher: std::collections::hash_map::RandomState::new(),
        };
        // Once the router is gone (the writers gave up), a source waiting for room must hear
        // that the queue is closed rather than wait for ever.
        let closer = CloseOnDrop(room.clone());
        Pipeline {
            queue: Queue {
                tx,
                room,
                capacity: cfg.queue_capacity,
            },
            router: tokio::spawn(async move {
                let _closer = closer;
                router.run(rx).await
            }),
            writers,
            on_batch,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    pub fn watch(&self) -> PipelineWatch {
        PipelineWatch {
            room: self.queue.room.clone(),
            capacity: self.queue.capacity,
            on_batch: self.on_batch.clone(),
        }
    }

    /// Closes the queue, commits everything queued, and returns the totals. Every `Queue` clone
    /// must have been dropped, or this waits for them.
    pub async fn finish(self) -> Result<Totals, PipelineError> {
        drop(self.queue);
        let _ = self.router.await;
        let mut totals = Totals::default();
        let mut fatal = None;
        // Every writer's abandoned bars: each holds its own shard's share.
        let mut uncommitted = 0;
        for w in self.writers {
            match w.await {
                Ok(Ok(t)) => {
                    totals.counts.add(&t.counts);
                    totals.batches += t.batches;
                    totals.retries += t.retries;
                }
                Ok(Err(PipelineError::Abandoned { uncommitted: n })) => uncommitted += n,
                Ok(Err(e)) => {
                    fatal.get_or_insert(e);
                }
                Err(join) => {
                    fatal
                        .get_or_insert(PipelineError::Fatal(format!("writer task failed: {join}")));
                }
            }
        }
        match (fatal, uncommitted) {
            (Some(e), _) => Err(e),
            (None, 0) => Ok(totals),
            (None, uncommitted) => Err(PipelineError::Abandoned { uncommitted }),
        }
    }
}

/// Applies the feeds' end (`Transition::Ended`) once the writers are gone without applying it
/// (they failed or were given up on): no bar can follow it then.
pub async fn end_feeds(
    pool: &Pool,
    changes: &[crate::ingest::FeedChange],
) -> Result<Vec<crate::ingest::StatusChanged>, crate::db::DbError> {
    let mut client = crate::db::get(pool).await?;
    crate::db::writer::apply_alone(&mut client, changes).await
}

/// `mdingest_bars_received_total`: every row a source handed in, by data source, counted where
/// they all pass.
fn count_received(bars: &[crate::domain::Bar], rejections: &[Rejection]) {
    let mut n = [0u64; crate::domain::DataSource::ALL.len()];
    let sources = bars
        .iter()
        .map(|b| b.source)
        .chain(rejections.iter().map(|r| r.source));
    for s in sources {
        n[s as usize] += 1;
    }
    for (source, n) in crate::domain::DataSource::ALL.into_iter().zip(n) {
        if n > 0 {
            crate::telemetry::received(source, n);
        }
    }
}

/// Closes the queue's room when dropped.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Router {
    shards: Vec<mpsc::Sender<Batch>>,
    /// Whether each shard's writer is committing a batch now.
    busy: Vec<tokio::sync::watch::Receiver<bool>>,
    open: Vec<Batch>,
    max_rows: usize,
    max_age: Duration,
    timeframes: Timeframes,
    hasher: std::collections::hash_map::RandomState,
}

impl Router {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        loop {
            let deadline = self
                .open
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| b.opened + self.max_age)
                .min();
            // A batch someone waits on goes as soon as its writer can take it (see `route`).
            let waited_on: Vec<_> = (0..self.open.len())
                .filter(|&s| self.open[s].barrier)
                .map(|s| {
                    let (tx, mut busy) = (self.shards[s].clone(), self.busy[s].clone());
                    Box::pin(async move {
                        // A writer that is gone shows in the send.
                        let _ = busy.wait_for(|b| !*b).await;
                        (s, tx.reserve_owned().await)
                    })
                })
                .collect();
            let writer_free = async move {
                if waited_on.is_empty() {
                    std::future::pending().await
                } else {
                    futures_util::future::select_all(waited_on).await.0
                }
            };
            let next = match deadline {
                Some(d) => tokio::select! {
                    q = rx.recv() => q,
                    _ = tokio::time::sleep_until(d.into()) => {
                        if self.flush_expired().await.is_err() { return; }
                        continue;
                    }
                    (s, permit) = writer_free => {
                        let Ok(permit) = permit else { return };
                        self.send_with(s, permit);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(queued) = next else { break };
            // The bars leave the queue here: free their room before routing them.
            let Queued { chunk, _room } = queued;
            drop(_room);
            if self.route(chunk).await.is_err() {
                return;
            }
        }
        for shard in 0..self.open.len() {
            if self.flush(shard).await.is_err() {
                return;
            }
        }
    }

    fn shard_of(&self, symbol: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        symbol.hash(&mut h);
        (std::hash::Hasher::finish(&h) % self.shards.len() as u64) as usize
    }

    async fn route(&mut self, chunk: Chunk) -> Result<(), PipelineClosed> {
        let now = Utc::now();
        let Chunk {
            mode,
            bars,
            rejections,
            changes,
            ack,
            barrier,
            received,
        } = chunk;
        for change in changes {
            let shard = self.shard_of(change.feed.symbol.as_str());
            // The feed's earlier rows commit first: a change applies after them, and before
            // whatever comes next in the same batch.
            if !self.open[shard].entries.is_empty() || !self.open[shard].rejections.is_empty() {
                self.flush(shard).await?;
            }
            self.add(shard, ack.as_ref(), |b| b.changes.push(change))
                .await?;
        }
        if let Some(symbol) = barrier {
            // Someone waits on it (a backfill task, to be marked done): the batch goes as soon
            // as its writer can take it, not at its age limit, which would idle the waiting
            // worker. While the writer is busy it stays open and gathers what other workers
            // send (many small windows, Yahoo's, would otherwise be a transaction each).
            let shard = self.shard_of(symbol.as_str());
            self.add(shard, ack.as_ref(), |b| b.barrier = true).await?;
            if !*self.busy[shard].borrow() {
                if let Ok(permit) = self.shards[shard].clone().try_reserve_owned() {
                    self.send_with(shard, permit);
                }
            }
            return Ok(());
        }
        count_received(&bars, &rejections);
        for r in rejections {
            let shard = self.shard_of(r.symbol.as_deref().unwrap_or(""));
            self.add(shard, ack.as_ref(), |b| {
                b.note_received(received);
                b.rejections.push(r);
                b.rejected_bars += 1;
            })
            .await?;
        }
        for bar in bars {
            let shard = self.shard_of(bar.symbol.as_str());
            let problems = validate::check(&bar, self.timeframes.of(bar.source), now);
            self.add(shard, ack.as_ref(), |b| {
                b.note_received(received);
                if problems.is_empty() {
                    b.entries.push(Staged { bar, mode });
                } else {
                    b.rejections.extend(problems);
                    b.rejected_bars += 1;
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Puts something into `shard`'s open batch and closes the batch once it is full.
    async fn add(
        &mut self,
        shard: usize,
        ack: Option<&AckTx>,
        put: impl FnOnce(&mut Batch),
    ) -> Result<(), PipelineClosed> {
        let b = self.batch(shard);
        put(b);
        if let Some(ack) = ack {
            b.add_ack(ack);
        }
        if b.len() >= self.max_rows {
            self.flush(shard).await?;
        }
        Ok(())
    }

    /// The open batch of `shard`, restarting its age clock when it was empty.
    fn batch(&mut self, shard: usize) -> &mut Batch {
        let b = &mut self.open[shard];
        if b.is_empty() {
            b.opened = Instant::now();
        }
        b
    }

    async fn flush_expired(&mut self) -> Result<(), PipelineClosed> {
        let now = Instant::now();
        for shard in 0..self.open.len() {
            let b = &self.open[shard];
            if !b.is_empty() && b.opened + self.max_age <= now {
                self.flush(shard).await?;
            }
        }
        Ok(())
    }

    /// Sends `shard`'s open batch on a slot already reserved in its writer's channel.
    fn send_with(&mut self, shard: usize, permit: mpsc::OwnedPermit<Batch>) {
        if self.open[shard].is_empty() {
            return;
        }
        let fresh = Batch::with_capacity(self.max_rows.min(INITIAL_BATCH_CAPACITY));
        permit.send(std::mem::replace(&mut self.open[shard], fresh));
    }

    async fn flush(&mut self, shard: usize) -> Result<(), PipelineClosed> {
        if self.open[shard].is_empty() {
            return Ok(());
        }
        // Sized up front: growing by doubling would hold up to twice the rows' memory.
        let fresh = Batch::with_capacity(self.max_rows.min(INITIAL_BATCH_CAPACITY));
        let batch = std::mem::replace(&mut self.open[shard], fresh);
        self.shards[shard]
            .send(batch)
            .await
            .map_err(|_| PipelineClosed)
    }
}
