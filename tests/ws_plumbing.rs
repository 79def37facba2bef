//! The shared WebSocket session (`sources::ws`) running Polygon's stream protocol against a
//! small scripted Polygon server on loopback: handshake, subscription and resubscription, the
//! order of `Subscribed` and data, the staleness watchdog, the backoff after refusals, where the
//! key goes, and a clean stop. No database needed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mdingest::config::{PolygonConfig, Secret};
use mdingest::sources::polygon::stream::PolygonStream;
use mdingest::sources::ws::{
    quiet_wire_logs, DisconnectReason, RefusalKind, Session, SessionConfig, SessionEvent,
    SessionState,
};
use mdingest::sources::Item;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const KEY: &str = "sekrit-ws-key-0123456789";
const SUBSCRIBE: &str = r#"{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}"#;

/// What the server does after the subscription.
#[derive(Clone, Debug)]
enum Then {
    /// Closes with a close frame.
    Close,
    /// Keeps reading (answering pings) until the client leaves.
    Stay,
    /// Stops reading and sending, with the socket left open: pings go unanswered.
    Silent,
    /// Sends a data frame every `every`, `count` times, without reading (pings unanswered),
    /// then stays.
    Trickle { every: Duration, count: usize },
}

/// How the server handles one connection.
#[derive(Clone, Debug)]
enum Script {
    /// Greets, authenticates (if the key is right), confirms each topic (with `with_confirm`
    /// in the same frame), sends `data`, then `then`. `early` rides in the auth answer's frame.
    Serve {
        early: Option<String>,
        with_confirm: Option<String>,
        data: Vec<String>,
        then: Then,
    },
    /// Greets and answers the auth with `auth_failed` (echoing the key), then keeps reading.
    AuthFailed,
    /// Greets, authenticates, confirms, then says `max_connections` and closes.
    MaxConnections,
    /// Greets, then repeats the greeting every 200 ms and never answers the auth.
    NoAuthAnswer,
}

impl Script {
    fn serve(data: Vec<String>, then: Then) -> Script {
        Script::Serve {
            early: None,
            with_confirm: None,
            data,
            then,
        }
    }
}

/// One connection as the server saw it.
#[derive(Clone, Debug, Default)]
struct Conn {
    accepted: Option<Instant>,
    texts: Vec<String>,
    /// The client sent a close frame.
    closed_by_client: bool,
}

#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    scripts: Arc<Mutex<VecDeque<Script>>>,
    /// Used once the queue is empty.
    fallback: Script,
    conns: Arc<Mutex<Vec<Conn>>>,
}

