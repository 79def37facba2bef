//! mdingest: market-data ingestion from Polygon, Yahoo and Alpaca into PostgreSQL.
//!
//! Data flows one way: source → validate → batch → write → acknowledge. See `README.md` for the
//! operator's view and `pipeline` for the write path.

pub mod backfill;
pub mod backoff;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod db;
pub mod domain;
pub mod events;
pub mod import;
pub mod ingest;
pub mod logging;
pub mod pipeline;
pub mod poll;
pub mod progress;
pub mod restate;
pub mod run;
pub mod shutdown;
pub mod sim;
pub mod sources;
pub mod systemd;
pub mod telemetry;
pub mod text;
