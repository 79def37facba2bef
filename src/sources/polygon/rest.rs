//! Polygon's REST aggregates (`/v2/aggs/ticker/{T}/range/{m}/{span}/{from}/{to}`), page by page.
//!
//! Unadjusted (`adjusted=false`), like the flat files that share `data_source = 'polygon'`. The
//! key travels as `Authorization: Bearer`, never in a URL; a `next_url` is followed only on
//! `rest_url`'s own origin, so the key never goes anywhere else.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use url::Url;

use super::decode::{decode_aggs, error_message, AggsPage, DecodeError};
use crate::config::{PolygonConfig, Secret};
use crate::domain::{Symbol, Timeframe};
use crate::sources::http::{Blame, Body, HttpError, HttpSource, RetryPolicy};
use crate::sources::{window_text, FetchError, History, Page, Pages};

const VENDOR: &str = "polygon";
/// Polygon's largest page: `decode::MAX_RESULTS`.
const PAGE_LIMIT: &str = "50000";

#[derive(Debug, thiserror::Error)]
pub enum PolygonError {
    #[error("polygon: {0}")]
    Setup(String),
    /// Not marked as the source: the text already says everything the `HttpError` does.
    #[error("{}", http_text(.0))]
    Http(HttpError),
    #[error("polygon {symbol}: {source}")]
    Decode {
        symbol: Symbol,
        #[source]
        source: DecodeError,
    },
    #[error("polygon {symbol}: next_url refused: {reason}")]
    NextUrl { symbol: Symbol, reason: String },
    /// A chain of pages that would not end by itself: it stopped advancing in time, or it
    /// carried more than the window can hold.
    #[error("polygon {symbol} {window}: the page chain {reason}; the window stays pending")]
    Chain {
        symbol: Symbol,
        window: String,
        reason: String,
    },
}

/// 401 means the key, whatever the symbol; 403 means the plan, which may depend on the range.
fn http_text(e: &HttpError) -> String {
    match e.status().map(|s| s.as_u16()) {
        Some(401) => format!(
            "polygon: {} (check sources.polygon.api_key / POLYGON_API_KEY)",
            e.detail()
        ),
        Some(403) => {
            format!("{e} (the plan of sources.polygon.api_key does not cover this request)")
        }
        _ => e.to_string(),
    }
}

impl PolygonError {
    /// Whether the other symbols may go on ([`Blame::Request`]: this symbol or its response is
    /// bad), none will succeed ([`Blame::Account`]: key, plan or setup), or Polygon or the
    /// network kept failing through every retry ([`Blame::Unavailable`]).
    pub fn blame(&self) -> Blame {
        match self {
            PolygonError::Setup(_) => Blame::Account,
            PolygonError::Http(e) => e.blame(),
            PolygonError::Decode { .. }
            | PolygonError::NextUrl { .. }
            | PolygonError::Chain { .. } => Blame::Request,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            PolygonError::Http(e) => e.status(),
            _ => None,
        }
    }
}

impl From<PolygonError> for FetchError {
    fn from(e: PolygonError) -> FetchError {
        FetchError {
            message: e.to_string(),
            blame: e.blame(),
            // Polygon answers 404 for a ticker it does not know, whatever the window.
            unknown_symbol: e.status().map(|s| s.as_u16()) == Some(404),
        }
    }
}

impl History for PolygonRest {
    /// A window holds at most 50,000 base aggregates (Polygon's `limit` counts minutes for
    /// every intraday timeframe), so one page can hold a whole window even if the vendor
    /// stopped sending `next_url`: 30 days are 43,200 minutes. Daily bars: 52 weeks.
    fn window_len(&self, timeframe: Timeframe) -> chrono::Duration {
        match timeframe {
            Timeframe::D1 => chrono::Duration::weeks(52),
            _ => chrono::Duration::days(30),
        }
    }

