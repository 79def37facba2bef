//! Alpaca's bars to [`Bar`]s and [`Rejection`]s. Pure: bytes in, values out. One function,
//! [`decode_bar`], turns a bar's raw fields into a bar or a rejection for every path (REST
//! pages and stream frames alike).
//!
//! REST: `{"bars":{"AAPL":[{"t":"2024-01-02T14:30:00Z","o":…,"h":…,"l":…,"c":…,"v":…,"n":…,
//! "vw":…}],…},"next_page_token":"…"|null}`; no data is `"bars":{}`. Numbers are read as their
//! JSON text (`RawValue`) and parsed straight to `Decimal`, never through `f64`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::domain::{parse_decimal, Bar, DataSource, DomainError, Symbol};
use crate::ingest::Rejection;
use crate::text::excerpt;

/// How much of a rejected bar `details.raw` keeps.
const RAW_MAX_CHARS: usize = 1024;
/// How much of a body that is not bars JSON an error quotes.
const BODY_EXCERPT_CHARS: usize = 120;
/// Alpaca's largest page (`limit`, across all symbols): a page holding more is refused.
pub const MAX_BARS: usize = 10_000;

/// One page of `/v2/stocks/bars`.
#[derive(Debug, Default)]
pub struct BarsPage {
    pub bars: Vec<Bar>,
    pub rejections: Vec<Rejection>,
    /// Opaque; `None` after the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("response is not bars JSON ({reason}){}", crate::text::quoted_suffix(.excerpt))]
    NotBars { reason: String, excerpt: String },
    #[error("the page holds {0} bars, more than the {MAX_BARS} a page may hold")]
    TooManyBars(usize),
}

impl DecodeError {
    /// The same error with `scrub` applied to the text that came from the vendor.
    pub fn scrubbed(self, scrub: impl Fn(&str) -> String) -> DecodeError {
        match self {
            DecodeError::NotBars { reason, excerpt } => DecodeError::NotBars {
                reason: scrub(&reason),
                excerpt: scrub(&excerpt),
            },
            other => other,
        }
    }

    /// Not Alpaca's format at all (an HTML page, a cut body): worth another attempt.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, DecodeError::NotBars { .. })
    }
}

/// A bar's fields as Alpaca sends them, REST and stream alike (a stream message's status
/// fields too); `null` reads as absent.
#[derive(Debug, Default, Deserialize)]
pub struct WireBar<'a> {
    /// A stream status's text.
    #[serde(borrow, default)]
    pub msg: Option<Cow<'a, str>>,
    /// A stream error's code.
    #[serde(default)]
    pub code: Option<i64>,
    /// The stream's message type (`b`, `u`, `d`, `success`, `error`, …).
    #[serde(rename = "T", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    /// The stream's symbol (REST keys bars by symbol instead).
    #[serde(rename = "S", borrow, default)]
    pub symbol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub t: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub o: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub h: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub l: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub c: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub v: Option<&'a RawValue>,
}

/// The one way an Alpaca bar becomes a [`Bar`]: `symbol` as sent (the REST key or the stream's
/// `S`), the fields, and the raw text to quote in a rejection.
pub fn decode_bar(symbol: &str, w: &WireBar<'_>, raw: &str) -> Result<Bar, Rejection> {
    let reject = |ts: Option<DateTime<Utc>>, check: &'static str, reason: String| {
        Rejection::rejected(
            DataSource::Alpaca,
            Some(excerpt(symbol, 40)),
            ts,
            check,
            json!({ "reason": reason, "raw": excerpt(raw, RAW_MAX_CHARS) }),
        )
    };
    let sym: Symbol = symbol
        .parse()
        .map_err(|e: DomainError| reject(None, e.check_name(), e.to_string()))?;
    let ts = match w.t.as_deref() {
        None => {
            return Err(reject(
                None,
                "missing_value",
                "missing t (timestamp)".into(),
            ))
        }
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                reject(
                    None,
                    "invalid_timestamp",
                    format!("t {:?} is not an RFC 3339 time", excerpt(t, 40)),
                )
            })?,
    };
    let fail = |e: DomainError| reject(Some(ts), e.check_name(), e.to_string());
    let num = |field: Option<&RawValue>, key: &str, name: &'static str| match field {
        None => Err(reject(
            Some(ts),
            "missing_value",
            format!("missing {key} ({name})"),
        )),
        Some(v) => parse_decimal(name, v.get()).map_err(fail),
    };
    let open = num(w.o, "o", "open")?;
    let high = num(w.h, "h", "high")?;
    let low = num(w.l, "l", "low")?;
    let close = num(w.c, "c", "close")?;
    let volume = num(w.v, "v", "volume")?;
    Bar::new(sym, ts, open, high, low, close, volume, DataSource::Alpaca).map_err(fail)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    bars: Option<BTreeMap<Cow<'a, str>, Option<Vec<&'a RawValue>>>>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// Decodes one page. Bars that cannot be stored are rejections; a body that is not bars JSON
