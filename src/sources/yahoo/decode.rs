//! Yahoo's chart API (`/v8/finance/chart/{SYM}`) to bars of `yahoo` and `yahoo_adjusted`,
//! rejections and corporate actions. Pure: bytes in, values out.
//!
//! The body is one symbol's parallel arrays: `timestamp` (epoch seconds, bar start) and
//! `indicators.quote[0].{open,high,low,close,volume}`, with `null`s where Yahoo has nothing;
//! daily and longer bars also carry `indicators.adjclose[0].adjclose`. Numbers are read as their
//! JSON text and parsed straight to `Decimal`: Yahoo's prices are float32 artefacts
//! (`75.0875015258789`), and the adjusted prices are computed from that full text, rounded only
//! at the end (`Bar::new`), as yfinance's auto-adjust does in floating point.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::domain::{parse_decimal, Bar, DataSource, DomainError, Symbol, Timeframe};
use crate::ingest::Rejection;
use crate::sources::{ActionKind, CorporateAction};
use crate::text::excerpt;

/// How much of a body that is not chart JSON an error quotes.
const BODY_EXCERPT_CHARS: usize = 120;
/// More bars than any request this client makes can hold (ten years of hours, a week of
/// minutes): a body claiming more is refused before its bars are built.
pub const MAX_BARS: usize = 50_000;

/// One chart response, decoded.
#[derive(Debug, Default)]
pub struct Chart {
    /// `yahoo`: the quote as Yahoo gives it.
    pub bars: Vec<Bar>,
    /// `yahoo_adjusted` (when asked for): yfinance's auto-adjust of the same rows.
    pub adjusted: Vec<Bar>,
    pub rejections: Vec<Rejection>,
    /// Splits and dividends the response shows, oldest first.
    pub actions: Vec<CorporateAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("response is not chart JSON ({reason}){}", crate::text::quoted_suffix(.excerpt))]
    NotChart { reason: String, excerpt: String },
    /// `chart.error` (404 "No data found, symbol may be delisted", 400 "Data doesn't exist …").
    #[error("{code}: {description}")]
    Vendor { code: String, description: String },
    #[error("the response holds {0} bars, more than the {MAX_BARS} a response may hold")]
    TooManyBars(usize),
}

impl DecodeError {
    /// Not Yahoo's format at all (an HTML page, a cut body): worth another attempt.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, DecodeError::NotChart { .. })
    }
}

/// What a request asked for: the bars kept are those starting in `[from, to)`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub symbol: &'a Symbol,
    pub timeframe: Timeframe,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Also build `yahoo_adjusted`.
    pub adjusted: bool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    chart: ChartWire<'a>,
}

#[derive(Deserialize)]
struct ChartWire<'a> {
    #[serde(borrow, default)]
    result: Option<Vec<ResultWire<'a>>>,
    #[serde(default)]
    error: Option<ErrorWire>,
}

#[derive(Deserialize)]
struct ErrorWire {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct ResultWire<'a> {
    #[serde(default)]
    meta: Meta,
    #[serde(default)]
    timestamp: Option<Vec<Option<i64>>>,
    #[serde(borrow, default)]
    indicators: Option<Indicators<'a>>,
    #[serde(borrow, default)]
    events: Option<Events<'a>>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default, rename = "exchangeTimezoneName")]
    exchange_timezone_name: Option<String>,
}

type Column<'a> = Option<Vec<Option<&'a RawValue>>>;

#[derive(Deserialize)]
struct Indicators<'a> {
    #[serde(borrow, default)]
    quote: Vec<Quote<'a>>,
    #[serde(borrow, default)]
    adjclose: Vec<AdjClose<'a>>,
}

#[derive(Deserialize, Default)]
struct Quote<'a> {
    #[serde(borrow, default)]
    open: Column<'a>,
    #[serde(borrow, default)]
    high: Column<'a>,
    #[serde(borrow, default)]
    low: Column<'a>,
    #[serde(borrow, default)]
    close: Column<'a>,
    #[serde(borrow, default)]
    volume: Column<'a>,
}

#[derive(Deserialize)]
struct AdjClose<'a> {
    #[serde(borrow, default)]
    adjclose: Column<'a>,
}

#[derive(Deserialize)]
struct Events<'a> {
    #[serde(borrow, default)]
    dividends: Option<BTreeMap<String, Dividend<'a>>>,
    #[serde(borrow, default)]
    splits: Option<BTreeMap<String, Split<'a>>>,
}

