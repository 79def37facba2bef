//! Polygon's aggregates JSON (`/v2/aggs/ticker/…/range/…`) to bars and rejections. Pure: bytes
//! in, values out.
//!
//! Numbers are read as their JSON text (`RawValue`) and parsed straight to `Decimal`, so a price
//! never passes through `f64`. Deserialization borrows from the body: no allocation per bar
//! beyond the bar itself. serde checks the whole body and cuts `results` into one text per
//! result; a result of the usual flat shape is then split by hand ([`scan_flat`]), the rest by
//! serde. A 50,000-bar page (5 MB) decodes in about 20 ms in release, a third of it serde's
//! pass over the body.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::domain::{parse_decimal, Bar, DataSource, DomainError, Symbol};
use crate::ingest::Rejection;
use crate::text::excerpt;

/// How much of a rejected result object `details.raw` keeps.
const RAW_MAX_CHARS: usize = 1024;
/// How much of a body that is not aggregates JSON an error quotes.
const BODY_EXCERPT_CHARS: usize = 120;

/// One response's worth of aggregates.
#[derive(Debug)]
pub struct AggsPage {
    pub bars: Vec<Bar>,
    /// Results that could not become bars.
    pub rejections: Vec<Rejection>,
    /// The next page, as Polygon gave it (absolute, with a cursor).
    pub next_url: Option<String>,
    /// `status: "DELAYED"`: the plan's data lags real time, so the newest bars may still change.
    pub delayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("response is not aggregates JSON ({reason}){}", quoted(.excerpt))]
    NotAggregates { reason: String, excerpt: String },
    /// A body in the error shape (`"status": "ERROR"`) despite a 2xx status.
    #[error("status {status}: {message}")]
    Vendor { status: String, message: String },
    #[error("response is for ticker {found:?}, not {expected}")]
    TickerMismatch { expected: String, found: String },
    /// More results than any page may hold: memory is bounded in bars, whatever a vendor sends.
    #[error("the page holds {0} results, more than the {MAX_RESULTS} a page may hold")]
    TooManyResults(usize),
}

/// Polygon's largest page (`limit`): a page holding more is refused before it is decoded.
pub const MAX_RESULTS: usize = 50_000;

impl DecodeError {
    /// The same error with `scrub` applied to every text that came from the vendor.
    pub fn scrubbed(self, scrub: impl Fn(&str) -> String) -> DecodeError {
        match self {
            DecodeError::NotAggregates { reason, excerpt } => DecodeError::NotAggregates {
                reason: scrub(&reason),
                excerpt: scrub(&excerpt),
            },
            DecodeError::Vendor { status, message } => DecodeError::Vendor {
                status: scrub(&status),
                message: scrub(&message),
            },
            DecodeError::TickerMismatch { expected, found } => DecodeError::TickerMismatch {
                expected,
                found: scrub(&found),
            },
            e @ DecodeError::TooManyResults(_) => e,
        }
    }

    /// Not aggregates JSON at all (HTML, a cut body): worth another request.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, DecodeError::NotAggregates { .. })
    }
}

fn quoted(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a Polygon aggregates object")]
struct Envelope<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ticker: Option<Cow<'a, str>>,
    /// Absent when there is no data. Each result is kept as text first, so that one bad result
    /// is rejected with its own text while the others decode.
    #[serde(borrow, default)]
    results: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    next_url: Option<String>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// One result; `null` reads as absent. `n`, `vw` and `otc` are not stored.
#[derive(Deserialize)]
struct Agg<'a> {
    #[serde(borrow, default)]
    t: Option<&'a RawValue>,
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

/// The vendor's own message out of an error body (`error`, else `message`).
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow, default)]
        error: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
    }
    let m: Msg = serde_json::from_slice(body).ok()?;
    [m.error, m.message]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .map(Cow::into_owned)
}

