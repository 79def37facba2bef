//! Where bars come from, behind one vendor-neutral seam.
//!
//! A vendor is a folder (`polygon/`) with a pure decode layer and the small traits below:
//! [`History`] (pages of bars for a window, for `backfill` and the daemon's gap-fills) and
//! [`Live`] (a stream on the shared [`ws::Session`]). [`enabled`] builds the enabled vendors
//! from the config; `run`, `backfill` and the [`driver`] name none of them. Shared plumbing is
//! written once: `http` (client, rate limit, retry, proxy), `ws` (sessions, reconnects),
//! `crate::backoff` (every wait between attempts).
//!
//! Adding a vendor: its folder (config section, decoder, clients, a `vendor` function building
//! a [`Vendor`]), one line in [`VENDORS`], and its encoder in the simulator.

pub mod alpaca;
pub mod driver;
pub mod http;
pub mod polygon;
pub mod ws;
pub mod yahoo;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{Bar, DataSource, Symbol, Timeframe};
use crate::ingest::Rejection;
pub use http::Blame;
use ws::{Protocol, Session, SessionEvent};

/// Builds a vendor from the config: `None` when its section is absent or disabled.
pub type Build = fn(&Config) -> Option<Result<Vendor, SourceError>>;

/// Every vendor this build knows: its data sources, and how to build it from the config (`None`
/// when its section is absent or disabled).
pub struct VendorEntry {
    pub name: &'static str,
    pub sources: &'static [DataSource],
    pub build: Option<Build>,
    /// Whether `sources.<name>` is enabled (a vendor not built yet must not be skipped silently).
    pub enabled: fn(&Config) -> bool,
}

/// The vendor list. `build: None`: known to the config, not built yet.
pub const VENDORS: &[VendorEntry] = &[
    VendorEntry {
        name: "polygon",
        sources: &[DataSource::Polygon],
        build: Some(polygon::vendor),
        enabled: |c| c.sources.polygon.as_ref().is_some_and(|p| p.enabled),
    },
    VendorEntry {
        name: "alpaca",
        sources: &[DataSource::Alpaca],
        build: Some(alpaca::vendor),
        enabled: |c| c.sources.alpaca.as_ref().is_some_and(|a| a.enabled),
    },
    VendorEntry {
        name: "yahoo",
        sources: &[DataSource::Yahoo, DataSource::YahooAdjusted],
        build: Some(yahoo::vendor),
        enabled: |c| c.sources.yahoo.as_ref().is_some_and(|y| y.enabled),
    },
];

/// An enabled vendor, ready to fetch.
#[derive(Clone)]
pub struct Vendor {
    pub name: &'static str,
    /// The data source its bars are stored as.
    pub source: DataSource,
    /// `market_data` holds one timeframe per source.
    pub timeframe: Timeframe,
    /// The configured symbols.
    pub symbols: Vec<Symbol>,
    pub history: Arc<dyn History>,
    /// `None`: the vendor does not stream, or its stream is switched off.
    pub live: Option<Arc<dyn Live>>,
    /// How often `run` polls its history for recent bars (Yahoo, which has no stream).
    pub poll: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The vendor's section cannot be used as it is (a bad URL, a missing key).
    #[error("{0}")]
    Setup(String),
    /// Enabled in the config, not runnable by this build.
    #[error("sources.{0}.enabled is true, but this build of mdingest cannot fetch from {0} yet (set enabled = false)")]
    NotBuilt(&'static str),
    #[error("{0}")]
    Usage(String),
}

/// Every enabled vendor, built. An enabled one this build cannot run is an error naming it.
pub fn enabled(cfg: &Config) -> Result<Vec<Vendor>, SourceError> {
    let mut out = Vec::new();
    for entry in VENDORS {
        if !(entry.enabled)(cfg) {
            continue;
        }
        match entry.build {
            None => return Err(SourceError::NotBuilt(entry.name)),
            Some(build) => {
                if let Some(v) = build(cfg) {
                    out.push(v?);
                }
            }
        }
    }
    Ok(out)
}

/// The enabled vendor that writes `source` (`backfill --source`).
pub fn serving(cfg: &Config, source: DataSource) -> Result<Vendor, SourceError> {
    let entry = VENDORS
        .iter()
        .find(|e| e.sources.contains(&source))
        .ok_or_else(|| SourceError::Usage(format!("no vendor writes {source}")))?;
    let Some(build) = entry.build else {
        return Err(SourceError::Usage(format!(
            "{source}: fetching from {} is not built yet",
            entry.name
        )));
    };
    match build(cfg) {
        Some(v) => v,
        None => Err(SourceError::Usage(format!(
            "sources.{} is not configured or not enabled",
            entry.name
        ))),
    }
}

/// One page of a window's history.
#[derive(Debug, Default)]
pub struct Page {
    pub bars: Vec<Bar>,
    /// What could not become a bar, or lay outside the window.
    pub rejections: Vec<Rejection>,
    /// False when the vendor says its newest bars may still change (a delayed plan): the
    /// window is fetched again later.
    pub settled: bool,
    /// Splits and dividends the page shows, for vendors that restate history for them
    /// (`crate::restate`).
    pub actions: Vec<CorporateAction>,
}

impl Page {
    /// The vendor's rows in the page: bars and rejections of `own` (a second data source
    /// written from the same rows, Yahoo's adjusted series, is not counted again).
    pub fn vendor_rows(&self, own: DataSource) -> usize {
        self.bars.iter().filter(|b| b.source == own).count()
            + self.rejections.iter().filter(|r| r.source == own).count()
    }
}

/// A split or a dividend as a vendor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorporateAction {
    pub symbol: Symbol,
    pub kind: ActionKind,
    /// When it takes effect (the ex-date's session, as the vendor stamps it).
    pub at: DateTime<Utc>,
    /// `4:1` for a split, the amount for a dividend, as the vendor wrote it.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionKind {
    Split,
    Dividend,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Split => "split",
            ActionKind::Dividend => "dividend",
        }
    }
}

