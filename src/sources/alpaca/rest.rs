//! Alpaca's REST bars (`GET /v2/stocks/bars`), many symbols per request chain.
//!
//! `adjustment=raw` (as traded, like Polygon), `sort=asc`, `limit=10000` (counted across all the
//! symbols of a request), `feed` from the config; `next_page_token` is followed until it is
//! null. A page may hold only some of the symbols. The key id and secret travel as
//! `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` headers, never in a URL or a log line.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::header::HeaderName;
use url::Url;

use super::decode::{decode_bars, error_message, BarsPage, DecodeError};
use crate::config::AlpacaConfig;
use crate::domain::{Symbol, Timeframe};
use crate::ingest::Rejection;
use crate::sources::http::{Body, HttpError, HttpSource, RetryPolicy};
use crate::sources::{window_text, Blame, FetchError, History, Page, Pages};

const VENDOR: &str = "alpaca";
/// Symbols per request chain: a URL of 100 tickers stays well under any server's limit.
pub const SYMBOLS_PER_REQUEST: usize = 100;
const PAGE_LIMIT: &str = "10000";

#[derive(Debug, thiserror::Error)]
pub enum AlpacaError {
    #[error("alpaca: {0}")]
    Setup(String),
    #[error("{}", http_text(.0))]
    Http(HttpError),
    #[error("alpaca {symbols}: {source}")]
    Decode {
        symbols: String,
        #[source]
        source: DecodeError,
    },
    /// A chain that would not end by itself: a token seen before, or more pages than the
    /// window can fill.
    #[error("alpaca {symbols} {window}: the page chain {reason}; the window stays pending")]
    Chain {
        symbols: String,
        window: String,
        reason: String,
    },
}

/// 401/403 are the keys or the plan, whatever the symbols.
fn http_text(e: &HttpError) -> String {
    match e.status().map(|s| s.as_u16()) {
        Some(401 | 403) => format!(
            "{e} (check sources.alpaca.key_id / secret_key, APCA_API_KEY_ID / APCA_API_SECRET_KEY, and the plan's feed)"
        ),
        _ => e.to_string(),
    }
}

impl From<AlpacaError> for FetchError {
    fn from(e: AlpacaError) -> FetchError {
        let blame = match &e {
            AlpacaError::Setup(_) => Blame::Account,
            AlpacaError::Http(h) => h.blame(),
            AlpacaError::Decode { .. } | AlpacaError::Chain { .. } => Blame::Request,
        };
        // Alpaca answers an unknown symbol with no bars, never an error.
        FetchError::new(e.to_string(), blame)
    }
}

/// The bars client. Clones share the connection pool and the rate limit.
#[derive(Clone)]
pub struct AlpacaRest {
    http: HttpSource,
    bars_url: Url,
    feed: String,
}

impl AlpacaRest {
    pub fn new(cfg: &AlpacaConfig) -> Result<AlpacaRest, AlpacaError> {
        let setup = |s: &str| AlpacaError::Setup(s.to_string());
        let bars_url = Url::parse(&cfg.rest_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .and_then(|u| u.join("/v2/stocks/bars").ok())
            // Not echoed: a malformed URL may still carry a credential.
            .ok_or_else(|| setup("sources.alpaca.rest_url is not an http(s) URL"))?;
        if !cfg.key_id.is_set() || !cfg.secret_key.is_set() {
            return Err(setup(
                "no key (set sources.alpaca.key_id and secret_key, or APCA_API_KEY_ID and APCA_API_SECRET_KEY)",
            ));
        }
        let auth = vec![
            (
                HeaderName::from_static("apca-api-key-id"),
                cfg.key_id.clone(),
            ),
            (
                HeaderName::from_static("apca-api-secret-key"),
                cfg.secret_key.clone(),
            ),
        ];
        let http = HttpSource::new(VENDOR, cfg.requests_per_minute, auth, error_message)
            .and_then(|h| h.with_client(crate::sources::http::USER_AGENT, cfg.proxy_url.as_ref()))
            .map_err(|e| AlpacaError::Setup(e.detail()))?;
        Ok(AlpacaRest {
            http,
            bars_url,
            feed: cfg.feed.clone(),
        })
    }

    /// Shorter waits for tests; the default policy suits Alpaca's limits.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.http = self.http.with_retry(policy);
        self
    }

