//! Alpaca's `GET /v2/stocks/bars` over the simulator's series: the `APCA-API-KEY-ID` and
//! `APCA-API-SECRET-KEY` headers (both must be the simulator's key), many symbols per request,
//! `limit` counted across all of them, symbols in order and each symbol's bars ascending, an
//! opaque `next_page_token` until the last page, integer volumes, RFC 3339 stamps (daily bars at
//! midnight New York), and Alpaca's error shapes (`{"message": …}`, 403, 422, 429 with
//! `X-Ratelimit-Reset`). A symbol the simulator does not know has no bars, as on Alpaca.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};

use super::api::{Answer, Api};
use super::http::Request;
use super::series::{push_price, push_u64, Generator, Grid, RawBar};
use super::SymbolFault;
use crate::domain::Timeframe;

pub(crate) const PATH: &str = "/v2/stocks/bars";
const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 10_000;

/// Whether `target` is Alpaca's (its faults then answer in Alpaca's shapes).
pub(crate) fn is_alpaca(target: &str) -> bool {
    target.split(['?', '#']).next() == Some(PATH)
}

fn message(status: u16, text: &str) -> Answer {
    Answer {
        status,
        extra: Vec::new(),
        body: serde_json::json!({ "message": text })
            .to_string()
            .into_bytes(),
        bars: 0,
    }
}

fn invalid(text: &str) -> Answer {
    Answer {
        status: 422,
        extra: Vec::new(),
        body: serde_json::json!({ "code": 42210000, "message": text })
            .to_string()
            .into_bytes(),
        bars: 0,
    }
}

/// 429 with `X-Ratelimit-Reset` (when the window resets, Unix seconds) and no `Retry-After`.
pub(crate) fn rate_limited(after_secs: u64) -> Answer {
    let mut a = message(429, "too many requests.");
    let reset = Utc::now().timestamp() + i64::try_from(after_secs).unwrap_or(0);
    a.extra.push(("X-Ratelimit-Limit", "200".into()));
    a.extra.push(("X-Ratelimit-Remaining", "0".into()));
    a.extra.push(("X-Ratelimit-Reset", reset.to_string()));
    a
}

pub(crate) fn server_error() -> Answer {
    message(500, "internal server error occurred")
}

pub(crate) fn forbidden() -> Answer {
    message(403, "forbidden")
}

fn timeframe(s: &str) -> Option<Timeframe> {
    match s {
        "1Min" => Some(Timeframe::M1),
        "5Min" => Some(Timeframe::M5),
        "15Min" => Some(Timeframe::M15),
        "1Hour" => Some(Timeframe::H1),
        "1Day" => Some(Timeframe::D1),
        _ => None,
    }
}