/// Decodes one aggregates response for `symbol`. Results that cannot become bars are returned
/// as rejections; a body that is not aggregates JSON at all is an error.
pub fn decode_aggs(body: &[u8], symbol: &Symbol) -> Result<AggsPage, DecodeError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| not_aggregates(body, e))?;
    let delayed = env.status.as_deref() == Some("DELAYED");
    match env.status.as_deref() {
        Some("OK" | "DELAYED") => {}
        Some(other) => {
            let message = env
                .error
                .or(env.message)
                .map_or_else(|| "no message".into(), |m| excerpt(&m, 300));
            return Err(DecodeError::Vendor {
                status: excerpt(other, 40),
                message,
            });
        }
        None if env.results.is_none() => {
            return Err(DecodeError::NotAggregates {
                reason: "neither status nor results".into(),
                excerpt: body_excerpt(body),
            })
        }
        None => {}
    }
    if let Some(ticker) = env.ticker.as_deref() {
        if ticker != symbol.as_str() {
            return Err(DecodeError::TickerMismatch {
                expected: symbol.to_string(),
                found: excerpt(ticker, 40),
            });
        }
    }
    let results = env.results.unwrap_or_default();
    if results.len() > MAX_RESULTS {
        return Err(DecodeError::TooManyResults(results.len()));
    }
    let mut bars = Vec::with_capacity(results.len());
    let mut rejections = Vec::new();
    for raw in results {
        match decode_one(raw, symbol) {
            Ok(bar) => bars.push(bar),
            Err(r) => rejections.push(r),
        }
    }
    Ok(AggsPage {
        bars,
        rejections,
        next_url: env.next_url.filter(|u| !u.is_empty()),
        delayed,
    })
}

fn decode_one(raw: &RawValue, symbol: &Symbol) -> Result<Bar, Rejection> {
    let reject = |ts: Option<DateTime<Utc>>, check: &'static str, reason: String| {
        Rejection::rejected(
            DataSource::Polygon,
            Some(symbol.to_string()),
            ts,
            check,
            json!({ "reason": reason, "raw": excerpt(raw.get(), RAW_MAX_CHARS) }),
        )
    };
    let fields = match scan_flat(raw.get()) {
        Some(f) => f,
        None => serde_json::from_str::<Agg>(raw.get())
            .map(Fields::from)
            .map_err(|e| {
                reject(
                    None,
                    "malformed_row",
                    format!("result is not an aggregate: {e}"),
                )
            })?,
    };
    let ts = match fields.t {
        None => {
            return Err(reject(
                None,
                "missing_value",
                "missing t (timestamp)".into(),
            ))
        }
        Some(t) => stamp_ms("t", t).map_err(|(check, reason)| reject(None, check, reason))?,
    };
    bar(
        symbol.clone(),
        ts,
        [fields.o, fields.h, fields.l, fields.c, fields.v],
    )
    .map_err(|(check, reason)| reject(Some(ts), check, reason))
}

/// Why a row is not a bar: its check and the reason, for the path to quote its row with.
pub(crate) type Problem = (&'static str, String);

/// The one place a Polygon bar is made, for every path (REST, stream, flat files): the fields'
/// wire text (open, high, low, close, volume; `None` when absent) straight to `Decimal`. The
/// paths differ only in where the fields sit, the timestamp's unit and how a refused row is
/// quoted.
pub(crate) fn bar(
    symbol: Symbol,
    ts: DateTime<Utc>,
    ohlcv: [Option<&str>; 5],
) -> Result<Bar, Problem> {
    const NAMES: [(&str, &str); 5] = [
        ("o", "open"),
        ("h", "high"),
        ("l", "low"),
        ("c", "close"),
        ("v", "volume"),
    ];
    let fail = |e: DomainError| (e.check_name(), e.to_string());
    let mut out = [rust_decimal::Decimal::ZERO; 5];
    for (slot, (field, (key, name))) in out.iter_mut().zip(ohlcv.into_iter().zip(NAMES)) {
        *slot = match field {
            None => return Err(("missing_value", format!("missing {key} ({name})"))),
            Some(v) => parse_decimal(name, v).map_err(fail)?,
        };
    }
    let [open, high, low, close, volume] = out;
    Bar::new(
        symbol,
        ts,
        open,
        high,
        low,
        close,
        volume,
        DataSource::Polygon,
    )
    .map_err(fail)
}

/// An epoch-milliseconds stamp (REST's `t`, the stream's `s`) from its JSON text.
pub(crate) fn stamp_ms(key: &str, text: &str) -> Result<DateTime<Utc>, Problem> {
    epoch_ms(text).ok_or_else(|| {
        (
            "invalid_timestamp",
            format!("{key} {} is not epoch milliseconds", excerpt(text, 40)),
        )
    })
}

/// The JSON text of the fields a bar needs; `None` when absent or `null`.
#[derive(Debug, Default, PartialEq)]
struct Fields<'a> {
    t: Option<&'a str>,
    o: Option<&'a str>,
    h: Option<&'a str>,
    l: Option<&'a str>,
    c: Option<&'a str>,
    v: Option<&'a str>,
}

