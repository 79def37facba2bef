//! The shared HTTP plumbing and Polygon's aggregates client against a scripted HTTP/1.1 server
//! on loopback: retries, `Retry-After`, the rate limit, the body cap, where the key goes, and
//! paging. No database needed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use mdingest::config::{PolygonConfig, Secret};
use mdingest::domain::{Symbol, Timeframe};
use mdingest::sources::http::{Blame, HttpError, HttpSource, Problem, RetryPolicy};
use mdingest::sources::polygon::{PolygonError, PolygonRest};
use reqwest::header::AUTHORIZATION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const KEY: &str = "sekrit-key-0123456789";

/// How the scripted server answers one request.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length` of the body.
    Length,
    /// No length: the body ends when the connection closes.
    UntilClose,
    /// Announces more than it sends, then closes: a body that breaks off.
    BreaksOff,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            framing: Framing::Length,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn framing(mut self, framing: Framing) -> Reply {
        self.framing = framing;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    /// The request line's target (`/path?query`).
    target: String,
    head: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            replies: Arc::default(),
            seen: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(conn).await;
                });
            }
        });
        server
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
    }

    fn push(&self, reply: Reply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// One request per connection (`Connection: close`), which is all the client needs.
    async fn serve(&self, mut conn: TcpStream) -> io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 || head.len() > 64 << 10 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let target = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            target,
            head,
        });
        let reply = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::new(599, "no scripted reply left"));
        let mut out = format!(
            "HTTP/1.1 {} Scripted\r\nConnection: close\r\n",
            reply.status
        );
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        match reply.framing {
            Framing::Length => out.push_str(&format!("Content-Length: {}\r\n", reply.body.len())),
            Framing::UntilClose => {}
            Framing::BreaksOff => {
                out.push_str(&format!("Content-Length: {}\r\n", reply.body.len() + 1000))
            }
        }
        out.push_str("\r\n");
        conn.write_all(out.as_bytes()).await?;
        conn.write_all(&reply.body).await?;
        conn.shutdown().await
    }
}

fn message_of(body: &[u8]) -> Option<String> {
    mdingest::sources::polygon::error_message(body)
}

/// A source that does not wait on its rate limit, with millisecond retries.
fn source() -> HttpSource {
    HttpSource::new(
        "test",
        60_000,
        vec![(AUTHORIZATION, Secret::new(format!("Bearer {KEY}")))],
        message_of,
    )
    .unwrap()
    .with_retry(RetryPolicy::fast())
}

/// Captures this thread's log lines (the tests run on a current-thread runtime, so the client's
/// logs are emitted here).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
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
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn logs(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn throttled_then_served_after_retry_after() {
    let (log, _guard) = capture_logs();
    let server = Server::start().await;
    server.push(Reply::new(429, "{}").header("Retry-After", "1"));
    server.push(Reply::new(200, "hello"));
    let body = source()
        .get(&server.url("/x"), "AAPL")
        .await
        .expect("served after the retry");
    assert_eq!(body, b"hello");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    let log = logs(&log);
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("test") && log.contains("AAPL") && log.contains("429"),
        "{log}"
    );
    assert!(!log.contains(KEY), "{log}");
}

#[tokio::test]
async fn server_errors_and_broken_bodies_are_retried() {
    let server = Server::start().await;
    server.push(Reply::new(500, "oops"));
    server.push(Reply::new(503, "busy"));
    server.push(Reply::new(200, "partial").framing(Framing::BreaksOff));
    server.push(Reply::new(200, "whole"));
    let body = source().get(&server.url("/x"), "AAPL").await.unwrap();
    assert_eq!(body, b"whole");
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn retries_end_after_the_policy_s_attempts() {
    let server = Server::start().await;
    for _ in 0..10 {
        server.push(Reply::new(
            502,
            "<html><title>502 Bad Gateway</title></html>",
        ));
    }
    let policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::fast()
    };
    let e = source()
        .with_retry(policy)
        .get(&server.url("/x"), "AAPL")
        .await
        .unwrap_err();
    assert_eq!(server.seen().len(), 3);
    assert_eq!(e.blame(), Blame::Unavailable);
    assert_eq!(e.attempts(), 3);
    let text = e.to_string();
    assert!(
        text.starts_with("test AAPL: HTTP 502 Bad Gateway: ")
            && text.ends_with("(after 3 attempts)"),
        "{text}"
    );
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_says_why() {
    let server = Server::start().await;
    server.push(Reply::new(
        401,
        r#"{"status":"ERROR","request_id":"x","error":"Unknown API Key"}"#,
    ));
    let e: HttpError = source().get(&server.url("/x"), "AAPL").await.unwrap_err();
    assert_eq!(server.seen().len(), 1);
    assert_eq!(
        e.to_string(),
        "test AAPL: HTTP 401 Unauthorized: Unknown API Key"
    );
    assert_eq!(e.blame(), Blame::Account);
    assert_eq!(e.vendor_message(), Some("Unknown API Key"));
}

#[tokio::test]
async fn not_found_is_about_the_request() {
    let server = Server::start().await;
    server.push(Reply::new(
        404,
        r#"{"status":"NOT_FOUND","message":"Ticker not found."}"#,
    ));
    let e = source().get(&server.url("/x"), "ZZZZ").await.unwrap_err();
    assert_eq!(server.seen().len(), 1);
    assert_eq!(e.blame(), Blame::Request);
    assert_eq!(
        e.to_string(),
        "test ZZZZ: HTTP 404 Not Found: Ticker not found."
    );
}

#[tokio::test]
async fn connection_refused_is_retried_then_unavailable() {
    // A port nobody listens on: bound, then released.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = Url::parse(&format!("http://{addr}/x")).unwrap();
    let e = source()
        .with_retry(RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::fast()
        })
        .get(&url, "AAPL")
        .await
        .unwrap_err();
    assert_eq!(e.blame(), Blame::Unavailable);
    assert!(matches!(e.problem(), Problem::Transport { .. }), "{e}");
    let text = e.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("/x"),
        "{text}"
    );
}

