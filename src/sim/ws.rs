//! The vendors' WebSocket streams on one loopback port: Polygon's (`/stocks`, minute aggregates
//! `AM.*` only) and Alpaca's (`/v2/{feed}`, `b` bars and `u` corrections), chosen by the path
//! the client upgrades on. Connections, pacing, faults and the series are shared; what differs
//! is the conversation and the encoding (`Dialect`; Alpaca's pieces are in `super::alpaca`).
//! What follows describes Polygon's; Alpaca's is in `super::alpaca`.
//!
//! The conversation is Polygon's: on connect `[{"ev":"status","status":"connected",…}]`; the
//! client authenticates with `{"action":"auth","params":KEY}` and subscribes with
//! `{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}`; every frame the server sends is a JSON
//! array of events, statuses and bars possibly mixed.
//!
//! The bars are the REST side's minute series ([`super::series`]), replayed from a starting
//! point at a configurable pace, so that a test can put together what the stream delivered and
//! what a REST gap-fill fetched and compare the union with `series()`. Where the stream stands is
//! kept per simulator and per symbol, not per connection: the bars that went live while a client
//! was disconnected are not sent again when it comes back. Recovering them is the client's job.
//!
//! Frames are written by hand into one buffer (no `serde_json::Value` per bar): the stream has to
//! sustain 50,000 bars a second for the daemon's benchmark.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{http, Message};
use tokio_tungstenite::WebSocketStream;

use super::alpaca;
use super::api::json_str;
use super::series::{
    is_weekend, ny_date, ny_day_bounds, ny_ms, push_i64, push_price, push_u64, Generator, Grid,
    RawBar, MAX_MS,
};
use super::server::lock;
use super::{is_inconsistent, SymbolFault};
use crate::domain::Timeframe;

const MINUTE_MS: i64 = 60_000;
/// The only path served, as Polygon's stocks cluster.
pub(crate) const PATH: &str = "/stocks";
/// How much trading time the default starting point lies behind the simulator's start.
const DEFAULT_BACKLOG_MINUTES: i64 = 180;
/// How often a connection looks for bars that have become due. Bars due within one tick share a
/// frame, which is what makes multi-event frames common.
const TICK: Duration = Duration::from_millis(20);
/// A frame is closed once it is this long; a backlog (a slow client, the end of a silence)
/// goes out in several frames rather than one unbounded one.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Frames per tick at most, so that a long backlog does not starve reading the client's
/// messages (and answering its pings).
const MAX_FRAMES_PER_TICK: usize = 16;
/// Every this many data frames, a status event leads the frame, so clients must handle arrays
/// that mix event types.
const MIXED_STATUS_EVERY: u64 = 16;
/// A status Polygon really sends (a late subscription confirmation), so a client's log stays
/// quiet as it would against Polygon.
const MIXED_STATUS: &str = r#"{"ev":"status","status":"success","message":"subscribed to: AM.*"}"#;
/// Largest client message or frame accepted; larger ones end the connection. Subscribing 10,000
/// tickers in one message takes about 90 KB.
const MAX_MESSAGE: usize = 1 << 20;
/// Distinct topics one connection may hold.
const MAX_TOPICS: usize = 100_000;
/// Data frames before `WsFault::SlowClient` strikes.
const SLOW_CLIENT_AFTER_FRAMES: u64 = 6;
/// A TCP connection that has not completed the upgrade by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A frame the client does not take within this long ends the connection (a client that stopped
/// reading would otherwise pin the task forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing handshake we started may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CONNECTIONS_TEXT: &str =
    "Maximum number of websocket connections exceeded. You have been disconnected.";

/// The stream's settings, part of [`super::SimConfig`].
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// The start of the first bar replayed (bars start on the minute; a later start is rounded
    /// up to the next bar). `None`: three hours of trading time before the simulator starts
    /// (reaching back into earlier sessions when the market is closed), so a stream started at
    /// night or at a weekend still has bars to send. Bounded below by `SimConfig::data_from`.
    pub live_from: Option<DateTime<Utc>>,
    /// Pace of the replay, in bars per second for each subscribed symbol (finite, above 0). Once
    /// the replay catches up with the clock it follows the clock instead: a bar goes out only
    /// once its minute has ended (`e <= now`), never earlier.
    pub bars_per_sec: f64,
    /// When set to N, the bars whose minute number (`s / 60000`) is a multiple of N are sent
    /// twice: first a preliminary version (lower `v`, another `c`), then, at the end of the same
    /// frame (so possibly after later bars), the final one, equal to `series()`. At least 1.
    pub rebroadcast_every: Option<u64>,
    /// Consumed one per connection (at the upgrade), in order; once empty, connections behave.
    /// More can be added with [`super::Simulator::push_ws_faults`].
    pub faults: Vec<WsFault>,
    /// Port on the REST listener's address; 0 picks a free one.
    pub port: u16,
    /// Whether [`super::Simulator::ws_bars_sent`] records what went out (16 bytes a bar: the
    /// binary turns it off, since nothing can read it there and a long benchmark would grow it).
    pub record_bars: bool,
    /// A data frame is closed once it holds this many bytes (256 KiB by default; Polygon's
    /// frames are far smaller, a hostile server's far larger).
    pub frame_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            live_from: None,
            bars_per_sec: 20.0,
            rebroadcast_every: None,
            faults: Vec::new(),
            port: 0,
            record_bars: true,
            frame_bytes: MAX_FRAME_BYTES,
        }
    }
}

