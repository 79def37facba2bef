//! Yahoo's chart API: one fetch writes `yahoo` (the quote as given) and, with `adjusted`,
//! `yahoo_adjusted` (yfinance's auto-adjust). One decoder ([`decode::decode_chart`]) for every
//! path. No key; a browser-like `User-Agent`, a self-imposed rate limit and an optional proxy.

pub mod config;
pub mod decode;
pub mod rest;

use std::sync::Arc;

use crate::config::Config;
use crate::domain::DataSource;
use crate::sources::{SourceError, Vendor};

/// `sources.yahoo`, when enabled: its chart history (Yahoo has no stream).
pub fn vendor(cfg: &Config) -> Option<Result<Vendor, SourceError>> {
    let y = cfg.sources.yahoo.as_ref().filter(|y| y.enabled)?;
    let build = || {
        let rest = rest::YahooRest::new(y).map_err(|e| SourceError::Setup(e.to_string()))?;
        Ok(Vendor {
            name: "yahoo",
            source: DataSource::Yahoo,
            timeframe: y.timeframe,
            symbols: y.symbols.clone(),
            history: Arc::new(rest),
            live: None,
            poll: Some(std::time::Duration::from_secs(y.poll_interval_secs)),
        })
    };
    Some(build())
}