    /// One symbol: `symbols_per_request` is 1, so the work queue hands over exactly one.
    fn pages(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Box<dyn Pages> {
        match symbols {
            [symbol] => Box::new(PolygonRest::pages(
                self,
                symbol,
                timeframe,
                from,
                to_inclusive,
            )),
            _ => Box::new(NoPages(FetchError::new(
                format!("polygon: one symbol per request, not {}", symbols.len()),
                Blame::Account,
            ))),
        }
    }
}

/// A request that cannot be made: its error, once.
struct NoPages(FetchError);

impl Pages for NoPages {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Page>, FetchError>> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
}

impl Pages for Pager {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Page>, FetchError>> {
        Box::pin(async move {
            let page = Pager::next(self).await?;
            Ok(page.map(|p| Page {
                bars: p.bars,
                rejections: p.rejections,
                settled: !p.delayed,
                actions: Vec::new(),
            }))
        })
    }
}

/// The aggregates client. Clones share the connection pool and the rate limit.
#[derive(Clone)]
pub struct PolygonRest {
    http: HttpSource,
    base: Url,
}

impl std::fmt::Debug for PolygonRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `rest_url` may carry a password of its own.
        f.debug_struct("PolygonRest")
            .field("http", &self.http)
            .field("base", &crate::config::redact_url(self.base.as_str()))
            .finish()
    }
}

impl PolygonRest {
    pub fn new(cfg: &PolygonConfig) -> Result<Self, PolygonError> {
        let base = Url::parse(&cfg.rest_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            // Not echoed: a malformed URL may still carry a credential.
            .ok_or_else(|| {
                PolygonError::Setup("sources.polygon.rest_url is not an http(s) URL".into())
            })?;
        if !cfg.api_key.is_set() {
            return Err(PolygonError::Setup(
                "no API key (set sources.polygon.api_key or POLYGON_API_KEY)".into(),
            ));
        }
        if cfg.requests_per_minute == 0 {
            return Err(PolygonError::Setup(
                "sources.polygon.requests_per_minute must be at least 1".into(),
            ));
        }
        let auth = vec![(
            AUTHORIZATION,
            Secret::new(format!("Bearer {}", cfg.api_key.expose())),
        )];
        let http = HttpSource::new(VENDOR, cfg.requests_per_minute, auth, error_message)
            .and_then(|h| h.with_client(crate::sources::http::USER_AGENT, cfg.proxy_url.as_ref()))
            .map_err(|e| PolygonError::Setup(e.detail()))?;
        Ok(PolygonRest { http, base })
    }

    /// Shorter waits for tests; the default policy suits Polygon's limits.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.http = self.http.with_retry(policy);
        self
    }

    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.http = self.http.with_max_body(bytes);
        self
    }

    /// The first page's URL: bars starting in `[from, to_inclusive]` (both ends inclusive, in
    /// epoch milliseconds), oldest first.
    pub fn aggs_url(
        &self,
        symbol: &Symbol,
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Url {
        let (multiplier, timespan) = range(timeframe);
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        let path = format!(
            "{}/v2/aggs/ticker/{}/range/{multiplier}/{timespan}/{}/{}",
            self.base.path().trim_end_matches('/'),
            path_segment(symbol.as_str()),
            from.timestamp_millis(),
            to_inclusive.timestamp_millis(),
        );
        url.set_path(&path);
        url.query_pairs_mut()
            .append_pair("adjusted", "false")
            .append_pair("sort", "asc")
            .append_pair("limit", PAGE_LIMIT);
        url
    }

    /// The pages of `symbol`'s bars starting in `[from, to_inclusive]`; none when `from` is after
    /// `to_inclusive`.
    pub fn pages(
        &self,
        symbol: &Symbol,
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Pager {
        let first =
            (from <= to_inclusive).then(|| self.aggs_url(symbol, timeframe, from, to_inclusive));
        // Each page of a chain must bring at least one new bar, so a window cannot take more
        // pages than it holds bars (plus the last, which may be empty).
        let span = (to_inclusive - from).num_seconds().max(0) as u64;
        let capacity = span / timeframe.duration().num_seconds().max(1) as u64 + 1;
        Pager {
            rest: self.clone(),
            symbol: symbol.clone(),
            from,
            to: to_inclusive,
            next: first,
            refused: None,
            requested: HashSet::new(),
            capacity,
            pages: 0,
            received: 0,
            newest: None,
            stalled: 0,
        }
    }

    /// A `next_url` to follow: same origin as `rest_url` (the key goes with it), not one already
    /// requested (a loop would never end).
    fn follow(&self, raw: &str, requested: &HashSet<String>) -> Result<Url, String> {
        let url = self
            .base
            .join(raw)
            .map_err(|e| format!("not a URL ({e})"))?;
        if url.origin() != self.base.origin() {
            return Err(format!(
                "it points to {}, not sources.polygon.rest_url's {}; the API key is not sent elsewhere",
                url.origin().ascii_serialization(),
                self.base.origin().ascii_serialization()
            ));
        }
        if requested.contains(url.as_str()) {
            return Err("it repeats a page already fetched (a loop)".into());
        }
        Ok(url)
    }
}

/// A ticker as one path segment: what RFC 3986 does not allow in a segment is percent-encoded
/// (`BRK/B` → `BRK%2FB`, `^GSPC` → `%5EGSPC`); `:` (Polygon's `I:SPX`, `X:BTCUSD`) is allowed and
/// kept. The url crate's own segment encoding leaves `^` as is.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if allowed {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn range(timeframe: Timeframe) -> (&'static str, &'static str) {
    match timeframe {
        Timeframe::M1 => ("1", "minute"),
        Timeframe::M5 => ("5", "minute"),
        Timeframe::M15 => ("15", "minute"),
        Timeframe::H1 => ("1", "hour"),
        Timeframe::D1 => ("1", "day"),
    }
}