impl Server {
    async fn start(scripts: Vec<Script>, fallback: Script) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            scripts: Arc::new(Mutex::new(scripts.into())),
            fallback,
            conns: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = {
                    let mut conns = s.conns.lock().unwrap();
                    conns.push(Conn {
                        accepted: Some(Instant::now()),
                        ..Conn::default()
                    });
                    conns.len() - 1
                };
                let script = s
                    .scripts
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| s.fallback.clone());
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(index, tcp, script).await;
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("ws://{}/stocks", self.addr)
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }

    fn record(&self, index: usize, f: impl FnOnce(&mut Conn)) {
        f(&mut self.conns.lock().unwrap()[index]);
    }

    /// The next text from the client, recorded; `None` once it is gone.
    async fn next_text(&self, index: usize, ws: &mut WebSocketStream<TcpStream>) -> Option<String> {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    let t = t.to_string();
                    self.record(index, |c| c.texts.push(t.clone()));
                    return Some(t);
                }
                Message::Close(_) => {
                    self.record(index, |c| c.closed_by_client = true);
                    // Answers the close, completing the handshake.
                    let _ = ws.flush().await;
                }
                _ => {}
            }
        }
        None
    }

    async fn stay(&self, index: usize, ws: &mut WebSocketStream<TcpStream>) {
        while self.next_text(index, ws).await.is_some() {}
    }

    async fn serve(
        &self,
        index: usize,
        tcp: TcpStream,
        script: Script,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut ws = tokio_tungstenite::accept_async(tcp).await?;
        ws.send(text(&[status("connected", "Connected Successfully")]))
            .await?;
        let Some(auth) = self.next_text(index, &mut ws).await else {
            return Ok(());
        };
        let key_ok = auth == format!(r#"{{"action":"auth","params":"{KEY}"}}"#);
        let (early, with_confirm, data, then) = match script {
            Script::AuthFailed => {
                let m = format!("authentication failed for {KEY}");
                ws.send(text(&[status("auth_failed", &m)])).await?;
                self.stay(index, &mut ws).await;
                return Ok(());
            }
            _ if !key_ok => {
                ws.send(text(&[status("auth_failed", "authentication failed")]))
                    .await?;
                self.stay(index, &mut ws).await;
                return Ok(());
            }
            Script::NoAuthAnswer => {
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ws.send(text(&[status("connected", "Connected Successfully")]))
                        .await?;
                }
                self.stay(index, &mut ws).await;
                return Ok(());
            }
            Script::MaxConnections => (None, None, Vec::new(), None),
            Script::Serve {
                early,
                with_confirm,
                data,
                then,
            } => (early, with_confirm, data, Some(then)),
        };
        let mut answer = vec![status("auth_success", "authenticated")];
        answer.extend(early);
        ws.send(text(&answer)).await?;
        let Some(subscribe) = self.next_text(index, &mut ws).await else {
            return Ok(());
        };
        let v: serde_json::Value = serde_json::from_str(&subscribe).unwrap();
        let mut confirm: Vec<String> = v["params"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .map(|t| status("success", &format!("subscribed to: {t}")))
            .collect();
        confirm.extend(with_confirm);
        ws.send(text(&confirm)).await?;
        let Some(then) = then else {
            let m = "Maximum number of websocket connections exceeded. You have been disconnected.";
            ws.send(text(&[status("max_connections", m)])).await?;
            ws.close(None).await?;
            self.stay(index, &mut ws).await;
            return Ok(());
        };
        for frame in data {
            ws.send(Message::text(frame)).await?;
        }
        match then {
            Then::Close => {
                let bye = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                };
                ws.close(Some(bye)).await?;
                self.stay(index, &mut ws).await;
            }
            Then::Stay => self.stay(index, &mut ws).await,
            Then::Silent => {
                // Holds the socket open without touching it.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Then::Trickle { every, count } => {
                for i in 0..count {
                    tokio::time::sleep(every).await;
                    ws.send(Message::text(frame(&[am("AAPL", i as u64)])))
                        .await?;
                }
                self.stay(index, &mut ws).await;
            }
        }
        Ok(())
    }
}

fn status(status: &str, message: &str) -> String {
    serde_json::json!({ "ev": "status", "status": status, "message": message }).to_string()
}

/// A minute bar of `sym`, `minute` minutes after 2021-01-08T22:24:00Z.
fn am(sym: &str, minute: u64) -> String {
    let s = 1_610_144_640_000 + minute * 60_000;
    format!(
        r#"{{"ev":"AM","sym":"{sym}","v":4110,"av":9470157,"op":0.4372,"vw":0.4488,"o":0.4488,"c":0.4486,"h":0.4489,"l":0.4486,"a":0.4352,"z":685,"s":{s},"e":{}}}"#,
        s + 60_000
    )
}

fn frame(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}

fn text(events: &[String]) -> Message {
    Message::text(frame(events))
}

type Event = SessionEvent<Item>;

struct Client {
    session: Arc<Session<PolygonStream>>,
    rx: mpsc::Receiver<Event>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Every event so far, with when it arrived.
    seen: Vec<(Instant, Event)>,
}

impl Client {
    fn start(server: &Server, stale_after_secs: u64) -> Client {
        Client::start_with(server, stale_after_secs, |_| {})
    }

