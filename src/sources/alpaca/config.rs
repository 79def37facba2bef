//! `[sources.alpaca]`: its keys, its two secrets and their environment variables.

use serde::{Deserialize, Serialize};

use crate::config::{
    check_symbols, check_url, default_symbols, symbol_list, within, Secret, SecretUrl,
    SourceSection, PROXY_SCHEMES,
};
use crate::domain::{Symbol, Timeframe};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlpacaConfig {
    pub enabled: bool,
    pub key_id: Secret,
    pub secret_key: Secret,
    pub rest_url: String,
    pub ws_url: String,
    pub feed: String,
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

impl Default for AlpacaConfig {
    fn default() -> Self {
        AlpacaConfig {
            enabled: true,
            key_id: Secret::default(),
            secret_key: Secret::default(),
            rest_url: "https://data.alpaca.markets".into(),
            ws_url: "wss://stream.data.alpaca.markets/v2/iex".into(),
            feed: "iex".into(),
            symbols: default_symbols(&["AAPL"]),
            timeframe: Timeframe::M1,
            stream: true,
            requests_per_minute: 200,
            stale_after_secs: 90,
            proxy_url: None,
        }
    }
}

impl SourceSection for AlpacaConfig {
    const NAME: &'static str = "alpaca";
    const ENV: &'static [(&'static str, &'static str)] = &[
        ("APCA_API_KEY_ID", "sources.alpaca.key_id"),
        ("APCA_API_SECRET_KEY", "sources.alpaca.secret_key"),
    ];

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Result<(), (String, String)> {
        check_url(
            "sources.alpaca.rest_url",
            &self.rest_url,
            &["http", "https"],
        )?;
        check_url("sources.alpaca.ws_url", &self.ws_url, &["ws", "wss"])?;
        if let Some(p) = &self.proxy_url {
            check_url("sources.alpaca.proxy_url", p.expose(), PROXY_SCHEMES)?;
        }
        if !matches!(self.feed.as_str(), "iex" | "sip" | "delayed_sip" | "otc") {
            return Err((
                "sources.alpaca.feed".into(),
                format!("{:?} is not iex, sip, delayed_sip or otc", self.feed),
            ));
        }
        within(
            "sources.alpaca.requests_per_minute",
            self.requests_per_minute.into(),
            100_000,
        )?;
        within(
            "sources.alpaca.stale_after_secs",
            self.stale_after_secs,
            86_400,
        )?;
        if self.enabled {
            check_symbols("sources.alpaca.symbols", &self.symbols)?;
        }
        Ok(())
    }

    fn check_credentials(&self) -> Result<(), (String, String)> {
        for ((var, key), secret) in Self::ENV.iter().zip([&self.key_id, &self.secret_key]) {
            if !secret.is_set() {
                return Err((
                    key.to_string(),
                    format!("alpaca is enabled but this credential is empty (set it, or {var}, or enabled = false)"),
                ));
            }
        }
        Ok(())
    }

    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        vec![
            ("sources.alpaca.key_id", &mut self.key_id),
            ("sources.alpaca.secret_key", &mut self.secret_key),
        ]
    }
}
