//! `[sources.polygon]`: its keys, its secret and its environment variable.

use serde::{Deserialize, Serialize};

use crate::config::{
    check_symbols, check_url, default_symbols, symbol_list, within, Secret, SecretUrl,
    SourceSection, PROXY_SCHEMES,
};
use crate::domain::{Symbol, Timeframe};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolygonConfig {
    pub enabled: bool,
    pub api_key: Secret,
    pub rest_url: String,
    pub ws_url: String,
    #[serde(deserialize_with = "symbol_list")]
    pub symbols: Vec<Symbol>,
    pub timeframe: Timeframe,
    pub stream: bool,
    pub requests_per_minute: u32,
    pub stale_after_secs: u64,
    /// An HTTP(S) or SOCKS5 proxy for REST requests; its password is shown redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<SecretUrl>,
}

impl Default for PolygonConfig {
    fn default() -> Self {
        PolygonConfig {
            enabled: true,
            api_key: Secret::default(),
            rest_url: "https://api.polygon.io".into(),
            ws_url: "wss://socket.polygon.io/stocks".into(),
            symbols: default_symbols(&["AAPL", "MSFT"]),
            timeframe: Timeframe::M1,
            stream: true,
            requests_per_minute: 5,
            stale_after_secs: 90,
            proxy_url: None,
        }
    }
}

impl SourceSection for PolygonConfig {
    const NAME: &'static str = "polygon";
    const ENV: &'static [(&'static str, &'static str)] =
        &[("POLYGON_API_KEY", "sources.polygon.api_key")];

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), (String, String)> {
        check_url(
            "sources.polygon.rest_url",
            &self.rest_url,
            &["http", "https"],
        )?;
        check_url("sources.polygon.ws_url", &self.ws_url, &["ws", "wss"])?;
        if let Some(p) = &self.proxy_url {
            check_url("sources.polygon.proxy_url", p.expose(), PROXY_SCHEMES)?;
        }
        within(
            "sources.polygon.requests_per_minute",
            self.requests_per_minute.into(),
            100_000,
        )?;
        within(
            "sources.polygon.stale_after_secs",
            self.stale_after_secs,
            86_400,
        )?;
        if self.enabled {
            check_symbols("sources.polygon.symbols", &self.symbols)?;
        }
        Ok(())
    }

    fn check_credentials(&self) -> Result<(), (String, String)> {
        if self.api_key.is_set() {
            return Ok(());
        }
        Err((
            "sources.polygon.api_key".into(),
            "polygon is enabled but has no API key (set it, or POLYGON_API_KEY, or enabled = false)"
                .into(),
        ))
    }

    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        vec![("sources.polygon.api_key", &mut self.api_key)]
    }
}
