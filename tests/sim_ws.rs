//! The simulator's Polygon WebSocket stream, through a real tokio-tungstenite client: the
//! handshake, live bars against `series()`, re-broadcasts, the per-connection faults, the
//! records, hostile input and the binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use mdingest::domain::Timeframe;
use mdingest::sim::{self, SimBar, SimConfig, Simulator, WsConfig, WsFault};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const KEY: &str = "test-key";
/// A Tuesday's session open (09:30 New York): replays start here, far in the past, so the pace
/// alone decides when bars come.
const LIVE_FROM: &str = "2024-01-02T14:30:00Z";

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cfg(ws: WsConfig) -> SimConfig {
    SimConfig {
        api_key: KEY.to_string(),
        ws,
        ..SimConfig::default()
    }
}

fn ws(bars_per_sec: f64) -> WsConfig {
    WsConfig {
        live_from: Some(utc(LIVE_FROM)),
        bars_per_sec,
        ..WsConfig::default()
    }
}

/// One event as a client must read it: prices kept as their wire text.
#[derive(Debug, Deserialize)]
struct Event {
    ev: String,
    status: Option<String>,
    message: Option<String>,
    sym: Option<String>,
    v: Option<Box<RawValue>>,
    av: Option<u64>,
    vw: Option<Box<RawValue>>,
    o: Option<Box<RawValue>>,
    c: Option<Box<RawValue>>,
    h: Option<Box<RawValue>>,
    l: Option<Box<RawValue>>,
    s: Option<i64>,
    e: Option<i64>,
}

impl Event {
    fn is_bar(&self) -> bool {
        self.ev == "AM"
    }

    fn key(&self) -> (String, i64) {
        (self.sym.clone().unwrap(), self.s.unwrap())
    }
}

fn dec(raw: &Option<Box<RawValue>>) -> Decimal {
    let raw = raw.as_ref().expect("field present");
    Decimal::from_str(raw.get()).unwrap_or_else(|e| panic!("{}: {e}", raw.get()))
}

/// Whether a streamed bar carries exactly the series' values.
fn same(e: &Event, want: &SimBar) -> bool {
    e.s == Some(want.t_ms)
        && e.e == Some(want.t_ms + 60_000)
        && dec(&e.o) == want.open
        && dec(&e.h) == want.high
        && dec(&e.l) == want.low
        && dec(&e.c) == want.close
        && dec(&e.vw) == want.vw
        // The stream's volume is the integer the database holds.
        && e.v.as_ref().map(|v| v.get().to_string()) == Some(want.volume.to_string())
}

/// Every minute bar of `symbol` from `LIVE_FROM` on, by start.
fn series_from(symbol: &str, days: i64) -> Vec<SimBar> {
    let from = utc(LIVE_FROM);
    sim::series(
        symbol,
        Timeframe::M1,
        from,
        from + chrono::Duration::days(days),
    )
}

async fn connect(sim: &Simulator) -> Client {
    connect_async(sim.ws_url()).await.unwrap().0
}

/// The next message, or `None` after `within`.
async fn next_within(c: &mut Client, within: Duration) -> Option<Message> {
    match tokio::time::timeout(within, c.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(other) => panic!("stream ended: {other:?}"),
        Err(_) => None,
    }
}

