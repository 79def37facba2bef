//! The Polygon simulator through real HTTP: reqwest for what a client sees, raw sockets for what
//! a hostile or broken client sends.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mdingest::domain::{is_midnight_new_york, parse_decimal, Timeframe};
use mdingest::sim::{self, Fault, SimBar, SimConfig, Simulator, SymbolFault};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "test-key";

fn cfg() -> SimConfig {
    SimConfig {
        api_key: KEY.to_string(),
        ..SimConfig::default()
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A page as a client must read it: numbers kept as their wire text (serde_json would otherwise
/// go through f64).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    ticker: String,
    results_count: usize,
    query_count: usize,
    count: usize,
    adjusted: bool,
    results: Option<Vec<WireBar>>,
    status: String,
    #[serde(rename = "request_id")]
    request_id: String,
    #[serde(rename = "next_url")]
    next_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireBar {
    v: Box<RawValue>,
    vw: Box<RawValue>,
    o: Box<RawValue>,
    c: Box<RawValue>,
    h: Box<RawValue>,
    l: Box<RawValue>,
    t: i64,
    n: Option<u64>,
}

fn dec(raw: &RawValue) -> Decimal {
    Decimal::from_str(raw.get()).unwrap_or_else(|e| panic!("{}: {e}", raw.get()))
}

/// Checks one wire bar against the simulator's own description, value for value.
fn assert_same(wire: &WireBar, want: &SimBar) {
    assert_eq!(wire.t, want.t_ms);
    assert_eq!(dec(&wire.o), want.open, "open at {}", want.t_ms);
    assert_eq!(dec(&wire.h), want.high, "high at {}", want.t_ms);
    assert_eq!(dec(&wire.l), want.low, "low at {}", want.t_ms);
    assert_eq!(dec(&wire.c), want.close, "close at {}", want.t_ms);
    assert_eq!(dec(&wire.vw), want.vw, "vw at {}", want.t_ms);
    assert_eq!(wire.n, want.n);
    assert_eq!(wire.v.get(), want.volume_wire);
    let rounded = parse_decimal("volume", wire.v.get())
        .unwrap()
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .unwrap();
    assert_eq!(rounded, want.volume, "volume {}", wire.v.get());
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// Follows `next_url` to the end, returning every bar and the number of pages.
async fn fetch_all(client: &reqwest::Client, first: &str) -> (Vec<WireBar>, usize) {
    let mut url = first.to_string();
    let mut bars = Vec::new();
    let mut pages = 0;
    loop {
        let (status, _, body) = get(client, &url).await;
        assert_eq!(status, 200, "{body}");
        let page: Page = serde_json::from_str(&body).unwrap();
        pages += 1;
        assert_eq!(page.status, "OK");
        assert_eq!(
            page.results_count,
            page.results.as_ref().map_or(0, Vec::len)
        );
        bars.extend(page.results.unwrap_or_default());
        match page.next_url {
            Some(next) => {
                assert!(!next.to_ascii_lowercase().contains("apikey"), "{next}");
                assert!(!next.contains(KEY), "{next}");
                url = next;
            }
            None => return (bars, pages),
        }
    }
}

#[tokio::test]
async fn paging_returns_exactly_the_series() {
    let sim = Simulator::start(SimConfig {
        page_size: 400,
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-04?adjusted=false&sort=asc&limit=50000",
        sim.base_url()
    );
    let (bars, pages) = fetch_all(&client, &url).await;
    // 2024-01-02 00:00 to 2024-01-04 23:59:59.999 New York (EST).
    let want = sim::series(
        "AAPL",
        Timeframe::M1,
        utc("2024-01-02T05:00:00Z"),
        utc("2024-01-05T04:59:59.999Z"),
    );
    assert!(pages >= 3, "{pages} pages");
    assert!(want.len() > 1100, "{}", want.len());
    assert_eq!(bars.len(), want.len());
    for (w, s) in bars.iter().zip(&want) {
        assert_same(w, s);
    }

    let seen = sim.requests();
    assert_eq!(seen.len(), pages);
    for r in &seen {
        assert_eq!(r.method, "GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.authorization.as_deref(), Some("Bearer test-key"));
        assert_eq!(r.symbol.as_deref(), Some("AAPL"));
        assert_eq!(
            r.from_ms,
            Some(utc("2024-01-02T05:00:00Z").timestamp_millis())
        );
        assert_eq!(
            r.to_ms,
            Some(utc("2024-01-05T04:59:59.999Z").timestamp_millis())
        );
        assert!(r.bars <= 400);
        assert!(r.target.contains("adjusted=false"), "{}", r.target);
    }
    assert_eq!(seen.iter().map(|r| r.bars).sum::<usize>(), want.len());
    assert!(seen.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn every_timeframe_concurrently_and_limit_caps_pages() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let client = reqwest::Client::new();
    let cases = [
        ("AAPL", "1/minute", Timeframe::M1),
        ("MSFT", "5/minute", Timeframe::M5),
        ("AAPL", "15/minute", Timeframe::M15),
        ("MSFT", "1/hour", Timeframe::H1),
        ("AAPL", "1/day", Timeframe::D1),
    ];
    let (from, to) = (1_709_251_200_000i64, 1_710_460_800_000i64); // 2024-03-01 to 03-15 UTC
    let runs = cases.iter().map(|(sym, span, _)| {
        let url = format!(
            "{}/v2/aggs/ticker/{sym}/range/{span}/{from}/{to}?adjusted=false&sort=asc&limit=97",
            sim.base_url()
        );
        let client = client.clone();
        async move { fetch_all(&client, &url).await }
    });
    let results = futures_util::future::join_all(runs).await;
    for ((sym, _, tf), (bars, pages)) in cases.iter().zip(results) {
        let want = sim::series(
            sym,
            *tf,
            DateTime::from_timestamp_millis(from).unwrap(),
            DateTime::from_timestamp_millis(to).unwrap(),
        );
        assert!(!want.is_empty());
        assert_eq!(bars.len(), want.len(), "{tf}");
        assert_eq!(pages, want.len().div_ceil(97), "{tf}");
        for (w, s) in bars.iter().zip(&want) {
            assert_same(w, s);
        }
    }
}

#[tokio::test]
async fn weekend_has_no_results_key() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/2024-01-06/2024-01-07?adjusted=false&sort=asc&limit=50000",
        sim.base_url()
    );
    let (status, headers, body) = get(&client, &url).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["resultsCount"], 0);
    assert!(v.get("results").is_none(), "{body}");
    assert!(v.get("next_url").is_none(), "{body}");
    let page: Page = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (page.ticker.as_str(), page.query_count, page.count),
        ("AAPL", 0, 0)
    );
    assert!(!page.adjusted);
    assert_eq!(page.request_id.len(), 32);
}

#[tokio::test]
async fn key_only_in_the_authorization_header() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let client = reqwest::Client::new();
    let path = "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-03?adjusted=false";
    let url = format!("{}{path}", sim.base_url());
    let check = |resp: reqwest::Response| async move {
        assert_eq!(resp.status().as_u16(), 401);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["status"], "NOT_AUTHORIZED");
        v["message"].as_str().unwrap().to_string()
    };
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(check(none).await, "Unknown API Key");
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(check(wrong).await, "Unknown API Key");
    let query = client
        .get(format!("{url}&apiKey={KEY}"))
        .send()
        .await
        .unwrap();
    check(query).await;
    // Even alongside a good header: the key must never travel in a URL.
    let both = client
        .get(format!("{url}&apiKey={KEY}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    check(both).await;
    let good = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(good.status().as_u16(), 200);

    let seen = sim.requests();
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401, 401, 401, 401, 200]
    );
    assert_eq!(seen[0].authorization, None);
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer nope"));
    assert_eq!(seen[2].target, format!("{path}&apiKey={KEY}"));
}

#[tokio::test]
async fn unknown_and_faulty_tickers_and_bad_parameters() {
    let sim = Simulator::start(SimConfig {
        symbol_faults: [
            ("MSFT".to_string(), SymbolFault::Forbidden),
            ("BAD".to_string(), SymbolFault::ServerError),
            ("AAPL".to_string(), SymbolFault::NotFound),
        ]
        .into(),
        symbols: vec!["AAPL".into(), "MSFT".into(), "BAD".into(), "IBM".into()],
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = |t: &str, span: &str| {
        format!(
            "{}/v2/aggs/ticker/{t}/range/{span}/2024-01-02/2024-01-03?adjusted=false",
            sim.base_url()
        )
    };
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

    let (status, _, body) = get(&client, &url("NOPE", "1/day")).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["status"], "NOT_FOUND");
    assert_eq!(json(&body)["message"], "Ticker not found.");
    let (status, _, body) = get(&client, &url("AAPL", "1/day")).await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (404, "NOT_FOUND".into())
    );
    let (status, _, body) = get(&client, &url("MSFT", "1/day")).await;
    assert_eq!(status, 403);
    assert_eq!(json(&body)["status"], "NOT_AUTHORIZED");
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .starts_with("You are not entitled to this data"));
    for _ in 0..2 {
        let (status, _, body) = get(&client, &url("BAD", "1/day")).await;
        assert_eq!(status, 500);
        assert_eq!(json(&body)["error"], "internal error");
    }
    let (status, _, body) = get(&client, &url("IBM", "2/minute")).await;
    assert_eq!(status, 400);
    assert_eq!(json(&body)["status"], "ERROR");
    let (status, _, _) = get(&client, &url("IBM", "1/week")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&client, &url("IBM", "1/day")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn queued_faults_take_one_request_each() {
    let sim = Simulator::start(SimConfig {
        faults: vec![
            Fault::TooManyRequests {
                retry_after_secs: 7,
            },
            Fault::ServerError,
            Fault::None,
            Fault::Unauthorized,
        ],
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-03?adjusted=false",
        sim.base_url()
    );
    let (status, headers, body) = get(&client, &url).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
    assert!(body.contains("exceeded the maximum requests"), "{body}");
    let (status, _, body) = get(&client, &url).await;
    assert_eq!(status, 500);
    assert!(body.contains(r#""error":"internal error""#), "{body}");
    assert_eq!(get(&client, &url).await.0, 200);
    assert_eq!(get(&client, &url).await.0, 401);
    assert_eq!(get(&client, &url).await.0, 200);
    sim.push_faults([Fault::ServerError]);
    assert_eq!(get(&client, &url).await.0, 500);
    assert_eq!(get(&client, &url).await.0, 200);
    let faults: Vec<_> = sim.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some(Fault::TooManyRequests {
                retry_after_secs: 7
            }),
            Some(Fault::ServerError),
            Some(Fault::None),
            Some(Fault::Unauthorized),
            None,
            Some(Fault::ServerError),
            None,
        ]
    );
}

#[tokio::test]
async fn truncated_bodies_and_resets_are_errors() {
    let sim = Simulator::start(SimConfig {
        faults: vec![Fault::TruncatedBody, Fault::ConnectionReset],
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-02?adjusted=false",
        sim.base_url()
    );
    let resp = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let err = resp.bytes().await.unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    let err = client.get(&url).bearer_auth(KEY).send().await.unwrap_err();
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    // Both faults consumed: the client recovers on a fresh connection.
    let (status, _, body) = get(&client, &url).await;
    assert_eq!(status, 200);
    let page: Page = serde_json::from_str(&body).unwrap();
    assert!(page.results_count > 300);
    let seen = sim.requests();
    assert_eq!(
        seen.iter()
            .map(|r| (r.status, r.bars > 0))
            .collect::<Vec<_>>(),
        [(200, false), (0, false), (200, true)]
    );
}

#[tokio::test]
async fn latency_and_slow_bodies() {
    let sim = Simulator::start(SimConfig {
        latency: Duration::from_millis(100),
        faults: vec![Fault::SlowBody {
            total: Duration::from_millis(300),
        }],
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-02?adjusted=false",
        sim.base_url()
    );
    let started = Instant::now();
    let resp = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    let head_at = started.elapsed();
    let body = resp.text().await.unwrap();
    let body_took = started.elapsed() - head_at;
    assert!(head_at >= Duration::from_millis(100), "{head_at:?}");
    // The head comes at once, the body over the fault's 300 ms.
    assert!(body_took >= Duration::from_millis(250), "{body_took:?}");
    let slow: Page = serde_json::from_str(&body).unwrap();
    let started = Instant::now();
    let (_, _, body) = get(&client, &url).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    let fast: Page = serde_json::from_str(&body).unwrap();
    assert_eq!(slow.results_count, fast.results_count);
    let faults: Vec<_> = sim.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some(Fault::SlowBody {
                total: Duration::from_millis(300)
            }),
            None
        ]
    );
}

#[tokio::test]
async fn daily_bars_are_stamped_midnight_new_york() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let client = reqwest::Client::new();
    // Across the March 2024 DST change (10 March): stamps move from 05:00Z to 04:00Z.
    let url = format!(
        "{}/v2/aggs/ticker/MSFT/range/1/day/2024-03-04/2024-03-15?adjusted=false",
        sim.base_url()
    );
    let (bars, _) = fetch_all(&client, &url).await;
    assert_eq!(bars.len(), 10);
    assert_eq!(bars[0].t, utc("2024-03-04T05:00:00Z").timestamp_millis());
    assert_eq!(bars[9].t, utc("2024-03-15T04:00:00Z").timestamp_millis());
    for b in &bars {
        assert!(is_midnight_new_york(
            DateTime::from_timestamp_millis(b.t).unwrap()
        ));
    }
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/day/2020-01-02/2020-01-02?adjusted=false",
        sim.base_url()
    );
    let (bars, _) = fetch_all(&client, &url).await;
    assert_eq!(bars.len(), 1);
    assert_eq!(bars[0].t, 1_577_941_200_000);
}

#[tokio::test]
async fn data_exists_only_inside_the_window() {
    let (from, to) = (utc("2024-01-03T15:00:00Z"), utc("2024-01-04T15:00:00Z"));
    let sim = Simulator::start(SimConfig {
        data_from: Some(from),
        data_to: Some(to),
        ..cfg()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/5/minute/2024-01-01/2024-01-31?adjusted=false&limit=50000",
        sim.base_url()
    );
    let (bars, _) = fetch_all(&client, &url).await;
    let want = sim::series("AAPL", Timeframe::M5, from, to);
    assert_eq!(bars.len(), want.len());
    assert_eq!(bars[0].t, from.timestamp_millis());
    assert_eq!(bars.last().unwrap().t, to.timestamp_millis());
}

/// Sends raw bytes on a fresh connection and returns everything the server wrote before closing.
async fn raw(sim: &Simulator, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    // Half-close: a server waiting for more input sees the end rather than making us wait.
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hostile_requests_get_answers_not_panics() {
    let sim = Simulator::start(cfg()).await.unwrap();
    assert!(raw(&sim, b"hello\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    assert!(raw(&sim, b"\x00\xff\xfe\x01 \x02 \x03\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    assert!(raw(&sim, &[b'A'; 20_000])
        .await
        .starts_with("HTTP/1.1 431 "));
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(17_000));
    assert!(raw(&sim, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431 "));
    assert!(raw(&sim, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 505 "));
    let chunked = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert!(raw(&sim, chunked).await.starts_with("HTTP/1.1 501 "));
    // Half a head, then gone.
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    s.write_all(b"GET /v2/aggs").await.unwrap();
    drop(s);

    // Keep-alive with pipelining: both answered in order, then `Connection: close` ends it.
    let path = "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-02?adjusted=false";
    let req = |close: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{close}\r\n")
    };
    let two = format!("{}{}", req(""), req("Connection: close\r\n"));
    let out = raw(&sim, two.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("Connection: close"));
    // A body on a GET is read past, not taken for the next request.
    let with_body = format!(
        "GET {path} HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 5\r\n\r\nxxxxx{}",
        req("Connection: close\r\n")
    );
    let out = raw(&sim, with_body.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");

    // HEAD gets the head alone, so the connection stays in step for the next request.
    let head_then_get = format!(
        "HEAD {path} HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\r\n{}",
        req("Connection: close\r\n")
    );
    let out = raw(&sim, head_then_get.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
    let second = out.find("HTTP/1.1 200 OK").unwrap();
    assert!(out[..second].ends_with("\r\n\r\n"), "{out}");

    let client = reqwest::Client::new();
    let (status, _, _) = get(&client, &format!("{}{path}", sim.base_url())).await;
    assert_eq!(status, 200);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [400, 400, 431, 431, 505, 501, 200, 200, 200, 200, 405, 200, 200]
    );
}

#[tokio::test]
async fn fuzzed_requests_never_panic_the_server() {
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

    let sim = Simulator::start(cfg()).await.unwrap();
    let valid = format!(
        "GET /v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-05?adjusted=false&limit=2&cursor=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 0\r\n\r\n"
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..300 {
        let mut input: Vec<u8> = if round < 100 {
            (0..rand(200)).map(|_| rand(256) as u8).collect()
        } else {
            valid.as_bytes().to_vec()
        };
        for _ in 0..1 + rand(4) {
            let at = rand(input.len().max(1));
            match rand(3) {
                0 if !input.is_empty() => input[at] = rand(256) as u8,
                1 => input.insert(at.min(input.len()), rand(256) as u8),
                _ if !input.is_empty() => {
                    input.remove(at);
                }
                _ => {}
            }
        }
        input.extend_from_slice(b"\r\n\r\n");
        let out = raw(&sim, &input).await;
        // Silence is allowed only when the input promised a body it never sent. No fault is
        // queued, so a 500 would be a panic caught while building the answer.
        assert!(
            (out.starts_with("HTTP/1.1 ") && !out.starts_with("HTTP/1.1 500")) || out.is_empty(),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(&input)
        );
    }
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-02",
        sim.base_url()
    );
    assert_eq!(get(&client, &url).await.0, 200);
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn stop_closes_the_port_and_pooled_connections() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let addr = sim.local_addr();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-02",
        sim.base_url()
    );
    assert_eq!(get(&client, &url).await.0, 200);
    sim.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(client.get(&url).bearer_auth(KEY).send().await.is_err());
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
fn the_binary_serves_until_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_mdingest-sim"))
        .args(["--listen", "127.0.0.1:0", "--symbols", "AAPL,BRK.B"])
        .args([
            "--fault",
            "429:2",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-02",
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
    let base = line
        .trim_end()
        .strip_prefix("mdingest-sim listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{base}/v2/aggs/ticker/BRK.B/range/1/day/2024-01-01/2024-01-05");
        let (status, headers, _) = get(&client, &url).await;
        assert_eq!(
            (status, &headers["retry-after"]),
            (429, &"2".parse().unwrap())
        );
        let (bars, _) = fetch_all(&client, &url).await;
        // --from/--to restrict the data to one New York day.
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].t, utc("2024-01-02T05:00:00Z").timestamp_millis());
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
    // The second line names the stream; nothing follows it.
    assert!(
        rest.starts_with("mdingest-sim stream on ws://127.0.0.1:") && rest.lines().count() == 1,
        "{rest:?}"
    );
}

#[test]
fn the_binary_refuses_bad_arguments_in_one_line() {
    for args in [
        &["--fault", "teapot"][..],
        &["--listen", "0.0.0.0:0"],
        &["--symbols", "aapl"],
        &["--from", "2024-02-30"],
        &["--nope"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mdingest-sim"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mdingest-sim: error: "), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// A million minute bars in pages of 50,000, as a backfill would pull them. Run with
/// `cargo test --release --test sim -- --ignored` (debug builds are not representative).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_million_minute_bars_quickly() {
    let sim = Simulator::start(cfg()).await.unwrap();
    let client = reqwest::Client::new();
    let mut url = format!(
        "{}/v2/aggs/ticker/AAPL/range/1/minute/2010-01-01/2022-12-31?adjusted=false&sort=asc&limit=50000",
        sim.base_url()
    );
    let started = Instant::now();
    let (mut bars, mut bytes) = (0usize, 0usize);
    while bars < 1_000_000 {
        let body = client
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        bytes += body.len();
        let page: Page = serde_json::from_slice(&body).unwrap();
        bars += page.results_count;
        url = page.next_url.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!("{bars} bars, {} MB in {elapsed:?}", bytes / 1_000_000);
    let served: Duration = sim.requests().windows(2).map(|w| w[1].at - w[0].at).sum();
    eprintln!("between first and last request: {served:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}
