//! Yahoo's chart API (`GET /v8/finance/chart/{SYM}?period1=S&period2=S&interval=…`) in
//! Yahoo's shapes: parallel arrays with `null`s, float-artefact prices (`75.0875015258789`),
//! daily bars stamped at the session open, a trailing bar past `period2`, `events` for the
//! splits and dividends the simulator knows, no `timestamp` for a range without trading, and
//! its errors (`chart.error` with 404 and 400, a plain-text 429). No key.
//!
//! Like Yahoo, prices and volumes are restated for every split known at the time of the request,
//! and `adjclose` also for every dividend: adding an action while serving changes history.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{NaiveDate, NaiveTime};

use super::api::{Answer, Api};
use super::series::{is_weekend, ny_date, ny_ms, splitmix, Generator, Grid, RawBar};
use super::SymbolFault;
use crate::domain::Timeframe;

pub(crate) const PREFIX: &str = "/v8/finance/chart/";

/// A split or a dividend the simulator's Yahoo shows for a symbol, effective from the session of
/// `day` (New York).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YahooAction {
    /// `numerator` new shares for `denominator` old ones.
    Split {
        day: NaiveDate,
        numerator: u32,
        denominator: u32,
    },
    /// `amount` in 1/10,000 of the currency per share.
    Dividend { day: NaiveDate, amount: i64 },
}

impl YahooAction {
    fn day(&self) -> NaiveDate {
        match self {
            YahooAction::Split { day, .. } | YahooAction::Dividend { day, .. } => *day,
        }
    }
}

/// Whether `target` is Yahoo's (its faults then answer in Yahoo's shapes).
pub(crate) fn is_yahoo(target: &str) -> bool {
    target.starts_with(PREFIX)
}

/// Yahoo's error shape, `{"chart":{"result":null,"error":{"code":…,"description":…}}}`.
fn chart_error(status: u16, code: &str, description: &str) -> Answer {
    Answer {
        status,
        extra: Vec::new(),
        body: serde_json::json!({"chart": {"result": null, "error": {"code": code, "description": description}}})
            .to_string()
            .into_bytes(),
        bars: 0,
    }
}

fn not_found() -> Answer {
    chart_error(404, "Not Found", "No data found, symbol may be delisted")
}

fn bad_request(text: &str) -> Answer {
    chart_error(400, "Bad Request", text)
}

/// 429 with a plain-text body, as Yahoo sends it (no `Retry-After`).
pub(crate) fn too_many_requests() -> Answer {
    Answer {
        status: 429,
        extra: vec![("Content-Type", "text/plain".into())],
        body: b"Too Many Requests".to_vec(),
        bars: 0,
    }
}

pub(crate) fn server_error() -> Answer {
    chart_error(500, "Internal Server Error", "internal error")
}

pub(crate) fn unauthorized() -> Answer {
    chart_error(401, "Unauthorized", "Invalid Crumb")
}

/// The symbol, `period1` and `period2` (epoch seconds) of a chart request, for the records.
pub(crate) fn describe(path: &str, query: &str) -> (Option<String>, Option<i64>, Option<i64>) {
    let symbol = path
        .strip_prefix(PREFIX)
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .map(str::to_string);
    let (mut p1, mut p2) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "period1" => p1 = v.parse::<i64>().ok(),
            "period2" => p2 = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    (symbol, p1, p2)
}

fn interval(s: &str) -> Option<Timeframe> {
    match s {
        "1m" => Some(Timeframe::M1),
        "5m" => Some(Timeframe::M5),
        "15m" => Some(Timeframe::M15),
        "60m" | "1h" => Some(Timeframe::H1),
        "1d" => Some(Timeframe::D1),
        _ => None,
    }
}

/// One row of a chart as the wire carries it: prices and volume as their JSON text, `None`
/// for `null`. What the tests compare stored rows against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YahooRow {
    /// Bar start, epoch seconds (the daily bar's is the session open).
    pub t: i64,
    pub open: Option<String>,
    pub high: Option<String>,
    pub low: Option<String>,
    pub close: Option<String>,
    pub volume: Option<String>,
    /// Daily bars only.
    pub adjclose: Option<String>,
}

