//! Polygon flat files (`us_stocks_sip/{day,minute}_aggs_v1/…csv.gz`): CSV with the header
//! `ticker,volume,open,close,high,low,window_start,transactions`, `window_start` in epoch
//! nanoseconds, gzip or plain. Not split-adjusted; written as `data_source = 'polygon'`.
//!
//! The reader streams: it holds one chunk of bars at a time whatever the file's size. A row it
//! cannot parse becomes a [`Rejection`] naming the file and line; a file it cannot read at all
//! (missing, not gzip, wrong header, truncated) is an error naming the file and line.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::{
    is_midnight_new_york, parse_decimal, Bar, DataSource, DomainError, Mode, Symbol, Timeframe,
};
use crate::pipeline::{Chunk, Rejection};

const COLUMNS: [&str; 7] = [
    "ticker",
    "volume",
    "open",
    "close",
    "high",
    "low",
    "window_start",
];
const EXPECTED_HEADER: &str = "ticker,volume,open,close,high,low,window_start,transactions";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error)]
pub enum FlatFileError {
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}: named .gz but not a gzip file")]
    NotGzip { path: String },
    #[error("{path}: line 1: header {found:?} is not a Polygon flat file's (missing column {missing:?}; expected {EXPECTED_HEADER})")]
    Header {
        path: String,
        found: String,
        missing: &'static str,
    },
    #[error("{path}: empty file (no header)")]
    Empty { path: String },
    #[error("{path}: line {line}: cannot read further ({reason}); rows before it were loaded")]
    Read {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("{path}: line {line}: the file holds {detected} aggregates but sources.polygon.timeframe is {configured}; no bar of this file was loaded")]
    TimeframeMismatch {
        path: String,
        line: u64,
        detected: &'static str,
        configured: Timeframe,
    },
}

/// Counts the compressed bytes consumed, for progress over a file of known size.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub struct FlatFile {
    shown: String,
    rdr: csv::Reader<Box<dyn Read + Send>>,
    /// Index of each of `COLUMNS` in this file's header.
    cols: [usize; 7],
    configured: Timeframe,
    detected: bool,
    record: csv::StringRecord,
    /// An error met after some rows of a chunk were read: those rows go out first.
    pending: Option<FlatFileError>,
    done: bool,
    last_symbol: std::cell::RefCell<Option<Symbol>>,
}

