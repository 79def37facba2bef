//! `mdingest-sim`: a deterministic simulator of the vendors' APIs (Polygon's REST aggregates and
//! stream, Alpaca's REST bars and stream), for testing the adapters (paging, authentication,
//! rate limits, transport failures) without the network, and for comparing what landed in the
//! database with what exists ([`series`]). One vendor-neutral layer (the series, the clock, the
//! faults, the HTTP and WebSocket servers) under one encoder per vendor (`api` for Polygon,
//! `alpaca` for Alpaca).
//!
//! It is a small HTTP/1.1 server on raw tokio rather than a web framework because its point is
//! the faults: a body cut short of its `Content-Length`, a reset before any byte, a body dribbled
//! over seconds. Those happen at the byte level, which a framework deliberately hides.
//!
//! `GET /v2/aggs/ticker/{T}/range/{multiplier}/{timespan}/{from}/{to}` is served with Polygon's
//! shapes for bodies and errors, `GET /v2/stocks/bars` with Alpaca's (its two key headers must
//! both carry the simulator's key). The key must come in `Authorization: Bearer`; the
//! `apiKey` query parameter is refused, so a client that leaks its key into URLs fails its tests.
//! The simulator binds loopback addresses only: it serves with a known key.
//!
//! Polygon's WebSocket stream of minute aggregates is served on a second loopback port
//! ([`Simulator::ws_url`], `src/sim/ws.rs`): its live bars are the same series, so what a client
//! got from the stream and from REST can be checked against [`series`] together.

mod alpaca;
mod api;
mod http;
mod series;
mod server;
mod ws;
mod yahoo;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use series::{series, SimBar};
pub use ws::{WsConfig, WsConnRecord, WsFault};
pub use yahoo::{chart_rows, parse_action as parse_yahoo_action, YahooAction, YahooRow};

use server::{lock, Shared};
use ws::WsShared;

/// What the simulator serves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Expected in `Authorization: Bearer <key>`.
    pub api_key: String,
    /// Known tickers (case-sensitive); any other is 404.
    pub symbols: Vec<String>,
    /// Bars exist only at or after this instant, when set.
    pub data_from: Option<DateTime<Utc>>,
    /// Bars exist only at or before this instant, when set.
    pub data_to: Option<DateTime<Utc>>,
    /// Most bars in one page, whatever the request's `limit` (at least 1).
    pub page_size: usize,
    /// Slept before every response.
    pub latency: Duration,
    /// Consumed one per well-formed request, in order; once empty, requests are answered
    /// normally. More can be added with [`Simulator::push_faults`].
    pub faults: Vec<Fault>,
    /// Standing answers for particular tickers (after authentication). On the stream, a 404 or
    /// 403 ticker sends no bars and `inconsistent` spoils the same bars as on REST.
    pub symbol_faults: HashMap<String, SymbolFault>,
    /// Yahoo's splits and dividends per ticker; more with [`Simulator::add_yahoo_action`].
    pub yahoo_actions: HashMap<String, Vec<YahooAction>>,
    /// The WebSocket stream.
    pub ws: WsConfig,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            api_key: "sim-key".to_string(),
            symbols: vec!["AAPL".to_string(), "MSFT".to_string()],
            data_from: None,
            data_to: None,
            page_size: 50_000,
            latency: Duration::ZERO,
            faults: Vec::new(),
            symbol_faults: HashMap::new(),
            yahoo_actions: HashMap::new(),
            ws: WsConfig::default(),
        }
    }
}

/// A one-request failure, taken from the queue in place of the normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answered normally; a placeholder that lets a later fault hit a later request.
    None,
    /// 429 with `Retry-After`.
    TooManyRequests { retry_after_secs: u64 },
    /// 500 `{"status":"ERROR","request_id":…,"error":"internal error"}`.
    ServerError,
    /// 401 as for an unknown key, whatever the key.
    Unauthorized,
    /// The normal answer's head, with a `Content-Length` larger than what follows: half the body
    /// is sent, then the connection is closed.
    TruncatedBody,
    /// The connection is reset (RST) before any byte of the answer.
    ConnectionReset,
    /// 200 with an HTML page in place of JSON (a proxy's or CDN's error page).
    Html,
    /// The normal answer, its body dribbled out over `total`.
    SlowBody { total: Duration },
}

impl FromStr for Fault {
    type Err = String;