#[tokio::test]
async fn the_key_goes_only_in_the_authorization_header() {
    let server = Server::start().await;
    // A vendor echoing the key back must not put it in our error.
    server.push(Reply::new(
        401,
        format!(r#"{{"status":"ERROR","error":"Unknown API Key {KEY}"}}"#),
    ));
    let rest = polygon(&server);
    let mut pager = rest.pages(&aapl(), Timeframe::M1, from(), to());
    let e = pager.next().await.unwrap_err();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(!seen[0].target.contains(KEY), "{}", seen[0].target);
    assert!(seen[0]
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("mdingest/")));
    for shown in [e.to_string(), format!("{e:?}"), format!("{rest:?}")] {
        assert!(!shown.contains(KEY), "{shown}");
    }
    assert_eq!(
        e.to_string(),
        "polygon: HTTP 401 Unauthorized: Unknown API Key *** (check sources.polygon.api_key / POLYGON_API_KEY)"
    );
    assert_eq!(e.blame(), Blame::Account);
}

#[tokio::test]
async fn requests_are_spread_by_the_rate_limit() {
    let server = Server::start().await;
    for _ in 0..3 {
        server.push(Reply::new(200, "ok"));
    }
    // 120 a minute: one every 500 ms, no burst.
    let http = HttpSource::new("test", 120, vec![], message_of).unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        http.get(&server.url("/x"), "AAPL").await.unwrap();
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let seen = server.seen();
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(450));
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let server = Server::start().await;
    server.push(Reply::new(200, vec![b'x'; 2048]));
    server.push(Reply::new(200, vec![b'x'; 4096]).framing(Framing::UntilClose));
    server.push(Reply::new(200, vec![b'x'; 1024]).framing(Framing::UntilClose));
    let http = source().with_max_body(1024);
    for _ in 0..2 {
        let e = http.get(&server.url("/x"), "AAPL").await.unwrap_err();
        assert!(
            matches!(e.problem(), Problem::TooLarge { limit: 1024 }),
            "{e}"
        );
        assert_eq!(e.blame(), Blame::Request);
    }
    // Exactly the cap is fine.
    assert_eq!(
        http.get(&server.url("/x"), "AAPL").await.unwrap().len(),
        1024
    );
    assert_eq!(server.seen().len(), 3, "refused bodies are not retried");
}

fn aapl() -> Symbol {
    "AAPL".parse().unwrap()
}

fn from() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 2, 14, 30, 0).unwrap()
}

fn to() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 2, 14, 40, 0).unwrap()
}

fn polygon(server: &Server) -> PolygonRest {
    PolygonRest::new(&PolygonConfig {
        api_key: Secret::new(KEY),
        rest_url: format!("http://{}", server.addr),
        requests_per_minute: 60_000,
        ..PolygonConfig::default()
    })
    .unwrap()
    .with_retry(RetryPolicy::fast())
}

