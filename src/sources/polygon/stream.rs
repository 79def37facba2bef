//! Polygon's WebSocket stream (`wss://socket.polygon.io/stocks`): the [`Protocol`] the shared
//! [`crate::sources::ws::Session`] runs, and its pure decoder.
//!
//! The wire: every frame is a JSON array of events, possibly of several kinds. The server greets
//! with `[{"ev":"status","status":"connected",…}]`; we send `{"action":"auth","params":KEY}` and
//! it answers `auth_success`, or `auth_failed` / `auth_timeout`, or `max_connections` (another
//! connection with the same key evicted this one); we send
//! `{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}` and it confirms each topic with a
//! `success` status. Minute aggregates then arrive as
//! `{"ev":"AM","sym":"AAPL","v":4110,"o":…,"c":…,"h":…,"l":…,"s":START_MS,"e":END_MS,…}`.
//!
//! Only `AM` (minute) events become bars: every timeframe we store is a minute or longer, and
//! one source holds one timeframe, so the stream serves `timeframe = "1m"` only (see
//! [`PolygonStream::new`]). `A` (second) events and other kinds are ignored. A bar broadcast
//! again with the same `s` is Polygon's correction of it and is passed on like any other: the
//! write path's upsert replaces the stored one.
//!
//! Numbers are read as their JSON text (`RawValue`) and parsed straight to `Decimal`, never
//! through `f64`, as in [`super::decode`].

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::config::{PolygonConfig, Secret};
use crate::domain::{Bar, DataSource, Symbol, Timeframe};
use crate::ingest::Rejection;
use crate::sources::ws::{Inbound, Protocol, Refusal, RefusalKind, SessionConfig, Status};
use crate::sources::Item;
use crate::text::excerpt;

const VENDOR: &str = "polygon";
/// How much of a rejected event (or frame) `details.raw` keeps.
const RAW_MAX_CHARS: usize = 1024;
/// A vendor's status text quoted in logs, events and errors.
const STATUS_MAX_CHARS: usize = 300;
/// Longest `params` of one subscribe message. Polygon documents no limit; a few kilobytes
/// (about 500 tickers) per message keeps every frame small whatever the symbol list.
const SUBSCRIBE_PARAMS_MAX: usize = 4096;

/// One part of a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum PolygonEvent {
    /// A minute aggregate (`AM`).
    Bar(Bar),
    /// An event (or a whole frame) that could not become a bar, for `data_quality_logs`.
    Rejected(Rejection),
    /// `{"ev":"status",…}`: the session's business; [`PolygonStream`] turns these into
    /// [`Status`]es, so the session's `Data` never carries them.
    Status(PolygonStatus),
}

/// A status event as Polygon sent it, cut short and escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolygonStatus {
    pub status: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolygonStreamError {
    #[error("polygon: {0}")]
    Setup(String),
}

/// Polygon's stream protocol for one account's symbols.
#[derive(Clone)]
pub struct PolygonStream {
    url: String,
    key: Secret,
    symbols: Vec<Symbol>,
    stale_after: Duration,
}

impl std::fmt::Debug for PolygonStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolygonStream")
            .field("url", &crate::config::redact_url(&self.url))
            .field("key", &self.key)
            .field("symbols", &self.symbols.len())
            .field("stale_after", &self.stale_after)
            .finish()
    }
}