    /// `none`, `429` or `429:SECS`, `500`, `401`, `truncate`, `reset`, `slow:MS`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let number = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("fault {s:?}: {what} must be a whole number"))
        };
        match s.split_once(':') {
            None => match s {
                "none" => Ok(Fault::None),
                "429" => Ok(Fault::TooManyRequests {
                    retry_after_secs: 1,
                }),
                "500" => Ok(Fault::ServerError),
                "401" => Ok(Fault::Unauthorized),
                "truncate" => Ok(Fault::TruncatedBody),
                "reset" => Ok(Fault::ConnectionReset),
                "html" => Ok(Fault::Html),
                _ => Err(format!(
                    "unknown fault {s:?} (expected none, 429[:SECS], 500, 401, truncate, reset, html or slow:MS)"
                )),
            },
            Some(("429", secs)) => Ok(Fault::TooManyRequests {
                retry_after_secs: number(secs, "Retry-After seconds")?,
            }),
            Some(("slow", ms)) => Ok(Fault::SlowBody {
                total: Duration::from_millis(number(ms, "milliseconds")?),
            }),
            Some(_) => Err(format!(
                "unknown fault {s:?} (expected none, 429[:SECS], 500, 401, truncate, reset, html or slow:MS)"
            )),
        }
    }
}

/// A standing answer for one ticker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolFault {
    /// 404 `{"status":"NOT_FOUND",…,"message":"Ticker not found."}`.
    NotFound,
    /// 403 `{"status":"NOT_AUTHORIZED",…,"message":"You are not entitled to this data…"}`.
    Forbidden,
    /// 500 on every request.
    ServerError,
    /// 429 on every request: a vendor that keeps refusing this client (Yahoo's plain-text
    /// `Too Many Requests`, Polygon's and Alpaca's own shapes).
    RateLimited,
    /// Normal answers, except that the bars [`is_inconsistent`] picks have `h` and `l` swapped
    /// (high below open and close): what a client must reject and log, keeping the rest.
    InconsistentBars,
    /// Normal answers with `t` in seconds, not milliseconds: a vendor that lies about units.
    SecondsTimestamps,
    /// Every page, the same bars again, with a `next_url` under a new cursor: a chain that never
    /// ends by itself.
    EndlessCursor,
    /// 200 `{"status":"ERROR",…,"error":"key <KEY> is not entitled…"}`: the key echoed back in
    /// a success status.
    EchoKey,
    /// Pages of 250,000 results (the window's bars over and over), whatever the `limit`: 31 MB,
    /// five times the most Polygon sends.
    Oversized,
    /// Normal answers whose every result carries an extra 3,500-byte field: a 30-day window of
    /// minute bars is a 31 MB page.
    Padded,
}

/// The bars `SymbolFault::InconsistentBars` spoils: one minute in 25.
pub fn is_inconsistent(t_ms: i64) -> bool {
    (t_ms / 60_000) % 25 == 0
}

impl FromStr for SymbolFault {
    type Err = String;