    fn url(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        token: Option<&str>,
    ) -> Url {
        let joined: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
        let mut url = self.bars_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("symbols", &joined.join(","))
                .append_pair("timeframe", timeframe_param(timeframe))
                .append_pair("start", &from.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .append_pair("end", &to.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .append_pair("limit", PAGE_LIMIT)
                .append_pair("feed", &self.feed)
                .append_pair("adjustment", "raw")
                .append_pair("sort", "asc");
            if let Some(t) = token {
                q.append_pair("page_token", t);
            }
        }
        url
    }

    /// The pages of `symbols`' bars starting in `[from, to_inclusive]`.
    pub fn pages(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> AlpacaPager {
        // Each page brings at least one bar, or it is the last: a chain cannot take more pages
        // than the window holds bars of all its symbols, plus one.
        let span = (to_inclusive - from).num_seconds().max(0) as u64;
        let per_symbol = span / timeframe.duration().num_seconds().max(1) as u64 + 1;
        AlpacaPager {
            rest: self.clone(),
            symbols: symbols.to_vec(),
            wanted: symbols.iter().cloned().collect(),
            shown: symbols_text(symbols),
            timeframe,
            from,
            to: to_inclusive,
            token: None,
            done: from > to_inclusive || symbols.is_empty(),
            seen: HashSet::new(),
            capacity: per_symbol.saturating_mul(symbols.len() as u64) + 1,
            pages: 0,
        }
    }
}

/// `AAPL,MSFT`, or `AAPL,MSFT,… (100 symbols)`: how errors name a request's symbols.
fn symbols_text(symbols: &[Symbol]) -> String {
    const SHOWN: usize = 5;
    let head: Vec<&str> = symbols.iter().take(SHOWN).map(Symbol::as_str).collect();
    if symbols.len() > SHOWN {
        format!("{},… ({} symbols)", head.join(","), symbols.len())
    } else {
        head.join(",")
    }
}

fn timeframe_param(tf: Timeframe) -> &'static str {
    match tf {
        Timeframe::M1 => "1Min",
        Timeframe::M5 => "5Min",
        Timeframe::M15 => "15Min",
        Timeframe::H1 => "1Hour",
        Timeframe::D1 => "1Day",
    }
}

/// One request chain: the first page, then each `next_page_token` until there is none.
pub struct AlpacaPager {
    rest: AlpacaRest,
    symbols: Vec<Symbol>,
    wanted: HashSet<Symbol>,
    shown: String,
    timeframe: Timeframe,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    token: Option<String>,
    done: bool,
    /// Tokens followed: one seen again is a loop.
    seen: HashSet<String>,
    /// Pages the window can take (see `pages`).
    capacity: u64,
    pages: u64,
}

impl AlpacaPager {
    /// The next page, or `None` after the last. Bars of symbols not asked for, or outside the
    /// range, become rejections. After an error the pager stays on its page: calling again
    /// retries it. Cancellation-safe.
    pub async fn next(&mut self) -> Result<Option<BarsPage>, AlpacaError> {
        if self.done {
            return Ok(None);
        }
        let url = self.rest.url(
            &self.symbols,
            self.timeframe,
            self.from,
            self.to,
            self.token.as_deref(),
        );
        let http = &self.rest.http;
        let decoded = http
            .get_decoded(&url, &self.shown, |body, _| match decode_bars(&body) {
                Err(e) if e.is_unreadable() => Body::Unreadable(e.to_string()),
                other => Body::Ok(other),
            })
            .await
            .map_err(AlpacaError::Http)?;
        let mut page = decoded.map_err(|e| AlpacaError::Decode {
            symbols: self.shown.clone(),
            source: e.scrubbed(|t| http.scrub(t)),
        })?;
        self.pages += 1;
        let window = || window_text(self.from, self.to);
        match page.next_page_token.take() {
            None => self.done = true,
            Some(t) if !self.seen.insert(t.clone()) => {
                self.done = true;
                return Err(AlpacaError::Chain {
                    symbols: self.shown.clone(),
                    window: window(),
                    reason: "repeats a page token (a loop)".into(),
                });
            }
            Some(_) if self.pages >= self.capacity => {
                self.done = true;
                return Err(AlpacaError::Chain {
                    symbols: self.shown.clone(),
                    window: window(),
                    reason: format!("ran past {} pages", self.capacity),
                });
            }
            Some(t) => self.token = Some(t),
        }
        let (from, to) = (self.from, self.to);
        let mut rejections = std::mem::take(&mut page.rejections);
        page.bars.retain(|b| {
            let why = if !self.wanted.contains(&b.symbol) {
                Some((
                    "unrequested_symbol",
                    "the vendor sent a bar for a symbol not asked for".to_string(),
                ))
            } else if b.timestamp < from || b.timestamp > to {
                Some((
                    "outside_window",
                    format!(
                        "bar outside the window asked for ({})",
                        window_text(from, to)
                    ),
                ))
            } else {
                None
            };
            match why {
                Some((check, reason)) => {
                    rejections.push(Rejection::of_bar(b, check, reason));
                    false
                }
                None => true,
            }
        });
        // A rejected bar quotes the vendor's text, which may echo a credential.
        page.rejections = rejections
            .into_iter()
            .map(|r| r.scrubbed(|t| http.scrub(t)))
            .collect();
        Ok(Some(page))
    }
}

impl History for AlpacaRest {
    /// A request chain serves up to 100 symbols, and `limit` counts bars across all of them,
    /// so a window is a week of minutes (a few dozen pages for 100 liquid symbols), a quarter
    /// of hours, a year of days.
    fn window_len(&self, timeframe: Timeframe) -> chrono::Duration {
        match timeframe {
            Timeframe::M1 | Timeframe::M5 | Timeframe::M15 => chrono::Duration::weeks(1),
            Timeframe::H1 => chrono::Duration::weeks(13),
            Timeframe::D1 => chrono::Duration::weeks(52),
        }
    }

    fn symbols_per_request(&self) -> usize {
        SYMBOLS_PER_REQUEST
    }

    fn pages(
        &self,
        symbols: &[Symbol],
        timeframe: Timeframe,
        from: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
    ) -> Box<dyn Pages> {
        Box::new(AlpacaRest::pages(
            self,
            symbols,
            timeframe,
            from,
            to_inclusive,
        ))
    }
}

impl Pages for AlpacaPager {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Page>, FetchError>> {
        Box::pin(async move {
            let page = AlpacaPager::next(self).await?;
            Ok(page.map(|p| Page {
                bars: p.bars,
                rejections: p.rejections,
                settled: true,
                actions: Vec::new(),
            }))
        })
    }
}