/// One symbol's pages: the first request, then each `next_url` until there is none.
#[derive(Debug)]
pub struct Pager {
    rest: PolygonRest,
    symbol: Symbol,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    next: Option<Url>,
    /// A refused `next_url`, reported after the page that carried it.
    refused: Option<PolygonError>,
    requested: HashSet<String>,
    /// Bars the window can hold: the bound on pages and on results.
    capacity: u64,
    pages: u64,
    /// Results received over every page.
    received: u64,
    /// The newest bar of the chain so far.
    newest: Option<DateTime<Utc>>,
    /// Pages in a row that brought no newer bar.
    stalled: u32,
}

/// Pages in a row without a newer bar before a chain counts as stuck (a vendor may send an
/// empty page or two, never an endless run).
const MAX_STALLED_PAGES: u32 = 3;

impl Pager {
    /// The next page, or `None` after the last. Bars outside the range asked for become
    /// `outside_window` rejections: a vendor that lies about units or ranges is seen, never
    /// silently dropped.
    ///
    /// After an HTTP or decode error the pager stays on that page: calling again retries it.
    /// A refused `next_url` or a runaway chain is reported once, after the page that carried it;
    /// then the pager is done. Cancellation-safe: dropping the future leaves the pager on the
    /// same page.
    pub async fn next(&mut self) -> Result<Option<AggsPage>, PolygonError> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let Some(url) = self.next.clone() else {
            return Ok(None);
        };
        let symbol = &self.symbol;
        let decoded = self
            .rest
            .http
            .get_decoded(&url, symbol.as_str(), |body, _| {
                match decode_aggs(&body, symbol) {
                    Err(e) if e.is_unreadable() => Body::Unreadable(e.to_string()),
                    other => Body::Ok(other),
                }
            })
            .await
            .map_err(PolygonError::Http)?;
        let mut page = decoded.map_err(|source| PolygonError::Decode {
            symbol: symbol.clone(),
            source: source.scrubbed(|t| self.rest.http.scrub(t)),
        })?;
        // A rejected result quotes the vendor's text, which may echo the key.
        if !page.rejections.is_empty() {
            let http = &self.rest.http;
            page.rejections = std::mem::take(&mut page.rejections)
                .into_iter()
                .map(|r| r.scrubbed(|t| http.scrub(t)))
                .collect();
        }
        self.requested.insert(url.into());
        self.pages += 1;
        self.received += (page.bars.len() + page.rejections.len()) as u64;
        let (from, to) = (self.from, self.to);
        let window = window_text(from, to);
        let (inside, outside): (Vec<_>, Vec<_>) = std::mem::take(&mut page.bars)
            .into_iter()
            .partition(|b| b.timestamp >= from && b.timestamp <= to);
        page.bars = inside;
        page.rejections.extend(outside.iter().map(|b| {
            crate::ingest::Rejection::of_bar(
                b,
                "outside_window",
                format!("the bar is outside the window asked for ({window})"),
            )
        }));
        let newest = page.bars.iter().map(|b| b.timestamp).max();
        if newest.is_some_and(|n| self.newest.is_none_or(|old| n > old)) {
            self.newest = newest;
            self.stalled = 0;
        } else {
            self.stalled += 1;
        }
        self.next = None;
        if let Some(raw) = page.next_url.as_deref() {
            let runaway = if self.stalled >= MAX_STALLED_PAGES {
                Some(format!(
                    "stopped advancing in time ({} pages in a row brought no newer bar)",
                    self.stalled
                ))
            } else if self.pages > self.capacity || self.received > self.capacity + 50_000 {
                Some(format!(
                    "passed what the window can hold ({} pages, {} results for at most {} bars)",
                    self.pages, self.received, self.capacity
                ))
            } else {
                None
            };
            match (runaway, self.rest.follow(raw, &self.requested)) {
                (Some(reason), _) => {
                    self.refused = Some(PolygonError::Chain {
                        symbol: self.symbol.clone(),
                        window,
                        reason,
                    })
                }
                (None, Ok(next)) => self.next = Some(next),
                (None, Err(reason)) => {
                    self.refused = Some(PolygonError::NextUrl {
                        symbol: self.symbol.clone(),
                        reason: self.rest.http.scrub(&reason),
                    })
                }
            }
        }
        Ok(Some(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn client(rest_url: &str) -> PolygonRest {
        PolygonRest::new(&PolygonConfig {
            api_key: Secret::new("k"),
            rest_url: rest_url.into(),
            ..PolygonConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn urls() {
        let c = client("https://api.polygon.io");
        let from = Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2024, 1, 2, 23, 59, 59).unwrap();
        let aapl: Symbol = "AAPL".parse().unwrap();
        assert_eq!(
            c.aggs_url(&aapl, Timeframe::M1, from, to).as_str(),
            "https://api.polygon.io/v2/aggs/ticker/AAPL/range/1/minute/1704153600000/1704239999000?adjusted=false&sort=asc&limit=50000"
        );
        for (tf, part) in [
            (Timeframe::M5, "/range/5/minute/"),
            (Timeframe::M15, "/range/15/minute/"),
            (Timeframe::H1, "/range/1/hour/"),
            (Timeframe::D1, "/range/1/day/"),
        ] {
            assert!(c.aggs_url(&aapl, tf, from, to).path().contains(part));
        }
        // A path prefix and a trailing slash are kept; odd tickers stay one segment.
        let c = client("http://127.0.0.1:8080/polygon/");
        let odd: Symbol = "A/B^C".parse().unwrap();
        assert_eq!(
            c.aggs_url(&odd, Timeframe::D1, from, to).path(),
            "/polygon/v2/aggs/ticker/A%2FB%5EC/range/1/day/1704153600000/1704239999000"
        );
        let index: Symbol = "I:SPX".parse().unwrap();
        assert!(c
            .aggs_url(&index, Timeframe::D1, from, to)
            .path()
            .contains("/ticker/I:SPX/"));
    }

    #[test]
    fn next_urls_stay_on_the_origin_and_do_not_loop() {
        let c = client("https://api.polygon.io");
        let mut seen = HashSet::new();
        let ok = "https://api.polygon.io/v2/aggs/ticker/AAPL/range/1/minute/1/2?cursor=abc";
        assert!(c.follow(ok, &seen).is_ok());
        for bad in [
            "https://evil.example/v2/aggs?cursor=abc",
            "http://api.polygon.io/v2/aggs?cursor=abc",
            "https://api.polygon.io:444/v2/aggs?cursor=abc",
        ] {
            let e = c.follow(bad, &seen).unwrap_err();
            assert!(e.contains("not sent elsewhere"), "{e}");
        }
        seen.insert(ok.to_string());
        assert!(c.follow(ok, &seen).unwrap_err().contains("loop"));
    }

    #[test]
    fn setup_errors() {
        let e = PolygonRest::new(&PolygonConfig {
            rest_url: "ftp://x".into(),
            api_key: Secret::new("k"),
            ..PolygonConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.blame(), Blame::Account);
        let e = PolygonRest::new(&PolygonConfig::default()).unwrap_err();
        assert!(e.to_string().contains("POLYGON_API_KEY"), "{e}");
    }

    #[test]
    fn an_empty_range_asks_nothing() {
        let c = client("https://api.polygon.io");
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap();
        let p = c.pages(
            &"AAPL".parse().unwrap(),
            Timeframe::M1,
            t,
            t - chrono::Duration::seconds(1),
        );
        assert!(p.next.is_none());
    }
}