fn instant(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Opaque to clients: where the next page starts (a symbol, and a bar start in it), in hex.
fn token(symbol: &str, t: i64) -> String {
    format!("{symbol}|{t}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn untoken(s: &str) -> Option<(String, i64)> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (sym, t) = text.rsplit_once('|')?;
    Some((sym.to_string(), t.parse().ok()?))
}

impl Api {
    pub(crate) fn alpaca_bars(&self, req: &Request, query: &str) -> Answer {
        let is_key = |name: &'static str| {
            let mut v = req.headers_named(name);
            match (v.next(), v.next()) {
                (Some(one), None) => one.trim() == self.api_key,
                _ => false,
            }
        };
        if !is_key("apca-api-key-id") || !is_key("apca-api-secret-key") {
            return forbidden();
        }
        let mut symbols = None;
        let (mut tf, mut start, mut end, mut limit, mut page_token) =
            (None, None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "symbols" => symbols = Some(v.into_owned()),
                "timeframe" => tf = Some(v.into_owned()),
                "start" => start = Some(v.into_owned()),
                "end" => end = Some(v.into_owned()),
                "limit" => limit = Some(v.into_owned()),
                "page_token" => page_token = Some(v.into_owned()),
                "adjustment" if !matches!(v.as_ref(), "raw" | "split" | "dividend" | "all") => {
                    return invalid("invalid adjustment");
                }
                "sort" if v != "asc" => return invalid("only sort=asc is simulated"),
                "feed" if !matches!(v.as_ref(), "iex" | "sip") => return invalid("invalid feed"),
                _ => {}
            }
        }
        let symbols: BTreeSet<String> = symbols
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if symbols.is_empty() {
            return invalid("symbols is required");
        }
        let Some(tf) = tf.as_deref().and_then(timeframe) else {
            return invalid("invalid timeframe");
        };
        let (Some(from), Some(to)) = (
            start.as_deref().and_then(instant),
            end.as_deref().and_then(instant),
        ) else {
            return invalid("start and end must be RFC 3339 times");
        };
        let limit = match limit.as_deref().map(str::parse::<usize>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => return invalid("invalid limit: must be between 1 and 10000"),
        };
        let resume = match page_token.as_deref().map(untoken) {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => return invalid("invalid page token"),
        };
        let faults = super::server::lock(&self.symbol_faults).clone();
        for s in &symbols {
            match faults.get(s) {
                Some(SymbolFault::Forbidden) => {
                    return message(403, "subscription does not permit querying recent SIP data")
                }
                Some(SymbolFault::ServerError) => return server_error(),
                Some(SymbolFault::RateLimited) => return rate_limited(1),
                Some(SymbolFault::EchoKey) => {
                    return message(403, &format!("key {} is not entitled to {s}", self.api_key))
                }
                _ => {}
            }
        }
        let room = limit.min(self.page_size.max(1));
        let lo = from.max(self.data_from_ms.unwrap_or(i64::MIN));
        let hi = to.min(self.data_to_ms.unwrap_or(i64::MAX));
        let mut page: Vec<(&str, Vec<RawBar>)> = Vec::new();
        let mut taken = 0;
        let mut next = None;
        let known = symbols.iter().filter(|s| {
            self.symbols.contains(*s)
                && faults.get(*s) != Some(&SymbolFault::NotFound)
                && resume
                    .as_ref()
                    .is_none_or(|(r, _)| s.as_str() >= r.as_str())
        });
        for sym in known {
            let first = match &resume {
                Some((r, t)) if r == sym => lo.max(*t),
                _ => lo,
            };
            let gen = Generator::new(sym, tf);
            let mut grid = Grid::new(sym, tf, first, hi).peekable();
            if taken == room {
                if grid.peek().is_some() {
                    next = Some(token(sym, first));
                    break;
                }
                continue;
            }
            let mut bars = Vec::new();
            while taken < room {
                let Some(t) = grid.next() else { break };
                let mut b = gen.bar(t);
                if faults.get(sym) == Some(&SymbolFault::InconsistentBars)
                    && super::is_inconsistent(b.t)
                {
                    std::mem::swap(&mut b.h, &mut b.l);
                }
                bars.push(b);
                taken += 1;
            }
            if !bars.is_empty() {
                page.push((sym, bars));
            }
            if let Some(t) = grid.peek() {
                next = Some(token(sym, *t));
                break;
            }
        }
        if let Some((sym, _)) = faults
            .iter()
            .find(|(s, f)| symbols.contains(*s) && **f == SymbolFault::EndlessCursor)
        {
            // The same token for ever: a chain that never ends by itself.
            next = Some(token(sym, lo));
        }
        Answer {
            status: 200,
            extra: Vec::new(),
            body: bars_body(&page, next.as_deref()),
            bars: taken,
        }
    }
}

fn bars_body(page: &[(&str, Vec<RawBar>)], next: Option<&str>) -> Vec<u8> {
    let n: usize = page.iter().map(|(_, b)| b.len()).sum();
    let mut b = Vec::with_capacity(64 + n * 140);
    b.extend_from_slice(b"{\"bars\":{");
    for (i, (sym, bars)) in page.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(serde_json::Value::from(*sym).to_string().as_bytes());
        b.extend_from_slice(b":[");
        for (j, bar) in bars.iter().enumerate() {
            if j > 0 {
                b.push(b',');
            }
            write_bar(bar, &mut b);
        }
        b.push(b']');
    }
    b.extend_from_slice(b"},\"next_page_token\":");
    match next {
        Some(t) => b.extend_from_slice(serde_json::Value::from(t).to_string().as_bytes()),
        None => b.extend_from_slice(b"null"),
    }
    b.push(b'}');
    b
}

