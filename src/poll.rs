//! The daemon's polls (mode `poll`): for a vendor without a stream (Yahoo), every
//! `poll_interval` the recent stretch of each symbol through its history. Overlap with what is
//! stored is harmless: unchanged rows are left untouched, restated ones rewritten.
//!
//! Feed state travels through the queue like the daemon's streams: every symbol's `poll` rows
//! (one per data source the fetch writes) start `running`; a failed fetch sets them `error`
//! with its message, and a bar of a later poll that commits makes them `running` again. A
//! vendor that refuses for minutes (Yahoo's 429s) shows there and touches no other source.
//! A split or dividend a poll shows for the first time has the symbol's older stored history
//! rewritten (`crate::restate`).

use std::time::Duration;

use chrono::Utc;

use crate::domain::{DataSource, Mode, Timeframe};
use crate::ingest::{Chunk, Feed, Transition};
use crate::restate::{self, Fetch};
use crate::sources::driver::{SourceContext, SourceEnd};
use crate::sources::{FetchError, Vendor};

/// How far back each poll reaches: enough to pick up a late correction of the last sessions,
/// little enough that a poll is one request per symbol.
pub fn lookback(timeframe: Timeframe) -> chrono::Duration {
    match timeframe {
        Timeframe::D1 => chrono::Duration::days(10),
        Timeframe::H1 => chrono::Duration::days(2),
        Timeframe::M1 | Timeframe::M5 | Timeframe::M15 => chrono::Duration::hours(12),
    }
}

/// One vendor's polls.
pub struct PollFeed {
    pub vendor: Vendor,
    pub every: Duration,
}

impl PollFeed {
    /// The data sources a fetch writes.
    fn sources(&self) -> Vec<DataSource> {
        self.vendor.history.writes(self.vendor.source)
    }

    /// Every symbol's `poll` feeds: one per data source a fetch writes.
    fn feeds_of(&self, symbol: &crate::domain::Symbol) -> Vec<Feed> {
        let v = &self.vendor;
        self.sources()
            .into_iter()
            .map(|source| Feed {
                source,
                symbol: symbol.clone(),
                mode: Mode::Poll,
                timeframe: v.timeframe,
            })
            .collect()
    }

    pub async fn run(self, ctx: SourceContext) -> SourceEnd {
        let mut end = SourceEnd::default();
        let name = self.vendor.name;
        let all: Vec<Feed> = self
            .vendor
            .symbols
            .iter()
            .flat_map(|s| self.feeds_of(s))
            .collect();
        for f in &all {
            ctx.feeds().touched(f);
        }
        if ctx.change_all(all, &Transition::Start).await.is_err() {
            return end;
        }
        let mut ticks = tokio::time::interval(self.every);
        // A poll that outlasts the interval (a slow vendor, many symbols) is followed by the
        // next one at once, not by a burst of the ones missed.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls = 0u64;
        'polls: loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = ctx.stop().cancelled() => break,
            }
            polls += 1;
            let mut failed = 0usize;
            for symbol in &self.vendor.symbols {
                match self.poll_symbol(&ctx, symbol).await {
                    Ok(true) => {}
                    Ok(false) => break 'polls,
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(vendor = name, symbol = %symbol, "poll failed: {e}");
                        let feeds = self.feeds_of(symbol);
                        let failed = Transition::Failed(e.message);
                        if ctx.change_all(feeds, &failed).await.is_err() {
                            break 'polls;
                        }
                    }
                }
            }
            // A poll of which one symbol loaded shows the vendor answers.
            ctx.health()
                .source(name, failed < self.vendor.symbols.len());
            tracing::debug!(
                vendor = name,
                poll = polls,
                failed,
                symbols = self.vendor.symbols.len(),
                "poll done"
            );
        }
        end.lines.push(("polls", polls.to_string()));
        end
    }

    /// One symbol's recent stretch, sent on. `Ok(false)` when the run stopped.
    async fn poll_symbol(
        &self,
        ctx: &SourceContext,
        symbol: &crate::domain::Symbol,
    ) -> Result<bool, FetchError> {
        let v = &self.vendor;
        let now = Utc::now();
        let from = now - lookback(v.timeframe);
        let mut pages = v
            .history
            .pages(std::slice::from_ref(symbol), v.timeframe, from, now);
        let mut actions = Vec::new();
        loop {
            let page = tokio::select! {
                p = pages.next() => p?,
                _ = ctx.stop().cancelled() => return Ok(false),
            };
            let Some(mut page) = page else { break };
            actions.append(&mut page.actions);
            if page.bars.is_empty() && page.rejections.is_empty() {
                continue;
            }
            let own = page.vendor_rows(v.source);
            let chunk = Chunk::new(Mode::Poll, page.bars, page.rejections);
            if ctx.send_counted(chunk, own as u64).await.is_err() {
                return Ok(false);
            }
        }
        if actions.is_empty() {
            return Ok(true);
        }
        let fetch = Fetch {
            history: &*v.history,
            sources: self.sources(),
            timeframe: v.timeframe,
            mode: Mode::Poll,
            from,
        };
        match restate::on_actions(ctx, &fetch, symbol, &actions).await {
            Ok(_) => Ok(true),
            Err(e) => e.into_fetch_error().map_or(Ok(false), Err),
        }
    }
}
