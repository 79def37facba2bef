//! What producers and the writer share: a bar on its way with its feed mode, a rejection for
//! `data_quality_logs`, the chunk a source hands the queue, a feed's progress, write counts and
//! the report a committed batch sends back. A leaf: `sources`, `pipeline` and `db` import it, it
//! imports none of them.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;

use crate::domain::{Bar, DataSource, FeedState, Mode, Symbol, Timeframe};

/// Told about every batch that carried a producer's bars, once committed.
pub type AckTx = mpsc::UnboundedSender<BatchReport>;

/// A bar on its way to the database, with the feed mode it came through.
#[derive(Debug, Clone)]
pub struct Staged {
    pub bar: Bar,
    pub mode: Mode,
}

/// `data_quality_logs.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// `data_quality_logs.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Rejected,
    Accepted,
    Repaired,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rejected => "rejected",
            Action::Accepted => "accepted",
            Action::Repaired => "repaired",
        }
    }
}

/// One `data_quality_logs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub source: DataSource,
    /// As the vendor sent it (it may be what was wrong), already cut short; cut to the column's
    /// 20 characters when stored.
    pub symbol: Option<String>,
    pub bar_timestamp: Option<DateTime<Utc>>,
    pub check: &'static str,
    pub severity: Severity,
    pub action: Action,
    /// The offending values and `reason`; a file's rejections also carry `file` and `line`.
    pub details: serde_json::Value,
}

impl Rejection {
    /// A rejected row: severity error, action rejected.
    pub fn rejected(
        source: DataSource,
        symbol: Option<String>,
        bar_timestamp: Option<DateTime<Utc>>,
        check: &'static str,
        details: serde_json::Value,
    ) -> Rejection {
        Rejection {
            source,
            symbol,
            bar_timestamp,
            check,
            severity: Severity::Error,
            action: Action::Rejected,
            details,
        }
    }

    /// The same rejection with `scrub` applied to every text it quotes (a vendor may echo a
    /// credential in a row or a frame).
    pub fn scrubbed(mut self, scrub: impl Fn(&str) -> String) -> Rejection {
        fn walk(v: &mut serde_json::Value, scrub: &dyn Fn(&str) -> String) {
            match v {
                serde_json::Value::String(s) => {
                    let clean = scrub(s);
                    if clean != *s {
                        *s = clean;
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, scrub)),
                serde_json::Value::Object(m) => m.values_mut().for_each(|x| walk(x, scrub)),
                _ => {}
            }
        }
        walk(&mut self.details, &scrub);
        self.symbol = self.symbol.map(|s| scrub(&s));
        self
    }

    pub fn of_bar(bar: &Bar, check: &'static str, reason: String) -> Rejection {
        Rejection::rejected(
            bar.source,
            Some(bar.symbol.to_string()),
            Some(bar.timestamp),
            check,
            bar_details(bar, reason),
        )
    }

    /// One line for the console: where the row came from (file and line, or source, symbol and
    /// bar time), the check and the reason.
    pub fn console_line(&self) -> String {
        let d = &self.details;
        let origin = match (d.get("file").and_then(|f| f.as_str()), d.get("line")) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            _ => format!(
                "{} {} {}",
                self.source,
                self.symbol.as_deref().unwrap_or("-"),
                self.bar_timestamp.map_or_else(
                    || "-".to_string(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                )
            ),
        };
        let reason = d.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        crate::text::excerpt(&format!("{origin}: {}: {reason}", self.check), 300)
    }
}

/// The offending values, as text so no precision is lost in JSONB.
pub fn bar_details(bar: &Bar, reason: String) -> serde_json::Value {
    json!({
        "reason": reason,
        "open": bar.open.to_string(),
        "high": bar.high.to_string(),
        "low": bar.low.to_string(),
        "close": bar.close.to_string(),
        "volume": bar.volume,
    })
}

/// One `ingestion_status` row: a data source's symbol in one mode, on its timeframe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Feed {
    pub source: DataSource,
    pub symbol: Symbol,
    pub mode: Mode,
    pub timeframe: Timeframe,
}

/// A feed's state change. It travels through the queue behind the feed's bars and is applied by
/// the writer in order with them: the writer is the only code that writes `ingestion_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The feed runs (its row is created if missing, so a failure shows before the first bar).
    Start,
    /// The feed failed: `error` with this message (the row created if missing). It becomes
    /// `running` again only when one of its bars sent after this commits.
    Failed(String),
    /// A load ended: a feed still `running` becomes `completed` or `idle` (with why, if worth
    /// recording); one in `error` keeps it.
    Ended(FeedState, Option<String>),
}

/// A feed's `ingestion_status` row whose state (or error) a committed transaction changed, as
/// it stands after it: what `ingestion_status_changed` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChanged {
    pub source: DataSource,
    pub symbol: String,
    pub mode: Mode,
    pub state: FeedState,
    pub last_bar: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub feed: Feed,
    pub to: Transition,
}

