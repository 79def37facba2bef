//! Polygon's aggregates endpoint: authentication, routing, parameters, paging and the bodies,
//! in Polygon's own shapes (status words, `request_id`, `message` vs `error`).

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;

use super::http::Request;
use super::series::{ny_day_bounds, splitmix, Generator, Grid, RawBar};
use super::SymbolFault;
use crate::domain::Timeframe;

/// Polygon's default and maximum `limit`.
const DEFAULT_LIMIT: u64 = 5_000;
const MAX_LIMIT: u64 = 50_000;

const RATE_LIMITED: &str = "You've exceeded the maximum requests per minute, please wait or upgrade your subscription to continue. https://polygon.io/pricing";
const NOT_ENTITLED: &str =
    "You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing";

/// What the endpoint answers from; fixed when the simulator starts.
#[derive(Debug)]
pub(crate) struct Api {
    pub api_key: String,
    pub symbols: HashSet<String>,
    /// Changed while serving by [`super::Simulator::set_symbol_fault`].
    pub symbol_faults: std::sync::Mutex<HashMap<String, SymbolFault>>,
    /// Yahoo's splits and dividends per symbol; changed while serving by
    /// [`super::Simulator::add_yahoo_action`].
    pub yahoo_actions: std::sync::Mutex<super::yahoo::Actions>,
    pub data_from_ms: Option<i64>,
    pub data_to_ms: Option<i64>,
    pub page_size: usize,
    pub base_url: String,
}

/// A response before it is put on the wire.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub extra: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub bars: usize,
}

