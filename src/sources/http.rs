//! HTTP plumbing every REST vendor shares, written once: one client per vendor with its auth
//! headers, the vendor's rate limit, retries with capped exponential backoff (honouring
//! `Retry-After`), a cap on the body's size, and errors that name the vendor, the request and
//! the vendor's own message.
//!
//! Credentials travel only in headers marked sensitive. They are never put in a URL, and every
//! text that leaves this module (errors, log lines, `Debug`) is built from parts that cannot hold
//! them: our own words, the status, and the vendor's message with any credential scrubbed out.
//! reqwest's errors are shown without their URL.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{redirect, StatusCode};
use url::Url;

use crate::config::{Secret, SecretUrl};

/// Largest body read into memory: a full page of 50,000 Polygon bars is about 6 MB.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;
/// An error body only yields a message; the rest of a large one is not worth reading.
const ERROR_BODY_MAX: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Ours, for vendors that ask us to say who we are (Polygon, Alpaca).
pub const USER_AGENT: &str = concat!("mdingest/", env!("CARGO_PKG_VERSION"));
/// A vendor's message quoted in an error stays one short line.
const MESSAGE_MAX_CHARS: usize = 300;
/// Same-origin redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// The vendor's own error text out of an error body (`{"error": "Unknown API Key"}`).
pub type MessageExtractor = fn(&[u8]) -> Option<String>;

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait (jitter may add up to as much again).
    pub min_delay: Duration,
    /// The longest wait the backoff itself produces, jitter included.
    pub max_delay: Duration,
    /// Attempts in all when the vendor fails (5xx), times out or the connection fails.
    pub max_attempts: u32,
    /// Attempts in all when the vendor throttles (429): being told to slow down is expected
    /// under a shared quota, so it is given more patience than a failure.
    pub max_attempts_throttled: u32,
    /// A `Retry-After` longer than this is waited only this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_attempts: 6,
            max_attempts_throttled: 12,
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// Millisecond waits, for tests; `Retry-After` is still honoured.
    pub fn fast() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
            ..RetryPolicy::default()
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        crate::backoff::Backoff::new(self.min_delay, self.max_delay).waits()
    }
}

/// Whom a failure is about, so that a caller knows whether its other requests may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// This request is bad (an unknown symbol, a bad range: 400, 404, …, or a body over the
    /// cap); other requests may go on.
    Request,
    /// The credentials, the plan or the setup (401, 403): every request will fail alike.
    Account,
    /// The vendor or the network kept failing through every retry (429, 5xx, timeouts,
    /// connection errors, bodies that broke off).
    Unavailable,
}

/// What went wrong with one request, after any retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("HTTP {status}{}", colon(.message))]
    Status {
        status: StatusCode,
        /// The vendor's own message, scrubbed and cut to one short line.
        message: Option<String>,
    },
    /// No complete response: a timeout, a connection error, a body that broke off.
    #[error("{reason}")]
    Transport { reason: String },
    #[error("response body larger than the {limit}-byte cap")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Setup(String),
}

fn colon(message: &Option<String>) -> String {
    message.as_ref().map_or(String::new(), |m| format!(": {m}"))
}

/// A failed request: `polygon AAPL: HTTP 401 Unauthorized: Unknown API Key`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{vendor}{}: {}", space(.what), detail(.problem, *.attempts))]
pub struct HttpError {
    vendor: &'static str,
    what: String,
    problem: Problem,
    attempts: u32,
}

fn detail(problem: &Problem, attempts: u32) -> String {
    if attempts > 1 {
        format!("{problem} (after {attempts} attempts)")
    } else {
        problem.to_string()
    }
}

fn space(what: &str) -> String {
    if what.is_empty() {
        String::new()
    } else {
        format!(" {what}")
    }
}

impl HttpError {
    fn setup(vendor: &'static str, reason: String) -> HttpError {
        HttpError {
            vendor,
            what: String::new(),
            problem: Problem::Setup(reason),
            attempts: 0,
        }
    }