impl PolygonStream {
    /// From `sources.polygon`: `ws_url`, `api_key`, `symbols`, `stale_after_secs`. Refuses a
    /// `timeframe` other than `1m`: the stream carries minute bars, and storing them as another
    /// timeframe's bars would put them off its grid.
    pub fn new(cfg: &PolygonConfig) -> Result<PolygonStream, PolygonStreamError> {
        let setup = |s: &str| Err(PolygonStreamError::Setup(s.to_string()));
        let url_ok = url::Url::parse(&cfg.ws_url)
            .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.has_host());
        if !url_ok {
            // Not echoed: a malformed URL may still carry a credential.
            return setup("sources.polygon.ws_url is not a ws:// or wss:// URL");
        }
        if !cfg.api_key.is_set() {
            return setup("no API key (set sources.polygon.api_key or POLYGON_API_KEY)");
        }
        if cfg.symbols.is_empty() {
            return setup("sources.polygon.symbols is empty: nothing to stream");
        }
        if cfg.stale_after_secs == 0 {
            return setup("sources.polygon.stale_after_secs must be at least 1");
        }
        if cfg.timeframe != Timeframe::M1 {
            return Err(PolygonStreamError::Setup(format!(
                "the stream carries minute bars (AM) only, but sources.polygon.timeframe is {}; \
                 set it to 1m, or stream = false to load {} bars by backfill only",
                cfg.timeframe, cfg.timeframe
            )));
        }
        Ok(PolygonStream {
            url: cfg.ws_url.clone(),
            key: cfg.api_key.clone(),
            symbols: cfg.symbols.clone(),
            stale_after: Duration::from_secs(cfg.stale_after_secs),
        })
    }

    /// The session settings for this source (`stale_after_secs`, the shared defaults).
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig::new(self.stale_after)
    }

    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Polygon's status, classified for the session, its message scrubbed of the key (a
    /// server may echo what it was sent).
    fn classify(&self, s: PolygonStatus) -> Status {
        let message = scrub(&s.message, &self.key);
        let refused = |kind| {
            Status::Refused(Refusal {
                vendor: VENDOR,
                kind,
                status: s.status.clone(),
                message: message.clone(),
            })
        };
        match s.status.as_str() {
            "auth_success" => Status::AuthOk,
            "auth_failed" | "auth_timeout" => refused(RefusalKind::Account),
            "max_connections" => refused(RefusalKind::ConnectionLimit),
            "connected" | "success" => Status::Info {
                status: s.status,
                message,
            },
            _ => Status::Other {
                status: s.status,
                message,
            },
        }
    }
}

fn scrub(text: &str, key: &Secret) -> String {
    crate::text::scrub(text, std::slice::from_ref(key))
}

impl Protocol for PolygonStream {
    type Data = Item;

    fn vendor(&self) -> &'static str {
        VENDOR
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn auth_messages(&self) -> Vec<Secret> {
        vec![Secret::new(
            json!({ "action": "auth", "params": self.key.expose() }).to_string(),
        )]
    }

    fn subscribe_messages(&self) -> Vec<String> {
        subscribe_messages(&self.symbols)
    }

    fn decode(&self, frame: &str) -> Vec<Inbound<Item>> {
        decode_frame(frame)
            .into_iter()
            .map(|e| match e {
                PolygonEvent::Status(s) => Inbound::Status(self.classify(s)),
                // A rejected event quotes the frame, which may echo the key.
                PolygonEvent::Rejected(r) => {
                    Inbound::Data(Item::Rejected(r.scrubbed(|t| scrub(t, &self.key))))
                }
                PolygonEvent::Bar(b) => Inbound::Data(Item::Bar(b)),
            })
            .collect()
    }
}

/// `{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}`, as many as the list needs.
pub fn subscribe_messages(symbols: &[Symbol]) -> Vec<String> {
    let mut messages = Vec::new();
    let mut params = String::new();
    for symbol in symbols {
        let topic = format!("AM.{symbol}");
        if !params.is_empty() && params.len() + 1 + topic.len() > SUBSCRIBE_PARAMS_MAX {
            messages.push(subscribe_message(&params));
            params.clear();
        }
        if !params.is_empty() {
            params.push(',');
        }
        params.push_str(&topic);
    }
    if !params.is_empty() {
        messages.push(subscribe_message(&params));
    }
    messages
}

fn subscribe_message(params: &str) -> String {
    json!({ "action": "subscribe", "params": params }).to_string()
}