/// A price as Yahoo prints it: the value as a 32-bit float, widened and printed shortest.
fn float_text(value: f64) -> String {
    let mut s = format!("{}", f64::from(value as f32));
    if !s.contains(['.', 'e']) {
        s.push_str(".0");
    }
    s
}

/// The rows of `symbol`'s chart for bars starting in `[from_s, to_s)`, with `actions` known
/// (the trailing bar not included).
pub fn chart_rows(
    symbol: &str,
    timeframe: Timeframe,
    from_s: i64,
    to_s: i64,
    actions: &[YahooAction],
    data: (Option<i64>, Option<i64>),
) -> Vec<YahooRow> {
    let (data_from, data_to) = (data.0.unwrap_or(i64::MIN), data.1.unwrap_or(i64::MAX));
    let lo = from_s.saturating_mul(1000);
    let hi = to_s.saturating_mul(1000).saturating_sub(1);
    let gen = Generator::new(symbol, timeframe);
    // (stamp ms, the generator's bar)
    let bars: Vec<(i64, RawBar)> = if timeframe == Timeframe::D1 {
        // A day has its bar when any of it lies in the data range (a range of minutes
        // still has its day's bar).
        daily_stamps(lo, hi)
            .into_iter()
            .filter(|(_, midnight)| *midnight <= data_to && midnight + 86_400_000 > data_from)
            .map(|(open, midnight)| (open, gen.bar(midnight)))
            .collect()
    } else {
        let (lo, hi) = (lo.max(data_from), hi.min(data_to));
        Grid::new(symbol, timeframe, lo, hi)
            .map(|t| (t, gen.bar(t)))
            .collect()
    };
    let sym = super::series::symbol_hash(symbol);
    bars.into_iter()
        .map(|(t, b)| {
            let day = ny_date(t);
            // Restated for every split after the bar: prices down, volume up.
            let (mut num, mut den) = (1i64, 1i64);
            let mut dividend_factor = 1f64;
            for a in actions.iter().filter(|a| a.day() > day) {
                match *a {
                    YahooAction::Split {
                        numerator,
                        denominator,
                        ..
                    } => {
                        num *= i64::from(numerator);
                        den *= i64::from(denominator);
                    }
                    YahooAction::Dividend { amount, .. } => {
                        dividend_factor *= 1.0 - amount as f64 / b.c as f64;
                    }
                }
            }
            let price = |units: i64| units as f64 * den as f64 / num as f64 / 10_000.0;
            let volume = b.v.rounded().saturating_mul(num) / den.max(1);
            let mut row = YahooRow {
                t: t / 1000,
                open: Some(float_text(price(b.o))),
                high: Some(float_text(price(b.h))),
                low: Some(float_text(price(b.l))),
                close: Some(float_text(price(b.c))),
                volume: Some(volume.to_string()),
                adjclose: (timeframe == Timeframe::D1)
                    .then(|| float_text(price(b.c) * dividend_factor)),
            };
            // About one row in 64 is all null (Yahoo has nothing for it), one in 97 has no
            // volume.
            let h = splitmix(sym ^ t as u64);
            if h % 64 == 7 {
                row = YahooRow {
                    t: row.t,
                    open: None,
                    high: None,
                    low: None,
                    close: None,
                    volume: None,
                    adjclose: None,
                };
            } else if h % 97 == 5 {
                row.volume = None;
            }
            row
        })
        .collect()
}