/// A one-connection failure, taken from the queue when a connection is upgraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFault {
    /// A normal connection; a placeholder that lets a later fault hit a later connection.
    None,
    /// After this many text frames (the `connected` status is the first), the TCP connection is
    /// dropped without a closing handshake, as when a network path dies. 0: before any frame.
    DisconnectAfterFrames(u64),
    /// After this many frames, nothing is sent and the socket is not read (so pings go
    /// unanswered) for `for_`; then the connection carries on where it was, sending what became
    /// due meanwhile. A client that gave up and closed finds the connection ended.
    Silence { after_frames: u64, for_: Duration },
    /// The `auth` message is answered `auth_failed` (Alpaca: error 402) whatever the key, then
    /// the connection is closed.
    AuthFailed,
    /// A correct `auth` is answered `auth_success`, then comes the `max_connections` status
    /// (Alpaca: error 406; another connection on the account is open) and the connection is
    /// closed. A wrong key gets `auth_failed` as usual.
    MaxConnections,
    /// Alpaca's dialect: after a few data frames, error 407 (slow client) and the connection
    /// is closed. Polygon's: a normal connection.
    SlowClient,
    /// Right after the subscription is confirmed, one frame of bars nobody asked for: `ZZZZ`
    /// and `Q` (never subscribed) and, for each subscribed symbol, bars stamped 1970-01-01 and
    /// 1969-12-31.
    Strays,
}

impl FromStr for WsFault {
    type Err = String;

    /// `none`, `disconnect:N`, `silence:N:MS`, `auth`, `maxconn`, `strays` or `slow`.
    fn from_str(s: &str) -> Result<WsFault, String> {
        let expected = "expected none, disconnect:N, silence:N:MS, auth, maxconn, strays or slow";
        let number = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("stream fault {s:?}: {what} must be a whole number"))
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(WsFault::None),
            ["auth"] => Ok(WsFault::AuthFailed),
            ["maxconn"] => Ok(WsFault::MaxConnections),
            ["strays"] => Ok(WsFault::Strays),
            ["slow"] => Ok(WsFault::SlowClient),
            ["disconnect", n] => Ok(WsFault::DisconnectAfterFrames(number(n, "N")?)),
            ["silence", n, ms] => Ok(WsFault::Silence {
                after_frames: number(n, "N")?,
                for_: Duration::from_millis(number(ms, "MS")?),
            }),
            _ => Err(format!("unknown stream fault {s:?} ({expected})")),
        }
    }
}

/// One upgraded connection as the simulator saw it.
#[derive(Debug, Clone)]
pub struct WsConnRecord {
    /// When the upgrade completed.
    pub at: Instant,
    /// Whether an `auth` message was accepted.
    pub authenticated: bool,
    /// The queued fault this connection consumed, if any.
    pub fault: Option<WsFault>,
    /// Topics subscribed at the end (or now), in the order first subscribed.
    pub topics: Vec<String>,
    /// Text frames sent (status frames included).
    pub frames_sent: u64,
    /// Final versions of bars sent (preliminary versions not counted).
    pub bars_sent: u64,
    /// When the connection ended, from the server's side; `None` while it is open.
    pub ended_at: Option<Instant>,
}

/// Refuses settings the stream cannot run with.
pub(crate) fn validate(cfg: &WsConfig) -> io::Result<()> {
    let invalid = |text: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            text.to_string(),
        ))
    };
    if !(cfg.bars_per_sec.is_finite() && cfg.bars_per_sec > 0.0) {
        return invalid("ws.bars_per_sec must be a finite number above 0");
    }
    if cfg.rebroadcast_every == Some(0) {
        return invalid("ws.rebroadcast_every must be at least 1");
    }
    Ok(())
}

/// What every connection shares: the settings, the live position of each symbol, the fault
/// queue and the records.
pub(crate) struct WsShared {
    api_key: String,
    /// The symbols that stream bars; a symbol's index here is its id.
    symbols: Vec<String>,
    /// `"sym":"AAPL"`, written once per symbol rather than escaped per bar.
    sym_json: Vec<Vec<u8>>,
    /// `"S":"AAPL"`, the same in Alpaca's dialect.
    alpaca_sym_json: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// Symbols whose bars are spoiled as `SymbolFault::InconsistentBars` spoils them on REST.
    spoiled: Vec<bool>,
    /// First and last bar start streamed (inclusive).
    lo_ms: i64,
    hi_ms: i64,
    rate: f64,
    rebroadcast_every: Option<i64>,
    record_bars: bool,
    frame_bytes: usize,
    pub(crate) faults: Mutex<VecDeque<WsFault>>,
    pub(crate) conns: Mutex<Vec<WsConnRecord>>,
    bars_sent: Mutex<Vec<(u32, i64)>>,
    live: Mutex<Vec<Option<SymLive>>>,
}

impl WsShared {
    /// `now_ms` places the default starting point.
    pub(crate) fn new(
        cfg: WsConfig,
        api_key: String,
        symbols: &[String],
        symbol_faults: &HashMap<String, SymbolFault>,
        data_from_ms: Option<i64>,
        data_to_ms: Option<i64>,
        now_ms: i64,
    ) -> WsShared {
        let mut streamed: Vec<String> = Vec::new();
        let mut ids = HashMap::new();
        let mut spoiled = Vec::new();
        for s in symbols {
            let fault = symbol_faults.get(s).copied();
            // REST answers 404/403 for these; the stream accepts the subscription and, like
            // Polygon for a ticker without trades, sends nothing.
            if matches!(fault, Some(SymbolFault::NotFound | SymbolFault::Forbidden))
                || ids.contains_key(s)
            {
                continue;
            }
            ids.insert(s.clone(), streamed.len() as u32);
            streamed.push(s.clone());
            spoiled.push(fault == Some(SymbolFault::InconsistentBars));
        }
        let sym_json = streamed
            .iter()
            .map(|s| format!("\"sym\":{}", json_str(s)).into_bytes())
            .collect();
        let alpaca_sym_json = streamed.iter().map(|s| alpaca::ws_sym_json(s)).collect();
        let live_from = cfg
            .live_from
            .map_or_else(|| default_live_from(now_ms), |d| d.timestamp_millis());
        let live = (0..streamed.len()).map(|_| None).collect();
        WsShared {
            api_key,
            symbols: streamed,
            sym_json,
            alpaca_sym_json,
            ids,
            spoiled,
            lo_ms: live_from.max(data_from_ms.unwrap_or(i64::MIN)),
            hi_ms: data_to_ms.unwrap_or(MAX_MS),
            rate: cfg.bars_per_sec,
            rebroadcast_every: cfg
                .rebroadcast_every
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            record_bars: cfg.record_bars,
            frame_bytes: cfg.frame_bytes.max(1),
            faults: Mutex::new(cfg.faults.into()),
            conns: Mutex::new(Vec::new()),
            bars_sent: Mutex::new(Vec::new()),
            live: Mutex::new(live),
        }
    }