/// `{"t":"…Z","o":…,"h":…,"l":…,"c":…,"v":…,"n":…,"vw":…}`: Alpaca's key order, whole volumes.
fn write_bar(bar: &RawBar, b: &mut Vec<u8>) {
    let t = DateTime::from_timestamp_millis(bar.t)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    b.extend_from_slice(b"{\"t\":\"");
    b.extend_from_slice(t.as_bytes());
    b.extend_from_slice(b"\",\"o\":");
    push_price(b, bar.o);
    b.extend_from_slice(b",\"h\":");
    push_price(b, bar.h);
    b.extend_from_slice(b",\"l\":");
    push_price(b, bar.l);
    b.extend_from_slice(b",\"c\":");
    push_price(b, bar.c);
    b.extend_from_slice(b",\"v\":");
    push_u64(b, u64::try_from(bar.v.rounded()).unwrap_or(0));
    b.extend_from_slice(b",\"n\":");
    push_u64(b, bar.n.unwrap_or(1));
    b.extend_from_slice(b",\"vw\":");
    push_price(b, bar.vw);
    b.push(b'}');
}

// ---------------------------------------------------------------------------------------------
// The stream (`/v2/{feed}`): what `super::ws` sends when a client connects in Alpaca's dialect.

/// Stream paths served in Alpaca's dialect.
pub(crate) fn is_stream_path(path: &str) -> bool {
    matches!(path, "/v2/iex" | "/v2/sip" | "/v2/test" | "/v2/delayed_sip")
}

/// `{"T":"success","msg":…}`.
pub(crate) fn ws_success(msg: &str) -> String {
    serde_json::json!({ "T": "success", "msg": msg }).to_string()
}

/// `{"T":"error","code":…,"msg":…}`.
pub(crate) fn ws_error(code: u16, msg: &str) -> String {
    serde_json::json!({ "T": "error", "code": code, "msg": msg }).to_string()
}

/// The subscription as it stands, Alpaca's confirmation.
pub(crate) fn ws_subscription(bars: &[&str]) -> String {
    serde_json::json!({
        "T": "subscription", "trades": [], "quotes": [], "bars": bars, "updatedBars": bars,
        "dailyBars": [], "statuses": [], "lulds": [], "corrections": [], "cancelErrors": [],
    })
    .to_string()
}

/// `"S":"AAPL"`, written once per symbol.
pub(crate) fn ws_sym_json(symbol: &str) -> Vec<u8> {
    format!("\"S\":{}", serde_json::Value::from(symbol)).into_bytes()
}

/// `{"T":"b"|"u","S":…,"o":…,"h":…,"l":…,"c":…,"v":…,"t":"…Z","n":…,"vw":…}` with the given
/// volume and close (a preliminary version differs in both).
pub(crate) fn write_ws_bar(
    buf: &mut Vec<u8>,
    kind: u8,
    sym_json: &[u8],
    bar: &RawBar,
    v: u64,
    c: i64,
) {
    let t = DateTime::from_timestamp_millis(bar.t)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    buf.extend_from_slice(b"{\"T\":\"");
    buf.push(kind);
    buf.extend_from_slice(b"\",");
    buf.extend_from_slice(sym_json);
    buf.extend_from_slice(b",\"o\":");
    push_price(buf, bar.o);
    buf.extend_from_slice(b",\"h\":");
    push_price(buf, bar.h);
    buf.extend_from_slice(b",\"l\":");
    push_price(buf, bar.l);
    buf.extend_from_slice(b",\"c\":");
    push_price(buf, c);
    buf.extend_from_slice(b",\"v\":");
    push_u64(buf, v);
    buf.extend_from_slice(b",\"t\":\"");
    buf.extend_from_slice(t.as_bytes());
    buf.extend_from_slice(b"\",\"n\":");
    push_u64(buf, bar.n.unwrap_or(1));
    buf.extend_from_slice(b",\"vw\":");
    push_price(buf, bar.vw);
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_look_opaque() {
        let t = token("BRK.B", 1_704_205_800_000);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(untoken(&t), Some(("BRK.B".into(), 1_704_205_800_000)));
        assert_eq!(untoken("zz"), None);
    }
}