    pub fn vendor(&self) -> &'static str {
        self.vendor
    }

    /// What was asked for (the symbol), as the caller named it.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// Requests sent, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn status(&self) -> Option<StatusCode> {
        match &self.problem {
            Problem::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The vendor's own message, if its error body had one.
    pub fn vendor_message(&self) -> Option<&str> {
        match &self.problem {
            Problem::Status { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// The error without its `vendor what: ` prefix, for callers that word their own.
    pub fn detail(&self) -> String {
        detail(&self.problem, self.attempts)
    }

    pub fn blame(&self) -> Blame {
        match &self.problem {
            Problem::Status { status, .. } => match status.as_u16() {
                401 | 403 => Blame::Account,
                s if is_retryable_status(s) => Blame::Unavailable,
                _ => Blame::Request,
            },
            Problem::Transport { .. } => Blame::Unavailable,
            Problem::TooLarge { .. } => Blame::Request,
            Problem::Setup(_) => Blame::Account,
        }
    }
}

/// Slow down (429), the server timed out waiting for us (408), or the vendor failed (5xx).
fn is_retryable_status(status: u16) -> bool {
    status == 429 || status == 408 || (500..600).contains(&status)
}

/// How one attempt failed, and whether another may succeed.
struct Failed {
    problem: Problem,
    retry: Retry,
}

enum Retry {
    No,
    /// The vendor failed or the transport did.
    Failure {
        after: Option<Duration>,
    },
    /// 429: the vendor asks us to slow down.
    Throttled {
        after: Option<Duration>,
    },
}

/// What a decoder made of a 2xx body.
pub enum Body<T> {
    /// Decoded (which may still be the vendor's error in a 200).
    Ok(T),
    /// Not the vendor's format at all: worth another attempt.
    Unreadable(String),
}

/// One vendor's HTTP client. Clones share the connection pool and the rate limit (a vendor's
/// limit is per account, whichever task spends it).
#[derive(Clone)]
pub struct HttpSource {
    vendor: &'static str,
    client: Client,
    auth: Arc<[(HeaderName, HeaderValue)]>,
    /// The credentials, to scrub them out of any message a vendor echoes back.
    secrets: Arc<[Secret]>,
    limiter: Arc<DefaultDirectRateLimiter>,
    retry: RetryPolicy,
    max_body: usize,
    error_message: MessageExtractor,
    /// Held by the one body allowed past [`SMALL_BODY`] at a time, from then until it is
    /// decoded and dropped: a vendor's workers together hold at most `workers × SMALL_BODY +
    /// max_body` of raw bodies, whatever sizes the vendor sends.
    big_body: Arc<tokio::sync::Mutex<()>>,
}

/// A body's turn past [`SMALL_BODY`].
type BigTurn = tokio::sync::OwnedMutexGuard<()>;

/// Bodies up to this size are read side by side; a larger one waits for its turn. A full page
/// of 50,000 Polygon bars is about 6 MB.
const SMALL_BODY: usize = 8 << 20;

impl fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("vendor", &self.vendor)
            .field(
                "auth_headers",
                &self
                    .auth
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("retry", &self.retry)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpSource {
    /// `requests_per_minute` is spread evenly (no burst), so no 60-second window ever holds more
    /// requests than the vendor allows, whenever its window starts. `auth` headers go with every
    /// request, marked sensitive.
    pub fn new(
        vendor: &'static str,
        requests_per_minute: u32,
        auth: Vec<(HeaderName, Secret)>,
        error_message: MessageExtractor,
    ) -> Result<Self, HttpError> {
        let rpm = NonZeroU32::new(requests_per_minute).ok_or_else(|| {
            HttpError::setup(vendor, "requests_per_minute must be at least 1".into())
        })?;
        let limiter = RateLimiter::direct(Quota::per_minute(rpm).allow_burst(NonZeroU32::MIN));
        let mut headers = Vec::with_capacity(auth.len());
        for (name, secret) in &auth {
            // The value is not quoted: it is the credential.
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                HttpError::setup(
                    vendor,
                    format!("the credential for header {name} is not a valid header value"),
                )
            })?;
            value.set_sensitive(true);
            headers.push((name.clone(), value));
        }
        let client = Client::Plain(build_client(vendor, USER_AGENT, None)?);
        Ok(HttpSource {
            vendor,
            client,
            auth: headers.into(),
            secrets: auth.into_iter().map(|(_, s)| s).collect(),
            limiter: Arc::new(limiter),
            retry: RetryPolicy::default(),
            max_body: DEFAULT_MAX_BODY,
            error_message,
            big_body: Arc::default(),
        })
    }

    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The vendor's own `User-Agent`, and its proxy (`proxy_url`: HTTP or HTTPS, its password
    /// never shown).
    pub fn with_client(
        mut self,
        user_agent: &str,
        proxy: Option<&SecretUrl>,
    ) -> Result<Self, HttpError> {
        self.client = Client::Plain(build_client(self.vendor, user_agent, proxy)?);
        Ok(self)
    }

    /// A browser's TLS and HTTP/2 fingerprint (Chrome's, through wreq), and the proxy: for a
    /// vendor that refuses other clients (Yahoo). Redirects are not followed.
    #[cfg(feature = "impersonate")]
    pub fn impersonating(mut self, proxy: Option<&SecretUrl>) -> Result<Self, HttpError> {
        let vendor = self.vendor;
        let setup = |what: &str, e: wreq::Error| {
            HttpError::setup(
                vendor,
                format!("{what}: {}", crate::text::one_line(&e.without_uri())),
            )
        };
        let mut builder = wreq::Client::builder()
            .emulation(wreq_util::Emulation::Chrome131)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .gzip(true)
            .redirect(wreq::redirect::Policy::none());
        if let Some(p) = proxy {
            let proxy = wreq::Proxy::all(p.expose())
                .map_err(|e| setup(&format!("proxy_url {} is not usable", p.redacted()), e))?;
            builder = builder.proxy(proxy);
        }
        self.client = Client::Browser(
            builder
                .build()
                .map_err(|e| setup("cannot build the HTTP client", e))?,
        );
        Ok(self)
    }

    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn vendor(&self) -> &'static str {
        self.vendor
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// GETs `url` and returns the body of a 2xx response. `what` names the request in errors and
    /// logs (the symbol); the URL itself is never shown.
    ///
    /// Every attempt, retries included, first waits for the rate limit. 429, 408, 5xx, timeouts,
    /// connection errors and bodies that break off are retried per the [`RetryPolicy`], waiting
    /// at least as long as a `Retry-After` asks; other statuses fail at once.
    ///
    /// Cancellation-safe: dropping the future abandons the request (and any wait) and leaves the
    /// source usable.
    pub async fn get(&self, url: &Url, what: &str) -> Result<Vec<u8>, HttpError> {
        self.get_decoded(url, what, |body, _| Body::Ok(body)).await
    }

    /// As [`get`](Self::get), then `decode`s the body. A body `decode` cannot read at all (an
    /// HTML page or cut JSON behind a 200) is retried like a body that broke off, before it
    /// fails. `decode` owns the body (it is gone before the big-body turn is given back) and
    /// sees the response's headers.
    pub async fn get_decoded<T>(
        &self,
        url: &Url,
        what: &str,
        decode: impl Fn(Vec<u8>, &HeaderMap) -> Body<T>,
    ) -> Result<T, HttpError> {
        let mut backoff = self.retry.backoff();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.limiter.until_ready().await;
            let decoded = self.attempt(url).await.map(|(body, headers, turn)| {
                let decoded = decode(body, &headers);
                drop(turn);
                decoded
            });
            let failed = match decoded {
                Ok(Body::Ok(value)) => return Ok(value),
                Ok(Body::Unreadable(reason)) => Failed {
                    problem: Problem::Transport {
                        reason: self.scrub(&reason),
                    },
                    retry: Retry::Failure { after: None },
                },
                Err(f) => f,
            };
            let (limit, after) = match failed.retry {
                Retry::No => (attempts, None),
                Retry::Failure { after } => (self.retry.max_attempts, after),
                Retry::Throttled { after } => (self.retry.max_attempts_throttled, after),
            };
            if attempts >= limit {
                return Err(HttpError {
                    vendor: self.vendor,
                    what: crate::text::excerpt(what, 100),
                    problem: failed.problem,
                    attempts,
                });
            }
            let mut wait = backoff.next().unwrap_or(self.retry.max_delay);
            if let Some(after) = after {
                wait = wait.max(after.min(self.retry.max_retry_after));
            }
            tracing::warn!(
                vendor = self.vendor,
                what,
                attempt = attempts,
                problem = %failed.problem,
                wait_ms = wait.as_millis() as u64,
                "request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request: the body of a 2xx and its headers, with the big-body turn it took, if it
    /// grew that large.
    async fn attempt(&self, url: &Url) -> Result<(Vec<u8>, HeaderMap, Option<BigTurn>), Failed> {
        let sent = self.client.send(url, &self.auth).await;
        crate::telemetry::http_request(
            self.vendor,
            sent.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let mut resp = sent.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_failure(resp).await);
        }
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(Failed {
                problem: Problem::TooLarge {
                    limit: self.max_body,
                },
                retry: Retry::No,
            });
        }
        let announced = resp.content_length().map_or(0, |n| n as usize);
        let mut turn = None;
        if announced > SMALL_BODY {
            turn = Some(self.big_body.clone().lock_owned().await);
        }
        let mut body = Vec::with_capacity(announced.min(self.max_body));
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if turn.is_none() && body.len() + chunk.len() > SMALL_BODY {
                        turn = Some(self.big_body.clone().lock_owned().await);
                    }
                    // Decompressed bytes are counted, so a gzip bomb stops here too.
                    if body.len() + chunk.len() > self.max_body {
                        return Err(Failed {
                            problem: Problem::TooLarge {
                                limit: self.max_body,
                            },
                            retry: Retry::No,
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok((body, resp.take_headers(), turn)),
                Err(e) => return Err(self.transport(e)),
            }
        }
    }

    fn transport(&self, e: TransportError) -> Failed {
        Failed {
            problem: Problem::Transport {
                reason: self.scrub(&e.reason),
            },
            retry: if e.retryable {
                Retry::Failure { after: None }
            } else {
                Retry::No
            },
        }
    }

    async fn status_failure(&self, mut resp: Reply) -> Failed {
        let status = resp.status();
        let after = retry_after(resp.headers(), Utc::now());
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok());
        // A body that breaks off still yields what arrived; the status is the error.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = ERROR_BODY_MAX - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == ERROR_BODY_MAX {
                break;
            }
        }
        let message = match (self.error_message)(&body) {
            Some(m) => Some(m),
            None if status.is_redirection() => Some(match location {
                Some(to) => format!(
                    "redirect to another origin ({}) not followed",
                    to.origin().ascii_serialization()
                ),
                None => "redirect not followed".into(),
            }),
            None => plain_text(&body),
        }
        .map(|m| crate::text::excerpt(&self.scrub(&m), MESSAGE_MAX_CHARS))
        .filter(|m| !m.is_empty());
        let retry = match status.as_u16() {
            429 => Retry::Throttled { after },
            s if is_retryable_status(s) => Retry::Failure { after },
            _ => Retry::No,
        };
        Failed {
            problem: Problem::Status { status, message },
            retry,
        }
    }

    /// A vendor may echo a credential in its message (`invalid key XYZ`), whatever the status;
    /// it must not reach a log, an error or a table.
    pub fn scrub(&self, text: &str) -> String {
        crate::text::scrub(text, &self.secrets)
    }
}