impl<'a> From<Agg<'a>> for Fields<'a> {
    fn from(a: Agg<'a>) -> Self {
        Fields {
            t: a.t.map(RawValue::get),
            o: a.o.map(RawValue::get),
            h: a.h.map(RawValue::get),
            l: a.l.map(RawValue::get),
            c: a.c.map(RawValue::get),
            v: a.v.map(RawValue::get),
        }
    }
}

/// Splits a result of the usual shape (a flat object, plain keys, each once) without serde's
/// per-field machinery, which costs more than everything else in a page put together. `raw`
/// is valid JSON already (the page's parse checked it), so splitting needs only to respect
/// strings. Anything unusual (nesting, an escaped key, a repeated key, not an object) returns
/// `None`, and serde decides.
fn scan_flat(raw: &str) -> Option<Fields<'_>> {
    let b = raw.as_bytes();
    let ws = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    // Outer `None`: not seen; `Some(None)`: `null`.
    let mut slots: [Option<Option<&str>>; 6] = [None; 6];
    if b.get(i) != Some(&b'}') {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let start = i + 1;
            let end = start
                + b.get(start..)?
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\')?;
            if b[end] == b'\\' {
                return None;
            }
            let key = raw.get(start..end)?;
            i = ws(end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(i + 1);
            let value_start = i;
            match b.get(i)? {
                b'{' | b'[' => return None,
                b'"' => {
                    i += 1;
                    loop {
                        i += b.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
                        if b[i] == b'"' {
                            break;
                        }
                        i += 2;
                    }
                    i += 1;
                }
                _ => {
                    i += b[i..]
                        .iter()
                        .position(|&c| c == b',' || c == b'}' || c.is_ascii_whitespace())
                        .unwrap_or(b.len() - i);
                }
            }
            let value = raw.get(value_start..i)?;
            let slot = match key {
                "t" => Some(0),
                "o" => Some(1),
                "h" => Some(2),
                "l" => Some(3),
                "c" => Some(4),
                "v" => Some(5),
                _ => None,
            };
            if let Some(k) = slot {
                if slots[k].is_some() {
                    return None;
                }
                slots[k] = Some((value != "null").then_some(value));
            }
            i = ws(i);
            match b.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => break,
                _ => return None,
            }
        }
    }
    if ws(i + 1) != b.len() {
        return None;
    }
    let [t, o, h, l, c, v] = slots.map(Option::flatten);
    Some(Fields { t, o, h, l, c, v })
}

/// Epoch milliseconds (REST's `t`, the stream's `s`): an integer, or an integral number in
/// another spelling (`1.5e12`).
pub(super) fn epoch_ms(text: &str) -> Option<DateTime<Utc>> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => {
            let d = parse_decimal("t", text).ok()?;
            if !d.fract().is_zero() {
                return None;
            }
            d.to_i64()?
        }
    };
    DateTime::from_timestamp_millis(ms)
}