/// The daily bars' stamps (the session open, 09:30 New York) in `[lo, hi]` ms, with the
/// midnight the generator keys the day's values on. Weekdays only.
fn daily_stamps(lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let open_time = NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default();
    let mut day = ny_date(lo);
    let last = ny_date(hi);
    while day <= last {
        if !is_weekend(day) {
            if let (Some(open), Some(midnight)) =
                (ny_ms(day, open_time), ny_ms(day, NaiveTime::MIN))
            {
                if (lo..=hi).contains(&open) {
                    out.push((open, midnight));
                }
            }
        }
        match day.succ_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    out
}

impl Api {
    pub(crate) fn yahoo_chart(&self, path: &str, query: &str) -> Answer {
        let (symbol, p1, p2) = describe(path, query);
        let Some(symbol) = symbol else {
            return not_found();
        };
        let mut tf = Timeframe::D1;
        let mut events = false;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "interval" => match interval(&v) {
                    Some(t) => tf = t,
                    None => return bad_request(&format!("Invalid input - interval={v} is not supported. Valid intervals: [1m, 2m, 5m, 15m, 30m, 60m, 90m, 1h, 1d, 5d, 1wk, 1mo, 3mo]")),
                },
                "events" => events = v.contains("div") || v.contains("split"),
                _ => {}
            }
        }
        let (Some(p1), Some(p2)) = (p1, p2) else {
            return bad_request("period1 and period2 are required");
        };
        if p1 >= p2 {
            return bad_request(&format!(
                "Data doesn't exist for startDate = {p1}, endDate = {p2}"
            ));
        }
        if tf == Timeframe::M1 && p2 - p1 > 8 * 86_400 {
            return bad_request(&format!("1m data not available for startTime={p1} and endTime={p2}. Only 7 days worth of 1m granularity data are allowed to be fetched per request."));
        }
        let fault = super::server::lock(&self.symbol_faults)
            .get(&symbol)
            .copied();
        match fault {
            Some(SymbolFault::NotFound) => return not_found(),
            Some(SymbolFault::ServerError) => return server_error(),
            Some(SymbolFault::Forbidden) => return unauthorized(),
            Some(SymbolFault::RateLimited) => return too_many_requests(),
            _ => {}
        }
        if !self.symbols.contains(&symbol) {
            return not_found();
        }
        let actions = super::server::lock(&self.yahoo_actions)
            .get(&symbol)
            .cloned()
            .unwrap_or_default();
        let rows = chart_rows(
            &symbol,
            tf,
            p1,
            p2,
            &actions,
            (self.data_from_ms, self.data_to_ms),
        );
        let shown: Vec<YahooAction> = if events {
            actions
                .iter()
                .copied()
                .filter(|a| {
                    ny_ms(
                        a.day(),
                        NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default(),
                    )
                    .is_some_and(|t| (p1 * 1000..p2 * 1000).contains(&t))
                })
                .collect()
        } else {
            Vec::new()
        };
        Answer {
            status: 200,
            extra: Vec::new(),
            bars: rows.len(),
            body: chart_body(&symbol, tf, p2, &rows, &shown).into_bytes(),
        }
    }
}