/// The client a vendor's requests go through: reqwest on rustls, or (the `impersonate`
/// feature) wreq with a browser's TLS and HTTP/2 fingerprint.
#[derive(Clone)]
enum Client {
    Plain(reqwest::Client),
    #[cfg(feature = "impersonate")]
    Browser(wreq::Client),
}

/// A response as [`HttpSource`] reads it, whichever client made it.
enum Reply {
    Plain(reqwest::Response),
    #[cfg(feature = "impersonate")]
    Browser {
        status: StatusCode,
        headers: HeaderMap,
        length: Option<u64>,
        url: Url,
        body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, TransportError>>,
    },
}

/// A request that failed before a status came back, or whose body broke off.
struct TransportError {
    /// Our words and the client's, never the URL.
    reason: String,
    /// Builder and redirect errors are ours or the vendor's setup: trying again repeats them.
    retryable: bool,
}

impl From<reqwest::Error> for TransportError {
    fn from(e: reqwest::Error) -> Self {
        let retryable = !(e.is_builder() || e.is_redirect());
        TransportError {
            reason: if e.is_timeout() {
                "timed out".to_string()
            } else {
                crate::text::one_line(&e.without_url())
            },
            retryable,
        }
    }
}

#[cfg(feature = "impersonate")]
impl From<wreq::Error> for TransportError {
    fn from(e: wreq::Error) -> Self {
        let retryable = !(e.is_builder() || e.is_redirect());
        TransportError {
            reason: if e.is_timeout() {
                "timed out".to_string()
            } else {
                crate::text::one_line(&e.without_uri())
            },
            retryable,
        }
    }
}

