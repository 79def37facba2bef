//! Yahoo's chart API (next: the client, the decoder and polling). Only its config section
//! exists so far; an enabled `sources.yahoo` is refused at start by `sources::enabled`.

pub mod config;