    /// Where the replay starts (the first bar at or after it goes first).
    pub(crate) fn live_from_ms(&self) -> i64 {
        self.lo_ms
    }

    pub(crate) fn bars_sent(&self) -> Vec<(String, i64)> {
        lock(&self.bars_sent)
            .iter()
            .map(|&(id, t)| (self.symbols[id as usize].clone(), t))
            .collect()
    }

    fn update(&self, record: usize, f: impl FnOnce(&mut WsConnRecord)) {
        if let Some(r) = lock(&self.conns).get_mut(record) {
            f(r);
        }
    }
}

/// Three hours of trading time before `now_ms` (09:30-16:00 New York on weekdays, as the
/// series has bars), on the minute.
fn default_live_from(now_ms: i64) -> i64 {
    let now = now_ms - now_ms.rem_euclid(MINUTE_MS);
    let mut need = DEFAULT_BACKLOG_MINUTES * MINUTE_MS;
    let mut day = ny_date(now);
    let open_time = NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default();
    // Three weeks back is more than any run of closed days in the series (weekends only).
    for _ in 0..21 {
        if !is_weekend(day) {
            if let Some(open) = ny_ms(day, open_time) {
                let end = (open + 390 * MINUTE_MS).min(now);
                if end > open {
                    if end - open >= need {
                        return end - need;
                    }
                    need -= end - open;
                }
            }
        }
        match day.pred_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    now - DEFAULT_BACKLOG_MINUTES * MINUTE_MS
}

/// Where one symbol's stream stands, for the whole simulator. Its clock starts at the first
/// subscription to the symbol; from then on bar number k is due `k / rate` seconds later, but
/// never before its minute has ended by the wall clock.
struct SymLive {
    started: Instant,
    released: u64,
    grid: Grid,
    /// The first bar not yet live; `None` once the series is exhausted.
    next: Option<i64>,
}

impl SymLive {
    fn new(symbol: &str, lo: i64, hi: i64, now: Instant) -> SymLive {
        let mut grid = Grid::new(symbol, Timeframe::M1, lo, hi);
        let next = grid.next();
        SymLive {
            started: now,
            released: 0,
            grid,
            next,
        }
    }

    /// Advances to `now` and returns the start of the first bar not yet live (every bar before
    /// it has gone out, or went out while nobody listened).
    fn frontier(&mut self, rate: f64, now: Instant, now_ms: i64) -> i64 {
        // A float-to-int cast saturates, so an absurd rate cannot overflow.
        let due = (now.saturating_duration_since(self.started).as_secs_f64() * rate) as u64;
        while self.released < due {
            match self.next {
                Some(t) if t.saturating_add(MINUTE_MS) <= now_ms => {
                    self.next = self.grid.next();
                    self.released += 1;
                }
                _ => break,
            }
        }
        self.next.unwrap_or(i64::MAX)
    }
}

/// Today's running figures for `av`, `op` and `a`.
struct Day {
    /// `[start, end)` in epoch milliseconds: the New York day.
    start: i64,
    end: i64,
    open: i64,
    volume: u64,
    /// Σ vw × v, for the day's VWAP.
    pv: u128,
}

impl Day {
    const NONE: Day = Day {
        start: 0,
        end: 0,
        open: 0,
        volume: 0,
        pv: 0,
    };

    /// The day of the bar at `t`, with the bars before `t` counted in (a subscription that
    /// starts at noon still reports the day's accumulated volume).
    fn at(symbol: &str, gen: &Generator, t: i64) -> Day {
        let Some((start, last)) = ny_day_bounds(ny_date(t)) else {
            return Day {
                start: t,
                end: t + 1,
                open: gen.bar(t).o,
                ..Day::NONE
            };
        };
        let mut day = Day {
            start,
            end: last + 1,
            open: gen.bar(t).o,
            ..Day::NONE
        };
        let mut first = true;
        for u in Grid::new(symbol, Timeframe::M1, start, t - 1) {
            let b = gen.bar(u);
            if first {
                day.open = b.o;
                first = false;
            }
            day.add(volume(&b), b.vw);
        }
        day
    }

    fn add(&mut self, v: u64, vw: i64) {
        self.volume += v;
        self.pv += u128::from(v) * u128::from(vw.unsigned_abs());
    }

    /// The day's VWAP with one more bar of `v` at `vw` counted in.
    fn vwap_with(&self, v: u64, vw: i64) -> i64 {
        let volume = self.volume + v;
        if volume == 0 {
            return vw;
        }
        let pv = self.pv + u128::from(v) * u128::from(vw.unsigned_abs());
        i64::try_from(pv / u128::from(volume)).unwrap_or(vw)
    }
}

/// The stream's `v`: Polygon's stream sends integral volumes, so the REST side's odd forms
/// (`.0`, fractions, scientific) become the rounded integer the database would hold.
fn volume(b: &RawBar) -> u64 {
    u64::try_from(b.v.rounded()).unwrap_or(0)
}

/// A preliminary version of a bar: fewer shares, and a close that later trades moved (still
/// within the bar's high and low, so the preliminary is a valid bar too).
fn preliminary(b: &RawBar, v: u64) -> (u64, i64) {
    let v = if v > 1 { v - (v / 4).max(1) } else { v + 1 };
    let c = [b.o, b.vw, b.h, b.l]
        .into_iter()
        .find(|p| *p != b.c)
        .unwrap_or(b.c);
    (v, c)
}

/// The values of one `AM` event besides the bar's own.
struct Am {
    v: u64,
    c: i64,
    av: u64,
    op: i64,
    a: i64,
}

/// `{"ev":"AM","sym":…,"v":…,"av":…,"op":…,"vw":…,"o":…,"c":…,"h":…,"l":…,"a":…,"z":…,"s":…,"e":…}`,
/// Polygon's key order.
fn write_am(buf: &mut Vec<u8>, sym_json: &[u8], b: &RawBar, am: &Am) {
    buf.extend_from_slice(b"{\"ev\":\"AM\",");
    buf.extend_from_slice(sym_json);
    buf.extend_from_slice(b",\"v\":");
    push_u64(buf, am.v);
    buf.extend_from_slice(b",\"av\":");
    push_u64(buf, am.av);
    buf.extend_from_slice(b",\"op\":");
    push_price(buf, am.op);
    buf.extend_from_slice(b",\"vw\":");
    push_price(buf, b.vw);
    buf.extend_from_slice(b",\"o\":");
    push_price(buf, b.o);
    buf.extend_from_slice(b",\"c\":");
    push_price(buf, am.c);
    buf.extend_from_slice(b",\"h\":");
    push_price(buf, b.h);
    buf.extend_from_slice(b",\"l\":");
    push_price(buf, b.l);
    buf.extend_from_slice(b",\"a\":");
    push_price(buf, am.a);
    buf.extend_from_slice(b",\"z\":");
    // Average trade size; a bar without a trade count reports its volume as one trade.
    push_u64(buf, b.n.map_or(am.v, |n| am.v / n.max(1)));
    buf.extend_from_slice(b",\"s\":");
    push_i64(buf, b.t);
    buf.extend_from_slice(b",\"e\":");
    push_i64(buf, b.t + MINUTE_MS);
    buf.push(b'}');
}

/// A bar event in the connection's dialect (`kind`: Alpaca's `b` or `u`).
fn write_event(
    buf: &mut Vec<u8>,
    dialect: Dialect,
    kind: u8,
    sym_json: &[u8],
    b: &RawBar,
    am: &Am,
) {
    match dialect {
        Dialect::Polygon => write_am(buf, sym_json, b, am),
        Dialect::Alpaca => alpaca::write_ws_bar(buf, kind, sym_json, b, am.v, am.c),
    }
}

/// One `status` event.
fn status(status: &str, message: &str) -> String {
    format!(
        "{{\"ev\":\"status\",\"status\":{},\"message\":{}}}",
        json_str(status),
        json_str(message)
    )
}

fn frame(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}

/// One connection's position in one symbol's stream.
struct Cursor {
    gen: Generator,
    grid: Grid,
    next: Option<i64>,
    /// The symbol's live frontier at the last tick: bars before it are due.
    frontier: i64,
    day: Day,
}

impl Cursor {
    fn new(symbol: &str, from: i64, hi: i64) -> Cursor {
        let mut grid = Grid::new(symbol, Timeframe::M1, from, hi);
        let next = grid.next();
        Cursor {
            gen: Generator::new(symbol, Timeframe::M1),
            grid,
            next,
            frontier: from,
            day: Day::NONE,
        }
    }

    fn due(&self) -> Option<i64> {
        self.next.filter(|t| *t < self.frontier)
    }
}

/// A frame ready to go, with the final bars it carries.
struct FrameOut {
    text: String,
    bars: Vec<(u32, i64)>,
}

/// The connection ended (or must end now, without a closing handshake).
struct Ended;

type Ws = WebSocketStream<TcpStream>;

#[derive(Deserialize)]
struct AlpacaMessage {
    action: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    bars: Option<Vec<String>>,
    #[serde(default, rename = "updatedBars")]
    updated_bars: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ClientMessage {
    action: String,
    #[serde(default)]
    params: Option<String>,
}

struct Conn {
    dialect: Dialect,
    shared: Arc<WsShared>,
    record: usize,
    fault: Option<WsFault>,
    frames: u64,
    silenced: bool,
    authenticated: bool,
    /// Distinct topics in subscription order, and the same as a set.
    topics: Vec<String>,
    topic_set: HashSet<String>,
    /// By symbol id, so frames list symbols in a stable order.
    cursors: BTreeMap<u32, Cursor>,
    data_frames: u64,
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<WsShared>) {
    super::server::accept_each(listener, "stream ", move |stream| {
        serve(Arc::clone(&shared), stream)
    })
    .await
}

/// Whose conversation a connection speaks, by the path it upgraded on: Polygon's `/stocks`, or
/// Alpaca's `/v2/{feed}`. Both dialects stream the same series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Polygon,
    Alpaca,
}

/// The upgrade serves `/stocks` (Polygon) and `/v2/{feed}` (Alpaca); anything else is a 404.
// tungstenite's `Callback` dictates the error type, large as it is.
#[allow(clippy::result_large_err)]
fn route(
    req: &Request,
    resp: Response,
    dialect: &mut Option<Dialect>,
) -> Result<Response, ErrorResponse> {
    let path = req.uri().path();
    if path == PATH {
        *dialect = Some(Dialect::Polygon);
        return Ok(resp);
    }
    if alpaca::is_stream_path(path) {
        *dialect = Some(Dialect::Alpaca);
        return Ok(resp);
    }
    let mut refusal = ErrorResponse::new(Some(format!(
        "not found: the stream is at {PATH} (Polygon) or /v2/iex, /v2/sip (Alpaca)"
    )));
    *refusal.status_mut() = http::StatusCode::NOT_FOUND;
    Err(refusal)
}

async fn serve(shared: Arc<WsShared>, stream: TcpStream) {
    // Frames are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut dialect = None;
    // tungstenite's `Callback` dictates the error type, large as it is.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| route(req, resp, &mut dialect);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    // Not HTTP, not an upgrade, a wrong path or a client that never finishes: not a connection
    // attempt on the stream, so nothing is recorded and no fault is consumed.
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!("sim stream: upgrade refused: {e}");
            return;
        }
        Err(_) => return,
    };
    let dialect = dialect.unwrap_or(Dialect::Polygon);
    let fault = lock(&shared.faults).pop_front();
    let record = {
        let mut conns = lock(&shared.conns);
        conns.push(WsConnRecord {
            at: Instant::now(),
            authenticated: false,
            fault: fault.clone(),
            topics: Vec::new(),
            frames_sent: 0,
            bars_sent: 0,
            ended_at: None,
        });
        conns.len() - 1
    };
    tracing::debug!(record, fault = ?fault, "sim stream: connection");
    let mut conn = Conn {
        dialect,
        shared: Arc::clone(&shared),
        record,
        fault,
        frames: 0,
        silenced: false,
        authenticated: false,
        topics: Vec::new(),
        topic_set: HashSet::new(),
        cursors: BTreeMap::new(),
        data_frames: 0,
    };
    let _ = conn.run(&mut ws).await;
    shared.update(record, |r| r.ended_at = Some(Instant::now()));
    // Dropping the stream closes the socket without a closing handshake; the paths that owe
    // the client one (auth failures) have done it already.
}

