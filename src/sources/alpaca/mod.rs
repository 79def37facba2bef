//! Alpaca's market data: REST bars (`/v2/stocks/bars`, many symbols per request chain) and,
//! next, the stream (`/v2/{feed}`). One decoder ([`decode::decode_bar`]) for every path.

pub mod config;
pub mod decode;
pub mod rest;

use std::sync::Arc;

use crate::config::Config;
use crate::domain::DataSource;
use crate::sources::{SourceError, Vendor};

/// `sources.alpaca`, when enabled: its REST history. Its stream is not built yet, so
/// `stream = true` is refused by name rather than skipped.
pub fn vendor(cfg: &Config) -> Option<Result<Vendor, SourceError>> {
    let a = cfg.sources.alpaca.as_ref().filter(|a| a.enabled)?;
    let build = || {
        if a.stream {
            return Err(SourceError::Setup(
                "sources.alpaca.stream = true, but this build of mdingest cannot stream from alpaca yet (set stream = false; backfill works)".into(),
            ));
        }
        let rest = rest::AlpacaRest::new(a).map_err(|e| SourceError::Setup(e.to_string()))?;
        Ok(Vendor {
            name: "alpaca",
            source: DataSource::Alpaca,
            timeframe: a.timeframe,
            symbols: a.symbols.clone(),
            history: Arc::new(rest),
            live: None,
        })
    };
    Some(build())
}
