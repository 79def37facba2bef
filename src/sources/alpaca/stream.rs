//! Alpaca's WebSocket stream (`wss://stream.data.alpaca.markets/v2/{feed}`): the [`Protocol`]
//! the shared [`crate::sources::ws::Session`] runs, and its pure decoder.
//!
//! The wire: every frame is a JSON array. The server greets with
//! `[{"T":"success","msg":"connected"}]`; we send `{"action":"auth","key":…,"secret":…}` (within
//! 10 s) and it answers `[{"T":"success","msg":"authenticated"}]` or an error; we send
//! `{"action":"subscribe","bars":[…],"updatedBars":[…]}` and it confirms with
//! `[{"T":"subscription",…}]`. Minute bars then arrive as `{"T":"b","S":"AAPL","o":…,"t":…}`;
//! `T:"u"` is a correction of the bar with the same `t` (the write path's upsert replaces it).
//! Errors `{"T":"error","code":N,"msg":…}`: 402 (auth failed), 409 (insufficient subscription)
//! and 406 (connection limit) are refusals a quick reconnect cannot fix; 407 (slow client) and
//! the rest are passed on, and the server's close that follows is a disconnect like any other
//! (reconnected, gap-filled).

use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;

use super::decode::{decode_bar, WireBar};
use crate::config::{AlpacaConfig, Secret};
use crate::domain::{DataSource, Symbol, Timeframe};
use crate::ingest::Rejection;
use crate::sources::ws::{Inbound, Protocol, Refusal, RefusalKind, SessionConfig, Status};
use crate::sources::Item;
use crate::text::excerpt;

const VENDOR: &str = "alpaca";
/// How much of a rejected message (or frame) `details.raw` keeps.
const RAW_MAX_CHARS: usize = 1024;
const STATUS_MAX_CHARS: usize = 300;
/// Symbols per subscribe message: a few kilobytes each, whatever the list.
const SUBSCRIBE_SYMBOLS_MAX: usize = 400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlpacaStreamError {
    #[error("alpaca: {0}")]
    Setup(String),
}

/// Alpaca's stream protocol for one account's symbols.
#[derive(Clone)]
pub struct AlpacaStream {
    url: String,
    key_id: Secret,
    secret: Secret,
    symbols: Vec<Symbol>,
    stale_after: Duration,
}

impl std::fmt::Debug for AlpacaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlpacaStream")
            .field("url", &crate::config::redact_url(&self.url))
            .field("symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

impl AlpacaStream {
    /// From `sources.alpaca`. Refuses a `timeframe` other than `1m`: the stream carries minute
    /// bars.
    pub fn new(cfg: &AlpacaConfig) -> Result<AlpacaStream, AlpacaStreamError> {
        let setup = |s: &str| Err(AlpacaStreamError::Setup(s.to_string()));
        let url_ok = url::Url::parse(&cfg.ws_url)
            .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.has_host());
        if !url_ok {
            // Not echoed: a malformed URL may still carry a credential.
            return setup("sources.alpaca.ws_url is not a ws:// or wss:// URL");
        }
        if !cfg.key_id.is_set() || !cfg.secret_key.is_set() {
            return setup("no key (set sources.alpaca.key_id and secret_key)");
        }
        if cfg.symbols.is_empty() {
            return setup("sources.alpaca.symbols is empty: nothing to stream");
        }
        if cfg.timeframe != Timeframe::M1 {
            return Err(AlpacaStreamError::Setup(format!(
                "the stream carries minute bars only, but sources.alpaca.timeframe is {}; set it to 1m, or stream = false",
                cfg.timeframe
            )));
        }
        Ok(AlpacaStream {
            url: cfg.ws_url.clone(),
            key_id: cfg.key_id.clone(),
            secret: cfg.secret_key.clone(),
            symbols: cfg.symbols.clone(),
            stale_after: Duration::from_secs(cfg.stale_after_secs.max(1)),
        })
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig::new(self.stale_after)
    }

    fn scrub(&self, text: &str) -> String {
        crate::text::scrub(text, &[self.key_id.clone(), self.secret.clone()])
    }

    fn classify(&self, kind: &str, code: Option<i64>, msg: &str) -> Status {
        let message = excerpt(&self.scrub(msg), STATUS_MAX_CHARS);
        let refused = |kind| {
            Status::Refused(Refusal {
                vendor: VENDOR,
                kind,
                status: code.map_or_else(|| "error".into(), |c| c.to_string()),
                message: message.clone(),
            })
        };
        match (kind, code) {
            ("success", _) if msg == "authenticated" => Status::AuthOk,
            ("success" | "subscription", _) => Status::Info {
                status: kind.into(),
                message,
            },
            // Auth failed, auth timeout, insufficient subscription: the key or the plan.
            ("error", Some(402 | 404 | 409)) => refused(RefusalKind::Account),
            ("error", Some(406)) => refused(RefusalKind::ConnectionLimit),
            _ => Status::Other {
                status: code.map_or_else(|| kind.to_string(), |c| format!("{kind} {c}")),
                message,
            },
        }
    }
}

impl Protocol for AlpacaStream {
    type Data = Item;

    fn vendor(&self) -> &'static str {
        VENDOR
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn auth_messages(&self) -> Vec<Secret> {
        vec![Secret::new(
            json!({
                "action": "auth",
                "key": self.key_id.expose(),
                "secret": self.secret.expose(),
            })
            .to_string(),
        )]
    }