impl Conn {
    async fn run(&mut self, ws: &mut Ws) -> Result<(), Ended> {
        self.checkpoint().await?;
        let connected = match self.dialect {
            Dialect::Polygon => status("connected", "Connected Successfully"),
            Dialect::Alpaca => alpaca::ws_success("connected"),
        };
        self.send(ws, frame(&[connected]), &[]).await?;
        let mut tick = tokio::time::interval(TICK);
        // After a silence or a slow write, one catch-up tick rather than a burst of them.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    // Closed, reset, or a protocol violation (an oversized message, an unmasked
                    // frame, invalid UTF-8 in a text frame): the connection is over.
                    None | Some(Err(_)) => return Ok(()),
                    Some(Ok(Message::Text(text))) => self.on_text(ws, text.as_str()).await?,
                    Some(Ok(Message::Binary(_))) => {
                        let e = status("error", "binary messages are not supported");
                        self.send(ws, frame(&[e]), &[]).await?;
                    }
                    // Pings are answered by tungstenite as they are read; a close is answered
                    // the same way and the next read ends the loop.
                    Some(Ok(_)) => {}
                },
                _ = tick.tick(), if self.authenticated && !self.cursors.is_empty() => {
                    self.stream(ws).await?;
                }
            }
        }
    }

    /// Sends one text frame, counts it, records the bars it carries, then applies the
    /// connection's fault if this frame triggers it.
    async fn send(&mut self, ws: &mut Ws, text: String, bars: &[(u32, i64)]) -> Result<(), Ended> {
        match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
            Ok(Ok(())) => {}
            _ => return Err(Ended),
        }
        self.frames += 1;
        let frames = self.frames;
        self.shared.update(self.record, |r| {
            r.frames_sent = frames;
            r.bars_sent += bars.len() as u64;
        });
        if self.shared.record_bars && !bars.is_empty() {
            lock(&self.shared.bars_sent).extend_from_slice(bars);
        }
        self.checkpoint().await
    }

    /// The frame-counted faults: called before the first frame and after every frame.
    async fn checkpoint(&mut self) -> Result<(), Ended> {
        match self.fault {
            Some(WsFault::DisconnectAfterFrames(n)) if self.frames >= n => Err(Ended),
            Some(WsFault::Silence { after_frames, for_ })
                if !self.silenced && self.frames >= after_frames =>
            {
                self.silenced = true;
                // Neither reading nor writing: pings queue up unanswered in the socket.
                tokio::time::sleep(for_).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends the refusal, then closes with a closing handshake, as Polygon does.
    async fn refuse(&mut self, ws: &mut Ws, event: String, reason: &str) -> Result<(), Ended> {
        self.send(ws, frame(&[event]), &[]).await?;
        let close = CloseFrame {
            code: CloseCode::Policy,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
        // Reading on lets tungstenite take the client's close reply, so the client sees a
        // completed handshake rather than a reset.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        Err(Ended)
    }

    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> Result<(), Ended> {
        if self.dialect == Dialect::Alpaca {
            return self.on_alpaca_text(ws, text).await;
        }
        let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
            let e = status(
                "error",
                "invalid message: expected {\"action\":…,\"params\":…}",
            );
            return self.send(ws, frame(&[e]), &[]).await;
        };
        let params = message.params.unwrap_or_default();
        match message.action.as_str() {
            "auth" => {
                if self.fault == Some(WsFault::AuthFailed) || params != self.shared.api_key {
                    let e = status("auth_failed", "authentication failed");
                    return self.refuse(ws, e, "authentication failed").await;
                }
                self.authenticated = true;
                self.shared.update(self.record, |r| r.authenticated = true);
                let ok = status("auth_success", "authenticated");
                self.send(ws, frame(&[ok]), &[]).await?;
                // The limit is per account, so it can only be told once the key is known.
                if self.fault == Some(WsFault::MaxConnections) {
                    let e = status("max_connections", MAX_CONNECTIONS_TEXT);
                    return self.refuse(ws, e, "max connections").await;
                }
                Ok(())
            }
            "subscribe" | "unsubscribe" if !self.authenticated => {
                let e = status("error", "not authorized: send auth first");
                self.send(ws, frame(&[e]), &[]).await
            }
            "subscribe" => {
                let replies = self.subscribe(&params);
                self.send(ws, frame(&replies), &[]).await?;
                if self.fault == Some(WsFault::Strays) {
                    let strays = self.strays();
                    self.send(ws, frame(&strays), &[]).await?;
                }
                Ok(())
            }
            "unsubscribe" => {
                let replies = self.unsubscribe(&params);
                self.send(ws, frame(&replies), &[]).await
            }
            other => {
                let action = crate::text::excerpt(other, 64);
                let e = status("error", &format!("unknown action: {action}"));
                self.send(ws, frame(&[e]), &[]).await
            }
        }
    }

    /// A client message in Alpaca's dialect: `auth` with `key` and `secret` (both the
    /// simulator's key), then `subscribe` with `bars` and `updatedBars`.
    async fn on_alpaca_text(&mut self, ws: &mut Ws, text: &str) -> Result<(), Ended> {
        let Ok(m) = serde_json::from_str::<AlpacaMessage>(text) else {
            let e = alpaca::ws_error(400, "invalid syntax");
            return self.send(ws, frame(&[e]), &[]).await;
        };
        match m.action.as_str() {
            "auth" => {
                let key = self.shared.api_key.as_str();
                let good = m.key.as_deref() == Some(key) && m.secret.as_deref() == Some(key);
                if self.fault == Some(WsFault::AuthFailed) || !good {
                    let e = alpaca::ws_error(402, "auth failed");
                    return self.refuse(ws, e, "auth failed").await;
                }
                self.authenticated = true;
                self.shared.update(self.record, |r| r.authenticated = true);
                self.send(ws, frame(&[alpaca::ws_success("authenticated")]), &[])
                    .await?;
                if self.fault == Some(WsFault::MaxConnections) {
                    let e = alpaca::ws_error(406, "connection limit exceeded");
                    return self.refuse(ws, e, "connection limit exceeded").await;
                }
                Ok(())
            }
            "subscribe" if !self.authenticated => {
                let e = alpaca::ws_error(401, "not authenticated");
                self.send(ws, frame(&[e]), &[]).await
            }
            "subscribe" => {
                // Bars and corrected bars of the same symbols: one topic each here.
                let mut params: Vec<String> = m.bars.unwrap_or_default();
                params.extend(m.updated_bars.unwrap_or_default());
                let topics: Vec<String> = params.iter().map(|s| format!("AM.{s}")).collect();
                self.subscribe(&topics.join(","));
                let subscribed: Vec<&str> = self
                    .topics
                    .iter()
                    .filter_map(|t| t.strip_prefix("AM."))
                    .collect();
                let reply = alpaca::ws_subscription(&subscribed);
                self.send(ws, frame(&[reply]), &[]).await?;
                if self.fault == Some(WsFault::Strays) {
                    let strays = self.strays();
                    self.send(ws, frame(&strays), &[]).await?;
                }
                Ok(())
            }
            other => {
                let action = crate::text::excerpt(other, 64);
                let e = alpaca::ws_error(400, &format!("invalid syntax: unknown action {action}"));
                self.send(ws, frame(&[e]), &[]).await
            }
        }
    }

    /// The bars of [`WsFault::Strays`].
    fn strays(&self) -> Vec<String> {
        let now = Utc::now().timestamp_millis();
        let recent = now - now.rem_euclid(MINUTE_MS) - 2 * MINUTE_MS;
        let bar = |sym: &str, t: i64| {
            let raw = RawBar {
                t,
                o: 100_0000,
                h: 101_0000,
                l: 99_0000,
                c: 100_5000,
                vw: 100_2000,
                v: super::series::Volume::Bare(100),
                n: Some(3),
            };
            let am = Am {
                v: 100,
                c: raw.c,
                av: 100,
                op: raw.o,
                a: raw.vw,
            };
            let mut buf = Vec::new();
            match self.dialect {
                Dialect::Polygon => {
                    let sym = format!("\"sym\":{}", json_str(sym));
                    write_am(&mut buf, sym.as_bytes(), &raw, &am);
                }
                Dialect::Alpaca => {
                    let sym = alpaca::ws_sym_json(sym);
                    alpaca::write_ws_bar(&mut buf, b'b', &sym, &raw, am.v, raw.c);
                }
            }
            String::from_utf8(buf).unwrap_or_default()
        };
        let mut out = vec![bar("ZZZZ", recent), bar("Q", recent)];
        for topic in &self.topics {
            if let Some(sym) = topic.strip_prefix("AM.").filter(|s| *s != "*") {
                out.push(bar(sym, 0));
                out.push(bar(sym, -MINUTE_MS));
            }
        }
        out
    }

    fn subscribe(&mut self, params: &str) -> Vec<String> {
        let mut replies = Vec::new();
        for topic in params.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Err(e) = check_topic(topic) {
                replies.push(e);
                continue;
            }
            if !self.topic_set.contains(topic) {
                if self.topic_set.len() >= MAX_TOPICS {
                    replies.push(status(
                        "error",
                        &format!("too many topics (at most {MAX_TOPICS} a connection)"),
                    ));
                    break;
                }
                self.topic_set.insert(topic.to_string());
                self.topics.push(topic.to_string());
            }
            replies.push(status("success", &format!("subscribed to: {topic}")));
        }
        if replies.is_empty() {
            replies.push(status("error", "no topics given"));
        }
        self.sync_cursors();
        replies
    }

    fn unsubscribe(&mut self, params: &str) -> Vec<String> {
        let mut replies = Vec::new();
        for topic in params.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Err(e) = check_topic(topic) {
                replies.push(e);
                continue;
            }
            if self.topic_set.remove(topic) {
                self.topics.retain(|t| t != topic);
            }
            replies.push(status("success", &format!("unsubscribed to: {topic}")));
        }
        if replies.is_empty() {
            replies.push(status("error", "no topics given"));
        }
        self.sync_cursors();
        replies
    }

    /// Makes the cursors match the topics: a symbol newly subscribed joins its stream where it
    /// stands now.
    fn sync_cursors(&mut self) {
        let shared = Arc::clone(&self.shared);
        let wanted: HashSet<u32> = if self.topic_set.contains("AM.*") {
            (0..shared.symbols.len() as u32).collect()
        } else {
            self.topics
                .iter()
                .filter_map(|t| t.strip_prefix("AM."))
                .filter_map(|s| shared.ids.get(s).copied())
                .collect()
        };
        self.cursors.retain(|id, _| wanted.contains(id));
        let new: Vec<u32> = wanted
            .into_iter()
            .filter(|id| !self.cursors.contains_key(id))
            .collect();
        if !new.is_empty() {
            let (now, now_ms) = (Instant::now(), Utc::now().timestamp_millis());
            let mut live = lock(&shared.live);
            for id in new {
                let symbol = &shared.symbols[id as usize];
                let sym = live[id as usize]
                    .get_or_insert_with(|| SymLive::new(symbol, shared.lo_ms, shared.hi_ms, now));
                let from = sym.frontier(shared.rate, now, now_ms);
                self.cursors
                    .insert(id, Cursor::new(symbol, from, shared.hi_ms));
            }
        }
        let topics = self.topics.clone();
        self.shared.update(self.record, |r| r.topics = topics);
    }

    /// Sends what became due since the last tick.
    async fn stream(&mut self, ws: &mut Ws) -> Result<(), Ended> {
        {
            let shared = &self.shared;
            let (now, now_ms) = (Instant::now(), Utc::now().timestamp_millis());
            let mut live = lock(&shared.live);
            for (id, cursor) in &mut self.cursors {
                if let Some(sym) = live[*id as usize].as_mut() {
                    cursor.frontier = sym.frontier(shared.rate, now, now_ms);
                }
            }
        }
        for _ in 0..MAX_FRAMES_PER_TICK {
            let Some(out) = self.build_frame() else {
                break;
            };
            self.send(ws, out.text, &out.bars).await?;
        }
        if self.dialect == Dialect::Alpaca
            && self.fault == Some(WsFault::SlowClient)
            && self.data_frames >= SLOW_CLIENT_AFTER_FRAMES
        {
            self.fault = None;
            let e = alpaca::ws_error(407, "slow client");
            return self.refuse(ws, e, "slow client").await;
        }
        Ok(())
    }

    /// The next frame of due bars, or `None` when none are due.
    fn build_frame(&mut self) -> Option<FrameOut> {
        let shared = Arc::clone(&self.shared);
        let mut buf = Vec::with_capacity(4096);
        buf.push(b'[');
        let mut first = true;
        let mut sep = |buf: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                buf.push(b',');
            }
        };
        let dialect = self.dialect;
        if dialect == Dialect::Polygon
            && self.data_frames % MIXED_STATUS_EVERY == MIXED_STATUS_EVERY - 1
        {
            sep(&mut buf);
            buf.extend_from_slice(MIXED_STATUS.as_bytes());
        }
        let mut bars = Vec::new();
        let mut finals: Vec<(u32, RawBar, Am)> = Vec::new();
        'fill: for (&id, cursor) in &mut self.cursors {
            let symbol = &shared.symbols[id as usize];
            let sym_json = match dialect {
                Dialect::Polygon => &shared.sym_json[id as usize],
                Dialect::Alpaca => &shared.alpaca_sym_json[id as usize],
            };
            while let Some(t) = cursor.due() {
                if buf.len() >= shared.frame_bytes {
                    break 'fill;
                }
                cursor.next = cursor.grid.next();
                let mut bar = cursor.gen.bar(t);
                if shared.spoiled[id as usize] && is_inconsistent(t) {
                    std::mem::swap(&mut bar.h, &mut bar.l);
                }
                if !(cursor.day.start <= t && t < cursor.day.end) {
                    cursor.day = Day::at(symbol, &cursor.gen, t);
                }
                let day = &mut cursor.day;
                let v = volume(&bar);
                let again = shared
                    .rebroadcast_every
                    .is_some_and(|n| (t / MINUTE_MS).rem_euclid(n) == 0);
                if again {
                    let (pv, pc) = preliminary(&bar, v);
                    let am = Am {
                        v: pv,
                        c: pc,
                        av: day.volume + pv,
                        op: day.open,
                        a: day.vwap_with(pv, bar.vw),
                    };
                    sep(&mut buf);
                    write_event(&mut buf, dialect, b'b', sym_json, &bar, &am);
                }
                let am = Am {
                    v,
                    c: bar.c,
                    av: day.volume + v,
                    op: day.open,
                    a: day.vwap_with(v, bar.vw),
                };
                day.add(v, bar.vw);
                if again {
                    // The final version ends the frame: later than the preliminary, possibly
                    // after newer bars, but never split from it by a frame-counted fault.
                    finals.push((id, bar, am));
                } else {
                    sep(&mut buf);
                    write_event(&mut buf, dialect, b'b', sym_json, &bar, &am);
                    bars.push((id, t));
                }
            }
        }
        for (id, bar, am) in finals {
            sep(&mut buf);
            // Alpaca sends a bar's correction as `u`.
            let sym_json = match dialect {
                Dialect::Polygon => &shared.sym_json[id as usize],
                Dialect::Alpaca => &shared.alpaca_sym_json[id as usize],
            };
            write_event(&mut buf, dialect, b'u', sym_json, &bar, &am);
            bars.push((id, bar.t));
        }
        if bars.is_empty() {
            return None;
        }
        buf.push(b']');
        self.data_frames += 1;
        // Always valid: ASCII numbers and keys, and symbols escaped by serde_json.
        let text = String::from_utf8(buf).ok()?;
        Some(FrameOut { text, bars })
    }
}