fn not_aggregates(body: &[u8], e: serde_json::Error) -> DecodeError {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        "empty body".to_string()
    } else {
        e.to_string()
    };
    DecodeError::NotAggregates {
        reason,
        excerpt: body_excerpt(body),
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(BODY_EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(head);
    let cut = excerpt(text.trim(), BODY_EXCERPT_CHARS);
    if head.len() < body.len() && !cut.contains('…') {
        format!("{cut}…({} bytes)", body.len())
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    const DAY: &[u8] = include_bytes!("../../../tests/fixtures/polygon/aggs_day.json");
    const MINUTE: &[u8] = include_bytes!("../../../tests/fixtures/polygon/aggs_minute_page1.json");
    const EMPTY: &[u8] = include_bytes!("../../../tests/fixtures/polygon/aggs_empty.json");
    const BAD_BARS: &[u8] = include_bytes!("../../../tests/fixtures/polygon/aggs_bad_bars.json");
    const NOT_AUTHORIZED: &[u8] =
        include_bytes!("../../../tests/fixtures/polygon/error_not_authorized.json");
    const UNKNOWN_KEY: &[u8] =
        include_bytes!("../../../tests/fixtures/polygon/error_unknown_key.json");
    const NOT_FOUND: &[u8] = include_bytes!("../../../tests/fixtures/polygon/error_not_found.json");

    fn aapl() -> Symbol {
        "AAPL".parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn daily_bars_with_exact_rounding() {
        let page = decode_aggs(DAY, &aapl()).unwrap();
        assert!(page.rejections.is_empty(), "{:?}", page.rejections);
        assert_eq!(page.next_url, None);
        assert_eq!(page.bars.len(), 3);
        let b = &page.bars[0];
        // 1577941200000: midnight New York of 2020-01-02.
        assert_eq!(
            b.timestamp,
            Utc.with_ymd_and_hms(2020, 1, 2, 5, 0, 0).unwrap()
        );
        assert_eq!(b.symbol, aapl());
        assert_eq!(b.source, DataSource::Polygon);
        assert_eq!(
            (b.open, b.high, b.low, b.close),
            (d("1.5033"), d("1.5064"), d("1.4489"), d("1.4605"))
        );
        // A fractional volume rounds half away from zero.
        assert_eq!(b.volume, 25934);
        // Scientific volume, no `n`.
        assert_eq!(page.bars[1].volume, 10_471_000);
        assert_eq!(page.bars[1].open, d("74.06"));
        // Values that are exact in decimal stay exact (f64 would make 0.1 + 0.2 noise).
        assert_eq!(page.bars[2].open, d("300.1235"));
        assert_eq!(page.bars[2].low, d("-0.0001"));
        assert_eq!(page.bars[2].volume, 642_646_396);
    }

    #[test]
    fn delayed_page_with_next_url() {
        let page = decode_aggs(MINUTE, &aapl()).unwrap();
        assert_eq!(page.bars.len(), 2);
        assert!(page.rejections.is_empty());
        assert!(page
            .next_url
            .as_deref()
            .unwrap()
            .starts_with("https://api.polygon.io/v2/aggs/ticker/AAPL/range/1/minute/"));
        assert_eq!(
            page.bars[1].timestamp - page.bars[0].timestamp,
            chrono::Duration::minutes(1)
        );
    }

    #[test]
    fn no_results_is_an_empty_page() {
        let page = decode_aggs(EMPTY, &aapl()).unwrap();
        assert!(page.bars.is_empty() && page.rejections.is_empty());
        assert_eq!(page.next_url, None);
    }

    #[test]
    fn bad_results_are_rejected_and_the_rest_decode() {
        let page = decode_aggs(BAD_BARS, &aapl()).unwrap();
        assert_eq!(page.bars.len(), 2, "{:?}", page.rejections);
        let checks: Vec<&str> = page.rejections.iter().map(|r| r.check).collect();
        assert_eq!(
            checks,
            [
                "missing_value",      // no c
                "missing_value",      // h: null
                "not_a_number",       // o: "abc"
                "value_out_of_range", // v: 1e30
                "value_out_of_range", // v: 1e20 (a number, but not a BIGINT)
                "invalid_timestamp",  // t: "yesterday"
                "invalid_timestamp",  // t: 1.5 (not whole milliseconds)
                "missing_value",      // no t
                "malformed_row",      // 42
                "not_a_number",       // o: true
            ]
        );
        let first = &page.rejections[0];
        assert_eq!(first.source, DataSource::Polygon);
        assert_eq!(first.symbol.as_deref(), Some("AAPL"));
        assert_eq!(first.severity, crate::ingest::Severity::Error);
        assert_eq!(first.action, crate::ingest::Action::Rejected);
        assert_eq!(
            first.bar_timestamp,
            Some(Utc.with_ymd_and_hms(2020, 1, 3, 5, 0, 0).unwrap())
        );
        assert_eq!(first.details["reason"], "missing c (close)");
        let raw = first.details["raw"].as_str().unwrap();
        assert!(
            raw.starts_with('{') && raw.contains("\"t\":1578027600000"),
            "{raw}"
        );
        assert_eq!(page.rejections[5].bar_timestamp, None);
    }

    #[test]
    fn a_long_bad_result_is_cut_in_details() {
        let body = format!(
            r#"{{"status":"OK","results":[{{"t":1577941200000,"o":"{}","h":1,"l":1,"c":1,"v":1}}]}}"#,
            "x".repeat(5000)
        );
        let page = decode_aggs(body.as_bytes(), &aapl()).unwrap();
        let raw = page.rejections[0].details["raw"].as_str().unwrap();
        assert!(raw.chars().count() < 1100, "{}", raw.len());
    }

    #[test]
    fn bodies_that_are_not_aggregates() {
        for body in [
            &b""[..],
            b"   \n",
            b"<html><body>502 Bad Gateway</body></html>",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xfe\n\x00",
            b"[]",
            b"{}",
            b"null",
            br#"{"status":"OK","results":{"o":1}}"#,
            br#"{"status":"OK","results":[{"o":1}"#,
        ] {
            let e = decode_aggs(body, &aapl()).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, DecodeError::NotAggregates { .. }), "{text}");
            assert!(!text.contains('\n') && !text.contains('\0'), "{text:?}");
            assert!(text.len() < 400, "{text}");
        }
        let e = decode_aggs(b"", &aapl()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "response is not aggregates JSON (empty body)"
        );
        let huge = vec![b'x'; 1 << 20];
        assert!(decode_aggs(&huge, &aapl()).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(UNKNOWN_KEY).as_deref(),
            Some("Unknown API Key")
        );
        assert!(error_message(NOT_AUTHORIZED)
            .unwrap()
            .starts_with("You are not entitled to this data."));
        assert_eq!(
            error_message(NOT_FOUND).as_deref(),
            Some("Ticker not found.")
        );
        assert_eq!(error_message(b"<html>"), None);
        assert_eq!(error_message(DAY), None);
        let e = decode_aggs(NOT_AUTHORIZED, &aapl()).unwrap_err();
        assert!(matches!(e, DecodeError::Vendor { ref status, .. } if status == "NOT_AUTHORIZED"));
    }

    #[test]
    fn another_tickers_response_is_refused() {
        let e = decode_aggs(DAY, &"MSFT".parse().unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "response is for ticker \"AAPL\", not MSFT");
    }

    #[test]
    fn the_quick_split_agrees_with_serde() {
        for raw in [
            r#"{"v":642646396.0,"vw":1.469,"o":1.5032,"c":1.4604,"h":1.5064,"l":1.4489,"t":1112331600000,"n":82132}"#,
            r#"{ "t" : 1 , "o":null, "h":"a,b}\"c", "otc":true, "v":1.0471e+07 }"#,
            r#"{}"#,
            r#"{"x":"}","c":-0.5}"#,
        ] {
            let quick = scan_flat(raw).unwrap_or_else(|| panic!("{raw}"));
            let slow = Fields::from(serde_json::from_str::<Agg>(raw).unwrap());
            assert_eq!(quick, slow, "{raw}");
        }
        // Left to serde: nesting, escaped keys, repeated keys, not an object.
        for raw in [
            r#"{"t":1,"x":{"o":2},"o":3}"#,
            r#"{"t":1,"x":[1,2]}"#,
            r#"{"\u0074":1}"#,
            r#"{"t":1,"t":2}"#,
            "42",
            "[1]",
            r#""o""#,
        ] {
            assert_eq!(scan_flat(raw), None, "{raw}");
        }
    }

    #[test]
    fn unusual_results_still_decode() {
        let body = br#"{"status":"OK","results":[
            {"t":1577941200000,"o":1,"h":2,"l":0.5,"c":1.5,"v":10,"extra":{"nested":[1]}},
            {"\u0074":1577941200000,"o":1,"h":2,"l":0.5,"c":1.5,"v":10},
            {"t":1577941200000,"o":1,"o":2,"h":2,"l":0.5,"c":1.5,"v":10}
        ]}"#;
        let page = decode_aggs(body, &aapl()).unwrap();
        assert_eq!(page.bars.len(), 2);
        assert_eq!(page.rejections.len(), 1);
        assert_eq!(page.rejections[0].check, "malformed_row");
        assert!(page.rejections[0].details["reason"]
            .as_str()
            .unwrap()
            .contains("duplicate field"));
    }

    /// 50,000 minute bars, Polygon's largest page.
    fn big_page() -> String {
        let mut s = String::from(r#"{"ticker":"AAPL","status":"OK","results":["#);
        for i in 0..50_000u64 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"v":{}.0,"vw":187.1234,"o":187.{:04},"c":187.12,"h":188.5,"l":186.25,"t":{},"n":{}}}"#,
                1000 + i,
                i % 10_000,
                1_704_205_800_000 + i * 60_000,
                i % 500
            ));
        }
        s.push_str(r#"],"resultsCount":50000,"count":50000}"#);
        s
    }

    #[test]
    fn a_full_page_decodes() {
        let body = big_page();
        let page = decode_aggs(body.as_bytes(), &aapl()).unwrap();
        assert_eq!(page.bars.len(), 50_000);
        assert_eq!(page.bars[49_999].volume, 50_999);
        // Its speed is measured by scripts/bench (the backfill), not asserted here.
    }
}