    fn subscribe_messages(&self) -> Vec<String> {
        self.symbols
            .chunks(SUBSCRIBE_SYMBOLS_MAX)
            .map(|chunk| {
                let s: Vec<&str> = chunk.iter().map(Symbol::as_str).collect();
                json!({ "action": "subscribe", "bars": s, "updatedBars": s }).to_string()
            })
            .collect()
    }

    fn decode(&self, frame: &str) -> Vec<Inbound<Item>> {
        let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(frame) else {
            return vec![Inbound::Data(Item::Rejected(
                self.malformed(frame, "the frame is not a JSON array"),
            ))];
        };
        let mut out = Vec::with_capacity(parts.len());
        for raw in parts {
            let Ok(w) = serde_json::from_str::<WireBar>(raw.get()) else {
                out.push(Inbound::Data(Item::Rejected(
                    self.malformed(raw.get(), "the message is not an object"),
                )));
                continue;
            };
            match w.kind.as_deref() {
                Some("b" | "u") => {
                    let symbol = w.symbol.as_deref().unwrap_or("");
                    let item = match decode_bar(symbol, &w, raw.get()) {
                        Ok(b) => Item::Bar(b),
                        Err(r) => Item::Rejected(r.scrubbed(|t| self.scrub(t))),
                    };
                    out.push(Inbound::Data(item));
                }
                Some(kind @ ("success" | "subscription" | "error")) => {
                    let msg = w.msg.as_deref().unwrap_or("");
                    out.push(Inbound::Status(self.classify(kind, w.code, msg)));
                }
                // Trades, quotes, daily bars, statuses of symbols: not stored.
                _ => {}
            }
        }
        out
    }
}

impl AlpacaStream {
    fn malformed(&self, raw: &str, reason: &str) -> Rejection {
        Rejection::rejected(
            DataSource::Alpaca,
            None,
            None,
            "malformed_row",
            json!({ "reason": reason, "raw": excerpt(raw, RAW_MAX_CHARS) }),
        )
        .scrubbed(|t| self.scrub(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> AlpacaStream {
        AlpacaStream::new(&AlpacaConfig {
            key_id: Secret::new("KID"),
            secret_key: Secret::new("SEC"),
            symbols: vec!["AAPL".parse().unwrap(), "MSFT".parse().unwrap()],
            ..AlpacaConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn bars_corrections_and_statuses() {
        let s = stream();
        let got = s.decode(
            r#"[{"T":"success","msg":"authenticated"},{"T":"b","S":"AAPL","o":185.1,"h":185.3,"l":185,"c":185.2,"v":4110,"t":"2024-01-02T14:30:00Z","n":12,"vw":185.15},{"T":"u","S":"AAPL","o":185.1,"h":185.4,"l":185,"c":185.25,"v":4200,"t":"2024-01-02T14:30:00Z"},{"T":"d","S":"AAPL"},{"T":"b","S":"AAPL","o":"x"}]"#,
        );
        assert!(matches!(got[0], Inbound::Status(Status::AuthOk)));
        let bars: Vec<&crate::domain::Bar> = got
            .iter()
            .filter_map(|i| match i {
                Inbound::Data(Item::Bar(b)) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[0].timestamp, bars[1].timestamp);
        assert_eq!(bars[1].volume, 4200);
        assert!(
            matches!(&got[3], Inbound::Data(Item::Rejected(r)) if r.check == "missing_value" || r.check == "invalid_number" || r.check.starts_with("invalid"))
        );
        assert_eq!(got.len(), 4, "the daily bar is not stored");
    }

    #[test]
    fn refusals_are_told_apart() {
        let s = stream();
        let kind = |frame: &str| match &s.decode(frame)[0] {
            Inbound::Status(Status::Refused(r)) => Some(r.kind),
            _ => None,
        };
        assert_eq!(
            kind(r#"[{"T":"error","code":402,"msg":"auth failed"}]"#),
            Some(RefusalKind::Account)
        );
        assert_eq!(
            kind(r#"[{"T":"error","code":409,"msg":"insufficient subscription"}]"#),
            Some(RefusalKind::Account)
        );
        assert_eq!(
            kind(r#"[{"T":"error","code":406,"msg":"connection limit exceeded"}]"#),
            Some(RefusalKind::ConnectionLimit)
        );
        assert_eq!(
            kind(r#"[{"T":"error","code":407,"msg":"slow client"}]"#),
            None
        );
        // A key echoed back is scrubbed.
        let got = s.decode(r#"[{"T":"error","code":402,"msg":"bad key KID / SEC"}]"#);
        let Inbound::Status(Status::Refused(r)) = &got[0] else {
            panic!()
        };
        assert!(
            !r.message.contains("KID") && !r.message.contains("SEC"),
            "{}",
            r.message
        );
    }

    #[test]
    fn secrets_go_only_in_the_auth_message() {
        let s = stream();
        let auth = s.auth_messages();
        assert!(
            auth[0].expose().contains("\"key\":\"KID\"")
                && auth[0].expose().contains("\"secret\":\"SEC\"")
        );
        let subs = s.subscribe_messages();
        assert_eq!(
            subs,
            [r#"{"action":"subscribe","bars":["AAPL","MSFT"],"updatedBars":["AAPL","MSFT"]}"#]
        );
        assert!(!format!("{s:?}").contains("KID"));
    }
}
