//! `[sources.yahoo]`: no key; one fetch writes `yahoo` and, with `adjusted`, `yahoo_adjusted`.

use serde::{Deserialize, Serialize};

use crate::config::{
    check_symbols, check_url, default_symbols, symbol_list, within, SecretUrl, SourceSection,
    PROXY_SCHEMES,
};
use crate::domain::{Symbol, Timeframe};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YahooConfig {
    pub enabled: bool,
    pub rest_url: String,
    #[serde(deserialize_with = "symbol_list")]
    pub symbols: Vec<Symbol>,
    pub timeframe: Timeframe,
    pub adjusted: bool,
    pub poll_interval_secs: u64,
    pub requests_per_minute: u32,
    /// An HTTP(S) or SOCKS5 proxy for its requests; its password is shown redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<SecretUrl>,
}

impl Default for YahooConfig {
    fn default() -> Self {
        YahooConfig {
            enabled: true,
            rest_url: "https://query1.finance.yahoo.com".into(),
            symbols: default_symbols(&["AAPL"]),
            timeframe: Timeframe::D1,
            adjusted: true,
            poll_interval_secs: 300,
            requests_per_minute: 60,
            proxy_url: None,
        }
    }
}

impl SourceSection for YahooConfig {
    const NAME: &'static str = "yahoo";

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), (String, String)> {
        check_url("sources.yahoo.rest_url", &self.rest_url, &["http", "https"])?;
        if let Some(p) = &self.proxy_url {
            check_url("sources.yahoo.proxy_url", p.expose(), PROXY_SCHEMES)?;
        }
        within(
            "sources.yahoo.poll_interval_secs",
            self.poll_interval_secs,
            86_400,
        )?;
        within(
            "sources.yahoo.requests_per_minute",
            self.requests_per_minute.into(),
            100_000,
        )?;
        if self.adjusted && self.timeframe != Timeframe::D1 {
            return Err((
                "sources.yahoo.adjusted".into(),
                format!(
                    "needs daily bars (Yahoo gives adjclose for daily bars only; the timeframe is {}): set adjusted = false or timeframe = \"1d\"",
                    self.timeframe.as_str()
                ),
            ));
        }
        if self.enabled {
            check_symbols("sources.yahoo.symbols", &self.symbols)?;
        }
        Ok(())
    }
}