    /// `404`, `403`, `500` or `inconsistent`.
    fn from_str(s: &str) -> Result<SymbolFault, String> {
        match s {
            "404" => Ok(SymbolFault::NotFound),
            "403" => Ok(SymbolFault::Forbidden),
            "500" => Ok(SymbolFault::ServerError),
            "429" => Ok(SymbolFault::RateLimited),
            "inconsistent" => Ok(SymbolFault::InconsistentBars),
            "seconds" => Ok(SymbolFault::SecondsTimestamps),
            "endless" => Ok(SymbolFault::EndlessCursor),
            "echo-key" => Ok(SymbolFault::EchoKey),
            "padded" => Ok(SymbolFault::Padded),
            "oversized" => Ok(SymbolFault::Oversized),
            _ => Err(format!(
                "unknown symbol fault {s:?} (expected 404, 403, 429, 500, inconsistent, seconds, endless, echo-key, padded or oversized)"
            )),
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query exactly as received (an `apiKey` included: that is what tests look for).
    pub target: String,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The ticker of an aggregates path, percent-decoded.
    pub symbol: Option<String>,
    /// The path's `from`, as inclusive epoch milliseconds (a date: its first millisecond in New
    /// York).
    pub from_ms: Option<i64>,
    /// The path's `to`, as inclusive epoch milliseconds (a date: its last millisecond).
    pub to_ms: Option<i64>,
    /// The status sent; 0 when the connection was reset instead.
    pub status: u16,
    /// Bars in the body as delivered: 0 for a truncated body.
    pub bars: usize,
    /// When the request head was complete.
    pub at: Instant,
    /// The queued fault this request consumed, if any.
    pub fault: Option<Fault>,
}

/// A running simulator. Stops when dropped (pending connections are aborted too).
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    ws: Arc<WsShared>,
    ws_addr: SocketAddr,
    ws_accept: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub async fn start(cfg: SimConfig) -> io::Result<Simulator> {
        Simulator::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Serves on `addr`, which must be a loopback address. Call from within a tokio runtime.
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> io::Result<Simulator> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is not a loopback address: the simulator serves a known key, so it binds loopback only"),
            ));
        }
        if cfg.page_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "page_size must be at least 1",
            ));
        }
        ws::validate(&cfg.ws)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ws_listener = TcpListener::bind(SocketAddr::new(addr.ip(), cfg.ws.port)).await?;
        let ws_addr = ws_listener.local_addr()?;
        let ws = Arc::new(WsShared::new(
            cfg.ws,
            cfg.api_key.clone(),
            &cfg.symbols,
            &cfg.symbol_faults,
            cfg.data_from.map(|d| d.timestamp_millis()),
            cfg.data_to.map(|d| d.timestamp_millis()),
            Utc::now().timestamp_millis(),
        ));
        let api = api::Api {
            api_key: cfg.api_key,
            symbols: cfg.symbols.into_iter().collect(),
            symbol_faults: std::sync::Mutex::new(cfg.symbol_faults),
            yahoo_actions: std::sync::Mutex::new(cfg.yahoo_actions),
            data_from_ms: cfg.data_from.map(|d| d.timestamp_millis()),
            data_to_ms: cfg.data_to.map(|d| d.timestamp_millis()),
            page_size: cfg.page_size,
            base_url: format!("http://{addr}"),
        };
        let shared = Arc::new(Shared::new(api, cfg.latency, cfg.faults));
        let accept = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared)));
        let ws_accept = tokio::spawn(ws::accept_loop(ws_listener, Arc::clone(&ws)));
        Ok(Simulator {
            shared,
            addr,
            accept: Some(accept),
            ws,
            ws_addr,
            ws_accept: Some(ws_accept),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.api.base_url.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.records).clone()
    }

    /// Sets (or with `None` clears) a standing REST fault for `symbol` from the next request on.
    pub fn set_symbol_fault(&self, symbol: &str, fault: Option<SymbolFault>) {
        let mut faults = lock(&self.shared.api.symbol_faults);
        match fault {
            Some(f) => faults.insert(symbol.to_string(), f),
            None => faults.remove(symbol),
        };
    }

    /// Yahoo shows `action` for `symbol` from the next request on (and restates its history).
    pub fn add_yahoo_action(&self, symbol: &str, action: YahooAction) {
        lock(&self.shared.api.yahoo_actions)
            .entry(symbol.to_string())
            .or_default()
            .push(action);
    }

    /// Queues more faults behind those not yet consumed.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.shared.faults).extend(faults);
    }

    /// `ws://127.0.0.1:PORT/stocks`: Polygon's stocks stream. The key is [`SimConfig::api_key`].
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.ws_addr, ws::PATH)
    }

    /// The same stream in Alpaca's dialect (`/v2/iex`).
    pub fn alpaca_ws_url(&self) -> String {
        format!("ws://{}/v2/iex", self.ws_addr)
    }

    pub fn ws_local_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Where the stream's replay starts: [`WsConfig::live_from`] or its default, bounded below
    /// by [`SimConfig::data_from`]. The first bar streamed for a symbol is the first at or after
    /// it, unless the symbol was subscribed before (the stream moved on meanwhile).
    pub fn ws_live_from(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.ws.live_from_ms()).unwrap_or_default()
    }

    /// Every upgraded stream connection so far, in arrival order (handshakes that failed are
    /// not connections and are not listed).
    pub fn ws_connections(&self) -> Vec<WsConnRecord> {
        lock(&self.ws.conns).clone()
    }

    /// `(symbol, s)` of every bar whose final version went out on the stream, in sending order,
    /// over all connections (a bar sent to two connections is listed twice). Bars that went live
    /// while no connection was subscribed are not listed: nobody received them.
    pub fn ws_bars_sent(&self) -> Vec<(String, i64)> {
        self.ws.bars_sent()
    }

    /// Queues more stream faults behind those not yet consumed.
    pub fn push_ws_faults(&self, faults: impl IntoIterator<Item = WsFault>) {
        lock(&self.ws.faults).extend(faults);
    }

    /// Stops accepting and aborts open connections (the stream's too); the ports are free when
    /// this returns.
    pub async fn stop(mut self) {
        for task in [self.accept.take(), self.ws_accept.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for task in [self.accept.take(), self.ws_accept.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            "429:2".parse(),
            Ok(Fault::TooManyRequests {
                retry_after_secs: 2
            })
        );
        assert_eq!(
            "slow:2000".parse(),
            Ok(Fault::SlowBody {
                total: Duration::from_secs(2)
            })
        );
        assert_eq!("reset".parse(), Ok(Fault::ConnectionReset));
        assert_eq!("truncate".parse(), Ok(Fault::TruncatedBody));
        assert!("slow".parse::<Fault>().is_err());
        assert!("429:x".parse::<Fault>().is_err());
        assert!("418".parse::<Fault>().is_err());
        assert_eq!("403".parse(), Ok(SymbolFault::Forbidden));
        assert!("402".parse::<SymbolFault>().is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback_and_empty_pages() {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let e = Simulator::start_on(SimConfig::default(), any)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let cfg = SimConfig {
            page_size: 0,
            ..SimConfig::default()
        };
        assert!(Simulator::start(cfg).await.is_err());
    }
}
