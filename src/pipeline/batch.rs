//! A batch: the unit the writer commits in one transaction (bars, their quality-log rows and the
//! feeds' status), and what it reports back once committed.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{AckTx, Rejection};
use crate::domain::{Bar, DataSource, Mode, Symbol, Timeframe};

/// A bar on its way to the database, with the feed mode it came through.
#[derive(Debug, Clone)]
pub struct Staged {
    pub bar: Bar,
    pub mode: Mode,
}

#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Staged>,
    pub rejections: Vec<Rejection>,
    /// Bars rejected (a bar with two problems has two log rows but counts once).
    pub rejected_bars: u64,
    pub acks: Vec<AckTx>,
    pub opened: Instant,
}

/// Where one feed (`ingestion_status` row) stands after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedProgress {
    pub source: DataSource,
    pub symbol: Symbol,
    pub mode: Mode,
    pub timeframe: Timeframe,
    pub last_bar: DateTime<Utc>,
    pub rows: i64,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

impl WriteCounts {
    pub fn add(&mut self, o: &WriteCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.rejected += o.rejected;
    }
    pub fn written(&self) -> u64 {
        self.inserted + self.updated + self.unchanged
    }
}

/// Sent to each producer whose bars a committed batch carried.
#[derive(Debug, Clone)]
pub struct BatchReport {
    pub counts: WriteCounts,
    pub feeds: Vec<FeedProgress>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::with_capacity(0)
    }

    pub fn with_capacity(rows: usize) -> Batch {
        Batch {
            entries: Vec::with_capacity(rows),
            rejections: Vec::new(),
            rejected_bars: 0,
            acks: Vec::new(),
            opened: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.rejections.is_empty()
    }

    /// Rows (bars and quality-log rows) that count towards `batch_max_rows`.
    pub fn len(&self) -> usize {
        self.entries.len() + self.rejections.len()
    }

    pub fn add_ack(&mut self, ack: &AckTx) {
        if !self.acks.iter().any(|a| a.same_channel(ack)) {
            self.acks.push(ack.clone());
        }
    }

    /// Keeps the last of several bars with one key: the later one is the vendor's correction.
    pub fn dedup(&mut self) {
        let keep: Vec<bool> = {
            let mut last: HashMap<(&str, DateTime<Utc>, DataSource), usize> =
                HashMap::with_capacity(self.entries.len());
            for (i, e) in self.entries.iter().enumerate() {
                last.insert((e.bar.symbol.as_str(), e.bar.timestamp, e.bar.source), i);
            }
            if last.len() == self.entries.len() {
                return;
            }
            let mut keep = vec![false; self.entries.len()];
            for i in last.into_values() {
                keep[i] = true;
            }
            keep
        };
        let mut i = 0;
        self.entries.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// The feeds this batch advances, with the newest bar and the number of bars of each.
    pub fn feeds(&self, timeframe_of: impl Fn(DataSource) -> Timeframe) -> Vec<FeedProgress> {
        let mut feeds: HashMap<(DataSource, &Symbol, Mode), FeedProgress> = HashMap::new();
        for e in &self.entries {
            let b = &e.bar;
            feeds
                .entry((b.source, &b.symbol, e.mode))
                .and_modify(|f| {
                    f.last_bar = f.last_bar.max(b.timestamp);
                    f.rows += 1;
                })
                .or_insert_with(|| FeedProgress {
                    source: b.source,
                    symbol: b.symbol.clone(),
                    mode: e.mode,
                    timeframe: timeframe_of(b.source),
                    last_bar: b.timestamp,
                    rows: 1,
                });
        }
        let mut out: Vec<_> = feeds.into_values().collect();
        // A fixed lock order on ingestion_status rows for concurrent writers.
        out.sort_by(|a, b| (a.source, &a.symbol, a.mode).cmp(&(b.source, &b.symbol, b.mode)));
        out
    }

    /// Splits in two halves (to isolate a bar the database refuses); the quality-log rows and
    /// acknowledgements go with the first half. Sorted by feed and time first, so that whatever
    /// commits of a feed is its oldest part: its `last_bar_timestamp` never passes a bar of the
    /// other half that may yet fail.
    pub fn split(mut self) -> (Batch, Batch) {
        self.entries.sort_by(|a, b| {
            (a.bar.source, &a.bar.symbol, a.mode, a.bar.timestamp).cmp(&(
                b.bar.source,
                &b.bar.symbol,
                b.mode,
                b.bar.timestamp,
            ))
        });
        let tail = self.entries.split_off(self.entries.len() / 2);
        let second = Batch {
            entries: tail,
            rejections: Vec::new(),
            rejected_bars: 0,
            acks: self.acks.clone(),
            opened: self.opened,
        };
        (self, second)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}