    fn start_with(
        server: &Server,
        stale_after_secs: u64,
        tweak: impl FnOnce(&mut SessionConfig),
    ) -> Client {
        let stream = PolygonStream::new(&PolygonConfig {
            ws_url: server.url(),
            api_key: Secret::new(KEY),
            stale_after_secs,
            ..PolygonConfig::default()
        })
        .unwrap();
        let mut config = stream.session_config();
        tweak(&mut config);
        let session = Arc::new(Session::new(stream, config).unwrap());
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let (s, c) = (session.clone(), cancel.clone());
        let task = tokio::spawn(async move { s.run(tx, c).await });
        Client {
            session,
            rx,
            cancel,
            task,
            seen: Vec::new(),
        }
    }

    /// Reads events until `done` holds for the last one; fails after `within`.
    async fn until(
        &mut self,
        within: Duration,
        done: impl Fn(&Event) -> bool,
    ) -> &(Instant, Event) {
        let deadline = Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; events so far: {:#?}", self.seen))
                .expect("the session ended");
            let hit = done(&ev);
            self.seen.push((Instant::now(), ev));
            if hit {
                return self.seen.last().unwrap();
            }
        }
    }

    /// Collects every event for `d`.
    async fn collect_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push((Instant::now(), ev));
        }
    }

    /// Stops the session and waits for `run` to return.
    async fn stop(mut self) -> Vec<(Instant, Event)> {
        self.cancel.cancel();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .expect("run returns promptly after cancel")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(*self.session.state().borrow(), SessionState::Idle);
        while let Ok(ev) = self.rx.try_recv() {
            self.seen.push((Instant::now(), ev));
        }
        self.seen
    }
}

fn is_subscribed(e: &Event) -> bool {
    matches!(e, SessionEvent::Subscribed { .. })
}