/// at all is an error.
pub fn decode_bars(body: &[u8]) -> Result<BarsPage, DecodeError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| not_bars(body, e))?;
    let Some(by_symbol) = env.bars else {
        // `{"message": …}` in a 200, or anything else without `bars`.
        return Err(DecodeError::NotBars {
            reason: "no bars".into(),
            excerpt: body_excerpt(body),
        });
    };
    let total: usize = by_symbol.values().flatten().map(Vec::len).sum();
    if total > MAX_BARS {
        return Err(DecodeError::TooManyBars(total));
    }
    let mut page = BarsPage {
        bars: Vec::with_capacity(total),
        rejections: Vec::new(),
        next_page_token: env.next_page_token.filter(|t| !t.is_empty()),
    };
    for (symbol, raws) in &by_symbol {
        for raw in raws.iter().flatten() {
            let decoded = serde_json::from_str::<WireBar>(raw.get())
                .map_err(|e| {
                    Rejection::rejected(
                        DataSource::Alpaca,
                        Some(excerpt(symbol, 40)),
                        None,
                        "malformed_row",
                        json!({
                            "reason": format!("not a bar: {e}"),
                            "raw": excerpt(raw.get(), RAW_MAX_CHARS),
                        }),
                    )
                })
                .and_then(|w| decode_bar(symbol, &w, raw.get()));
            match decoded {
                Ok(b) => page.bars.push(b),
                Err(r) => page.rejections.push(r),
            }
        }
    }
    Ok(page)
}

/// `{"message": "…"}` (also `{"code": …, "message": …}`): Alpaca's error bodies.
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        message: Option<Cow<'a, str>>,
    }
    let e: E = serde_json::from_slice(body).ok()?;
    e.message
        .filter(|m| !m.trim().is_empty())
        .map(Cow::into_owned)
}

fn not_bars(body: &[u8], e: serde_json::Error) -> DecodeError {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        "empty body".to_string()
    } else {
        e.to_string()
    };
    DecodeError::NotBars {
        reason,
        excerpt: body_excerpt(body),
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(BODY_EXCERPT_CHARS * 4)];
    excerpt(String::from_utf8_lossy(head).trim(), BODY_EXCERPT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_page_of_two_symbols_decodes_exactly() {
        let body = br#"{"bars":{"AAPL":[{"t":"2021-10-13T04:00:00Z","o":141.21,"h":141.4,"l":139.2,"c":140.91,"v":78993712,"n":595435,"vw":140.361873}],"NIO":[{"t":"2021-10-13T04:00:00Z","o":35.75,"h":36.68,"l":35.47,"c":36.24,"v":33394068.0,"n":177991,"vw":36.275125}]},"next_page_token":"TklPfEQ="}"#;
        let page = decode_bars(body).unwrap();
        assert!(page.rejections.is_empty(), "{:?}", page.rejections);
        assert_eq!(page.next_page_token.as_deref(), Some("TklPfEQ="));
        let [a, n] = &page.bars[..] else { panic!() };
        assert_eq!(a.symbol.as_str(), "AAPL");
        assert_eq!(a.timestamp.to_rfc3339(), "2021-10-13T04:00:00+00:00");
        assert_eq!(
            (a.open, a.high, a.low, a.close),
            (d("141.21"), d("141.4"), d("139.2"), d("140.91"))
        );
        assert_eq!(a.volume, 78_993_712);
        assert_eq!(n.volume, 33_394_068);
        assert_eq!(n.source, DataSource::Alpaca);
    }

    #[test]
    fn empty_and_null_answers_are_no_bars() {
        for body in [
            &br#"{"bars":{},"next_page_token":null}"#[..],
            br#"{"bars":{"AAPL":null}}"#,
            br#"{"bars":{"AAPL":[]}}"#,
        ] {
            let page = decode_bars(body).unwrap();
            assert!(page.bars.is_empty() && page.rejections.is_empty());
            assert_eq!(page.next_page_token, None);
        }
    }

    #[test]
    fn bad_bars_are_rejections_and_bad_bodies_errors() {
        let body = br#"{"bars":{"AAPL":[{"t":"yesterday","o":1,"h":1,"l":1,"c":1,"v":1},{"t":"2024-01-02T14:30:00Z","o":"x","h":1,"l":1,"c":1,"v":1},7,{"t":"2024-01-02T14:31:00Z","o":1,"h":1,"l":1,"c":1,"v":1}]}}"#;
        let page = decode_bars(body).unwrap();
        assert_eq!(page.bars.len(), 1);
        let checks: Vec<&str> = page.rejections.iter().map(|r| r.check).collect();
        assert_eq!(checks.len(), 3, "{checks:?}");
        assert_eq!(checks[0], "invalid_timestamp");
        assert_eq!(checks[2], "malformed_row");
        for body in [
            &b"<html>busy</html>"[..],
            b"",
            br#"{"message":"forbidden"}"#,
        ] {
            assert!(decode_bars(body).unwrap_err().is_unreadable());
        }
        assert_eq!(
            error_message(br#"{"code":42210000,"message":"invalid timeframe"}"#).as_deref(),
            Some("invalid timeframe")
        );
    }
}