/// The next text frame, parsed; pings and pongs are skipped.
async fn frame(c: &mut Client) -> Vec<Event> {
    loop {
        match next_within(c, Duration::from_secs(5)).await {
            Some(Message::Text(t)) => {
                return serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{e}: {t}"))
            }
            Some(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn statuses(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.ev == "status")
        .map(|e| (e.status.clone().unwrap(), e.message.clone().unwrap()))
        .collect()
}

fn one_status(events: &[Event]) -> (String, String) {
    assert_eq!(events.len(), 1, "{events:?}");
    statuses(events).pop().unwrap()
}

async fn send(c: &mut Client, text: &str) {
    c.send(Message::text(text.to_string())).await.unwrap();
}

/// connected → auth → subscribe, checking each answer.
async fn handshake(c: &mut Client, topics: &str) {
    let (status, message) = one_status(&frame(c).await);
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("connected", "Connected Successfully")
    );
    send(c, &format!(r#"{{"action":"auth","params":"{KEY}"}}"#)).await;
    assert_eq!(
        one_status(&frame(c).await),
        ("auth_success".to_string(), "authenticated".to_string())
    );
    send(
        c,
        &format!(r#"{{"action":"subscribe","params":"{topics}"}}"#),
    )
    .await;
    let want: Vec<(String, String)> = topics
        .split(',')
        .map(|t| ("success".to_string(), format!("subscribed to: {t}")))
        .collect();
    assert_eq!(statuses(&frame(c).await), want);
}

/// How a stream that the server dropped ends: an error or the end, but no close frame.
async fn expect_dropped(c: &mut Client) {
    match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(m))) => panic!("expected the connection to drop, got {m:?}"),
        Err(_) => panic!("the connection was not dropped"),
    }
}

/// The closing handshake after a refusal: a close frame, then the end.
async fn expect_closed(c: &mut Client) {
    match next_within(c, Duration::from_secs(5)).await {
        Some(Message::Close(Some(_))) => {}
        other => panic!("expected a close frame, got {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
        Ok(None) => {}
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_then_bars_equal_to_the_series() {
    let sim = Simulator::start(cfg(ws(100.0))).await.unwrap();
    assert!(
        sim.ws_url().starts_with("ws://127.0.0.1:"),
        "{}",
        sim.ws_url()
    );
    assert!(sim.ws_url().ends_with("/stocks"));
    assert_eq!(sim.ws_live_from(), utc(LIVE_FROM));
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL,AM.MSFT").await;

    let mut got: HashMap<String, Vec<Event>> = HashMap::new();
    let (mut frames, mut multi, mut mixed) = (0, 0, 0);
    while got.values().map(Vec::len).min().unwrap_or(0) < 40 || got.len() < 2 {
        let events = frame(&mut c).await;
        let now = Utc::now().timestamp_millis();
        frames += 1;
        multi += usize::from(events.len() > 1);
        mixed += usize::from(events.iter().any(|e| e.ev == "status"));
        for e in events.into_iter().filter(Event::is_bar) {
            // A bar goes out only once its minute is over.
            assert!(e.e.unwrap() <= now, "{e:?}");
            got.entry(e.sym.clone().unwrap()).or_default().push(e);
        }
    }
    assert!(
        multi > 0 && mixed > 0,
        "{frames} frames, {multi} multi, {mixed} mixed"
    );
    for (sym, bars) in &got {
        // The first subscriber gets the stream from its start, without gaps, ascending.
        let want = series_from(sym, 1);
        for (e, w) in bars.iter().zip(&want) {
            assert!(same(e, w), "{sym}: {e:?} vs {w:?}");
        }
        assert!(bars.windows(2).all(|w| w[0].s < w[1].s));
        // Accumulated volume counts the day from its first bar.
        let av: i64 = want[..bars.len()].iter().map(|w| w.volume).sum();
        assert_eq!(bars.last().unwrap().av, Some(av as u64));
    }
    // What the simulator says it sent starts with what arrived.
    let sent = sim.ws_bars_sent();
    for sym in ["AAPL", "MSFT"] {
        let sent: Vec<i64> = sent
            .iter()
            .filter(|(s, _)| s == sym)
            .map(|(_, t)| *t)
            .collect();
        let seen: Vec<i64> = got[sym].iter().map(|e| e.s.unwrap()).collect();
        assert_eq!(&sent[..seen.len()], &seen[..]);
    }
    c.close(None).await.unwrap();

    let conns = sim.ws_connections();
    assert_eq!(conns.len(), 1);
    let r = &conns[0];
    assert!(r.authenticated);
    assert_eq!(r.fault, None);
    assert_eq!(r.topics, ["AM.AAPL", "AM.MSFT"]);
    assert!(r.frames_sent >= 3 + frames, "{r:?}");
    assert!(r.bars_sent >= 80, "{r:?}");
}

#[tokio::test]
async fn the_default_start_never_sends_future_bars() {
    // Fast enough to catch up with the clock at once when the market is open.
    let sim = Simulator::start(cfg(WsConfig {
        bars_per_sec: 2_000.0,
        ..WsConfig::default()
    }))
    .await
    .unwrap();
    let from = sim.ws_live_from().timestamp_millis();
    assert_eq!(from % 60_000, 0);
    assert!(from < Utc::now().timestamp_millis());
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.*").await;
    let mut last = HashMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        let Some(Message::Text(t)) = next_within(&mut c, Duration::from_millis(100)).await else {
            continue;
        };
        let now = Utc::now().timestamp_millis();
        let events: Vec<Event> = serde_json::from_str(t.as_str()).unwrap();
        for e in events.iter().filter(|e| e.is_bar()) {
            let (sym, s) = e.key();
            assert!(s >= from && e.e.unwrap() <= now, "{e:?}");
            assert!(last.insert(sym, s).is_none_or(|prev| prev < s), "{e:?}");
        }
    }
    // Three hours of trading time lie behind: the replay had bars to send.
    assert_eq!(last.len(), 2, "{last:?}");
}

#[tokio::test]
async fn wrong_key_is_auth_failed_then_closed() {
    let sim = Simulator::start(cfg(ws(100.0))).await.unwrap();
    let mut c = connect(&sim).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "connected");
    send(&mut c, r#"{"action":"auth","params":"nope"}"#).await;
    assert_eq!(
        one_status(&frame(&mut c).await),
        (
            "auth_failed".to_string(),
            "authentication failed".to_string()
        )
    );
    expect_closed(&mut c).await;
    let r = &sim.ws_connections()[0];
    assert!(!r.authenticated);
    assert_eq!(r.frames_sent, 2);
    // The server's end is recorded soon after the closing handshake.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sim.ws_connections()[0].ended_at.is_some());
}

#[tokio::test]
async fn rebroadcasts_share_the_start_and_end_on_the_final_version() {
    let sim = Simulator::start(cfg(WsConfig {
        rebroadcast_every: Some(3),
        ..ws(100.0)
    }))
    .await
    .unwrap();
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;
    let mut bars = Vec::new();
    while bars.len() < 60 {
        bars.extend(frame(&mut c).await.into_iter().filter(Event::is_bar));
    }
    let want: HashMap<i64, SimBar> = series_from("AAPL", 1)
        .into_iter()
        .map(|b| (b.t_ms, b))
        .collect();
    let mut by_s: HashMap<i64, Vec<&Event>> = HashMap::new();
    for e in &bars {
        by_s.entry(e.s.unwrap()).or_default().push(e);
    }
    let mut twice = 0;
    for (s, versions) in &by_s {
        let w = &want[s];
        // The last version of every bar is the final one.
        assert!(same(versions.last().unwrap(), w), "{versions:?}");
        if (s / 60_000) % 3 == 0 {
            // A bar cut off by the end of our reading may lack its final version.
            if versions.len() == 2 {
                twice += 1;
                assert!(!same(versions[0], w), "{versions:?}");
                assert_ne!(versions[0].v.as_ref().unwrap().get(), w.volume.to_string());
            }
        } else {
            assert_eq!(versions.len(), 1, "{versions:?}");
        }
    }
    assert!(twice >= 15, "{twice}");
    // Only final versions are recorded, once each.
    let sent = sim.ws_bars_sent();
    let mut seen = std::collections::HashSet::new();
    assert!(sent.iter().all(|k| seen.insert(k.clone())));
}

#[tokio::test]
async fn a_dropped_connection_resumes_live_and_rest_fills_the_gap() {
    let sim = Simulator::start(cfg(WsConfig {
        // connected, auth_success, subscribed, then three frames of bars.
        faults: vec![WsFault::DisconnectAfterFrames(6)],
        ..ws(100.0)
    }))
    .await
    .unwrap();
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;
    let mut first_run = Vec::new();
    for _ in 0..3 {
        first_run.extend(frame(&mut c).await.into_iter().filter(Event::is_bar));
    }
    expect_dropped(&mut c).await;
    let last = first_run.last().unwrap().s.unwrap();

    // Away for a while: at 100 bars a second, some 30 bars go live meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;
    let resumed = frame(&mut c).await;
    let first = resumed.iter().find(|e| e.is_bar()).unwrap();
    let want = series_from("AAPL", 1);
    let skipped = want
        .iter()
        .filter(|w| w.t_ms > last && w.t_ms < first.s.unwrap())
        .count();
    assert!(skipped >= 5, "only {skipped} bars skipped");
    assert!(same(
        first,
        want.iter().find(|w| w.t_ms == first.s.unwrap()).unwrap()
    ));
    let sent: Vec<i64> = sim.ws_bars_sent().into_iter().map(|(_, t)| t).collect();
    assert!(!sent.iter().any(|t| *t > last && *t < first.s.unwrap()));

    // The gap, from REST, completes the series.
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/{}/{}?adjusted=false&sort=asc&limit=50000",
        sim.base_url(),
        last + 1,
        first.s.unwrap() - 1
    );
    let body: serde_json::Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut all: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["t"].as_i64().unwrap())
        .collect();
    all.extend(&sent);
    all.sort();
    all.dedup();
    let upto = *all.last().unwrap();
    let want: Vec<i64> = want.iter().map(|w| w.t_ms).filter(|t| *t <= upto).collect();
    assert_eq!(all, want);

    let conns = sim.ws_connections();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].fault, Some(WsFault::DisconnectAfterFrames(6)));
    assert_eq!(conns[0].frames_sent, 6);
    assert!(conns[0].ended_at.is_some());
    assert_eq!(conns[1].fault, None);
}

