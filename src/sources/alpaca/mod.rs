//! Alpaca's market data: REST bars (`/v2/stocks/bars`, many symbols per request chain) and the
//! stream (`/v2/{feed}`). One decoder ([`decode::decode_bar`]) for every path.

pub mod config;
pub mod decode;
pub mod rest;
pub mod stream;

use std::sync::Arc;

use crate::config::Config;
use crate::domain::DataSource;
use crate::sources::{SourceError, Vendor};

/// `sources.alpaca`, when enabled: its REST history and, with `stream = true`, its stream.
pub fn vendor(cfg: &Config) -> Option<Result<Vendor, SourceError>> {
    let a = cfg.sources.alpaca.as_ref().filter(|a| a.enabled)?;
    let build = || {
        let setup = |e: String| SourceError::Setup(e);
        let rest = rest::AlpacaRest::new(a).map_err(|e| setup(e.to_string()))?;
        let live = if a.stream {
            let stream = stream::AlpacaStream::new(a).map_err(|e| setup(e.to_string()))?;
            let config = stream.session_config();
            Some(crate::sources::live(stream, config)?)
        } else {
            None
        };
        Ok(Vendor {
            name: "alpaca",
            source: DataSource::Alpaca,
            timeframe: a.timeframe,
            symbols: a.symbols.clone(),
            history: Arc::new(rest),
            live,
            poll: None,
        })
    };
    Some(build())
}