/// A request id shaped like Polygon's (32 hex digits), unique per simulator.
pub(crate) fn request_id(n: u64) -> String {
    format!("{:016x}{:016x}", splitmix(n), splitmix(!n))
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Polygon's error shape: `{"status":…,"request_id":…,"message"|"error":…}`.
pub(crate) fn error(status: u16, word: &str, key: &str, id: &str, text: &str) -> Answer {
    let body = format!(
        "{{\"status\":{},\"request_id\":{},\"{key}\":{}}}",
        json_str(word),
        json_str(id),
        json_str(text)
    );
    Answer {
        status,
        extra: Vec::new(),
        body: body.into_bytes(),
        bars: 0,
    }
}

/// A proxy's or CDN's page behind a 200: not aggregates JSON at all.
pub(crate) fn html_page() -> Answer {
    Answer {
        status: 200,
        extra: Vec::new(),
        body: b"<html><body><h1>Service temporarily busy</h1></body></html>".to_vec(),
        bars: 0,
    }
}

pub(crate) fn bad_request(id: &str, text: &str) -> Answer {
    error(400, "ERROR", "error", id, text)
}

pub(crate) fn unauthorized(id: &str, text: &str) -> Answer {
    error(401, "NOT_AUTHORIZED", "message", id, text)
}

pub(crate) fn server_error(id: &str) -> Answer {
    error(500, "ERROR", "error", id, "internal error")
}

pub(crate) fn rate_limited(id: &str, retry_after_secs: u64) -> Answer {
    let mut a = error(429, "ERROR", "error", id, RATE_LIMITED);
    a.extra.push(("Retry-After", retry_after_secs.to_string()));
    a
}

/// The error a standing fault answers with; `None` for faults that answer with data.
fn symbol_fault(id: &str, fault: SymbolFault) -> Option<Answer> {
    match fault {
        SymbolFault::NotFound => Some(ticker_not_found(id)),
        SymbolFault::Forbidden => Some(error(403, "NOT_AUTHORIZED", "message", id, NOT_ENTITLED)),
        SymbolFault::ServerError => Some(server_error(id)),
        SymbolFault::RateLimited => Some(rate_limited(id, 1)),
        SymbolFault::InconsistentBars
        | SymbolFault::Padded
        | SymbolFault::Oversized
        | SymbolFault::SecondsTimestamps
        | SymbolFault::EndlessCursor
        | SymbolFault::EchoKey => None,
    }
}

fn ticker_not_found(id: &str) -> Answer {
    error(404, "NOT_FOUND", "message", id, "Ticker not found.")
}

// ---------------------------------------------------------------------------------------------
// Parsing the target.

fn split_target(target: &str) -> (&str, &str) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    target.split_once('?').unwrap_or((target, ""))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v2/aggs/ticker/{T}/range/{multiplier}/{timespan}/{from}/{to}`, still unvalidated.
struct AggsPath<'a> {
    ticker: Option<String>,
    multiplier: &'a str,
    timespan: &'a str,
    from: &'a str,
    to: &'a str,
}

fn aggs_path(path: &str) -> Option<AggsPath<'_>> {
    let s: Vec<&str> = path.split('/').collect();
    match s.as_slice() {
        ["", "v2", "aggs", "ticker", ticker, "range", multiplier, timespan, from, to]
            if !ticker.is_empty() =>
        {
            Some(AggsPath {
                ticker: percent_decode(ticker),
                multiplier,
                timespan,
                from,
                to,
            })
        }
        _ => None,
    }
}

fn timeframe(multiplier: &str, timespan: &str) -> Option<Timeframe> {
    match (multiplier.parse::<u32>().ok()?, timespan) {
        (1, "minute") => Some(Timeframe::M1),
        (5, "minute") => Some(Timeframe::M5),
        (15, "minute") => Some(Timeframe::M15),
        (1, "hour") => Some(Timeframe::H1),
        (1, "day") => Some(Timeframe::D1),
        _ => None,
    }
}

/// Epoch milliseconds, or a `YYYY-MM-DD` day in New York (its first or last millisecond).
fn parse_bound(s: &str, end: bool) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return None;
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let (first, last) = ny_day_bounds(day)?;
    Some(if end { last } else { first })
}

#[derive(Default)]
struct Query {
    adjusted: Option<String>,
    sort: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    api_key: bool,
}

fn parse_query(query: &str) -> Query {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "adjusted" => q.adjusted = Some(v.into_owned()),
            "sort" => q.sort = Some(v.into_owned()),
            "limit" => q.limit = Some(v.into_owned()),
            "cursor" => q.cursor = Some(v.into_owned()),
            k if k.eq_ignore_ascii_case("apikey") => q.api_key = true,
            _ => {}
        }
    }
    q
}

/// The parts of a target worth recording even when the request is refused.
pub(crate) struct Described {
    pub symbol: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

pub(crate) fn describe(target: &str) -> Described {
    let (path, query) = split_target(target);
    if super::yahoo::is_yahoo(path) {
        let (symbol, p1, p2) = super::yahoo::describe(path, query);
        return Described {
            symbol,
            from_ms: p1.map(|s| s.saturating_mul(1000)),
            to_ms: p2.map(|s| s.saturating_mul(1000) - 1),
        };
    }
    match aggs_path(path) {
        Some(p) => Described {
            symbol: p.ticker,
            from_ms: parse_bound(p.from, false),
            to_ms: parse_bound(p.to, true),
        },
        None => Described {
            symbol: None,
            from_ms: None,
            to_ms: None,
        },
    }
}

/// Redacts an `apiKey` query value, for logs: a client that misplaces its key must not have it
/// printed.
pub(crate) fn redact_target(target: &str) -> String {
    let (path, query) = split_target(target);
    if !query.to_ascii_lowercase().contains("apikey") {
        return crate::text::excerpt(target, 512);
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("apikey") => format!("{k}=REDACTED"),
            _ => kv.to_string(),
        })
        .collect();
    crate::text::excerpt(&format!("{path}?{}", redacted.join("&")), 512)
}

fn authorized(req: &Request, key: &str) -> bool {
    let mut values = req.headers_named("authorization");
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value
        .split_once(' ')
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token == key)
}

// ---------------------------------------------------------------------------------------------
// Answering.

impl Api {
    /// The answer to a well-formed request when no fault intervenes.
    pub(crate) fn answer(&self, req: &Request, id: &str) -> Answer {
        let (path, query) = split_target(&req.target);
        if path == super::alpaca::PATH {
            return self.alpaca_bars(req, query);
        }
        if super::yahoo::is_yahoo(path) {
            return self.yahoo_chart(path, query);
        }
        let q = parse_query(query);
        if q.api_key {
            return unauthorized(
                id,
                "the apiKey query parameter is not accepted here: send Authorization: Bearer <key>",
            );
        }
        if !authorized(req, &self.api_key) {
            return unauthorized(id, "Unknown API Key");
        }
        let Some(p) = aggs_path(path) else {
            return error(404, "NOT_FOUND", "message", id, "Not found");
        };
        if req.method != "GET" {
            let mut a = error(405, "ERROR", "error", id, "method not allowed");
            a.extra.push(("Allow", "GET".to_string()));
            return a;
        }
        let Some(ticker) = p.ticker else {
            return bad_request(id, "ticker is not valid percent-encoded UTF-8");
        };
        let Some(tf) = timeframe(p.multiplier, p.timespan) else {
            return bad_request(
                id,
                "unsupported multiplier/timespan: expected 1/minute, 5/minute, 15/minute, 1/hour or 1/day",
            );
        };
        let (Some(from), Some(to)) = (parse_bound(p.from, false), parse_bound(p.to, true)) else {
            return bad_request(id, "from and to must be epoch milliseconds or YYYY-MM-DD");
        };
        let adjusted = match q.adjusted.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => return bad_request(id, "adjusted must be true or false"),
        };
        match q.sort.as_deref() {
            None | Some("asc") => {}
            Some("desc") => return bad_request(id, "sort=desc is not simulated"),
            Some(_) => return bad_request(id, "sort must be asc or desc"),
        }
        let limit = match q.limit.as_deref().map(str::parse::<u64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if n > 0 => n.min(MAX_LIMIT),
            Some(_) => return bad_request(id, "limit must be a positive integer"),
        };
        let cursor = match q.cursor.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return bad_request(id, "invalid cursor"),
        };
        let fault = super::server::lock(&self.symbol_faults)
            .get(&ticker)
            .copied();
        if let Some(answer) = fault.and_then(|f| symbol_fault(id, f)) {
            return answer;
        }
        if fault == Some(SymbolFault::EchoKey) {
            // A vendor's error in a 200, quoting the key it was sent.
            let text = format!("key {} is not entitled to {ticker}", self.api_key);
            let mut a = error(200, "ERROR", "error", id, &text);
            a.status = 200;
            return a;
        }
        if !self.symbols.contains(&ticker) {
            return ticker_not_found(id);
        }

        let page = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(self.page_size);
        let lo = from
            .max(cursor.unwrap_or(i64::MIN))
            .max(self.data_from_ms.unwrap_or(i64::MIN));
        let hi = to.min(self.data_to_ms.unwrap_or(i64::MAX));
        let gen = Generator::new(&ticker, tf);
        let mut grid = Grid::new(&ticker, tf, lo, hi);
        let mut bars: Vec<RawBar> = grid.by_ref().take(page).map(|t| gen.bar(t)).collect();
        match fault {
            Some(SymbolFault::InconsistentBars) => {
                for b in bars.iter_mut().filter(|b| super::is_inconsistent(b.t)) {
                    std::mem::swap(&mut b.h, &mut b.l);
                }
            }
            Some(SymbolFault::SecondsTimestamps) => bars.iter_mut().for_each(|b| b.t /= 1000),
            Some(SymbolFault::Oversized) if !bars.is_empty() => {
                let page = bars.clone();
                bars = page
                    .iter()
                    .cycle()
                    .take(OVERSIZED_RESULTS)
                    .copied()
                    .collect();
            }
            _ => {}
        }
        let next = grid.next();
        // An endless chain: the same page again under a new cursor, for ever.
        let (next, nonce) = match fault {
            Some(SymbolFault::EndlessCursor) => (Some(lo), format!("&n={id}")),
            _ => (next, String::new()),
        };
        // The cursor is simply the next bar's start; clients must treat next_url as opaque.
        let next_url = next.map(|next| {
            format!(
                "{}/v2/aggs/ticker/{}/range/{}/{}/{}/{}?cursor={next}{nonce}&adjusted={adjusted}&sort=asc&limit={limit}",
                self.base_url,
                percent_encode_segment(&ticker),
                p.multiplier,
                p.timespan,
                p.from,
                p.to,
            )
        });
        Answer {
            status: 200,
            extra: Vec::new(),
            body: aggs_body(
                &ticker,
                adjusted,
                &bars,
                id,
                next_url.as_deref(),
                if fault == Some(SymbolFault::Padded) {
                    PAD_BYTES
                } else {
                    0
                },
            ),
            bars: bars.len(),
        }
    }
}

/// Results in a page of `SymbolFault::Oversized`: five times Polygon's largest, 31 MB.
const OVERSIZED_RESULTS: usize = 250_000;

/// What `SymbolFault::Padded` adds to each result: a 30-day window of minute bars (about 8,600)
/// makes a 31 MB page.
const PAD_BYTES: usize = 3_500;

/// The page, written directly into one buffer: no per-bar JSON values. Each result carries an
/// extra field of `pad` bytes when asked.
fn aggs_body(
    ticker: &str,
    adjusted: bool,
    bars: &[RawBar],
    id: &str,
    next_url: Option<&str>,
    pad: usize,
) -> Vec<u8> {
    use super::series::push_u64;
    let mut b = Vec::with_capacity(512 + bars.len() * (128 + pad));
    let write = |bar: &RawBar, b: &mut Vec<u8>| {
        bar.write_json(b);
        if pad > 0 {
            b.pop();
            b.extend_from_slice(b",\"pad\":\"");
            b.resize(b.len() + pad, b'x');
            b.extend_from_slice(b"\"}");
        }
    };
    let k = bars.len() as u64;
    b.extend_from_slice(b"{\"ticker\":");
    b.extend_from_slice(json_str(ticker).as_bytes());
    b.extend_from_slice(b",\"queryCount\":");
    push_u64(&mut b, k);
    b.extend_from_slice(b",\"resultsCount\":");
    push_u64(&mut b, k);
    b.extend_from_slice(if adjusted {
        b",\"adjusted\":true"
    } else {
        b",\"adjusted\":false"
    });
    // Polygon omits `results` altogether when there are none; clients must cope.
    if let Some((first, rest)) = bars.split_first() {
        b.extend_from_slice(b",\"results\":[");
        write(first, &mut b);
        for bar in rest {
            b.push(b',');
            write(bar, &mut b);
        }
        b.push(b']');
    }
    b.extend_from_slice(b",\"status\":\"OK\",\"request_id\":");
    b.extend_from_slice(json_str(id).as_bytes());
    b.extend_from_slice(b",\"count\":");
    push_u64(&mut b, k);
    if let Some(url) = next_url {
        b.extend_from_slice(b",\"next_url\":");
        b.extend_from_slice(json_str(url).as_bytes());
    }
    b.push(b'}');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Api {
        Api {
            api_key: "k".into(),
            symbols: ["AAPL".to_string(), "I:SPX".to_string()].into(),
            symbol_faults: Default::default(),
            yahoo_actions: Default::default(),
            data_from_ms: None,
            data_to_ms: None,
            page_size: 3,
            base_url: "http://127.0.0.1:1".into(),
        }
    }

    fn get(target: &str) -> Request {
        Request::parse(
            format!("GET {target} HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n").as_bytes(),
        )
        .unwrap()
    }

    fn json(a: &Answer) -> serde_json::Value {
        serde_json::from_slice(&a.body).unwrap()
    }

    #[test]
    fn bounds() {
        assert_eq!(parse_bound("1577941200000", false), Some(1_577_941_200_000));
        assert_eq!(parse_bound("2020-01-02", false), Some(1_577_941_200_000));
        assert_eq!(parse_bound("2020-01-02", true), Some(1_578_027_599_999));
        assert_eq!(parse_bound("-5", false), Some(-5));
        for bad in [
            "",
            "-",
            "2020-1-02",
            "2020-02-30",
            "99999999999999999999",
            "2020/01/02",
        ] {
            assert_eq!(parse_bound(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn paging_and_next_url() {
        let a = api().answer(
            &get("/v2/aggs/ticker/I%3ASPX/range/1/day/2020-01-01/2020-01-10?adjusted=false"),
            "id",
        );
        assert_eq!(a.status, 200);
        let v = json(&a);
        assert_eq!(v["resultsCount"], 3);
        assert_eq!(v["ticker"], "I:SPX");
        assert_eq!(v["adjusted"], false);
        let next = v["next_url"].as_str().unwrap();
        assert!(
            next.starts_with("http://127.0.0.1:1/v2/aggs/ticker/I%3ASPX/range/1/day/2020-01-01/2020-01-10?cursor="),
            "{next}"
        );
        assert!(
            next.ends_with("&adjusted=false&sort=asc&limit=5000"),
            "{next}"
        );
    }

    #[test]
    fn refusals() {
        let api = api();
        let status = |t: &str| api.answer(&get(t), "id").status;
        assert_eq!(status("/v2/aggs/ticker/AAPL/range/2/minute/1/2"), 400);
        assert_eq!(status("/v2/aggs/ticker/AAPL/range/x/minute/1/2"), 400);
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/yesterday/2"),
            400
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?limit=0"),
            400
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?limit=-1"),
            400
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?sort=desc"),
            400
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?cursor=zz"),
            400
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?adjusted=maybe"),
            400
        );
        assert_eq!(status("/v2/aggs/ticker/%FF/range/1/minute/1/2"), 400);
        assert_eq!(status("/v2/aggs/ticker/%4/range/1/minute/1/2"), 400);
        assert_eq!(status("/v2/aggs/ticker/MSFT/range/1/minute/1/2"), 404);
        assert_eq!(status("/v2/aggs/ticker/AAPL/range/1/minute/1/2/"), 404);
        assert_eq!(status("/"), 404);
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?limit=999999"),
            200
        );
        assert_eq!(
            status("/v2/aggs/ticker/AAPL/range/1/minute/1/2?apiKey=k"),
            401
        );
        let post = Request::parse(
            b"POST /v2/aggs/ticker/AAPL/range/1/minute/1/2 HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n",
        )
        .unwrap();
        let a = api.answer(&post, "id");
        assert_eq!(
            (a.status, a.extra.clone()),
            (405, vec![("Allow", "GET".to_string())])
        );
        let anonymous =
            Request::parse(b"GET /v2/aggs/ticker/AAPL/range/1/minute/1/2 HTTP/1.1\r\n\r\n")
                .unwrap();
        let a = api.answer(&anonymous, "id");
        assert_eq!(a.status, 401);
        assert_eq!(json(&a)["message"], "Unknown API Key");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_target("/v2/x?limit=5&apiKey=secret&sort=asc"),
            "/v2/x?limit=5&apiKey=REDACTED&sort=asc"
        );
        assert_eq!(redact_target("/v2/x?limit=5"), "/v2/x?limit=5");
    }
}