#[tokio::test]
async fn silence_stops_frames_and_pongs_then_resumes() {
    let silence = Duration::from_millis(800);
    let sim = Simulator::start(cfg(WsConfig {
        faults: vec![WsFault::Silence {
            after_frames: 4,
            for_: silence,
        }],
        ..ws(100.0)
    }))
    .await
    .unwrap();
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.MSFT").await;
    let mut bars: Vec<Event> = frame(&mut c)
        .await
        .into_iter()
        .filter(Event::is_bar)
        .collect();
    let quiet_from = Instant::now();
    c.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    // Nothing at all, not even the pong, for most of the silence.
    assert!(next_within(&mut c, Duration::from_millis(500))
        .await
        .is_none());
    let (mut pong_at, mut next_frame_at) = (None, None);
    while pong_at.is_none() || bars.len() < 40 {
        match next_within(&mut c, Duration::from_secs(5)).await {
            Some(Message::Pong(p)) => {
                assert_eq!(&p[..], b"are you there");
                pong_at = Some(quiet_from.elapsed());
            }
            Some(Message::Text(t)) => {
                next_frame_at.get_or_insert(quiet_from.elapsed());
                let events: Vec<Event> = serde_json::from_str(t.as_str()).unwrap();
                bars.extend(events.into_iter().filter(Event::is_bar));
            }
            other => panic!("{other:?}"),
        }
    }
    let late = silence - Duration::from_millis(100);
    assert!(pong_at.unwrap() >= late, "{pong_at:?}");
    assert!(next_frame_at.unwrap() >= late, "{next_frame_at:?}");
    // The connection stayed up, so what went live meanwhile arrives afterwards: no gap.
    let want = series_from("MSFT", 1);
    for (e, w) in bars.iter().zip(&want) {
        assert!(same(e, w), "{e:?} vs {w:?}");
    }
}

