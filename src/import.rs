//! `mdingest import --format polygon-flatfile PATH...`: streams flat files through the same
//! pipeline as every other source, as `data_source = 'polygon'`, mode `backfill`.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::domain::{DataSource, Mode, Symbol};
use crate::pipeline::{Pipeline, PipelineError, WriteCounts};
use crate::progress::Progress;
use crate::sources::flatfile::{FlatFile, FlatFileError};

/// Rows per chunk handed to the queue: large enough to amortise the hand-off, small enough that
/// memory stays bounded by the queue, not by the file.
const CHUNK_ROWS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "database is not migrated (no data_ingestion.market_data): run `mdingest migrate` first"
    )]
    NotMigrated,
    #[error("{0}")]
    File(#[from] FlatFileError),
    #[error("write pipeline failed: {0}")]
    Pipeline(#[from] PipelineError),
}

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub files: usize,
    pub rows_read: u64,
    pub counts: WriteCounts,
    pub seconds: f64,
    /// Files that could not be read to the end, with the reason; the rest loaded.
    pub failed: Vec<String>,
    pub interrupted: bool,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.seconds > 0.0 {
            self.rows_read as f64 / self.seconds
        } else {
            0.0
        };
        let lines = [
            ("files", self.files.to_string()),
            ("rows read", self.rows_read.to_string()),
            ("inserted", self.counts.inserted.to_string()),
            ("updated", self.counts.updated.to_string()),
            ("unchanged", self.counts.unchanged.to_string()),
            ("rejected", self.counts.rejected.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("rows/s", format!("{rate:.0}")),
        ];
        writeln!(f, "import summary")?;
        for (k, v) in lines {
            writeln!(f, "  {k:<10} {v:>12}")?;
        }
        for failed in &self.failed {
            writeln!(f, "  failed: {failed}")?;
        }
        Ok(())
    }
}

pub struct ImportOptions {
    pub paths: Vec<PathBuf>,
    pub show_progress: bool,
    /// Cancelled on Ctrl-C: stop reading, commit what was read, report.
    pub stop: CancellationToken,
    /// Cancelled on a second Ctrl-C: stop waiting for the database to take what was read.
    pub abandon: CancellationToken,
}