#[derive(Deserialize)]
struct Dividend<'a> {
    #[serde(default)]
    date: Option<i64>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Split<'a> {
    #[serde(default)]
    date: Option<i64>,
    #[serde(default, rename = "splitRatio")]
    split_ratio: Option<std::borrow::Cow<'a, str>>,
}

/// The one place Yahoo's rows become bars: every path (backfill, poll) decodes through here.
pub fn decode_chart(body: &[u8], req: &Request<'_>) -> Result<Chart, DecodeError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| not_chart(body, &e))?;
    if let Some(err) = env.chart.error {
        return Err(DecodeError::Vendor {
            code: excerpt(err.code.as_deref().unwrap_or("error"), 80),
            description: excerpt(err.description.as_deref().unwrap_or(""), 300),
        });
    }
    let Some(result) = env.chart.result.and_then(|r| r.into_iter().next()) else {
        return Err(DecodeError::NotChart {
            reason: "chart.result is empty and chart.error is null".into(),
            excerpt: String::new(),
        });
    };
    let mut chart = Chart {
        actions: actions(req.symbol, result.events),
        ..Chart::default()
    };
    // No trading in the range: no `timestamp`, and `quote` is `[{}]`.
    let Some(stamps) = result.timestamp else {
        return Ok(chart);
    };
    if stamps.len() > MAX_BARS {
        return Err(DecodeError::TooManyBars(stamps.len()));
    }
    let tz: Tz = result
        .meta
        .exchange_timezone_name
        .as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or(chrono_tz::America::New_York);
    let (quote, adjclose) = match result.indicators {
        Some(mut i) => {
            let q = if i.quote.is_empty() {
                Quote::default()
            } else {
                i.quote.swap_remove(0)
            };
            let a = if i.adjclose.is_empty() {
                None
            } else {
                i.adjclose.swap_remove(0).adjclose
            };
            (q, a)
        }
        None => (Quote::default(), None),
    };
    let mut last_date: Option<NaiveDate> = None;
    for (i, stamp) in stamps.iter().enumerate() {
        let Some(ts) = stamp.and_then(|s| DateTime::from_timestamp(s, 0)) else {
            chart.rejections.push(reject(
                req,
                DataSource::Yahoo,
                None,
                "invalid_timestamp",
                format!("timestamp[{i}] is not epoch seconds"),
            ));
            continue;
        };
        // The "live" bar Yahoo appends past period2: not asked for, and not final.
        if ts >= req.to {
            continue;
        }
        let fields = [
            cell(&quote.open, i),
            cell(&quote.high, i),
            cell(&quote.low, i),
            cell(&quote.close, i),
            cell(&quote.volume, i),
        ];
        if ts < req.from {
            chart.rejections.push(reject(
                req,
                DataSource::Yahoo,
                Some(ts),
                "outside_window",
                format!(
                    "bar at {} is before the requested start {}",
                    ts.to_rfc3339(),
                    req.from.to_rfc3339()
                ),
            ));
            continue;
        }
        if fields.iter().all(Option::is_none) {
            chart.rejections.push(reject(
                req,
                DataSource::Yahoo,
                Some(ts),
                "null_row",
                "every value of the row is null (Yahoo has no trade for it)".into(),
            ));
            continue;
        }
        if req.timeframe == Timeframe::D1 {
            let date = ts.with_timezone(&tz).date_naive();
            if last_date == Some(date) {
                chart.rejections.push(reject(
                    req,
                    DataSource::Yahoo,
                    Some(ts),
                    "duplicate_date",
                    format!("a second daily bar for {date}; the first one is kept"),
                ));
                continue;
            }
            last_date = Some(date);
        }
        let bar = match bar(req.symbol, ts, fields) {
            Ok(b) => b,
            Err((check, reason)) => {
                chart
                    .rejections
                    .push(reject(req, DataSource::Yahoo, Some(ts), check, reason));
                continue;
            }
        };
        if req.adjusted {
            match adjust(req.symbol, ts, fields, cell(&adjclose, i)) {
                Ok(a) => chart.adjusted.push(a),
                Err((check, reason)) => chart.rejections.push(reject(
                    req,
                    DataSource::YahooAdjusted,
                    Some(ts),
                    check,
                    reason,
                )),
            }
        }
        chart.bars.push(bar);
    }
    Ok(chart)
}

