//! Polygon (Massive since 2025): the flat files, the REST aggregates client and its pure
//! decoder. The stream joins them with the `run` daemon.

pub mod config;
pub mod decode;
pub mod flatfile;
pub mod rest;
pub mod stream;

pub use decode::{decode_aggs, error_message, AggsPage, DecodeError};
pub use rest::{Pager, PolygonError, PolygonRest};

use std::sync::Arc;

use crate::config::Config;
use crate::domain::DataSource;
use crate::sources::{SourceError, Vendor};

/// `sources.polygon`, when enabled: its REST history and, with `stream = true`, its stream.
pub fn vendor(cfg: &Config) -> Option<Result<Vendor, SourceError>> {
    let p = cfg.sources.polygon.as_ref().filter(|p| p.enabled)?;
    let build = || {
        let setup = |e: String| SourceError::Setup(e);
        let rest = PolygonRest::new(p).map_err(|e| setup(e.to_string()))?;
        let live = if p.stream {
            let stream = stream::PolygonStream::new(p).map_err(|e| setup(e.to_string()))?;
            let config = stream.session_config();
            Some(crate::sources::live(stream, config)?)
        } else {
            None
        };
        Ok(Vendor {
            name: "polygon",
            source: DataSource::Polygon,
            timeframe: p.timeframe,
            symbols: p.symbols.clone(),
            history: Arc::new(rest),
            live,
            poll: None,
        })
    };
    Some(build())
}