/// Why fetching a window failed, in the terms the work queue acts on. The message names the
/// vendor, the symbol and the window, and is scrubbed of credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub message: String,
    /// Whether the symbol's other windows, and the other symbols, may go on.
    pub blame: Blame,
    /// The vendor does not know the symbol: none of its windows will load.
    pub unknown_symbol: bool,
}

impl FetchError {
    pub fn new(message: impl Into<String>, blame: Blame) -> FetchError {
        FetchError {
            message: message.into(),
            blame,
            unknown_symbol: false,
        }
    }
}

/// A window's pages, in order.
pub trait Pages: Send {
    /// The next page, or `None` after the last. Cancellation-safe: dropping the future leaves
    /// the pages where they were.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Page>, FetchError>>;
}

/// A vendor's history: what `backfill` and the daemon's gap-fills fetch.
pub trait History: Send + Sync {
    /// The work queue's window for `timeframe`: one request chain fetches one window, so it is
    /// sized to what the vendor's pages hold.
    fn window_len(&self, timeframe: Timeframe) -> chrono::Duration;

    /// How many symbols one request chain serves (Alpaca: many; Polygon: one). `pages` is
    /// given at most this many.
    fn symbols_per_request(&self) -> usize {
        1
    }

    /// The data sources one fetch writes besides the task's own (Yahoo's adjusted series):
    /// their feeds start, fail and end with the task's.
    fn also_writes(&self) -> &[DataSource] {
        &[]
    }

    /// Every data source a fetch for `own` writes: `own`, then [`also_writes`](Self::also_writes).
    fn writes(&self, own: DataSource) -> Vec<DataSource> {
        std::iter::once(own)
            .chain(self.also_writes().iter().copied())
            .collect()
    }

    /// The pages of `symbols`' bars starting in `[from, to_inclusive]`. Bars of other symbols,
    /// or outside the range, come as rejections.
    fn pages(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Box<dyn Pages>;
}

/// One part of a live frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Bar(Bar),
    /// An event (or a whole frame) that could not become a bar, for `data_quality_logs`.
    Rejected(Rejection),
}

/// What a live source tells the daemon.
pub type LiveEvent = SessionEvent<Item>;

/// A vendor's stream.
pub trait Live: Send + Sync {
    /// Keeps the stream up (reconnecting, backing off) until `stop`, handing its events over.
    fn run(&self, events: mpsc::Sender<LiveEvent>, stop: CancellationToken) -> BoxFuture<'_, ()>;
}

/// A vendor's stream as the daemon runs it: its protocol on a shared [`Session`].
pub fn live<P: Protocol<Data = Item>>(
    protocol: P,
    config: ws::SessionConfig,
) -> Result<Arc<dyn Live>, SourceError> {
    let session = Session::new(protocol, config).map_err(|e| SourceError::Setup(e.to_string()))?;
    Ok(Arc::new(session))
}

impl<P: Protocol<Data = Item>> Live for Session<P> {
    fn run(&self, events: mpsc::Sender<LiveEvent>, stop: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(Session::run(self, events, stop))
    }
}

/// `2024-01-02T14:30:00Z..2024-01-31T23:59:59Z`: a window as errors name it.
pub fn window_text(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let f = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    format!("{}..{}", f(from), f(to))
}