pub async fn import(cfg: &Config, opts: ImportOptions) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let timeframe = cfg.timeframes().polygon;
    // Every file is checked (exists, framing, header) before anything loads.
    let sizes = opts
        .paths
        .iter()
        .map(|p| {
            FlatFile::open(p, timeframe, Arc::default())?;
            Ok(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        })
        .collect::<Result<Vec<u64>, FlatFileError>>()?;
    let total_bytes: u64 = sizes.iter().sum();

    let pool = db::pool(&cfg.database)?;
    let shown = cfg.database.url.redacted();
    db::ping(&pool, &shown).await?;
    {
        let client = pool
            .get()
            .await
            .map_err(|e| DbError::Pool(db::pool_error_reason(&e)))?;
        let row = client
            .query_one(
                "SELECT to_regclass('data_ingestion.market_data') IS NOT NULL",
                &[],
            )
            .await
            .map_err(DbError::from)?;
        if !row.get::<_, bool>(0) {
            return Err(ImportError::NotMigrated);
        }
    }

    let pipeline = Pipeline::start(
        &cfg.pipeline,
        pool.clone(),
        cfg.timeframes(),
        opts.abandon.clone(),
    );
    let queue = pipeline.queue();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let mut summary = ImportSummary {
        files: opts.paths.len(),
        ..Default::default()
    };
    let mut committed = WriteCounts::default();
    // Feeds touched by each outcome, to mark them completed or failed at the end.
    let mut loaded: HashSet<Symbol> = HashSet::new();
    let mut failed: Vec<(HashSet<Symbol>, String)> = Vec::new();
    let mut progress = Progress::new("import", total_bytes, opts.show_progress);
    let bytes = Arc::new(AtomicU64::new(0));
    let mut closed = false;
    for path in &opts.paths {
        let mut file = match FlatFile::open(path, timeframe, bytes.clone()) {
            Ok(f) => f,
            Err(e) => {
                summary.failed.push(e.to_string());
                continue;
            }
        };
        let mut symbols: HashSet<Symbol> = HashSet::new();
        let mut error = None;
        let mut reader_lost = false;
        loop {
            if opts.stop.is_cancelled() {
                summary.interrupted = true;
                break;
            }
            // The reader does blocking file I/O and decompression: off the async threads.
            let read = tokio::task::spawn_blocking(move || {
                let next = file.next_chunk(CHUNK_ROWS);
                (file, next)
            })
            .await;
            let next = match read {
                Ok((back, next)) => {
                    file = back;
                    next
                }
                Err(e) => {
                    // The reader is gone with its file; the rows already queued still commit.
                    error = Some(format!("{}: reader failed: {e}", path.display()));
                    reader_lost = true;
                    break;
                }
            };
            let mut chunk = match next {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            summary.rows_read += (chunk.bars.len() + chunk.rejections.len()) as u64;
            for bar in &chunk.bars {
                if !symbols.contains(&bar.symbol) {
                    symbols.insert(bar.symbol.clone());
                }
            }
            chunk.ack = Some(ack_tx.clone());
            if queue.send(chunk).await.is_err() {
                // A writer stopped; `finish` below says why.
                closed = true;
                break;
            }
            while let Ok(report) = ack_rx.try_recv() {
                committed.add(&report.counts);
            }
            let rows = summary.rows_read;
            progress.update(bytes.load(Ordering::Relaxed), || {
                format!("{rows} rows read, {} committed", committed.written())
            });
        }
        match error {
            Some(e) => {
                summary.failed.push(e.clone());
                failed.push((symbols, e));
            }
            None => loaded.extend(symbols),
        }
        tracing::debug!(file = %path.display(), "file done");
        if summary.interrupted || closed || reader_lost {
            break;
        }
    }
    drop(queue);
    drop(ack_tx);
    let totals = pipeline.finish().await;
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();

    // A symbol whose file broke off is an error even if another file loaded it.
    let mut outcomes: Vec<(Vec<Symbol>, &'static str, Option<String>)> = Vec::new();
    for (symbols, e) in failed {
        loaded.retain(|s| !symbols.contains(s));
        outcomes.push((symbols.into_iter().collect(), "error", Some(e)));
    }
    let loaded: Vec<Symbol> = loaded.into_iter().collect();
    let totals = match totals {
        Ok(t) => t,
        Err(e) => {
            // Leave no feed `running` behind; best effort, the database may be what failed.
            let note = Some(format!("import failed: {e}"));
            let all = outcomes
                .into_iter()
                .flat_map(|o| o.0)
                .chain(loaded)
                .collect();
            if let Err(mark) = finish_feeds(&pool, vec![(all, "error", note)]).await {
                tracing::warn!(error = %mark, "cannot mark the import's feeds as failed");
            }
            return Err(e.into());
        }
    };
    summary.counts = totals.counts;
    let state = if summary.interrupted {
        ("idle", Some("import interrupted".to_string()))
    } else {
        ("completed", None)
    };
    outcomes.push((loaded, state.0, state.1));
    finish_feeds(&pool, outcomes).await?;
    Ok(summary)
}

/// Moves the import's feeds out of `running`: each group of symbols to its state and error.
async fn finish_feeds(
    pool: &deadpool_postgres::Pool,
    outcomes: Vec<(Vec<Symbol>, &'static str, Option<String>)>,
) -> Result<(), DbError> {
    let client = pool
        .get()
        .await
        .map_err(|e| DbError::Pool(db::pool_error_reason(&e)))?;
    for (symbols, state, error) in outcomes {
        if symbols.is_empty() {
            continue;
        }
        db::status::finish_feeds(
            &client,
            DataSource::Polygon,
            Mode::Backfill,
            &symbols,
            state,
            error.as_deref(),
        )
        .await?;
    }
    Ok(())
}
