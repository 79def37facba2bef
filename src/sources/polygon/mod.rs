//! Polygon (Massive since 2025): the flat files, the REST aggregates client and its pure
//! decoder. The stream joins them with the `run` daemon.

pub mod decode;
pub mod flatfile;
pub mod rest;
pub mod stream;

pub use decode::{decode_aggs, error_message, AggsPage, DecodeError};
pub use rest::{Pager, PolygonError, PolygonRest};
