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

use crate::domain::{is_midnight_new_york, Bar, DataSource, DomainError, Mode, Symbol, Timeframe};
use crate::ingest::{Chunk, Rejection};

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
/// A real row is under 200 bytes; a longer one is skipped to its end without being held.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// A real header is 62 bytes; a file whose first line runs past this is not a flat file.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The raw row kept in `data_quality_logs.details`, beside its original length.
pub const MAX_LOGGED_ROW_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FlatFileError {
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}: named .gz but not a gzip file")]
    NotGzip { path: String },
    #[error("{path}: line 1: header \"{found}\" is not a Polygon flat file's (missing column {missing:?}; expected {EXPECTED_HEADER})")]
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

/// Cuts every line at `MAX_RECORD_BYTES` (the header at `MAX_HEADER_BYTES`): the rest of an
/// overlong line is read and dropped, never held, and its line number is queued for the parser,
/// which turns the cut record into one quality row. Without it a single 1 GB line (a gzip bomb
/// of NULs) would be buffered whole by the CSV reader.
struct LineCap<R> {
    inner: R,
    /// 1-based number of the line being read.
    line: u64,
    len: u64,
    skipping: bool,
    overlong: Arc<std::sync::Mutex<std::collections::VecDeque<Overlong>>>,
}

#[derive(Debug, Clone, Copy)]
struct Overlong {
    line: u64,
    len: u64,
}

impl<R: Read> LineCap<R> {
    fn cap(&self) -> u64 {
        if self.line == 1 {
            MAX_HEADER_BYTES as u64
        } else {
            MAX_RECORD_BYTES as u64
        }
    }

    fn end_skip(&mut self) {
        self.skipping = false;
        if let Ok(mut q) = self.overlong.lock() {
            q.push_back(Overlong {
                line: self.line,
                len: self.len,
            });
        }
    }
}

impl<R: Read> Read for LineCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                if self.skipping {
                    self.end_skip();
                }
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                let b = buf[i];
                if b == b'\n' {
                    if self.skipping {
                        self.end_skip();
                    }
                    buf[kept] = b;
                    kept += 1;
                    self.line += 1;
                    self.len = 0;
                    continue;
                }
                self.len += 1;
                if self.skipping {
                    continue;
                }
                if self.len > self.cap() {
                    if self.line == 1 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("header line longer than {MAX_HEADER_BYTES} bytes"),
                        ));
                    }
                    self.skipping = true;
                    continue;
                }
                buf[kept] = b;
                kept += 1;
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
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
    overlong: Arc<std::sync::Mutex<std::collections::VecDeque<Overlong>>>,
}

impl FlatFile {
    /// Opens `path` and checks its framing and header; no data row is read yet.
    pub fn open(
        path: &Path,
        configured: Timeframe,
        bytes_read: Arc<AtomicU64>,
    ) -> Result<FlatFile, FlatFileError> {
        let shown = crate::text::path(path);
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
        let decoded: Box<dyn Read + Send> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(counted))
        } else {
            Box::new(counted)
        };
        let overlong = Arc::default();
        let input: Box<dyn Read + Send> = Box::new(LineCap {
            inner: decoded,
            line: 1,
            len: 0,
            skipping: false,
            overlong: Arc::clone(&overlong),
        });
        // Polygon never quotes; honouring quotes would let one stray `"` swallow the rest of
        // the file into a single field (and into memory).
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .quoting(false)
            // Lines end at `\n` only, as `LineCap` counts them (a `\r` before it is trimmed).
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(1 << 16)
            .from_reader(input);
        let header = match rdr.headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                return Err(FlatFileError::Read {
                    path: shown,
                    line: 1,
                    reason: crate::text::excerpt(&e.to_string(), 200),
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
                    found: crate::text::excerpt(&header.iter().collect::<Vec<_>>().join(","), 100),
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
            overlong,
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
        let mut chunk = Chunk::new(Mode::Backfill, Vec::with_capacity(max), Vec::new());
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
            if let Some(len) = self.take_overlong(line) {
                let mut r = self.reject(
                    line,
                    None,
                    "record_too_long",
                    format!("the row is {len} bytes, longer than the {MAX_RECORD_BYTES}-byte cap"),
                );
                r.symbol = None;
                r.details["row_len"] = json!(len);
                chunk.rejections.push(r);
                continue;
            }
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

    /// The full length of line `line` if `LineCap` cut it.
    fn take_overlong(&self, line: u64) -> Option<u64> {
        let mut q = self.overlong.lock().ok()?;
        // Lines the parser never turned into records (none today) must not block the queue.
        while q.front().is_some_and(|o| o.line < line) {
            q.pop_front();
        }
        match q.front() {
            Some(o) if o.line == line => q.pop_front().map(|o| o.len),
            _ => None,
        }
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
                    format!(
                        "window_start \"{}\" is not epoch nanoseconds",
                        crate::text::excerpt(ts_raw, 40)
                    ),
                )
            })?;
        let fail = |e: DomainError| (e.check_name(), Some(ts), e.to_string());
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
        // Columns: volume, open, close, high, low.
        let [v, o, c, h, l] = [1, 2, 3, 4, 5].map(|i| self.field(i));
        let fields = [o?, h?, l?, c?, v?].map(Some);
        super::decode::bar(symbol, ts, fields).map_err(|(check, reason)| (check, Some(ts), reason))
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
            .map(|s| crate::text::excerpt(s.trim(), 40))
            .filter(|s| !s.is_empty());
        // The raw row once, cut, with its length: a junk line must not fill the table.
        let row = self.record.iter().collect::<Vec<_>>().join(",");
        let row_len = row.len();
        let row = crate::text::cut(&row, MAX_LOGGED_ROW_BYTES);
        Rejection::rejected(
            DataSource::Polygon,
            ticker,
            ts,
            check,
            json!({
                "reason": reason,
                "file": self.shown,
                "line": line,
                "row": row,
                "row_len": row_len,
            }),
        )
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