impl Client {
    async fn send(
        &self,
        url: &Url,
        auth: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, TransportError> {
        match self {
            Client::Plain(c) => {
                let mut req = c.get(url.clone());
                for (name, value) in auth {
                    req = req.header(name, value.clone());
                }
                Ok(Reply::Plain(req.send().await?))
            }
            #[cfg(feature = "impersonate")]
            Client::Browser(c) => {
                use futures_util::StreamExt;
                let mut req = c.get(url.as_str());
                for (name, value) in auth {
                    req = req.header(name, value.clone());
                }
                let mut resp = req.send().await?;
                Ok(Reply::Browser {
                    status: resp.status(),
                    headers: std::mem::take(resp.headers_mut()),
                    length: resp.content_length(),
                    url: url.clone(),
                    body: resp
                        .bytes_stream()
                        .map(|c| c.map_err(TransportError::from))
                        .boxed(),
                })
            }
        }
    }
}

impl Reply {
    fn status(&self) -> StatusCode {
        match self {
            Reply::Plain(r) => r.status(),
            #[cfg(feature = "impersonate")]
            Reply::Browser { status, .. } => *status,
        }
    }

    fn content_length(&self) -> Option<u64> {
        match self {
            Reply::Plain(r) => r.content_length(),
            #[cfg(feature = "impersonate")]
            Reply::Browser { length, .. } => *length,
        }
    }