/// What a producer hands the pipeline: parsed bars, plus the rows it could not parse.
#[derive(Debug)]
pub struct Chunk {
    pub mode: Mode,
    pub bars: Vec<Bar>,
    pub rejections: Vec<Rejection>,
    /// State changes, applied after every bar sent before this chunk and before this chunk's
    /// own bars and every later one.
    pub changes: Vec<FeedChange>,
    /// Told about every batch that carried this chunk's bars, once committed.
    pub ack: Option<AckTx>,
    /// A barrier: no data; its `ack` hears once every earlier bar of this symbol is committed
    /// (it rides in the symbol's shard, behind them).
    pub barrier: Option<Symbol>,
    /// When the source took the data in (set on sending when the source did not): the start of
    /// its receipt-to-commit lag.
    pub received: Option<Instant>,
}

impl Chunk {
    pub fn new(mode: Mode, bars: Vec<Bar>, rejections: Vec<Rejection>) -> Chunk {
        Chunk {
            mode,
            bars,
            rejections,
            changes: Vec::new(),
            ack: None,
            barrier: None,
            received: None,
        }
    }

    pub fn barrier(symbol: Symbol, ack: AckTx) -> Chunk {
        Chunk {
            mode: Mode::Backfill,
            bars: Vec::new(),
            rejections: Vec::new(),
            changes: Vec::new(),
            ack: Some(ack),
            barrier: Some(symbol),
            received: None,
        }
    }

    pub fn changes(changes: Vec<FeedChange>) -> Chunk {
        Chunk {
            changes,
            ..Chunk::new(Mode::Backfill, Vec::new(), Vec::new())
        }
    }
}

/// Where one feed (`ingestion_status` row) stands after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedProgress {
    pub source: DataSource,
    pub symbol: Symbol,
    pub mode: Mode,
    pub timeframe: Timeframe,
    pub last_bar: DateTime<Utc>,
    /// Bars of this feed in the batch.
    pub rows: i64,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Bars merged into a later bar with the same key in their batch (the later one wins).
    pub duplicates: u64,
}

impl WriteCounts {
    pub fn add(&mut self, o: &WriteCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.rejected += o.rejected;
        self.duplicates += o.duplicates;
    }
    pub fn written(&self) -> u64 {
        self.inserted + self.updated + self.unchanged
    }
}

/// A rejection carries its raw row, reason and origin as JSON (about 1 KB in memory, and copied
/// again when written, against a bar's ~100 bytes), so it counts this much towards the queue's
/// room and a batch's size: a file of junk rows is held back like one of bars, and memory stays
/// within budget either way (measured: 300,000 junk rows peak at 47 MB, valid rows at 39 MB).
pub const REJECTION_WEIGHT: usize = 32;

/// What `bars` bars and `rejections` rejections weigh, in bars.
pub fn weight(bars: usize, rejections: usize) -> usize {
    bars + rejections * REJECTION_WEIGHT
}

/// Rejections a report carries for the console; the rest are only in `data_quality_logs`.
pub const NOTED_REJECTIONS: usize = 20;

/// Sent to each producer whose bars a committed batch carried.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    pub counts: WriteCounts,
    /// The same batch per data source (one batch may hold several: a Yahoo fetch writes two),
    /// in `DataSource` order: what a `market_data_updated` event and the per-source metrics say.
    pub sources: Vec<SourceReport>,
    pub feeds: Vec<FeedProgress>,
    /// `console_line`s of the batch's first rejections (at most `NOTED_REJECTIONS`).
    pub noted: Vec<String>,
    /// The feeds whose state the batch's transaction changed.
    pub changed: Vec<StatusChanged>,
}

impl BatchReport {
    /// Adds the report of another part of the same batch (the writer splits a batch the
    /// database refuses).
    pub fn merge(&mut self, other: BatchReport) {
        self.counts.add(&other.counts);
        self.feeds.extend(other.feeds);
        self.noted.extend(other.noted);
        self.changed.extend(other.changed);
        for o in other.sources {
            match self.sources.iter_mut().find(|s| s.source == o.source) {
                Some(s) => s.merge(o),
                None => self.sources.push(o),
            }
        }
        self.sources.sort_by_key(|s| s.source);
    }
}

/// What a committed batch did for one data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    pub source: DataSource,
    /// Bars inserted, updated and unchanged; `rejected` counts this source's quality-log rows
    /// that refused a row (`duplicates` stays 0: merging happens before sources are told apart).
    pub counts: WriteCounts,
    /// The symbols of its committed bars, sorted, each once.
    pub symbols: Vec<Symbol>,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Its quality-log rows by check, sorted by check.
    pub checks: Vec<(&'static str, u64)>,
    /// Its committed bars by producer (stream, poll, backfill), in `Mode` order.
    pub producers: Vec<(Mode, u64)>,
    /// Its quality-log rows' symbols (sorted, each once, at most `FLAGGED_SYMBOLS`) and bar times.
    pub flagged: Flagged,
}

