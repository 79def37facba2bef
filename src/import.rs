//! `mdingest import --format polygon-flatfile PATH...`: the flat-file source on the shared driver
//! (`sources::driver`), as `data_source = 'polygon'`, mode `backfill`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::domain::{DataSource, Mode, Symbol, Timeframe};
use crate::ingest::Feed;
use crate::progress::{Progress, Unit};
use crate::shutdown::Shutdown;
use crate::sources::driver::{self, DriveError, Source, SourceContext, SourceEnd, Summary};
use crate::sources::polygon::flatfile::{FlatFile, FlatFileError};

/// Rows per chunk handed to the queue: large enough to amortise the hand-off, small enough that
/// memory stays bounded by the queue, not by the file.
const CHUNK_ROWS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    File(#[from] FlatFileError),
    #[error(transparent)]
    Drive(#[from] DriveError),
}

/// Checks every file (exists, framing, header) before anything loads, then loads them in order.
pub async fn import(
    cfg: &Config,
    paths: Vec<PathBuf>,
    shutdown: &Shutdown,
    show_progress: bool,
) -> Result<Summary, ImportError> {
    let timeframe = cfg.timeframes().polygon;
    let mut total_bytes = 0;
    for p in &paths {
        FlatFile::open(p, timeframe, Arc::default())?;
        total_bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    let source = FlatFiles {
        paths,
        timeframe,
        total_bytes,
    };
    Ok(driver::drive_command(cfg, source, shutdown, show_progress).await?)
}

struct FlatFiles {
    paths: Vec<PathBuf>,
    timeframe: Timeframe,
    total_bytes: u64,
}

impl Source for FlatFiles {
    fn name(&self) -> &'static str {
        "import"
    }

    fn read_label(&self) -> &'static str {
        "rows read"
    }

    async fn run(self, ctx: SourceContext) -> SourceEnd {
        let mut end = SourceEnd {
            lines: vec![("files", self.paths.len().to_string())],
            ..SourceEnd::default()
        };
        let mut progress =
            Progress::new("import", self.total_bytes, Unit::Bytes, ctx.show_progress());
        let bytes = Arc::new(AtomicU64::new(0));
        for path in &self.paths {
            let file = match FlatFile::open(path, self.timeframe, bytes.clone()) {
                Ok(f) => f,
                Err(e) => {
                    end.failed.push(e.to_string());
                    continue;
                }
            };
            let shown = crate::text::path(path);
            let (symbols, error, go_on) =
                load_file(file, &shown, &ctx, &mut progress, &bytes).await;
            for s in symbols {
                let feed = Feed {
                    source: DataSource::Polygon,
                    symbol: s,
                    mode: Mode::Backfill,
                    timeframe: self.timeframe,
                };
                match &error {
                    Some(e) => ctx.feeds().failed(&feed, e),
                    None => ctx.feeds().touched(&feed),
                }
            }
            if let Some(e) = error {
                end.failed.push(e);
            }
            tracing::debug!(file = %crate::text::path(path), "file done");
            if !go_on {
                break;
            }
        }
        progress.finish();
        end
    }
}

/// Streams one file into the queue. Returns the symbols it held, the error that cut it short,
/// and whether to go on with the next file.
async fn load_file(
    mut file: FlatFile,
    shown: &str,
    ctx: &SourceContext,
    progress: &mut Progress,
    bytes: &AtomicU64,
) -> (HashSet<Symbol>, Option<String>, bool) {
    let mut symbols: HashSet<Symbol> = HashSet::new();
    loop {
        if ctx.stop().is_cancelled() {
            return (symbols, None, false);
        }
        // The reader does blocking file I/O and decompression: off the async threads.
        let read = tokio::task::spawn_blocking(move || {
            let next = file.next_chunk(CHUNK_ROWS);
            (file, next)
        })
        .await;
        let chunk = match read {
            Ok((back, next)) => {
                file = back;
                match next {
                    Ok(Some(c)) => c,
                    Ok(None) => return (symbols, None, true),
                    Err(e) => return (symbols, Some(e.to_string()), true),
                }
            }
            // The reader is gone with its file; the rows already queued still commit.
            Err(e) => return (symbols, Some(format!("{shown}: reader failed: {e}")), false),
        };
        for bar in &chunk.bars {
            if !symbols.contains(&bar.symbol) {
                symbols.insert(bar.symbol.clone());
            }
        }
        if ctx.send(chunk).await.is_err() {
            // A writer stopped; the driver says why.
            return (symbols, None, false);
        }
        let (read, written) = (ctx.read(), ctx.committed().written());
        progress.update(bytes.load(Ordering::Relaxed), || {
            format!("{read} rows read, {written} committed")
        });
    }
}