/// An aggregates page of minute bars starting at `from() + minutes`.
fn page(minutes: &[i64], next_url: Option<&str>) -> String {
    let results: Vec<String> = minutes
        .iter()
        .map(|m| {
            let t = from().timestamp_millis() + m * 60_000;
            format!(r#"{{"v":100,"vw":1.5,"o":1.5,"c":1.5,"h":1.6,"l":1.4,"t":{t},"n":2}}"#)
        })
        .collect();
    let next = next_url.map_or(String::new(), |u| format!(r#","next_url":"{u}""#));
    format!(
        r#"{{"ticker":"AAPL","status":"OK","resultsCount":{},"results":[{}]{next}}}"#,
        minutes.len(),
        results.join(",")
    )
}

#[tokio::test]
async fn pages_follow_next_url_until_absent() {
    let server = Server::start().await;
    let next = server.url("/v2/aggs/ticker/AAPL/range/1/minute/x/y?cursor=p2");
    // The first page also carries a bar before `from` and one after `to`: dropped.
    server.push(Reply::new(200, page(&[-1, 0, 1, 2], Some(next.as_str()))));
    server.push(Reply::new(200, page(&[3, 10, 11], None)));
    let mut pager = polygon(&server).pages(&aapl(), Timeframe::M1, from(), to());
    let p1 = pager.next().await.unwrap().unwrap();
    assert_eq!(p1.bars.len(), 3);
    assert_eq!(p1.bars[0].timestamp, from());
    let p2 = pager.next().await.unwrap().unwrap();
    assert_eq!(p2.bars.len(), 2, "the bar after `to` is dropped");
    assert_eq!(p2.bars[1].timestamp, to());
    assert!(pager.next().await.unwrap().is_none());
    assert!(pager.next().await.unwrap().is_none());
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target,
        format!(
            "/v2/aggs/ticker/AAPL/range/1/minute/{}/{}?adjusted=false&sort=asc&limit=50000",
            from().timestamp_millis(),
            to().timestamp_millis()
        )
    );
    assert_eq!(
        seen[1].target,
        "/v2/aggs/ticker/AAPL/range/1/minute/x/y?cursor=p2"
    );
}

#[tokio::test]
async fn a_next_url_elsewhere_is_refused_after_its_page() {
    let server = Server::start().await;
    server.push(Reply::new(
        200,
        page(
            &[0],
            Some("http://collector.example:8080/v2/aggs?cursor=steal"),
        ),
    ));
    let mut pager = polygon(&server).pages(&aapl(), Timeframe::M1, from(), to());
    assert_eq!(pager.next().await.unwrap().unwrap().bars.len(), 1);
    let e = pager.next().await.unwrap_err();
    assert!(matches!(e, PolygonError::NextUrl { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("polygon AAPL: next_url refused: "),
        "{e}"
    );
    assert_eq!(e.blame(), Blame::Request);
    assert!(pager.next().await.unwrap().is_none());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_next_url_loop_is_refused() {
    let server = Server::start().await;
    let p2 = server.url("/v2/aggs/ticker/AAPL/range/1/minute/x/y?cursor=p2");
    server.push(Reply::new(200, page(&[0], Some(p2.as_str()))));
    server.push(Reply::new(200, page(&[1], Some(p2.as_str()))));
    let mut pager = polygon(&server).pages(&aapl(), Timeframe::M1, from(), to());
    pager.next().await.unwrap().unwrap();
    pager.next().await.unwrap().unwrap();
    let e = pager.next().await.unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn polygon_errors_say_whom_they_are_about() {
    let server = Server::start().await;
    server.push(Reply::new(
        404,
        r#"{"status":"NOT_FOUND","request_id":"r","message":"Ticker not found."}"#,
    ));
    server.push(Reply::new(200, "<html>maintenance</html>"));
    server.push(Reply::new(
        403,
        r#"{"status":"NOT_AUTHORIZED","request_id":"r","message":"You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing"}"#,
    ));
    let rest = polygon(&server);
    let mut pager = rest.pages(&aapl(), Timeframe::D1, from(), to());
    let e = pager.next().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "polygon AAPL: HTTP 404 Not Found: Ticker not found."
    );
    assert_eq!(e.blame(), Blame::Request);
    // The pager stays on its page after an error: the next call asks again. An HTML page
    // behind a 200 is asked again like a body that broke off: here the 403 comes next.
    let e = pager.next().await.unwrap_err();
    assert_eq!(e.blame(), Blame::Account);
    assert!(e
        .to_string()
        .starts_with("polygon AAPL: HTTP 403 Forbidden: You are not entitled to this data."));
    // One that persists fails the page, after every attempt, saying what came back.
    let attempts = RetryPolicy::fast().max_attempts;
    for _ in 0..attempts {
        server.push(Reply::new(200, "<html>maintenance</html>"));
    }
    let e = pager.next().await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("polygon AAPL: response is not aggregates JSON"),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with(&format!("(after {attempts} attempts)")),
        "{e}"
    );
    assert_eq!(e.blame(), Blame::Unavailable);
    let seen = server.seen();
    assert_eq!(seen.len(), 3 + attempts as usize);
    assert!(seen.iter().all(|s| s.target == seen[0].target));
    assert!(seen[0].target.contains("/range/1/day/"));
}
