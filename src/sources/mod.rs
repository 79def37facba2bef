//! Where bars come from. Each vendor is one folder (`polygon/`: a pure `decode` layer, the
//! flat files, the REST client) that turns the vendor's wire format into
//! [`crate::domain::Bar`]s and [`crate::ingest::Rejection`]s; `driver` runs any source through
//! the pipeline (lifecycle, signals, summary) and `http` is the plumbing every REST vendor shares
//! (client, rate limit, retry).

pub mod driver;
pub mod http;
pub mod polygon;
pub mod ws;