/// Row `i` of a column: `None` when the column, the row or its value is absent or `null`.
fn cell<'a>(col: &Column<'a>, i: usize) -> Option<&'a str> {
    col.as_ref()
        .and_then(|c| c.get(i).copied().flatten())
        .map(RawValue::get)
}

type Problem = (&'static str, String);

const NAMES: [&str; 5] = ["open", "high", "low", "close", "volume"];

fn numbers(fields: [Option<&str>; 5]) -> Result<[Decimal; 5], Problem> {
    let mut out = [Decimal::ZERO; 5];
    for (slot, (field, name)) in out.iter_mut().zip(fields.into_iter().zip(NAMES)) {
        *slot = match field {
            None => return Err(("missing_value", format!("{name} is null"))),
            Some(v) => parse_decimal(name, v).map_err(fail)?,
        };
    }
    Ok(out)
}

fn fail(e: DomainError) -> Problem {
    (e.check_name(), e.to_string())
}

fn bar(symbol: &Symbol, ts: DateTime<Utc>, fields: [Option<&str>; 5]) -> Result<Bar, Problem> {
    let [open, high, low, close, volume] = numbers(fields)?;
    Bar::new(
        symbol.clone(),
        ts,
        open,
        high,
        low,
        close,
        volume,
        DataSource::Yahoo,
    )
    .map_err(fail)
}

/// yfinance's auto-adjust: `ratio = adjclose / close`; open, high and low times the ratio;
/// close is adjclose; volume unchanged. All in `Decimal`, rounded once, in `Bar::new`.
fn adjust(
    symbol: &Symbol,
    ts: DateTime<Utc>,
    fields: [Option<&str>; 5],
    adjclose: Option<&str>,
) -> Result<Bar, Problem> {
    let [open, high, low, close, volume] = numbers(fields)?;
    let Some(adj) = adjclose else {
        return Err(("missing_value", "adjclose is null or absent".into()));
    };
    let adj = parse_decimal("adjclose", adj).map_err(fail)?;
    if close.is_zero() {
        return Err((
            "invalid_price",
            "close is 0: no adjustment ratio (adjclose / close)".into(),
        ));
    }
    let ratio = adj
        .checked_div(close)
        .ok_or(("invalid_price", "adjclose / close overflows".to_string()))?;
    let times = |p: Decimal| {
        p.checked_mul(ratio).ok_or((
            "invalid_price",
            "price times the ratio overflows".to_string(),
        ))
    };
    Bar::new(
        symbol.clone(),
        ts,
        times(open)?,
        times(high)?,
        times(low)?,
        adj,
        volume,
        DataSource::YahooAdjusted,
    )
    .map_err(fail)
}

fn actions(symbol: &Symbol, events: Option<Events<'_>>) -> Vec<CorporateAction> {
    let Some(events) = events else {
        return Vec::new();
    };
    let stamp = |key: &str, date: Option<i64>| {
        date.or_else(|| key.parse().ok())
            .and_then(|s| DateTime::from_timestamp(s, 0))
    };
    let mut out: Vec<CorporateAction> = Vec::new();
    for (key, d) in events.dividends.unwrap_or_default() {
        if let Some(at) = stamp(&key, d.date) {
            out.push(CorporateAction {
                symbol: symbol.clone(),
                kind: ActionKind::Dividend,
                at,
                detail: excerpt(d.amount.map_or("", RawValue::get), 40),
            });
        }
    }
    for (key, s) in events.splits.unwrap_or_default() {
        if let Some(at) = stamp(&key, s.date) {
            out.push(CorporateAction {
                symbol: symbol.clone(),
                kind: ActionKind::Split,
                at,
                detail: excerpt(s.split_ratio.as_deref().unwrap_or(""), 40),
            });
        }
    }
    out.sort_by_key(|a| (a.at, a.kind));
    out
}

fn reject(
    req: &Request<'_>,
    source: DataSource,
    ts: Option<DateTime<Utc>>,
    check: &'static str,
    reason: String,
) -> Rejection {
    Rejection::rejected(
        source,
        Some(req.symbol.to_string()),
        ts,
        check,
        json!({ "reason": reason }),
    )
}

/// The vendor's text in an error body: `chart.error.description`, or a short plain-text body
/// (`Too Many Requests`).
pub fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        let e = env.chart.error?;
        return Some(format!(
            "{}: {}",
            e.code.as_deref().unwrap_or("error"),
            e.description.as_deref().unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty() && !text.starts_with('<')).then(|| excerpt(text, 120))
}

fn not_chart(body: &[u8], e: &serde_json::Error) -> DecodeError {
    DecodeError::NotChart {
        reason: excerpt(&e.to_string(), 200),
        excerpt: excerpt(&String::from_utf8_lossy(body), BODY_EXCERPT_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::str::FromStr;

    const DIVIDEND: &str = include_str!("../../../tests/fixtures/yahoo/chart_dividend_split.json");
    const EMPTY: &str = include_str!("../../../tests/fixtures/yahoo/chart_no_trading.json");
    const NOT_FOUND: &str = include_str!("../../../tests/fixtures/yahoo/chart_not_found.json");

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn req(symbol: &Symbol, from: i64, to: i64) -> Request<'_> {
        Request {
            symbol,
            timeframe: Timeframe::D1,
            from: Utc.timestamp_opt(from, 0).unwrap(),
            to: Utc.timestamp_opt(to, 0).unwrap(),
            adjusted: true,
        }
    }

    /// Independently of `adjust`: the textbook formula on the wire's text, rounded once.
    fn expected_adjusted(price: &str, close: &str, adjclose: &str) -> Decimal {
        let r = d(adjclose) / d(close);
        (d(price) * r)
            .round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    }

    #[test]
    fn both_sources_come_from_one_response_with_nulls_trailing_bars_and_events() {
        let sym: Symbol = "XYZ".parse().unwrap();
        // 2024-06-03 .. 2024-06-08 (exclusive): the fixture's sixth row is the trailing live bar.
        let chart = decode_chart(DIVIDEND.as_bytes(), &req(&sym, 1717372800, 1717804800)).unwrap();
        let stamps: Vec<i64> = chart.bars.iter().map(|b| b.timestamp.timestamp()).collect();
        // Row 3 is all null (skipped, logged); row 6 lies past period2 (dropped).
        assert_eq!(stamps, [1717421400, 1717507800, 1717680600, 1717767000]);
        let first = &chart.bars[0];
        assert_eq!(
            (first.open, first.high, first.low, first.close, first.volume),
            (d("190.2"), d("191.5"), d("189.9"), d("191.0"), 1200300)
        );
        assert_eq!(
            chart.bars[1].close,
            d("192.3457"),
            "rounded half away from zero"
        );
        let adj = &chart.adjusted[0];
        assert_eq!(adj.source, DataSource::YahooAdjusted);
        assert_eq!(adj.open, expected_adjusted("190.2", "191.0", "188.71"));
        assert_eq!(adj.high, expected_adjusted("191.5", "191.0", "188.71"));
        assert_eq!(adj.low, expected_adjusted("189.9", "191.0", "188.71"));
        assert_eq!(adj.close, d("188.71"));
        assert_eq!(adj.volume, 1200300);
        assert_eq!(chart.adjusted.len(), 4);
        let checks: Vec<&str> = chart.rejections.iter().map(|r| r.check).collect();
        assert_eq!(checks, ["null_row"]);
        assert_eq!(
            chart.actions,
            [
                CorporateAction {
                    symbol: sym.clone(),
                    kind: ActionKind::Dividend,
                    at: Utc.timestamp_opt(1717507800, 0).unwrap(),
                    detail: "0.25".into()
                },
                CorporateAction {
                    symbol: sym.clone(),
                    kind: ActionKind::Split,
                    at: Utc.timestamp_opt(1717767000, 0).unwrap(),
                    detail: "2:1".into()
                },
            ]
        );
    }

    #[test]
    fn a_range_without_trading_is_no_bars_and_an_error_body_is_named() {
        let sym: Symbol = "AAPL".parse().unwrap();
        let chart = decode_chart(EMPTY.as_bytes(), &req(&sym, 1738368000, 1738454400)).unwrap();
        assert!(chart.bars.is_empty() && chart.rejections.is_empty());
        let err = decode_chart(NOT_FOUND.as_bytes(), &req(&sym, 0, 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Not Found: No data found, symbol may be delisted"
        );
        let err = decode_chart(b"Too Many Requests", &req(&sym, 0, 1)).unwrap_err();
        assert!(err.is_unreadable(), "{err}");
    }
}