/// Symbols a `data_quality_alert` names at most (a file of junk may have thousands).
pub const FLAGGED_SYMBOLS: usize = 100;

/// Where a batch's quality-log rows of one data source are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flagged {
    pub symbols: Vec<String>,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

impl Flagged {
    fn add(&mut self, symbol: Option<&str>, at: Option<DateTime<Utc>>) {
        if let Some(s) = symbol {
            if let Err(i) = self.symbols.binary_search_by(|x| x.as_str().cmp(s)) {
                if self.symbols.len() < FLAGGED_SYMBOLS {
                    self.symbols.insert(i, s.to_string());
                }
            }
        }
        if let Some(t) = at {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
    }

    fn merge(&mut self, o: Flagged) {
        for s in &o.symbols {
            self.add(Some(s), None);
        }
        self.first = self.first.into_iter().chain(o.first).min();
        self.last = self.last.into_iter().chain(o.last).max();
    }
}

impl SourceReport {
    pub fn new(source: DataSource) -> SourceReport {
        SourceReport {
            source,
            counts: WriteCounts::default(),
            symbols: Vec::new(),
            first: None,
            last: None,
            checks: Vec::new(),
            producers: Vec::new(),
            flagged: Flagged::default(),
        }
    }

    /// Bars written (inserted, updated or unchanged).
    pub fn rows(&self) -> u64 {
        self.counts.written()
    }

    fn merge(&mut self, o: SourceReport) {
        self.counts.add(&o.counts);
        self.symbols.extend(o.symbols);
        self.symbols.sort();
        self.symbols.dedup();
        self.first = self.first.into_iter().chain(o.first).min();
        self.last = self.last.into_iter().chain(o.last).max();
        add_counted(&mut self.checks, o.checks);
        add_counted(&mut self.producers, o.producers);
        self.flagged.merge(o.flagged);
    }
}

/// Adds `more` to a sorted list of (key, count).
fn add_counted<K: Ord + Copy>(list: &mut Vec<(K, u64)>, more: Vec<(K, u64)>) {
    for (k, n) in more {
        bump(list, k, n);
    }
}

fn bump<K: Ord + Copy>(list: &mut Vec<(K, u64)>, k: K, n: u64) {
    match list.binary_search_by_key(&k, |(key, _)| *key) {
        Ok(i) => list[i].1 += n,
        Err(i) => list.insert(i, (k, n)),
    }
}

/// The per-source reports of a committed batch: its staged bars and quality rows, with the
/// writer's counts per source.
pub fn source_reports(
    entries: &[Staged],
    rejections: &[Rejection],
    written: &[(DataSource, WriteCounts)],
) -> Vec<SourceReport> {
    let mut out: Vec<SourceReport> = Vec::new();
    fn slot(out: &mut Vec<SourceReport>, source: DataSource) -> &mut SourceReport {
        let i = match out.iter().position(|s| s.source == source) {
            Some(i) => i,
            None => {
                out.push(SourceReport::new(source));
                out.len() - 1
            }
        };
        &mut out[i]
    }
    for (source, counts) in written {
        slot(&mut out, *source).counts.add(counts);
    }
    for e in entries {
        let s = slot(&mut out, e.bar.source);
        let t = e.bar.timestamp;
        s.first = Some(s.first.map_or(t, |f| f.min(t)));
        s.last = Some(s.last.map_or(t, |l| l.max(t)));
        if s.symbols.last() != Some(&e.bar.symbol) {
            s.symbols.push(e.bar.symbol.clone());
        }
        bump(&mut s.producers, e.mode, 1);
    }
    for r in rejections {
        let s = slot(&mut out, r.source);
        if r.action == Action::Rejected {
            s.counts.rejected += 1;
        }
        bump(&mut s.checks, r.check, 1);
        s.flagged.add(r.symbol.as_deref(), r.bar_timestamp);
    }
    for s in &mut out {
        s.symbols.sort();
        s.symbols.dedup();
    }
    out.sort_by_key(|s| s.source);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_is_scrubbed_everywhere_it_quotes() {
        let r = Rejection::rejected(
            DataSource::Polygon,
            Some("KEY123".into()),
            None,
            "malformed_row",
            json!({"reason": "bad KEY123", "raw": ["x", {"k": "KEY123!"}], "n": 1}),
        )
        .scrubbed(|t| t.replace("KEY123", "***"));
        assert_eq!(r.symbol.as_deref(), Some("***"));
        assert_eq!(
            r.details,
            json!({"reason": "bad ***", "raw": ["x", {"k": "***!"}], "n": 1})
        );
    }
}