/// One event; `null` reads as absent. Only what a bar or a status needs is read.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    ev: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sym: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    s: Option<&'a RawValue>,
    #[serde(borrow, default)]
    o: Option<&'a RawValue>,
    #[serde(borrow, default)]
    h: Option<&'a RawValue>,
    #[serde(borrow, default)]
    l: Option<&'a RawValue>,
    #[serde(borrow, default)]
    c: Option<&'a RawValue>,
    #[serde(borrow, default)]
    v: Option<&'a RawValue>,
}

/// Decodes one text frame into its events, in order. Never fails: a frame that is not a JSON
/// array (or a lone event object) is one `malformed_row` rejection; an event that cannot
/// become a bar is a rejection of its own while the others decode. Unknown kinds and `A`
/// (second) aggregates are skipped.
pub fn decode_frame(frame: &str) -> Vec<PolygonEvent> {
    let parts: Vec<&RawValue> = match serde_json::from_str::<Vec<&RawValue>>(frame) {
        Ok(parts) => parts,
        Err(array_err) => match serde_json::from_str::<&RawValue>(frame) {
            // Polygon always sends arrays; a lone object is read as an array of one.
            Ok(one) if one.get().trim_start().starts_with('{') => vec![one],
            _ => return vec![PolygonEvent::Rejected(bad_frame(frame, &array_err))],
        },
    };
    parts.into_iter().filter_map(decode_event).collect()
}

fn bad_frame(frame: &str, e: &serde_json::Error) -> Rejection {
    let reason = if frame.trim().is_empty() {
        "empty frame".to_string()
    } else {
        format!(
            "frame is not a JSON array of events: {}",
            excerpt(&e.to_string(), 200)
        )
    };
    Rejection::rejected(
        DataSource::Polygon,
        None,
        None,
        "malformed_row",
        json!({ "reason": reason, "raw": excerpt(frame, RAW_MAX_CHARS) }),
    )
}