fn chart_body(
    symbol: &str,
    tf: Timeframe,
    p2: i64,
    rows: &[YahooRow],
    actions: &[YahooAction],
) -> String {
    let mut b = String::with_capacity(512 + rows.len() * 120);
    let granularity = match tf {
        Timeframe::M1 => "1m",
        Timeframe::M5 => "5m",
        Timeframe::M15 => "15m",
        Timeframe::H1 => "60m",
        Timeframe::D1 => "1d",
    };
    let _ = write!(
        b,
        "{{\"chart\":{{\"result\":[{{\"meta\":{{\"currency\":\"USD\",\"symbol\":{},\"exchangeName\":\"NMS\",\"instrumentType\":\"EQUITY\",\"gmtoffset\":-18000,\"timezone\":\"EST\",\"exchangeTimezoneName\":\"America/New_York\",\"priceHint\":2,\"dataGranularity\":\"{granularity}\",\"range\":\"\"}}",
        serde_json::Value::from(symbol)
    );
    if rows.is_empty() {
        b.push_str(",\"indicators\":{\"quote\":[{}]}}],\"error\":null}}");
        return b;
    }
    // The "live" bar past period2, as Yahoo appends it: the last close, no volume.
    let last_close = rows
        .iter()
        .rev()
        .find_map(|r| r.close.clone())
        .unwrap_or_else(|| "1.0".into());
    let trailing = YahooRow {
        t: p2 + 300,
        open: Some(last_close.clone()),
        high: Some(last_close.clone()),
        low: Some(last_close.clone()),
        close: Some(last_close.clone()),
        volume: Some("0".into()),
        adjclose: (tf == Timeframe::D1).then_some(last_close),
    };
    let all: Vec<&YahooRow> = rows.iter().chain(std::iter::once(&trailing)).collect();
    b.push_str(",\"timestamp\":[");
    join(&mut b, all.iter().map(|r| r.t.to_string()));
    b.push(']');
    if !actions.is_empty() {
        b.push_str(",\"events\":{");
        let stamp = |a: &YahooAction| {
            ny_ms(
                a.day(),
                NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default(),
            )
            .unwrap_or(0)
                / 1000
        };
        let divs: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                YahooAction::Dividend { amount, .. } => {
                    let s = stamp(a);
                    Some(format!(
                        "\"{s}\":{{\"amount\":{},\"date\":{s}}}",
                        float_text(*amount as f64 / 10_000.0)
                    ))
                }
                _ => None,
            })
            .collect();
        let splits: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                YahooAction::Split {
                    numerator,
                    denominator,
                    ..
                } => {
                    let s = stamp(a);
                    Some(format!("\"{s}\":{{\"date\":{s},\"numerator\":{numerator},\"denominator\":{denominator},\"splitRatio\":\"{numerator}:{denominator}\"}}"))
                }
                _ => None,
            })
            .collect();
        let mut parts = Vec::new();
        if !divs.is_empty() {
            parts.push(format!("\"dividends\":{{{}}}", divs.join(",")));
        }
        if !splits.is_empty() {
            parts.push(format!("\"splits\":{{{}}}", splits.join(",")));
        }
        b.push_str(&parts.join(","));
        b.push('}');
    }
    // Yahoo's key order: close, low, open, volume, high.
    b.push_str(",\"indicators\":{\"quote\":[{");
    let column = |b: &mut String, name: &str, f: fn(&YahooRow) -> &Option<String>| {
        let _ = write!(b, "\"{name}\":[");
        join(
            b,
            all.iter()
                .map(|r| f(r).clone().unwrap_or_else(|| "null".into())),
        );
        b.push(']');
    };
    column(&mut b, "close", |r| &r.close);
    b.push(',');
    column(&mut b, "low", |r| &r.low);
    b.push(',');
    column(&mut b, "open", |r| &r.open);
    b.push(',');
    column(&mut b, "volume", |r| &r.volume);
    b.push(',');
    column(&mut b, "high", |r| &r.high);
    b.push_str("}]");
    if tf == Timeframe::D1 {
        b.push_str(",\"adjclose\":[{");
        column(&mut b, "adjclose", |r| &r.adjclose);
        b.push_str("}]");
    }
    b.push_str("}}],\"error\":null}}");
    b
}

fn join(b: &mut String, items: impl Iterator<Item = String>) {
    for (i, s) in items.enumerate() {
        if i > 0 {
            b.push(',');
        }
        b.push_str(&s);
    }
}

/// The actions a simulator knows per symbol, for `--yahoo-action`.
pub(crate) type Actions = HashMap<String, Vec<YahooAction>>;

/// `SYMBOL=split:YYYY-MM-DD:N:D` or `SYMBOL=dividend:YYYY-MM-DD:AMOUNT`.
pub fn parse_action(s: &str) -> Result<(String, YahooAction), String> {
    let bad =
        || format!("{s:?} is not SYMBOL=split:YYYY-MM-DD:N:D or SYMBOL=dividend:YYYY-MM-DD:AMOUNT");
    let (sym, rest) = s.split_once('=').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| bad());
    let action = match parts.as_slice() {
        ["split", d, n, den] => YahooAction::Split {
            day: day(d)?,
            numerator: n.parse().map_err(|_| bad())?,
            denominator: den.parse().map_err(|_| bad())?,
        },
        ["dividend", d, amount] => {
            let a = rust_decimal::Decimal::from_str_exact(amount).map_err(|_| bad())?;
            let units = (a * rust_decimal::Decimal::from(10_000))
                .trunc()
                .to_string()
                .parse()
                .map_err(|_| bad())?;
            YahooAction::Dividend {
                day: day(d)?,
                amount: units,
            }
        }
        _ => return Err(bad()),
    };
    Ok((sym.to_string(), action))
}
