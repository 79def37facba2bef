//! Yahoo's chart API (`GET /v8/finance/chart/{SYM}`): one symbol per request, the whole window
//! in one response (no paging), `period1` inclusive and `period2` exclusive, in epoch seconds.
//!
//! One fetch writes two data sources: `yahoo` (the quote as given) and, with `adjusted`,
//! `yahoo_adjusted`. No key; a browser-like `User-Agent`, a self-imposed rate limit (Yahoo
//! publishes none and throttles clients that hurry) and the section's proxy.

use chrono::{DateTime, Duration, Utc};
use futures_util::future::BoxFuture;
use url::Url;

use super::config::YahooConfig;
use super::decode::{decode_chart, Chart, DecodeError, Request};
use crate::domain::{DataSource, Symbol, Timeframe};
use crate::sources::http::{Body, HttpError, HttpSource, RetryPolicy};
use crate::sources::{window_text, Blame, FetchError, History, Page, Pages};

const VENDOR: &str = "yahoo";
/// What a current desktop browser sends: Yahoo answers other agents with 429 more readily.
pub const BROWSER_USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

#[derive(Debug, thiserror::Error)]
pub enum YahooError {
    #[error("yahoo: {0}")]
    Setup(String),
    #[error("{}", http_text(.symbol, .source))]
    Http {
        symbol: String,
        #[source]
        source: HttpError,
    },
    #[error("yahoo {symbol} {window}: {source}")]
    Decode {
        symbol: String,
        window: String,
        #[source]
        source: DecodeError,
    },
}

/// A 429 that outlasted every retry is not a rate limit that will pass: since 2025 Yahoo
/// refuses clients whose TLS handshake is not a browser's, whatever they send.
fn http_text(symbol: &str, e: &HttpError) -> String {
    match e.status().map(|s| s.as_u16()) {
        Some(429) => format!(
            "yahoo {symbol}: Yahoo refuses this client (HTTP 429 after {} attempts; Yahoo turns away clients whose TLS handshake is not a browser's: set sources.yahoo.proxy_url, or build with --features impersonate; see the README)",
            e.attempts()
        ),
        Some(404) => format!(
            "yahoo {symbol}: unknown symbol ({})",
            e.vendor_message().unwrap_or("404 Not Found")
        ),
        _ => e.to_string(),
    }
}

impl YahooError {
    fn is_unknown_symbol(&self) -> bool {
        match self {
            YahooError::Http { source, .. } => source.status().is_some_and(|s| s.as_u16() == 404),
            YahooError::Decode {
                source: DecodeError::Vendor { code, .. },
                ..
            } => code == "Not Found",
            _ => false,
        }
    }
}

impl From<YahooError> for FetchError {
    fn from(e: YahooError) -> FetchError {
        let blame = match &e {
            YahooError::Setup(_) => Blame::Account,
            YahooError::Http { source, .. } => source.blame(),
            YahooError::Decode { .. } => Blame::Request,
        };
        let unknown_symbol = e.is_unknown_symbol();
        FetchError {
            message: e.to_string(),
            blame,
            unknown_symbol,
        }
    }
}

/// The chart client. Clones share the connection pool and the rate limit.
#[derive(Clone)]
pub struct YahooRest {
    http: HttpSource,
    chart_url: Url,
    adjusted: bool,
}

impl YahooRest {
    pub fn new(cfg: &YahooConfig) -> Result<YahooRest, YahooError> {
        let chart_url = Url::parse(&cfg.rest_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .and_then(|u| u.join("/v8/finance/chart/").ok())
            .ok_or_else(|| {
                YahooError::Setup("sources.yahoo.rest_url is not an http(s) URL".into())
            })?;
        let http = HttpSource::new(
            VENDOR,
            cfg.requests_per_minute,
            Vec::new(),
            super::decode::error_message,
        )
        .and_then(|h| client(h, cfg))
        .map_err(|e| YahooError::Setup(e.detail()))?
        .with_retry(RetryPolicy {
            // Yahoo's 429 is rarely a quota that passes within minutes (see `http_text`):
            // a few seconds of backoff, then the window fails and the next poll or run
            // tries again.
            max_attempts_throttled: 4,
            ..RetryPolicy::default()
        });
        Ok(YahooRest {
            http,
            chart_url,
            adjusted: cfg.adjusted,
        })
    }

    /// Shorter waits for tests; the default policy suits Yahoo.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.http = self.http.with_retry(policy);
        self
    }