fn decode_event(raw: &RawValue) -> Option<PolygonEvent> {
    let reject = |symbol: Option<String>, ts, check, reason: String| {
        Some(PolygonEvent::Rejected(Rejection::rejected(
            DataSource::Polygon,
            symbol,
            ts,
            check,
            json!({ "reason": reason, "raw": excerpt(raw.get(), RAW_MAX_CHARS) }),
        )))
    };
    let w: Wire = match serde_json::from_str(raw.get()) {
        Ok(w) => w,
        Err(e) => {
            return reject(
                None,
                None,
                "malformed_row",
                format!(
                    "event is not a Polygon event: {}",
                    excerpt(&e.to_string(), 200)
                ),
            )
        }
    };
    match w.ev.as_deref() {
        Some("AM") => {}
        Some("status") => {
            return Some(PolygonEvent::Status(PolygonStatus {
                status: excerpt(w.status.as_deref().unwrap_or(""), STATUS_MAX_CHARS),
                message: excerpt(w.message.as_deref().unwrap_or(""), STATUS_MAX_CHARS),
            }))
        }
        // Second aggregates, trades, quotes, …: not what this source stores.
        Some(_) => return None,
        None => return reject(None, None, "malformed_row", "event has no ev (kind)".into()),
    }
    let Some(sym) = w.sym.as_deref() else {
        return reject(None, None, "missing_value", "missing sym (symbol)".into());
    };
    let shown = Some(excerpt(sym, 40));
    let ts = match w.s.map(RawValue::get) {
        None => {
            return reject(
                shown,
                None,
                "missing_value",
                "missing s (window start)".into(),
            )
        }
        Some(t) => match super::decode::stamp_ms("s", t) {
            Ok(ts) => ts,
            Err((check, reason)) => return reject(shown, None, check, reason),
        },
    };
    let symbol = match sym.parse::<Symbol>() {
        Ok(s) => s,
        Err(e) => return reject(shown, Some(ts), e.check_name(), e.to_string()),
    };
    let fields = [w.o, w.h, w.l, w.c, w.v].map(|f| f.map(RawValue::get));
    match super::decode::bar(symbol, ts, fields) {
        Ok(bar) => Some(PolygonEvent::Bar(bar)),
        Err((check, reason)) => reject(shown, Some(ts), check, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Action, Severity};
    use chrono::TimeZone;
    use chrono::Utc;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    const MIXED: &str = include_str!("../../../tests/fixtures/polygon/ws_mixed.json");
    const HANDSHAKE: &str = include_str!("../../../tests/fixtures/polygon/ws_handshake.json");
    const SUBSCRIBED: &str = include_str!("../../../tests/fixtures/polygon/ws_subscribed.json");
    const REBROADCAST: &str = include_str!("../../../tests/fixtures/polygon/ws_rebroadcast.json");
    const VOLUMES: &str = include_str!("../../../tests/fixtures/polygon/ws_volumes.json");
    const BAD: &str = include_str!("../../../tests/fixtures/polygon/ws_bad_events.json");
    const REFUSALS: &str = include_str!("../../../tests/fixtures/polygon/ws_refusals.json");

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn bars(events: &[PolygonEvent]) -> Vec<&Bar> {
        events
            .iter()
            .filter_map(|e| match e {
                PolygonEvent::Bar(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    fn rejections(events: &[PolygonEvent]) -> Vec<&Rejection> {
        events
            .iter()
            .filter_map(|e| match e {
                PolygonEvent::Rejected(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn config() -> PolygonConfig {
        PolygonConfig {
            api_key: Secret::new("sekrit-key-0123456789"),
            ws_url: "wss://socket.polygon.io/stocks".into(),
            ..PolygonConfig::default()
        }
    }

    #[test]
    fn mixed_frames_keep_minute_bars_only() {
        let events = decode_frame(MIXED);
        let b = bars(&events);
        // The `A` (second) aggregate of SPCE is skipped; GTE's and AAPL's `AM` become bars.
        assert_eq!(b.len(), 2, "{events:?}");
        assert_eq!(events.len(), 2, "{events:?}");
        let gte = b[0];
        assert_eq!(gte.symbol.as_str(), "GTE");
        assert_eq!(gte.source, DataSource::Polygon);
        // 1610144640000 = 2021-01-08T22:24:00Z, the window's start.
        assert_eq!(
            gte.timestamp,
            Utc.with_ymd_and_hms(2021, 1, 8, 22, 24, 0).unwrap()
        );
        assert_eq!(
            (gte.open, gte.high, gte.low, gte.close, gte.volume),
            (d("0.4488"), d("0.4489"), d("0.4486"), d("0.4486"), 4110)
        );
        // Exact decimals stay exact, and a fifth place rounds half away from zero.
        let aapl = b[1];
        assert_eq!(aapl.open, d("132.1235"));
        assert_eq!(aapl.high, d("132.3"));
        assert_eq!(aapl.close, d("132.1"));
    }

    #[test]
    fn statuses_are_decoded_in_order() {
        let events = decode_frame(HANDSHAKE);
        let statuses: Vec<&str> = events
            .iter()
            .map(|e| match e {
                PolygonEvent::Status(s) => s.status.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(statuses, ["connected", "auth_success"]);
        let events = decode_frame(SUBSCRIBED);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(
            &events[1],
            PolygonEvent::Status(s) if s.status == "success" && s.message == "subscribed to: AM.MSFT"
        ));
        // A status and a bar in one frame.
        assert!(matches!(&events[2], PolygonEvent::Bar(b) if b.symbol.as_str() == "AAPL"));
    }

    #[test]
    fn a_rebroadcast_bar_is_passed_on_as_a_replacement() {
        // Two frames: the bar, then the same window again with more trades in it.
        let events: Vec<PolygonEvent> = REBROADCAST.lines().flat_map(decode_frame).collect();
        let b = bars(&events);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].key(), b[1].key());
        assert_eq!((b[0].close, b[0].volume), (d("187.12"), 1000));
        assert_eq!((b[1].close, b[1].volume), (d("187.2"), 1500));
    }

    #[test]
    fn fractional_and_scientific_volumes_round() {
        let events = decode_frame(VOLUMES);
        let v: Vec<i64> = bars(&events).iter().map(|b| b.volume).collect();
        assert_eq!(v, [25934, 10_471_000, 3, 0]);
        assert!(rejections(&events).is_empty(), "{events:?}");
    }

    #[test]
    fn bad_events_are_rejected_and_the_rest_decode() {
        let events = decode_frame(BAD);
        assert_eq!(bars(&events).len(), 1, "{events:?}");
        let r = rejections(&events);
        let checks: Vec<&str> = r.iter().map(|r| r.check).collect();
        assert_eq!(
            checks,
            [
                "missing_value",      // no c
                "missing_value",      // h: null
                "not_a_number",       // o: "abc"
                "value_out_of_range", // v: 1e30
                "invalid_timestamp",  // s: "yesterday"
                "invalid_timestamp",  // s: 1.5
                "missing_value",      // no s
                "missing_value",      // no sym
                "invalid_symbol",     // sym: "aapl"
                "malformed_row",      // 42
                "malformed_row",      // no ev
                "malformed_row",      // sym: 5
            ]
        );
        let first = r[0];
        assert_eq!(first.source, DataSource::Polygon);
        assert_eq!(first.symbol.as_deref(), Some("AAPL"));
        assert_eq!(first.severity, Severity::Error);
        assert_eq!(first.action, Action::Rejected);
        assert_eq!(
            first.bar_timestamp,
            Some(Utc.with_ymd_and_hms(2021, 1, 8, 22, 24, 0).unwrap())
        );
        assert_eq!(first.details["reason"], "missing c (close)");
        let raw = first.details["raw"].as_str().unwrap();
        assert!(
            raw.starts_with('{') && raw.contains("\"s\":1610144640000"),
            "{raw}"
        );
        assert_eq!(r[4].bar_timestamp, None);
        assert_eq!(r[7].symbol, None);
        assert_eq!(r[8].symbol.as_deref(), Some("aapl"));
    }

    #[test]
    fn frames_that_are_not_arrays_of_events() {
        let huge = format!("[{}", "x".repeat(1 << 20));
        for frame in [
            "",
            "  \n",
            "not json",
            "\u{0}\u{1f}\u{8b}binary\u{7f}",
            "42",
            "null",
            "\"AM\"",
            "[1,2",
            huge.as_str(),
        ] {
            let events = decode_frame(frame);
            assert_eq!(events.len(), 1, "{frame:.40}: {events:?}");
            let PolygonEvent::Rejected(r) = &events[0] else {
                panic!("{events:?}")
            };
            assert_eq!(r.check, "malformed_row");
            assert_eq!(r.symbol, None);
            let raw = r.details["raw"].as_str().unwrap();
            assert!(raw.chars().count() < 1100, "{}", raw.len());
            assert!(!raw.contains('\0'), "{raw:?}");
            let line = r.console_line();
            assert!(!line.contains('\n') && line.len() < 400, "{line}");
        }
        assert_eq!(
            rejections(&decode_frame(""))[0].details["reason"],
            "empty frame"
        );
        assert!(decode_frame("[]").is_empty());
        // A lone event object is read as an array of one.
        let one = decode_frame(
            r#"{"ev":"status","status":"success","message":"subscribed to: AM.AAPL"}"#,
        );
        assert!(matches!(&one[..], [PolygonEvent::Status(s)] if s.status == "success"));
        // Array elements that are not objects are rejected one by one.
        let events = decode_frame(r#"[1,"x",null,[]]"#);
        assert_eq!(rejections(&events).len(), 4, "{events:?}");
    }

    #[test]
    fn a_huge_valid_frame_decodes() {
        let mut frame = String::from("[");
        for i in 0..20_000u64 {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(&format!(
                r#"{{"ev":"AM","sym":"S{i}","v":{i},"av":1,"op":1,"vw":1,"o":1.5,"c":1.5,"h":2,"l":1,"a":1,"z":1,"s":1610144640000,"e":1610144700000}}"#
            ));
        }
        frame.push(']');
        assert_eq!(bars(&decode_frame(&frame)).len(), 20_000);
    }

    #[test]
    fn protocol_messages_and_statuses() {
        let p = PolygonStream::new(&config()).unwrap();
        let auth = p.auth_messages();
        assert_eq!(auth.len(), 1);
        assert_eq!(
            auth[0].expose(),
            r#"{"action":"auth","params":"sekrit-key-0123456789"}"#
        );
        assert_eq!(
            p.subscribe_messages(),
            [r#"{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}"#]
        );
        let classified: Vec<Inbound<Item>> = p.decode(REFUSALS);
        let statuses: Vec<&Status> = classified
            .iter()
            .map(|i| match i {
                Inbound::Status(s) => s,
                Inbound::Data(d) => panic!("{d:?}"),
            })
            .collect();
        assert!(matches!(statuses[0], Status::Info { status, .. } if status == "connected"));
        assert_eq!(statuses[1], &Status::AuthOk);
        let Status::Refused(r) = statuses[2] else {
            panic!("{statuses:?}")
        };
        assert_eq!(r.kind, RefusalKind::Account);
        // The key the server echoed is scrubbed.
        assert_eq!(
            r.to_string(),
            "polygon: auth_failed: authentication failed for ***"
        );
        assert!(
            matches!(statuses[3], Status::Refused(r) if r.kind == RefusalKind::Account && r.status == "auth_timeout")
        );
        assert!(
            matches!(statuses[4], Status::Refused(r) if r.kind == RefusalKind::ConnectionLimit)
        );
        assert!(matches!(statuses[5], Status::Info { status, .. } if status == "success"));
        assert!(
            matches!(statuses[6], Status::Other { status, message } if status == "error" && message.starts_with("Your plan"))
        );
        assert!(!format!("{p:?}").contains("sekrit"));
    }

    #[test]
    fn long_symbol_lists_are_subscribed_in_several_messages() {
        let symbols: Vec<Symbol> = (0..3000)
            .map(|i| format!("SYM{i}").parse().unwrap())
            .collect();
        let messages = subscribe_messages(&symbols);
        assert!(messages.len() > 1);
        let mut topics = Vec::new();
        for m in &messages {
            assert!(m.len() <= SUBSCRIBE_PARAMS_MAX + 64, "{}", m.len());
            let v: serde_json::Value = serde_json::from_str(m).unwrap();
            assert_eq!(v["action"], "subscribe");
            topics.extend(v["params"].as_str().unwrap().split(',').map(String::from));
        }
        let expected: Vec<String> = symbols.iter().map(|s| format!("AM.{s}")).collect();
        assert_eq!(topics, expected);
        assert!(subscribe_messages(&[]).is_empty());
    }

    #[test]
    fn setup_is_checked() {
        let cases = [
            (
                PolygonConfig {
                    timeframe: Timeframe::M5,
                    ..config()
                },
                "minute bars",
            ),
            (
                PolygonConfig {
                    api_key: Secret::default(),
                    ..config()
                },
                "POLYGON_API_KEY",
            ),
            (
                PolygonConfig {
                    ws_url: "https://u:sekrit-key-0123456789@x".into(),
                    ..config()
                },
                "ws_url",
            ),
            (
                PolygonConfig {
                    symbols: Vec::new(),
                    ..config()
                },
                "symbols",
            ),
        ];
        for (cfg, says) in cases {
            let e = PolygonStream::new(&cfg).unwrap_err().to_string();
            assert!(e.starts_with("polygon: ") && e.contains(says), "{e}");
            assert!(!e.contains("sekrit"), "{e}");
        }
        let p = PolygonStream::new(&PolygonConfig {
            stale_after_secs: 2,
            ..config()
        })
        .unwrap();
        assert_eq!(p.session_config().stale_after, Duration::from_secs(2));
    }
}