impl FlatFile {
    /// Opens `path` and checks its framing and header; no data row is read yet.
    pub fn open(
        path: &Path,
        configured: Timeframe,
        bytes_read: Arc<AtomicU64>,
    ) -> Result<FlatFile, FlatFileError> {
        let shown = path.display().to_string();
        let open_err = |source| FlatFileError::Open {
            path: shown.clone(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 2];
        let got = read_up_to(&mut file, &mut magic).map_err(open_err)?;
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let gzip = got == 2 && magic == GZIP_MAGIC;
        if !gzip && shown.ends_with(".gz") {
            return Err(FlatFileError::NotGzip { path: shown });
        }
        let counted = BufReader::with_capacity(
            1 << 16,
            Counting {
                inner: file,
                read: bytes_read,
            },
        );
        let input: Box<dyn Read + Send> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(counted))
        } else {
            Box::new(counted)
        };
        // Polygon never quotes; honouring quotes would let one stray `"` swallow the rest of
        // the file into a single field (and into memory).
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .quoting(false)
            .buffer_capacity(1 << 16)
            .from_reader(input);
        let header = match rdr.headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                return Err(FlatFileError::Read {
                    path: shown,
                    line: 1,
                    reason: e.to_string(),
                })
            }
        };
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(FlatFileError::Empty { path: shown });
        }
        let mut cols = [0usize; 7];
        for (slot, name) in cols.iter_mut().zip(COLUMNS) {
            *slot = header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| FlatFileError::Header {
                    path: shown.clone(),
                    found: header.iter().collect::<Vec<_>>().join(","),
                    missing: name,
                })?;
        }
        Ok(FlatFile {
            shown,
            rdr,
            cols,
            configured,
            detected: false,
            record: csv::StringRecord::new(),
            pending: None,
            done: false,
            last_symbol: Default::default(),
        })
    }

    /// The next chunk of at most `max` rows, `None` at the end of the file.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>, FlatFileError> {
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Err(e);
        }
        if self.done {
            return Ok(None);
        }
        let mut chunk = Chunk {
            mode: Mode::Backfill,
            bars: Vec::with_capacity(max),
            rejections: Vec::new(),
            ack: None,
        };
        let mut rows = 0;
        while rows < max {
            match self.rdr.read_record(&mut self.record) {
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Ok(true) => {}
                Err(e) => {
                    let line = e
                        .position()
                        .map(|p| p.line())
                        .unwrap_or_else(|| self.rdr.position().line());
                    if let csv::ErrorKind::Utf8 { .. } = e.kind() {
                        chunk.rejections.push(self.reject(
                            line,
                            None,
                            "malformed_row",
                            e.to_string(),
                        ));
                        rows += 1;
                        continue;
                    }
                    let err = FlatFileError::Read {
                        path: self.shown.clone(),
                        line,
                        reason: e.to_string(),
                    };
                    if rows == 0 {
                        self.done = true;
                        return Err(err);
                    }
                    self.pending = Some(err);
                    break;
                }
            }
            rows += 1;
            let line = self.record.position().map_or(0, |p| p.line());
            match self.parse_row() {
                Ok(bar) => {
                    if !self.detected {
                        self.check_timeframe(&bar, line)?;
                    }
                    chunk.bars.push(bar);
                }
                Err((check, ts, reason)) => {
                    chunk.rejections.push(self.reject(line, ts, check, reason));
                }
            }
        }
        if rows == 0 {
            return Ok(None);
        }
        Ok(Some(chunk))
    }

    /// Day files stamp every bar at midnight New York; minute files never do (their session
    /// runs 04:00–20:00 New York), so the first bar tells which the file is.
    fn check_timeframe(&mut self, bar: &Bar, line: u64) -> Result<(), FlatFileError> {
        let (detected, name) = if is_midnight_new_york(bar.timestamp) {
            (Timeframe::D1, "day")
        } else {
            (Timeframe::M1, "minute")
        };
        if detected != self.configured {
            self.done = true;
            return Err(FlatFileError::TimeframeMismatch {
                path: self.shown.clone(),
                line,
                detected: name,
                configured: self.configured,
            });
        }
        self.detected = true;
        Ok(())
    }

    fn field(&self, i: usize) -> Result<&str, (&'static str, Option<DateTime<Utc>>, String)> {
        let col = self.cols[i];
        self.record.get(col).ok_or_else(|| {
            (
                "malformed_row",
                None,
                format!(
                    "{} fields, expected at least {}",
                    self.record.len(),
                    col + 1
                ),
            )
        })
    }

    fn parse_row(&self) -> Result<Bar, (&'static str, Option<DateTime<Utc>>, String)> {
        let ts_raw = self.field(6)?;
        let ts = ts_raw
            .trim()
            .parse::<i64>()
            .map(DateTime::from_timestamp_nanos)
            .map_err(|_| {
                (
                    "invalid_timestamp",
                    None,
                    format!("window_start {ts_raw:?} is not epoch nanoseconds"),
                )
            })?;
        let fail = |e: DomainError| {
            let check = match &e {
                DomainError::EmptySymbol
                | DomainError::SymbolTooLong(_)
                | DomainError::SymbolNotTicker(_) => "invalid_symbol",
                DomainError::NotANumber { value, .. } if value.is_empty() => "missing_value",
                DomainError::VolumeOutOfRange(_) => "value_out_of_range",
                _ => "not_a_number",
            };
            (check, Some(ts), e.to_string())
        };
        let raw = self.field(0)?.trim();
        // Files are sorted by ticker: share the previous row's symbol instead of a new one.
        let cached = self
            .last_symbol
            .borrow()
            .as_ref()
            .filter(|last| last.as_str() == raw)
            .cloned();
        let symbol = match cached {
            Some(s) => s,
            None => {
                let parsed: Symbol = raw.parse().map_err(fail)?;
                self.last_symbol.replace(Some(parsed.clone()));
                parsed
            }
        };
        let num = |i: usize,
                   name: &'static str|
         -> Result<_, (&'static str, Option<DateTime<Utc>>, String)> {
            parse_decimal(name, self.field(i)?).map_err(fail)
        };
        let (volume, open, close, high, low) = (
            num(1, "volume")?,
            num(2, "open")?,
            num(3, "close")?,
            num(4, "high")?,
            num(5, "low")?,
        );
        Bar::new(
            symbol,
            ts,
            open,
            high,
            low,
            close,
            volume,
            DataSource::Polygon,
        )
        .map_err(fail)
    }

    fn reject(
        &self,
        line: u64,
        ts: Option<DateTime<Utc>>,
        check: &'static str,
        reason: String,
    ) -> Rejection {
        let ticker = self
            .record
            .get(self.cols[0])
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Rejection {
            source: DataSource::Polygon,
            symbol: ticker,
            bar_timestamp: ts,
            check,
            severity: "error",
            action: "rejected",
            details: json!({
                "reason": reason,
                "file": self.shown,
                "line": line,
                "row": self.record.iter().collect::<Vec<_>>().join(","),
            }),
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