    fn headers(&self) -> &HeaderMap {
        match self {
            Reply::Plain(r) => r.headers(),
            #[cfg(feature = "impersonate")]
            Reply::Browser { headers, .. } => headers,
        }
    }

    fn take_headers(&mut self) -> HeaderMap {
        match self {
            Reply::Plain(r) => std::mem::take(r.headers_mut()),
            #[cfg(feature = "impersonate")]
            Reply::Browser { headers, .. } => std::mem::take(headers),
        }
    }

    fn url(&self) -> &Url {
        match self {
            Reply::Plain(r) => r.url(),
            #[cfg(feature = "impersonate")]
            Reply::Browser { url, .. } => url,
        }
    }

    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, TransportError> {
        match self {
            Reply::Plain(r) => Ok(r.chunk().await?),
            #[cfg(feature = "impersonate")]
            Reply::Browser { body, .. } => {
                use futures_util::StreamExt;
                body.next().await.transpose()
            }
        }
    }
}

fn build_client(
    vendor: &'static str,
    user_agent: &str,
    proxy: Option<&SecretUrl>,
) -> Result<reqwest::Client, HttpError> {
    let setup = |what: &str, e: reqwest::Error| {
        HttpError::setup(
            vendor,
            format!("{what}: {}", crate::text::one_line(&e.without_url())),
        )
    };
    let mut builder = reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .gzip(true)
        .redirect(same_origin_redirects());
    if let Some(p) = proxy {
        // The error would quote the URL, and with it the proxy's password.
        let proxy = reqwest::Proxy::all(p.expose())
            .map_err(|e| setup(&format!("proxy_url {} is not usable", p.redacted()), e))?;
        builder = builder.proxy(proxy);
    }
    builder
        .build()
        .map_err(|e| setup("cannot build the HTTP client", e))
}

/// Redirects are followed only within one origin: an auth header that is not `Authorization`
/// (Alpaca's `APCA-API-KEY-ID`) would otherwise go to whatever host a redirect names.
fn same_origin_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().map(Url::origin);
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if first.is_some_and(|o| o == attempt.url().origin()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// A body without a message the vendor's extractor recognises, as one short line (an HTML
/// error page from a proxy, a plain-text error).
fn plain_text(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(1024)];
    let text = String::from_utf8_lossy(head);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // `{}` or bare punctuation says nothing worth quoting.
    let says_something = line.chars().any(char::is_alphanumeric);
    says_something.then(|| crate::text::excerpt(&line, 200))
}

/// `Retry-After` as delay-seconds or an HTTP-date; a date in the past means now. Without it,
/// `X-Ratelimit-Reset` (Alpaca's: when the window resets, in Unix seconds).
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let Some(value) = headers.get(RETRY_AFTER) else {
        let reset = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim();
        let at = DateTime::from_timestamp(reset.parse::<i64>().ok()?, 0)?;
        return Some((at - now).to_std().unwrap_or(Duration::ZERO));
    };
    let value = value.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`) is RFC 2822's syntax.
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_stays_under_the_cap_with_jitter() {
        let policy = RetryPolicy::default();
        let waits: Vec<Duration> = policy.backoff().take(20).collect();
        assert!(waits.iter().all(|w| *w <= policy.max_delay), "{waits:?}");
        assert!(waits[0] >= policy.min_delay);
    }

    fn source() -> HttpSource {
        HttpSource::new(
            "test",
            60,
            vec![(
                reqwest::header::AUTHORIZATION,
                Secret::new("Bearer sekrit-key-123"),
            )],
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn credentials_are_scrubbed_and_not_debugged() {
        let s = source();
        assert_eq!(
            s.scrub("Unknown API Key sekrit-key-123"),
            "Unknown API Key ***"
        );
        assert!(!format!("{s:?}").contains("sekrit"));
    }

    #[test]
    fn errors_read_as_one_line() {
        let e = HttpError {
            vendor: "polygon",
            what: "AAPL".into(),
            problem: Problem::Status {
                status: StatusCode::UNAUTHORIZED,
                message: Some("Unknown API Key".into()),
            },
            attempts: 1,
        };
        assert_eq!(
            e.to_string(),
            "polygon AAPL: HTTP 401 Unauthorized: Unknown API Key"
        );
        assert_eq!(e.blame(), Blame::Account);
        let e = HttpError {
            problem: Problem::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: None,
            },
            attempts: 6,
            ..e
        };
        assert_eq!(
            e.to_string(),
            "polygon AAPL: HTTP 503 Service Unavailable (after 6 attempts)"
        );
        assert_eq!(e.blame(), Blame::Unavailable);
        assert!(HttpSource::new("test", 0, vec![], |_| None).is_err());
    }
}
