//! A batch: the unit the writer commits in one transaction (bars, their quality-log rows and the
//! feeds' status), and what it reports back once committed.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::domain::{DataSource, Mode, Symbol, Timeframe};
use crate::ingest::{AckTx, FeedChange, FeedProgress, Rejection, Staged};

#[derive(Debug)]
pub struct Batch {
    /// Feed state changes, applied before the batch's bars (every bar sent before a change is
    /// in an earlier batch: the router closes the open batch first).
    pub changes: Vec<FeedChange>,
    pub entries: Vec<Staged>,
    pub rejections: Vec<Rejection>,
    /// Bars rejected (a bar with two problems has two log rows but counts once).
    pub rejected_bars: u64,
    pub acks: Vec<AckTx>,
    pub opened: Instant,
    /// Holds a barrier: sent on even when it carries no row (see `Chunk::barrier`).
    pub barrier: bool,
    /// When the oldest of its rows was received (see `Chunk::received`).
    pub oldest_received: Option<Instant>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::with_capacity(0)
    }

    pub fn with_capacity(rows: usize) -> Batch {
        Batch {
            changes: Vec::new(),
            entries: Vec::with_capacity(rows),
            rejections: Vec::new(),
            rejected_bars: 0,
            acks: Vec::new(),
            opened: Instant::now(),
            barrier: false,
            oldest_received: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.rejections.is_empty()
            && self.changes.is_empty()
            && !self.barrier
    }

    /// Holds rows or state changes: something to write.
    pub fn has_writes(&self) -> bool {
        !(self.entries.is_empty() && self.rejections.is_empty() && self.changes.is_empty())
    }

    /// What counts towards `batch_max_rows`: bars, and quality-log rows by their weight.
    pub fn len(&self) -> usize {
        crate::ingest::weight(self.entries.len(), self.rejections.len())
    }

    pub fn note_received(&mut self, received: Option<Instant>) {
        if let Some(t) = received {
            self.oldest_received = Some(self.oldest_received.map_or(t, |o| o.min(t)));
        }
    }

    pub fn add_ack(&mut self, ack: &AckTx) {
        if !self.acks.iter().any(|a| a.same_channel(ack)) {
            self.acks.push(ack.clone());
        }
    }

    /// Keeps the last of several bars with one key: the later one is the vendor's correction.
    /// Returns how many were merged away.
    pub fn dedup(&mut self) -> u64 {
        let keep: Vec<bool> = {
            let mut last: HashMap<(&str, DateTime<Utc>, DataSource), usize> =
                HashMap::with_capacity(self.entries.len());
            for (i, e) in self.entries.iter().enumerate() {
                last.insert((e.bar.symbol.as_str(), e.bar.timestamp, e.bar.source), i);
            }
            if last.len() == self.entries.len() {
                return 0;
            }
            let mut keep = vec![false; self.entries.len()];
            for i in last.into_values() {
                keep[i] = true;
            }
            keep
        };
        let before = self.entries.len();
        let mut i = 0;
        self.entries.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        (before - self.entries.len()) as u64
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

    /// Splits in two halves (to isolate a bar the database refuses); the state changes,
    /// quality-log rows and acknowledgements go with the first half. Sorted by feed and time first, so that whatever
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
            changes: Vec::new(),
            entries: tail,
            rejections: Vec::new(),
            rejected_bars: 0,
            acks: self.acks.clone(),
            opened: self.opened,
            barrier: false,
            oldest_received: self.oldest_received,
        };
        (self, second)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}