fn bar_symbols(e: &Event) -> Vec<String> {
    match e {
        SessionEvent::Data(events) => events
            .iter()
            .filter_map(|d| match d {
                Item::Bar(b) => Some(b.symbol.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn short(events: &[(Instant, Event)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, e)| match e {
            SessionEvent::Subscribed { reconnect, .. } => {
                format!("subscribed(reconnect={reconnect})")
            }
            SessionEvent::Data(_) => format!("data{:?}", bar_symbols(e)),
            SessionEvent::Notice { status, .. } => format!("notice({status})"),
            SessionEvent::Disconnected { reason, .. } => format!("disconnected({reason})"),
            SessionEvent::Refused { refusal, .. } => format!("refused({})", refusal.status),
        })
        .collect()
}

/// Captures this thread's log lines at TRACE (the tests run on a current-thread runtime, so the
/// session's logs are emitted here), tungstenite's `log` records included, through the filter
/// the daemon must use (`ws::quiet_wire_logs`).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    // The `log` bridge is process-wide: installed once, by a global subscriber that discards
    // everything; each capture is a thread's own default and wins over it.
    static BRIDGE: Once = Once::new();
    BRIDGE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(io::sink)
            .finish()
            .try_init();
    });
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(quiet_wire_logs("trace")))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn logs(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn subscribes_resubscribes_after_a_server_close_and_stops_cleanly() {
    let server = Server::start(
        vec![
            Script::serve(vec![frame(&[am("AAPL", 0)])], Then::Close),
            Script::serve(vec![frame(&[am("MSFT", 1)])], Then::Stay),
        ],
        Script::serve(Vec::new(), Then::Stay),
    )
    .await;
    let mut client = Client::start(&server, 5);
    client
        .until(Duration::from_secs(8), |e| bar_symbols(e) == ["MSFT"])
        .await;
    assert_eq!(
        short(&client.seen),
        [
            "subscribed(reconnect=false)",
            "data[\"AAPL\"]",
            "disconnected(closed by the server (code 1000: bye))",
            "subscribed(reconnect=true)",
            "data[\"MSFT\"]",
        ]
    );
    let SessionEvent::Disconnected { retry_in, .. } = &client.seen[2].1 else {
        unreachable!()
    };
    assert!(
        *retry_in >= Duration::from_secs(1) && *retry_in < Duration::from_secs(2),
        "{retry_in:?}"
    );
    assert!(matches!(
        *client.session.state().borrow(),
        SessionState::Subscribed { .. }
    ));

    // Every connection authenticated and subscribed every topic.
    let conns = server.conns();
    assert_eq!(conns.len(), 2);
    for c in &conns {
        assert_eq!(
            c.texts,
            [
                format!(r#"{{"action":"auth","params":"{KEY}"}}"#),
                SUBSCRIBE.to_string()
            ]
        );
    }
    let gap = conns[1].accepted.unwrap() - conns[0].accepted.unwrap();
    assert!(gap >= Duration::from_secs(1), "reconnected after {gap:?}");

    client.stop().await;
    // The stop said goodbye with a close frame.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.conns()[1].closed_by_client, "{:?}", server.conns());
    assert_eq!(server.conns().len(), 2);
}

#[tokio::test]
async fn subscribed_precedes_the_data_of_its_connection() {
    let server = Server::start(
        vec![Script::Serve {
            // Data before the subscription (no real server sends it) must not overtake the
            // `Subscribed` event.
            early: Some(am("ERLY", 0)),
            with_confirm: Some(am("AAPL", 0)),
            data: vec![
                frame(&[am("MSFT", 0), am("AAPL", 1)]),
                "not json".into(),
                frame(&[am("MSFT", 1)]),
            ],
            then: Then::Stay,
        }],
        Script::serve(Vec::new(), Then::Stay),
    )
    .await;
    let mut client = Client::start(&server, 5);
    client
        .until(Duration::from_secs(5), |e| bar_symbols(e) == ["MSFT"])
        .await;
    assert_eq!(
        short(&client.seen),
        [
            "subscribed(reconnect=false)",
            "data[\"AAPL\"]",
            "data[\"MSFT\", \"AAPL\"]",
            "data[]",
            "data[\"MSFT\"]",
        ]
    );
    // The garbage frame is passed on as one rejection for data_quality_logs.
    let SessionEvent::Data(garbage) = &client.seen[3].1 else {
        unreachable!()
    };
    assert!(
        matches!(&garbage[..], [Item::Rejected(r)] if r.check == "malformed_row"),
        "{garbage:?}"
    );
    let SessionEvent::Subscribed { at, reconnect } = &client.seen[0].1 else {
        unreachable!()
    };
    assert!(!reconnect);
    assert!((chrono::Utc::now() - *at).num_seconds().abs() < 5);
    client.stop().await;
}

#[tokio::test]
async fn a_silent_server_is_replaced_within_stale_after() {
    let server = Server::start(
        vec![Script::serve(Vec::new(), Then::Silent)],
        Script::serve(vec![frame(&[am("AAPL", 0)])], Then::Stay),
    )
    .await;
    let mut client = Client::start(&server, 1);
    client.until(Duration::from_secs(3), is_subscribed).await;
    let subscribed = client.seen[0].0;
    let (dropped, event) = client
        .until(Duration::from_secs(3), |e| {
            matches!(e, SessionEvent::Disconnected { .. })
        })
        .await;
    let after = *dropped - subscribed;
    assert!(
        matches!(
            event,
            SessionEvent::Disconnected {
                reason: DisconnectReason::Stale(_),
                ..
            }
        ),
        "{event:?}"
    );
    // The last frame (the subscription's confirmation) came right after `Subscribed`.
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1600),
        "stale after {after:?}"
    );
    let dropped = *dropped;
    client
        .until(Duration::from_secs(4), |e| bar_symbols(e) == ["AAPL"])
        .await;
    let back = client
        .seen
        .iter()
        .find(|(_, e)| {
            matches!(
                e,
                SessionEvent::Subscribed {
                    reconnect: true,
                    ..
                }
            )
        })
        .expect("subscribed again")
        .0;
    assert!(
        back - dropped < Duration::from_millis(2500),
        "{:?}",
        back - dropped
    );
    assert_eq!(server.conns()[1].texts[1], SUBSCRIBE);
    client.stop().await;
}

#[tokio::test]
async fn a_connection_that_keeps_sending_is_kept() {
    // Pings go unanswered (the server never reads), but data keeps coming: not stale.
    let server = Server::start(
        vec![Script::serve(
            Vec::new(),
            Then::Trickle {
                every: Duration::from_millis(300),
                count: 10,
            },
        )],
        Script::serve(Vec::new(), Then::Stay),
    )
    .await;
    let mut client = Client::start(&server, 1);
    client.collect_for(Duration::from_millis(3300)).await;
    let kinds = short(&client.seen);
    assert_eq!(kinds[0], "subscribed(reconnect=false)");
    assert!(
        !kinds.iter().any(|k| k.starts_with("disconnected")),
        "{kinds:?}"
    );
    assert!(kinds.len() >= 10, "{kinds:?}");
    assert_eq!(server.conns().len(), 1);
    client.stop().await;
}

#[tokio::test]
async fn auth_failed_is_refused_and_retried_slowly() {
    let (log, _guard) = capture_logs();
    let server = Server::start(Vec::new(), Script::AuthFailed).await;
    let mut client = Client::start(&server, 5);
    let (_, event) = client
        .until(Duration::from_secs(3), |e| {
            matches!(e, SessionEvent::Refused { .. })
        })
        .await;
    let SessionEvent::Refused { refusal, retry_in } = event else {
        unreachable!()
    };
    assert_eq!(refusal.kind, RefusalKind::Account);
    assert_eq!(
        refusal.to_string(),
        "polygon: auth_failed: authentication failed for ***"
    );
    assert!(*retry_in >= Duration::from_secs(1), "{retry_in:?}");
    match &*client.session.state().borrow() {
        SessionState::BackingOff { reason, .. } => {
            assert!(reason.contains("auth_failed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // No tight loop: in 3.5 s, at most three attempts (0 s, ≥ 1 s, ≥ 1 + 2 s), and at least
    // a second between any two.
    client.collect_for(Duration::from_millis(3500)).await;
    let accepted: Vec<Instant> = server.conns().iter().map(|c| c.accepted.unwrap()).collect();
    assert!((2..=3).contains(&accepted.len()), "{accepted:?}");
    for pair in accepted.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(1), "{accepted:?}");
    }
    if accepted.len() == 3 {
        assert!(
            accepted[2] - accepted[1] >= Duration::from_secs(2),
            "{accepted:?}"
        );
    }
    assert!(client.seen.iter().all(|(_, e)| !is_subscribed(e)));

    // Stopping while backing off is immediate.
    let stopped = Instant::now();
    let seen = client.stop().await;
    assert!(stopped.elapsed() < Duration::from_millis(500));
    let log = logs(&log);
    assert!(log.contains("auth_failed"), "{log}");
    assert!(!log.contains(KEY), "{log}");
    assert!(!format!("{seen:?}").contains(KEY));
    // The client hung up itself after the refusal (the server would have waited).
    assert!(server.conns()[0].closed_by_client);
}

#[tokio::test]
async fn max_connections_backs_off_at_least_two_seconds() {
    let server = Server::start(Vec::new(), Script::MaxConnections).await;
    let mut client = Client::start(&server, 5);
    let (_, event) = client
        .until(Duration::from_secs(3), |e| {
            matches!(e, SessionEvent::Refused { .. })
        })
        .await;
    let SessionEvent::Refused { refusal, retry_in } = event else {
        unreachable!()
    };
    assert_eq!(refusal.kind, RefusalKind::ConnectionLimit);
    assert_eq!(refusal.status, "max_connections");
    assert!(refusal.message.starts_with("Maximum number"), "{refusal}");
    assert!(*retry_in >= Duration::from_secs(2), "{retry_in:?}");
    client.collect_for(Duration::from_millis(2500)).await;
    let accepted: Vec<Instant> = server.conns().iter().map(|c| c.accepted.unwrap()).collect();
    assert!((1..=2).contains(&accepted.len()), "{accepted:?}");
    for pair in accepted.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(2), "{accepted:?}");
    }
    client.stop().await;
}

#[tokio::test]
async fn the_key_never_reaches_logs_or_debug() {
    let (log, _guard) = capture_logs();
    let server = Server::start(
        vec![Script::AuthFailed],
        Script::serve(vec![frame(&[am("AAPL", 0)])], Then::Stay),
    )
    .await;
    let mut client = Client::start(&server, 5);
    client
        .until(Duration::from_secs(5), |e| bar_symbols(e) == ["AAPL"])
        .await;
    let debug_session = format!("{:?}", client.session);
    let debug_state = format!("{:?}", client.session.state().borrow());
    let seen = client.stop().await;
    assert_eq!(
        short(&seen),
        [
            "refused(auth_failed)",
            "subscribed(reconnect=false)",
            "data[\"AAPL\"]"
        ]
    );
    let hex: String = KEY.bytes().map(|b| format!("{b:02x}")).collect();
    let log = logs(&log);
    assert!(log.contains("stream subscribed"), "{log}");
    // tungstenite is held at warn whatever the filter asked: none of its frame dumps (nor any
    // other record of its below warn) reach the capture.
    assert!(!log.contains("tungstenite::protocol"), "{log}");
    for text in [&log, &debug_session, &debug_state, &format!("{seen:?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains(&hex), "{text}");
    }
    // The key did go where it belongs.
    assert_eq!(
        server.conns()[1].texts[0],
        format!(r#"{{"action":"auth","params":"{KEY}"}}"#)
    );
}

#[tokio::test]
async fn an_unanswered_authentication_times_out() {
    let server = Server::start(
        vec![Script::NoAuthAnswer],
        Script::serve(Vec::new(), Then::Stay),
    )
    .await;
    let mut client = Client::start_with(&server, 5, |c| c.auth_timeout = Duration::from_secs(1));
    let started = Instant::now();
    client
        .until(Duration::from_secs(3), |e| {
            matches!(e, SessionEvent::Disconnected { .. })
        })
        .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    client.until(Duration::from_secs(4), is_subscribed).await;
    assert_eq!(
        short(&client.seen),
        [
            "disconnected(no answer to the authentication within 1 s)",
            "subscribed(reconnect=false)",
        ]
    );
    client.stop().await;
}

#[tokio::test]
async fn the_session_ends_when_nobody_listens() {
    let server = Server::start(Vec::new(), Script::serve(Vec::new(), Then::Stay)).await;
    let mut client = Client::start(&server, 5);
    client.until(Duration::from_secs(3), is_subscribed).await;
    let Client {
        session, rx, task, ..
    } = client;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("run returns once the receiver is gone")
        .unwrap();
    assert_eq!(*session.state().borrow(), SessionState::Idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.conns()[0].closed_by_client);
}

#[tokio::test]
async fn a_wss_url_goes_through_tls_and_fails_cleanly_against_plain_tcp() {
    // Builds rustls' client config (which panics when no crypto provider can be chosen) and
    // reports the failed handshake as an ordinary disconnect.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let stream = PolygonStream::new(&PolygonConfig {
        ws_url: format!("wss://{addr}/stocks"),
        api_key: Secret::new(KEY),
        ..PolygonConfig::default()
    })
    .unwrap();
    let config = stream.session_config();
    let session = Session::new(stream, config).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let run = session.run(tx, cancel.clone());
    tokio::pin!(run);
    let event = tokio::select! {
        _ = &mut run => panic!("run ended"),
        e = rx.recv() => e.unwrap(),
    };
    match event {
        SessionEvent::Disconnected {
            reason: DisconnectReason::Connect(text),
            ..
        } => assert!(!text.contains(KEY), "{text}"),
        other => panic!("{other:?}"),
    }
    cancel.cancel();
    run.await;
}