#[tokio::test]
async fn max_connections_then_closed_and_faults_take_one_connection_each() {
    let sim = Simulator::start(cfg(WsConfig {
        faults: vec![WsFault::MaxConnections, WsFault::None, WsFault::AuthFailed],
        ..ws(100.0)
    }))
    .await
    .unwrap();
    let auth = format!(r#"{{"action":"auth","params":"{KEY}"}}"#);
    let mut c = connect(&sim).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "connected");
    send(&mut c, &auth).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "auth_success");
    let (status, message) = one_status(&frame(&mut c).await);
    assert_eq!(status, "max_connections");
    assert!(message.starts_with("Maximum number of websocket connections exceeded."));
    expect_closed(&mut c).await;

    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;
    drop(c);

    let mut c = connect(&sim).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "connected");
    send(&mut c, &auth).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "auth_failed");
    expect_closed(&mut c).await;

    sim.push_ws_faults([WsFault::DisconnectAfterFrames(0)]);
    let mut c = connect(&sim).await;
    expect_dropped(&mut c).await;
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;

    let conns = sim.ws_connections();
    let faults: Vec<_> = conns.iter().map(|r| r.fault.clone()).collect();
    assert_eq!(
        faults,
        [
            Some(WsFault::MaxConnections),
            Some(WsFault::None),
            Some(WsFault::AuthFailed),
            Some(WsFault::DisconnectAfterFrames(0)),
            None
        ]
    );
    let authenticated: Vec<bool> = conns.iter().map(|r| r.authenticated).collect();
    assert_eq!(authenticated, [true, true, false, false, true]);
    assert_eq!(conns[0].frames_sent, 3);
    assert_eq!(conns[3].frames_sent, 0);
    assert!(conns.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn hostile_input_gets_errors_not_panics() {
    let sim = Simulator::start(cfg(ws(100.0))).await.unwrap();
    let mut c = connect(&sim).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "connected");
    let error = |events: Vec<Event>| {
        let (status, message) = one_status(&events);
        assert_eq!(status, "error", "{message}");
        message
    };
    send(&mut c, r#"{"action":"subscribe","params":"AM.AAPL"}"#).await;
    assert!(error(frame(&mut c).await).starts_with("not authorized"));
    for garbage in ["", "nope", "[]", "{}", r#"{"action":7}"#, "\u{0}\u{7f}"] {
        send(&mut c, garbage).await;
        assert!(error(frame(&mut c).await).starts_with("invalid message"));
    }
    c.send(Message::Binary(vec![0xff; 100].into()))
        .await
        .unwrap();
    assert!(error(frame(&mut c).await).starts_with("binary"));
    send(&mut c, r#"{"action":"dance","params":"x"}"#).await;
    assert!(error(frame(&mut c).await).starts_with("unknown action"));
    send(&mut c, &format!(r#"{{"action":"auth","params":"{KEY}"}}"#)).await;
    assert_eq!(one_status(&frame(&mut c).await).0, "auth_success");
    // Bad topics are refused one by one; good ones in the same message still count.
    let long = "X".repeat(5000);
    send(
        &mut c,
        &format!(r#"{{"action":"subscribe","params":"AAPL,AM.{long},AM.NOPE, ,AM.AAPL"}}"#),
    )
    .await;
    let answers = statuses(&frame(&mut c).await);
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(answers[0].1.starts_with("invalid topic: AAPL"));
    assert!(answers[1].1.len() < 600);
    assert_eq!(answers[2].1, "subscribed to: AM.NOPE");
    assert_eq!(answers[3].1, "subscribed to: AM.AAPL");
    // A message over the 1 MiB limit ends the connection.
    let huge = format!(r#"{{"action":"auth","params":"{}"}}"#, "k".repeat(2 << 20));
    let _ = c.send(Message::text(huge)).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(_) => break,
            Err(_) => panic!("still open after an oversized message"),
        }
    }

    // Not WebSocket at all, a wrong path, half a handshake: the port still serves.
    let mut raw = TcpStream::connect(sim.ws_local_addr()).await.unwrap();
    raw.write_all(b"\x00\xffgarbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut out)).await;
    let mut half = TcpStream::connect(sim.ws_local_addr()).await.unwrap();
    half.write_all(b"GET /stocks HTTP/1.1\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    drop(half);
    let wrong = sim.ws_url().replace("/stocks", "/options");
    match connect_async(wrong).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 404)
        }
        other => panic!("{other:?}"),
    }
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.MSFT").await;
    assert!(frame(&mut c).await.iter().any(Event::is_bar));
    // Failed handshakes are not connections.
    assert_eq!(sim.ws_connections().len(), 2);
    // Unsubscribing stops the bars.
    send(&mut c, r#"{"action":"unsubscribe","params":"AM.MSFT"}"#).await;
    loop {
        let events = frame(&mut c).await;
        if events.iter().any(|e| e.ev == "status") && !events.iter().any(Event::is_bar) {
            assert_eq!(statuses(&events)[0].1, "unsubscribed to: AM.MSFT");
            break;
        }
    }
    assert!(next_within(&mut c, Duration::from_millis(200))
        .await
        .is_none());
    assert!(sim.ws_connections()[1].topics.is_empty());
}

#[tokio::test]
async fn fuzzed_frames_never_panic_the_stream() {
    // Connection tasks run on this test's thread (current-thread runtime): a panic there would
    // be swallowed with the task, so count panics through the hook instead.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let me = std::thread::current().name().map(str::to_string);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().map(str::to_string) == me {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));

    let sim = Simulator::start(cfg(ws(100.0))).await.unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..60 {
        let mut c = connect(&sim).await;
        frame(&mut c).await;
        if round % 2 == 0 {
            send(&mut c, &format!(r#"{{"action":"auth","params":"{KEY}"}}"#)).await;
            frame(&mut c).await;
        }
        // Raw bytes under the client's framing: unmasked, reserved bits, bad opcodes, lengths
        // that lie, truncated headers.
        let garbage: Vec<u8> = (0..1 + rand(300)).map(|_| rand(256) as u8).collect();
        let _ = c.get_mut().write_all(&garbage).await;
        let _ = c.get_mut().flush().await;
        // Whatever comes back, the connection either carries on or ends; read briefly.
        let _ = tokio::time::timeout(Duration::from_millis(20), async {
            while let Some(Ok(_)) = c.next().await {}
        })
        .await;
    }
    let mut c = connect(&sim).await;
    handshake(&mut c, "AM.AAPL").await;
    assert!(frame(&mut c).await.iter().any(Event::is_bar));
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Kills the child if the test fails midway, so no simulator outlives its test.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_prints_both_addresses_and_streams_until_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_mdingest-sim"))
        .args(["--listen", "127.0.0.1:0", "--symbols", "AAPL,BRK.B"])
        .args(["--ws-live-from", LIVE_FROM, "--ws-bars-per-sec", "200"])
        .args([
            "--ws-fault",
            "auth",
            "--ws-fault",
            "none",
            "--rebroadcast-every",
            "2",
        ])
        .env("SIM_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("mdingest-sim listening on http://127.0.0.1:"),
        "{line:?}"
    );
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim_end()
        .strip_prefix("mdingest-sim stream on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/stocks"),
        "{url}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let auth = format!(r#"{{"action":"auth","params":"{KEY}"}}"#);
        let mut c = connect_async(&url).await.unwrap().0;
        frame(&mut c).await;
        send(&mut c, &auth).await;
        assert_eq!(one_status(&frame(&mut c).await).0, "auth_failed");
        let mut c = connect_async(&url).await.unwrap().0;
        handshake(&mut c, "AM.BRK.B").await;
        let mut bars = Vec::new();
        while bars.len() < 10 {
            bars.extend(frame(&mut c).await.into_iter().filter(Event::is_bar));
        }
        let want = series_from("BRK.B", 1);
        // With every second minute re-broadcast, the final versions are the series.
        let finals: HashMap<i64, &Event> = bars.iter().map(|e| (e.s.unwrap(), e)).collect();
        let covered = want
            .iter()
            .take_while(|w| finals.contains_key(&w.t_ms))
            .count();
        assert!(covered >= 3, "{covered}");
        for w in &want[..covered - 1] {
            assert!(same(finals[&w.t_ms], w), "{w:?}");
        }
        assert!(bars.len() > finals.len(), "no re-broadcast seen");
    });

    let pid = i32::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "two lines on stdout only");
}

#[test]
fn the_binary_refuses_bad_stream_arguments() {
    for args in [
        &["--ws-fault", "teapot"][..],
        &["--ws-fault", "silence:1"],
        &["--ws-bars-per-sec", "0"],
        &["--ws-bars-per-sec", "NaN"],
        &["--rebroadcast-every", "0"],
        &["--ws-live-from", "yesterday"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mdingest-sim"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mdingest-sim: error: "), "{stderr}");
    }
}

/// 1000 symbols × 50 bars a second. Run with
/// `cargo test --release --test sim_ws -- --ignored --nocapture` (debug builds are not
/// representative).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fifty_thousand_bars_a_second() {
    let symbols: Vec<String> = (0..1000).map(|i| format!("S{i:04}")).collect();
    let sim = Simulator::start(SimConfig {
        api_key: KEY.to_string(),
        symbols: symbols.clone(),
        ws: WsConfig {
            // Far enough back that the replay never reaches the present.
            live_from: Some(utc("2020-01-02T14:30:00Z")),
            bars_per_sec: 50.0,
            record_bars: false,
            ..WsConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut c = connect(&sim).await;
    let topics: Vec<String> = symbols.iter().map(|s| format!("AM.{s}")).collect();
    handshake(&mut c, &topics.join(",")).await;
    let started = Instant::now();
    let (mut bars, mut bytes, mut frames) = (0usize, 0usize, 0usize);
    while started.elapsed() < Duration::from_secs(5) {
        if let Some(Message::Text(t)) = next_within(&mut c, Duration::from_secs(1)).await {
            bars += t.as_str().matches(r#""ev":"AM""#).count();
            bytes += t.len();
            frames += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = bars as f64 / secs;
    eprintln!(
        "{bars} bars in {frames} frames, {:.1} MB, {secs:.2} s: {rate:.0} bars/s",
        bytes as f64 / 1e6
    );
    assert!(rate > 47_500.0, "{rate:.0} bars/s");
}