    fn url(&self, symbol: &Symbol, timeframe: Timeframe, from: i64, to: i64) -> Url {
        let mut url = self
            .chart_url
            .join(symbol.as_str())
            .unwrap_or_else(|_| self.chart_url.clone());
        url.query_pairs_mut()
            .append_pair("period1", &from.to_string())
            .append_pair("period2", &to.to_string())
            .append_pair("interval", interval(timeframe))
            .append_pair("events", "div,splits")
            .append_pair("includePrePost", "false");
        url
    }

    /// `symbol`'s chart for the bars starting in `[from, to)`.
    pub async fn chart(
        &self,
        symbol: &Symbol,
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Chart, YahooError> {
        // period1/period2 are whole seconds; a bar before `from` or at `to` or later is not kept.
        let p1 = from.timestamp();
        let p2 = to.timestamp() + i64::from(to.timestamp_subsec_nanos() > 0);
        let url = self.url(symbol, timeframe, p1, p2);
        let req = Request {
            symbol,
            timeframe,
            from,
            to,
            adjusted: self.adjusted,
        };
        let decoded = self
            .http
            .get_decoded(&url, symbol.as_str(), |body, _| {
                match decode_chart(&body, &req) {
                    Err(e) if e.is_unreadable() => Body::Unreadable(e.to_string()),
                    other => Body::Ok(other),
                }
            })
            .await
            .map_err(|source| YahooError::Http {
                symbol: symbol.to_string(),
                source,
            })?;
        decoded.map_err(|source| YahooError::Decode {
            symbol: symbol.to_string(),
            window: window_text(from, to),
            source,
        })
    }
}

/// A browser's `User-Agent` on rustls; with the `impersonate` feature, a browser's TLS and
/// HTTP/2 fingerprint too (Yahoo refuses other handshakes, whatever the headers).
#[cfg(not(feature = "impersonate"))]
fn client(h: HttpSource, cfg: &YahooConfig) -> Result<HttpSource, HttpError> {
    h.with_client(BROWSER_USER_AGENT, cfg.proxy_url.as_ref())
}

#[cfg(feature = "impersonate")]
fn client(h: HttpSource, cfg: &YahooConfig) -> Result<HttpSource, HttpError> {
    h.impersonating(cfg.proxy_url.as_ref())
}

fn interval(tf: Timeframe) -> &'static str {
    match tf {
        Timeframe::M1 => "1m",
        Timeframe::M5 => "5m",
        Timeframe::M15 => "15m",
        Timeframe::H1 => "60m",
        Timeframe::D1 => "1d",
    }
}

impl History for YahooRest {
    /// Yahoo answers a whole range in one response, within its limits per interval: minutes
    /// at most 7 days a request, 5 and 15 minutes within the last 60 days, hours within 730.
    /// Days: five years a request (about 1,260 bars), so ten years of 500 symbols is 1,000
    /// requests, which the default self-imposed rate of one a second takes 17 minutes for.
    fn window_len(&self, timeframe: Timeframe) -> Duration {
        match timeframe {
            Timeframe::M1 => Duration::weeks(1),
            Timeframe::M5 | Timeframe::M15 => Duration::weeks(4),
            Timeframe::H1 => Duration::weeks(26),
            Timeframe::D1 => Duration::weeks(5 * 52),
        }
    }

    fn also_writes(&self) -> &[DataSource] {
        if self.adjusted {
            &[DataSource::YahooAdjusted]
        } else {
            &[]
        }
    }

    fn pages(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Box<dyn Pages> {
        Box::new(YahooPages {
            rest: self.clone(),
            symbol: symbols.first().cloned(),
            timeframe,
            from,
            to: to_inclusive + Duration::milliseconds(1),
        })
    }
}

/// One request: its one page, then none.
struct YahooPages {
    rest: YahooRest,
    /// Taken once the page is out.
    symbol: Option<Symbol>,
    timeframe: Timeframe,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Pages for YahooPages {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Page>, FetchError>> {
        Box::pin(async move {
            let Some(symbol) = self.symbol.clone() else {
                return Ok(None);
            };
            let chart = self
                .rest
                .chart(&symbol, self.timeframe, self.from, self.to)
                .await?;
            self.symbol = None;
            let mut bars = chart.bars;
            bars.extend(chart.adjusted);
            Ok(Some(Page {
                bars,
                rejections: chart.rejections,
                settled: true,
                actions: chart.actions,
            }))
        })
    }
}
