//! Alpaca's market data: REST bars (`/v2/stocks/bars`) and the stream (`/v2/{feed}`).

pub mod config;