/// `CHANNEL.SYMBOL` (`AM.AAPL`, `AM.*`, `T.MSFT`): channels other than `AM` are accepted and
/// never carry data, as a real feed accepts a ticker that does not trade.
fn check_topic(topic: &str) -> Result<(), String> {
    let valid = topic.split_once('.').is_some_and(|(channel, symbol)| {
        (1..=8).contains(&channel.len())
            && channel.bytes().all(|b| b.is_ascii_alphanumeric())
            && (1..=32).contains(&symbol.len())
            && symbol.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    });
    if valid {
        Ok(())
    } else {
        let shown = crate::text::excerpt(topic, 64);
        Err(status("error", &format!("invalid topic: {shown}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::series;
    use rust_decimal::Decimal;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn faults_parse() {
        assert_eq!("none".parse(), Ok(WsFault::None));
        assert_eq!("auth".parse(), Ok(WsFault::AuthFailed));
        assert_eq!("maxconn".parse(), Ok(WsFault::MaxConnections));
        assert_eq!(
            "disconnect:3".parse(),
            Ok(WsFault::DisconnectAfterFrames(3))
        );
        assert_eq!(
            "silence:4:1500".parse(),
            Ok(WsFault::Silence {
                after_frames: 4,
                for_: Duration::from_millis(1500)
            })
        );
        for bad in [
            "",
            "disconnect",
            "disconnect:x",
            "silence:1",
            "silence:1:2:3",
            "auth:1",
        ] {
            assert!(bad.parse::<WsFault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = WsConfig {
                bars_per_sec: rate,
                ..WsConfig::default()
            };
            assert!(validate(&cfg).is_err(), "{rate}");
        }
        let cfg = WsConfig {
            rebroadcast_every: Some(0),
            ..WsConfig::default()
        };
        assert!(validate(&cfg).is_err());
        assert!(validate(&WsConfig::default()).is_ok());
    }

    #[test]
    fn default_start_is_three_trading_hours_back() {
        let ms = |s: &str| utc(s).timestamp_millis();
        // Wednesday 2024-01-03 15:00 New York (20:00Z): 12:00 the same day.
        assert_eq!(
            default_live_from(ms("2024-01-03T20:00:30Z")),
            ms("2024-01-03T17:00:00Z")
        );
        // Wednesday 10:30 New York: an hour today, two from Tuesday's close (16:00 = 21:00Z).
        assert_eq!(
            default_live_from(ms("2024-01-03T15:30:00Z")),
            ms("2024-01-02T19:00:00Z")
        );
        // Sunday: Friday's last three hours.
        assert_eq!(
            default_live_from(ms("2024-01-07T12:00:00Z")),
            ms("2024-01-05T18:00:00Z")
        );
    }

    #[test]
    fn am_events_carry_the_series_values() {
        let from = utc("2024-01-02T14:30:00Z");
        let want = series::series(
            "AAPL",
            Timeframe::M1,
            from,
            from + chrono::Duration::hours(1),
        );
        let gen = Generator::new("AAPL", Timeframe::M1);
        let mut day = Day::at("AAPL", &gen, want[0].t_ms);
        let mut buf = b"[".to_vec();
        for (i, w) in want.iter().enumerate() {
            let bar = gen.bar(w.t_ms);
            let v = volume(&bar);
            let am = Am {
                v,
                c: bar.c,
                av: day.volume + v,
                op: day.open,
                a: day.vwap_with(v, bar.vw),
            };
            day.add(v, bar.vw);
            if i > 0 {
                buf.push(b',');
            }
            write_am(&mut buf, br#""sym":"AAPL""#, &bar, &am);
        }
        buf.push(b']');
        let events: Vec<serde_json::Value> = serde_json::from_slice(&buf).unwrap();
        let dec = |v: &serde_json::Value| v.to_string().parse::<Decimal>().unwrap();
        let mut av = 0;
        for (e, w) in events.iter().zip(&want) {
            assert_eq!(e["ev"], "AM");
            assert_eq!(e["s"].as_i64(), Some(w.t_ms));
            assert_eq!(e["e"].as_i64(), Some(w.t_ms + 60_000));
            assert_eq!(dec(&e["o"]), w.open);
            assert_eq!(dec(&e["h"]), w.high);
            assert_eq!(dec(&e["l"]), w.low);
            assert_eq!(dec(&e["c"]), w.close);
            assert_eq!(dec(&e["vw"]), w.vw);
            assert_eq!(e["v"].as_i64(), Some(w.volume));
            av += w.volume;
            assert_eq!(e["av"].as_i64(), Some(av));
            assert_eq!(dec(&e["op"]), want[0].open);
        }
        // A subscription that starts later in the day still counts the morning in.
        let later = Day::at("AAPL", &gen, want[10].t_ms);
        let morning: i64 = want[..10].iter().map(|w| w.volume).sum();
        assert_eq!(later.volume as i64, morning);
        assert_eq!(later.open, gen.bar(want[0].t_ms).o);
    }

    #[test]
    fn preliminaries_differ_and_stay_valid() {
        let gen = Generator::new("MSFT", Timeframe::M1);
        let from = utc("2024-01-02T14:30:00Z").timestamp_millis();
        for t in Grid::new("MSFT", Timeframe::M1, from, from + 390 * MINUTE_MS) {
            let b = gen.bar(t);
            let (v, c) = preliminary(&b, volume(&b));
            assert_ne!(v, volume(&b));
            assert!(b.l <= c && c <= b.h);
        }
    }

    #[test]
    fn topics_are_checked() {
        for good in ["AM.AAPL", "AM.*", "T.BRK.B", "AM.I:SPX"] {
            assert!(check_topic(good).is_ok(), "{good}");
        }
        let long = format!("AM.{}", "A".repeat(40));
        for bad in ["AAPL", ".AAPL", "AM.", "A M.X", "AM.\u{0}", long.as_str()] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        let e = check_topic(&"\u{7}".repeat(1000)).unwrap_err();
        assert!(e.len() < 1000, "{e}");
    }

    #[test]
    fn the_live_position_follows_rate_and_clock() {
        let lo = utc("2024-01-02T14:30:00Z").timestamp_millis();
        let start = Instant::now();
        let mut live = SymLive::new("AAPL", lo, MAX_MS, start);
        let first = live.next.unwrap();
        assert_eq!(live.frontier(10.0, start, i64::MAX), first);
        // Two seconds at 10 a second: 20 bars are live.
        let f = live.frontier(10.0, start + Duration::from_secs(2), i64::MAX);
        let bars: Vec<i64> = Grid::new("AAPL", Timeframe::M1, lo, MAX_MS)
            .take(30)
            .collect();
        assert_eq!(f, bars[20]);
        // A bar whose minute has not ended by the wall clock waits, whatever the pace.
        let f = live.frontier(
            10.0,
            start + Duration::from_secs(60),
            bars[25] + MINUTE_MS - 1,
        );
        assert_eq!(f, bars[25]);
    }
}
