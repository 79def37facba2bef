//! Where bars come from. Each vendor adapter is one file that turns the vendor's wire format
//! into [`crate::domain::Bar`]s and [`crate::pipeline::Rejection`]s and hands them to the
//! pipeline's [`crate::pipeline::Queue`]; shared plumbing (retry, rate limit, reconnect, paging)
//! lives beside them, written once.

pub mod driver;
pub mod flatfile;
