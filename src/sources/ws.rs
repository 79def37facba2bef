//! WebSocket plumbing every streaming vendor shares, written once: connect (with a timeout),
//! authenticate, subscribe, read, ping, a staleness watchdog, reconnects with backoff, and a
//! harder backoff for refusals a reconnect cannot fix. A vendor supplies only a [`Protocol`]:
//! its URL, its messages and a pure decoder, so its wire format stays testable in-process.
//!
//! One [`Session`] is one logical stream. [`Session::run`] keeps it connected until its
//! [`CancellationToken`] fires (or nobody listens any more), and tells the caller what happens
//! through a bounded channel of [`SessionEvent`]s; its [`SessionState`] can be watched at any
//! time through [`Session::state`]. State changes go through the watch only, not the channel: a
//! reader sees the latest state, and the channel carries only what must not be lost.
//!
//! The consumer must keep draining the channel while it gap-fills (run the gap-fill beside the
//! loop, not in it): with Polygon's REST limit a gap-fill of many symbols takes minutes, and a
//! full channel stops the session reading (see [`Session::run`]).
//!
//! What the daemon relies on:
//! - every connection that reaches [`SessionState::Subscribed`] emits
//!   [`SessionEvent::Subscribed`] *before* any data of that connection, so a gap-fill started on
//!   that event (REST from the last committed bar up to now) and the stream's data after it
//!   leave nothing between them;
//! - every topic is subscribed again on every connection;
//! - a connection on which no frame at all (data, status, ping or pong) arrived for
//!   `stale_after` is dropped and replaced; one that is still sending is never replaced;
//! - the backoff between attempts is capped exponential with jitter (1 s to 60 s), reset only
//!   once a connection has stayed subscribed for a while (60 s), so a server that accepts and
//!   at once drops us is not hammered; refusals a reconnect cannot fix (a bad key, a plan, a
//!   connection limit) back off harder (from at least 1 s, or 2 s for a connection limit,
//!   doubling up to 5 minutes): a tight loop would evict the user's other session.
//!
//! Credentials go only into the authentication messages, which are [`Secret`]s: this module
//! never logs a message it sends, and its errors and `Debug` output are built from parts that
//! cannot hold them. tungstenite's own `trace` output would show them: a log filter must go
//! through [`quiet_wire_logs`].

use std::fmt;
use std::time::Duration;

use crate::backoff::{Backoff, Waits};
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::text::excerpt;

/// TCP, TLS and the WebSocket handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From the handshake to the vendor's "authenticated": a server that keeps talking but never
/// answers the authentication would otherwise hold the session forever.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pings are sent at a third of `stale_after` (so two may be lost before the watchdog fires),
/// but at least this often.
pub const MAX_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Largest message read into memory. A Polygon frame with every symbol's minute bar is well
/// under a megabyte; a larger one ends the connection (and is reconnected) instead of growing
/// memory without bound.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// How long a polite close on stop waits for the server's reply before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same after a refusal: the close frame is manners, the answer is not worth waiting for.
const REFUSED_CLOSE_GRACE: Duration = Duration::from_millis(250);
/// A vendor's text quoted in a log line or an error stays one short line.
const QUOTE_MAX_CHARS: usize = 300;
/// Hard floors of the refusal backoffs, whatever a [`BackoffPolicy`] says (SPEC: a reconnect
/// cannot fix them, and a tight loop would evict the user's other session).
const ACCOUNT_FLOOR: Duration = Duration::from_secs(1);
const LIMIT_FLOOR: Duration = Duration::from_secs(2);

/// tungstenite dumps every frame it writes at `trace` (through the `log` crate, which
/// `tracing_subscriber`'s `try_init` bridges), the authentication message and its key in plain
/// text included. Whatever directives a filter holds for these crates (a more specific one such
/// as `tungstenite::protocol=trace` would win over any general one) are replaced by these.
pub const WIRE_LOG_DIRECTIVES: [&str; 2] = ["tungstenite=warn", "tokio_tungstenite=warn"];

/// `directives` (an `EnvFilter` string such as `RUST_LOG`) without any directive for the
/// WebSocket crates, then [`WIRE_LOG_DIRECTIVES`]: frame payloads are never logged, whatever
/// the operator asked for. The daemon's logging must go through this.
pub fn quiet_wire_logs(directives: &str) -> String {
    let mut kept: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let target = d.split(['=', '[']).next().unwrap_or("");
            !(target.starts_with("tungstenite") || target.starts_with("tokio_tungstenite"))
        })
        .collect();
    kept.extend(WIRE_LOG_DIRECTIVES);
    kept.join(",")
}

/// A vendor's stream protocol. Pure and synchronous: it builds messages and decodes frames;
/// the [`Session`] does all the I/O.
pub trait Protocol: Send + Sync + 'static {
    /// What a data frame decodes to (bars, rejected events).
    type Data: Send + 'static;

    /// Names the vendor in logs, events and errors (`"polygon"`).
    fn vendor(&self) -> &'static str;

    /// Where to connect (`ws://` or `wss://`). Shown only redacted.
    fn url(&self) -> &str;

    /// Sent in order right after the WebSocket handshake; they carry the credentials. Empty: the
    /// vendor needs no authentication and the topics are subscribed at once.
    ///
    /// Never logged by this module; tungstenite's own frame dumps are kept out by
    /// [`quiet_wire_logs`].
    fn auth_messages(&self) -> Vec<Secret>;

    /// Sent in order once authenticated, on every connection: every topic, every time.
    fn subscribe_messages(&self) -> Vec<String>;

    /// One text frame, in the order the vendor sent its parts. Never fails: what cannot be read
    /// becomes whatever the vendor's `Data` says about bad input (a rejection).
    fn decode(&self, frame: &str) -> Vec<Inbound<Self::Data>>;
}

/// One part of a decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<D> {
    Data(D),
    Status(Status),
}

/// A vendor's status message, classified by its [`Protocol`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The credentials were accepted: subscribe now.
    AuthOk,
    /// The vendor refused us in a way another attempt right away would not fix.
    Refused(Refusal),
    /// Expected chatter (a greeting, a subscription confirmed): logged at debug.
    Info { status: String, message: String },
    /// Anything else the vendor says: logged as a warning and passed on as
    /// [`SessionEvent::Notice`] (a subscription refused by the plan shows up here).
    Other { status: String, message: String },
}

/// Why a vendor refused a connection. Both kinds back off harder than a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The key, the secret or the plan (Polygon `auth_failed`, `auth_timeout`; Alpaca 402, 409).
    Account,
    /// Too many connections for the account (Polygon `max_connections`; Alpaca 406): another
    /// session with the same key is running, and reconnecting at once would evict it.
    ConnectionLimit,
}

/// A refusal as the vendor worded it: `polygon: auth_failed: authentication failed`. Texts are
/// already cut short and escaped (and scrubbed of credentials) by the [`Protocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{vendor}: {status}: {message}")]
pub struct Refusal {
    pub vendor: &'static str,
    pub kind: RefusalKind,
    pub status: String,
    pub message: String,
}

/// Where a session stands; watch it with [`Session::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Not running: before [`Session::run`] and after it returned.
    Idle,
    /// Opening TCP, TLS and the WebSocket.
    Connecting,
    /// Connected; the credentials are sent and the answer awaited.
    Authenticating,
    /// Every topic is subscribed; data flows.
    Subscribed { since: DateTime<Utc> },
    /// Waiting to connect again; `reason` is the last attempt's end, on one line.
    BackingOff {
        until: DateTime<Utc>,
        reason: String,
    },
}

/// Why a connection ended (other than a refusal or a stop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no connection within {} s", .0.as_secs())]
    ConnectTimeout(Duration),
    #[error("no answer to the authentication within {} s", .0.as_secs())]
    AuthTimeout(Duration),
    /// The staleness watchdog: nothing at all arrived for this long.
    #[error("no frame for {:.1} s: the connection is stale", .0.as_secs_f64())]
    Stale(Duration),
    #[error("closed by the server ({})", closed_text(*.code, .reason))]
    ClosedByServer { code: Option<u16>, reason: String },
    #[error("connection lost: {0}")]
    Transport(String),
}

fn closed_text(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (None, _) => "without a code".into(),
        (Some(c), true) => format!("code {c}"),
        (Some(c), false) => format!("code {c}: {reason}"),
    }
}

/// What a session tells its caller, in order.
#[derive(Debug)]
pub enum SessionEvent<D> {
    /// A connection is authenticated and every topic subscribed. Sent before any data of that
    /// connection: gap-fill from the last committed bar up to now, the data that follows covers
    /// the rest. `reconnect` is false only for the first connection of a [`Session::run`].
    Subscribed { reconnect: bool, at: DateTime<Utc> },
    /// The data parts of one frame, in the vendor's order.
    Data(Vec<D>),
    /// A status the [`Protocol`] did not expect (see [`Status::Other`]).
    Notice { status: String, message: String },
    /// A connection (or an attempt at one) ended; the next attempt is in `retry_in`.
    Disconnected {
        reason: DisconnectReason,
        retry_in: Duration,
    },
    /// The vendor refused us (credentials, plan, connection limit); the next attempt is in
    /// `retry_in`, which grows while the refusals go on. Worth an operator's attention.
    Refused {
        refusal: Refusal,
        retry_in: Duration,
    },
}

/// Waits between attempts. The transient backoff's jitter adds up to as much again as the base
/// delay, so `max` is reached with jitter included; the refusal backoffs likewise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first wait after a lost connection (jitter may add up to as much again).
    pub min: Duration,
    /// The longest wait after lost connections, jitter included.
    pub max: Duration,
    /// A connection subscribed at least this long resets every backoff when it ends.
    pub reset_after: Duration,
    /// The first wait after a refused key or plan; never below 1 s.
    pub account_min: Duration,
    /// The first wait after a connection limit; never below 2 s.
    pub limit_min: Duration,
    /// The longest wait after refusals, jitter included.
    pub refused_max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
            account_min: ACCOUNT_FLOOR,
            limit_min: LIMIT_FLOOR,
            refused_max: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    fn exponential(min: Duration, max: Duration) -> Waits {
        Backoff::new(min, max.max(min * 2)).waits()
    }
}

/// The three backoffs of one session, reset together after a connection that lived.
struct Backoffs {
    policy: BackoffPolicy,
    transient: Waits,
    account: Waits,
    limit: Waits,
}

impl Backoffs {
    fn new(policy: BackoffPolicy) -> Backoffs {
        let account_min = policy.account_min.max(ACCOUNT_FLOOR);
        let limit_min = policy.limit_min.max(LIMIT_FLOOR);
        Backoffs {
            policy,
            transient: BackoffPolicy::exponential(policy.min, policy.max),
            account: BackoffPolicy::exponential(account_min, policy.refused_max),
            limit: BackoffPolicy::exponential(limit_min, policy.refused_max),
        }
    }

    fn reset(&mut self) {
        *self = Backoffs::new(self.policy);
    }

    fn after_disconnect(&mut self) -> Duration {
        self.transient.next().unwrap_or(self.policy.max)
    }

    fn after_refusal(&mut self, kind: RefusalKind) -> Duration {
        let next = match kind {
            RefusalKind::Account => self.account.next(),
            RefusalKind::ConnectionLimit => self.limit.next(),
        };
        next.unwrap_or(self.policy.refused_max)
    }
}

/// How a session keeps its connection healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// No frame at all for this long: the connection is replaced (`stale_after_secs`).
    pub stale_after: Duration,
    pub connect_timeout: Duration,
    pub auth_timeout: Duration,
    pub max_message_bytes: usize,
    pub backoff: BackoffPolicy,
}

impl SessionConfig {
    /// The defaults around a source's `stale_after_secs`.
    pub fn new(stale_after: Duration) -> SessionConfig {
        SessionConfig {
            // A zero would replace every connection at once; config refuses it, this guards.
            stale_after: stale_after.max(Duration::from_millis(100)),
            connect_timeout: CONNECT_TIMEOUT,
            auth_timeout: AUTH_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            backoff: BackoffPolicy::default(),
        }
    }

    /// A third of `stale_after`, at most [`MAX_PING_INTERVAL`]: a healthy server's pong (or any
    /// frame) always arrives well before the watchdog would fire.
    pub fn ping_every(&self) -> Duration {
        (self.stale_after / 3)
            .min(MAX_PING_INTERVAL)
            .max(Duration::from_millis(10))
    }
}

/// A session that cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not echoed: a malformed URL may still carry a credential.
    #[error("{vendor}: the stream URL is not a ws:// or wss:// URL")]
    BadUrl { vendor: &'static str },
}

/// One logical stream of one vendor; see the module's documentation.
pub struct Session<P: Protocol> {
    protocol: P,
    config: SessionConfig,
    state: watch::Sender<SessionState>,
}

impl<P: Protocol> fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The protocol holds the credentials: only what cannot carry them is shown.
        f.debug_struct("Session")
            .field("vendor", &self.protocol.vendor())
            .field("url", &crate::config::redact_url(self.protocol.url()))
            .field("config", &self.config)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one connection ended.
enum End {
    /// The token fired.
    Cancelled,
    /// The events' receiver is gone: nobody listens any more.
    ReceiverGone,
    Lost(DisconnectReason),
    Refused(Refusal),
}

/// What woke a connection's loop.
enum Wake {
    Cancelled,
    ReceiverGone,
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Stale,
    AuthTimeout,
    Ping,
}

/// How a connection's loop goes on after a frame.
enum Next {
    Continue,
    Subscribe,
    End(End),
}

impl<P: Protocol> Session<P> {
    pub fn new(protocol: P, config: SessionConfig) -> Result<Session<P>, SessionError> {
        let ok = url::Url::parse(protocol.url())
            .is_ok_and(|u| matches!(u.scheme(), "ws" | "wss") && u.has_host());
        if !ok {
            return Err(SessionError::BadUrl {
                vendor: protocol.vendor(),
            });
        }
        Ok(Session {
            protocol,
            config,
            state: watch::Sender::new(SessionState::Idle),
        })
    }

    /// The session's state, now and as it changes.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// Connects and stays connected until `cancel` fires or `events`' receiver is dropped, then
    /// closes the socket politely (a close frame, up to 2 s for the server's answer) and returns.
    ///
    /// Backpressure: each frame's events are sent on `events` before the next frame is read. A
    /// full channel therefore stops reading; the kernel's buffers fill and TCP slows the vendor
    /// down, and a vendor that drops slow consumers (Polygon does) closes the connection, which
    /// is then replaced and gap-filled like any other. Time spent waiting on the channel does
    /// not count as the server's silence.
    ///
    /// Cancellation-safe: dropping the future drops the socket (without a close frame) and
    /// leaves nothing running; the state stays where it was.
    pub async fn run(
        &self,
        events: mpsc::Sender<SessionEvent<P::Data>>,
        cancel: CancellationToken,
    ) {
        let vendor = self.protocol.vendor();
        let mut backoffs = Backoffs::new(self.config.backoff);
        let mut subscribed_before = false;
        loop {
            let mut subscribed_at = None;
            let end = self
                .connection(&events, &cancel, &mut subscribed_before, &mut subscribed_at)
                .await;
            if subscribed_at
                .is_some_and(|at: Instant| at.elapsed() >= self.config.backoff.reset_after)
            {
                backoffs.reset();
            }
            let (event, reason, wait) = match end {
                End::Cancelled | End::ReceiverGone => break,
                End::Lost(reason) => {
                    let wait = backoffs.after_disconnect();
                    tracing::warn!(
                        vendor,
                        reason = %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "stream disconnected; reconnecting"
                    );
                    let text = reason.to_string();
                    let event = SessionEvent::Disconnected {
                        reason,
                        retry_in: wait,
                    };
                    (event, text, wait)
                }
                End::Refused(refusal) => {
                    let wait = backoffs.after_refusal(refusal.kind);
                    tracing::error!(
                        vendor,
                        status = %refusal.status,
                        message = %refusal.message,
                        retry_in_ms = wait.as_millis() as u64,
                        "stream refused; a reconnect cannot fix this, retrying slowly"
                    );
                    let text = refusal.to_string();
                    (
                        SessionEvent::Refused {
                            refusal,
                            retry_in: wait,
                        },
                        text,
                        wait,
                    )
                }
            };
            let until = Instant::now() + wait;
            self.set_state(SessionState::BackingOff {
                until: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                reason,
            });
            if !emit(&events, &cancel, event).await {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = events.closed() => break,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        self.set_state(SessionState::Idle);
        tracing::debug!(vendor, "stream stopped");
    }

    fn set_state(&self, state: SessionState) {
        self.state.send_replace(state);
    }

    /// One connection from the first byte to its end. `subscribed_at` is set once it is
    /// subscribed, so the caller can tell a connection that lived from one that did not.
    async fn connection(
        &self,
        events: &mpsc::Sender<SessionEvent<P::Data>>,
        cancel: &CancellationToken,
        subscribed_before: &mut bool,
        subscribed_at: &mut Option<Instant>,
    ) -> End {
        let vendor = self.protocol.vendor();
        self.set_state(SessionState::Connecting);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_message_bytes))
            .max_frame_size(Some(self.config.max_message_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(
            self.protocol.url(),
            Some(ws_config),
            true,
        );
        let timeout = self.config.connect_timeout;
        let connected = tokio::select! {
            _ = cancel.cancelled() => return End::Cancelled,
            r = tokio::time::timeout(timeout, connect) => r,
        };
        let mut ws = match connected {
            Err(_) => return End::Lost(DisconnectReason::ConnectTimeout(timeout)),
            Ok(Err(e)) => return End::Lost(DisconnectReason::Connect(ws_error(&e))),
            Ok(Ok((ws, _response))) => ws,
        };
        let url = crate::config::redact_url(self.protocol.url());
        tracing::debug!(vendor, %url, "stream connected");

        let stale_after = self.config.stale_after;
        let ping_every = self.config.ping_every();
        let started = Instant::now();
        let stale = tokio::time::sleep_until(started + stale_after);
        tokio::pin!(stale);
        let auth_deadline = tokio::time::sleep_until(started + self.config.auth_timeout);
        tokio::pin!(auth_deadline);
        let mut ping = tokio::time::interval_at(started + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let auth = self.protocol.auth_messages();
        let mut authenticating = !auth.is_empty();
        if authenticating {
            self.set_state(SessionState::Authenticating);
            for secret in auth {
                // Only the secret's own text goes out; it is never formatted anywhere else.
                let msg = Message::text(secret.expose().to_owned());
                if let Err(end) = write(&mut ws, msg, started + stale_after, cancel).await {
                    return self.finish(ws, end).await;
                }
            }
            tracing::debug!(vendor, "stream authentication sent");
        } else if let Err(end) = self
            .subscribe(&mut ws, events, cancel, subscribed_before, subscribed_at)
            .await
        {
            return self.finish(ws, end).await;
        }

        // Data parts of a frame that arrived before the subscription: dropped (see below).
        let mut early = 0usize;
        loop {
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => Wake::Cancelled,
                // Noticed at once, not at the next frame: a quiet market may send none for hours.
                _ = events.closed() => Wake::ReceiverGone,
                msg = ws.next() => Wake::Message(msg),
                _ = &mut stale => Wake::Stale,
                _ = &mut auth_deadline, if authenticating => Wake::AuthTimeout,
                _ = ping.tick() => Wake::Ping,
            };
            let next = match wake {
                Wake::Cancelled => Next::End(End::Cancelled),
                Wake::ReceiverGone => Next::End(End::ReceiverGone),
                Wake::Stale => Next::End(End::Lost(DisconnectReason::Stale(stale_after))),
                Wake::AuthTimeout => Next::End(End::Lost(DisconnectReason::AuthTimeout(
                    self.config.auth_timeout,
                ))),
                Wake::Ping => {
                    // Bounded by the watchdog: a ping that cannot even be written is a dead
                    // connection.
                    let ping = Message::Ping(Default::default());
                    match write(&mut ws, ping, stale.deadline(), cancel).await {
                        Ok(()) => Next::Continue,
                        Err(end) => Next::End(end),
                    }
                }
                Wake::Message(None) => Next::End(End::Lost(DisconnectReason::Transport(
                    "the server ended the connection without a close frame".into(),
                ))),
                Wake::Message(Some(Err(e))) => {
                    Next::End(End::Lost(DisconnectReason::Transport(ws_error(&e))))
                }
                Wake::Message(Some(Ok(msg))) => {
                    // Any frame at all proves the connection alive.
                    stale.as_mut().reset(Instant::now() + stale_after);
                    match text_of(msg, vendor) {
                        Frame::Text(text) => {
                            let next = self
                                .frame(&text, authenticating, events, cancel, &mut early)
                                .await;
                            // Time spent waiting on a slow consumer is not the server's silence.
                            stale.as_mut().reset(Instant::now() + stale_after);
                            next
                        }
                        Frame::Close(code, reason) => {
                            // tungstenite queued the answer; send it on the way out.
                            let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                            Next::End(End::Lost(DisconnectReason::ClosedByServer { code, reason }))
                        }
                        Frame::Control => Next::Continue,
                    }
                }
            };
            match next {
                Next::Continue => {}
                Next::Subscribe => {
                    authenticating = false;
                    if early > 0 {
                        tracing::warn!(
                            vendor,
                            dropped = early,
                            "stream sent data before the subscription; dropped"
                        );
                        early = 0;
                    }
                    if let Err(end) = self
                        .subscribe(&mut ws, events, cancel, subscribed_before, subscribed_at)
                        .await
                    {
                        return self.finish(ws, end).await;
                    }
                }
                Next::End(end) => return self.finish(ws, end).await,
            }
        }
    }

    /// Sends every subscription, then announces the connection as subscribed: the event goes
    /// out before anything more is read, so it precedes all of this connection's data.
    async fn subscribe(
        &self,
        ws: &mut Ws,
        events: &mpsc::Sender<SessionEvent<P::Data>>,
        cancel: &CancellationToken,
        subscribed_before: &mut bool,
        subscribed_at: &mut Option<Instant>,
    ) -> Result<(), End> {
        let messages = self.protocol.subscribe_messages();
        let count = messages.len();
        let deadline = Instant::now() + self.config.stale_after;
        for text in messages {
            write(ws, Message::text(text), deadline, cancel).await?;
        }
        let at = Utc::now();
        let reconnect = *subscribed_before;
        *subscribed_before = true;
        *subscribed_at = Some(Instant::now());
        self.set_state(SessionState::Subscribed { since: at });
        tracing::info!(
            vendor = self.protocol.vendor(),
            messages = count,
            reconnect,
            "stream subscribed"
        );
        if emit(events, cancel, SessionEvent::Subscribed { reconnect, at }).await {
            Ok(())
        } else if cancel.is_cancelled() {
            Err(End::Cancelled)
        } else {
            Err(End::ReceiverGone)
        }
    }

    /// Handles one text frame: statuses steer the connection, data goes to the caller in the
    /// frame's order.
    async fn frame(
        &self,
        text: &str,
        authenticating: bool,
        events: &mpsc::Sender<SessionEvent<P::Data>>,
        cancel: &CancellationToken,
        early: &mut usize,
    ) -> Next {
        let vendor = self.protocol.vendor();
        let mut data = Vec::new();
        let mut next = Next::Continue;
        let mut out = Vec::new();
        for part in self.protocol.decode(text) {
            match part {
                // Before the subscription there is no data to expect, and passing it on would
                // put it before the `Subscribed` event the gap-fill hangs on.
                Inbound::Data(_) if authenticating => *early += 1,
                Inbound::Data(d) => data.push(d),
                Inbound::Status(Status::AuthOk) if authenticating => {
                    tracing::debug!(vendor, "stream authenticated");
                    next = Next::Subscribe;
                }
                Inbound::Status(Status::AuthOk) => {
                    tracing::debug!(vendor, "stream authenticated again; ignored");
                }
                Inbound::Status(Status::Refused(refusal)) => {
                    next = Next::End(End::Refused(refusal));
                    break;
                }
                Inbound::Status(Status::Info { status, message }) => {
                    tracing::debug!(vendor, %status, %message, "stream status");
                }
                Inbound::Status(Status::Other { status, message }) => {
                    tracing::warn!(vendor, %status, %message, "stream status");
                    if !data.is_empty() {
                        out.push(SessionEvent::Data(std::mem::take(&mut data)));
                    }
                    out.push(SessionEvent::Notice { status, message });
                }
            }
        }
        if !data.is_empty() {
            out.push(SessionEvent::Data(data));
        }
        for event in out {
            if !emit(events, cancel, event).await {
                return Next::End(if cancel.is_cancelled() {
                    End::Cancelled
                } else {
                    End::ReceiverGone
                });
            }
        }
        next
    }

    /// Ends a connection: politely when we are the ones leaving or being refused, at once when
    /// the connection is already dead (stale, broken, closed). A stop waits longer for the
    /// server's answer than a refusal, which should not hold up the event saying so.
    async fn finish(&self, mut ws: Ws, end: End) -> End {
        let grace = match end {
            End::Cancelled | End::ReceiverGone => CLOSE_GRACE,
            End::Refused(_) | End::Lost(DisconnectReason::AuthTimeout(_)) => REFUSED_CLOSE_GRACE,
            End::Lost(_) => Duration::ZERO,
        };
        if !grace.is_zero() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = tokio::time::timeout(grace, async {
                if ws.close(Some(frame)).await.is_ok() {
                    // The server's close answer completes the handshake; anything before it
                    // is no longer wanted.
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
        end
    }
}

/// Sends `event` unless the token fires first; false when it did or the receiver is gone.
async fn emit<D>(
    events: &mpsc::Sender<SessionEvent<D>>,
    cancel: &CancellationToken,
    event: SessionEvent<D>,
) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        r = events.send(event) => r.is_ok(),
    }
}

/// Writes one message by `deadline` (a write that cannot go out is a dead connection) unless
/// the token fires first.
async fn write(
    ws: &mut Ws,
    msg: Message,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<(), End> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(End::Cancelled),
        r = tokio::time::timeout_at(deadline, ws.send(msg)) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Lost(DisconnectReason::Transport(ws_error(&e)))),
            Err(_) => Err(End::Lost(DisconnectReason::Transport(
                "a write did not complete: the connection is stuck".into(),
            ))),
        },
    }
}

enum Frame {
    Text(Utf8Bytes),
    Close(Option<u16>, String),
    /// Ping, pong, and anything else that only proves the connection alive.
    Control,
}

fn text_of(msg: Message, vendor: &'static str) -> Frame {
    match msg {
        Message::Text(t) => Frame::Text(t),
        // Some servers send JSON as binary frames; what is not UTF-8 cannot be decoded.
        Message::Binary(b) => match Utf8Bytes::try_from(b.clone()) {
            Ok(t) => Frame::Text(t),
            Err(_) => {
                tracing::warn!(
                    vendor,
                    bytes = b.len(),
                    "stream sent a binary frame that is not UTF-8; ignored"
                );
                Frame::Control
            }
        },
        Message::Close(frame) => match frame {
            Some(f) => Frame::Close(
                Some(u16::from(f.code)),
                excerpt(f.reason.as_str(), QUOTE_MAX_CHARS),
            ),
            None => Frame::Close(None, String::new()),
        },
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Frame::Control,
    }
}

/// A tungstenite error on one line. Its texts hold no request data (URLs are not echoed in
/// the variants we can meet after a parse succeeded, and never what we sent).
fn ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        // The response may carry a body; the status says what matters.
        E::Http(resp) => format!("HTTP {} from the server", resp.status()),
        // Would echo the URL, which may carry a credential.
        E::Url(_) => "the URL cannot be used".into(),
        other => excerpt(&crate::text::one_line(other), QUOTE_MAX_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_follows_stale_after() {
        assert_eq!(
            SessionConfig::new(Duration::from_secs(90)).ping_every(),
            Duration::from_secs(30)
        );
        assert_eq!(
            SessionConfig::new(Duration::from_secs(600)).ping_every(),
            MAX_PING_INTERVAL
        );
        assert_eq!(
            SessionConfig::new(Duration::from_secs(3)).ping_every(),
            Duration::from_secs(1)
        );
        assert!(SessionConfig::new(Duration::ZERO).stale_after > Duration::ZERO);
    }

    #[test]
    fn transient_backoff_is_capped_with_jitter() {
        let policy = BackoffPolicy::default();
        let mut b = Backoffs::new(policy);
        let waits: Vec<Duration> = (0..20).map(|_| b.after_disconnect()).collect();
        assert!(waits[0] >= Duration::from_secs(1) && waits[0] < Duration::from_secs(2));
        assert!(waits.iter().all(|w| *w <= policy.max), "{waits:?}");
        assert!(waits[19] >= policy.max / 2, "{waits:?}");
        b.reset();
        assert!(b.after_disconnect() < Duration::from_secs(2));
    }

    #[test]
    fn refusals_back_off_harder_and_double() {
        let mut b = Backoffs::new(BackoffPolicy::default());
        let account: Vec<Duration> = (0..12)
            .map(|_| b.after_refusal(RefusalKind::Account))
            .collect();
        assert!(account[0] >= Duration::from_secs(1), "{account:?}");
        for pair in account.windows(2).take(7) {
            // Doubling, with jitter of up to one base delay on each.
            assert!(pair[1] * 2 >= pair[0], "{account:?}");
        }
        assert!(account[7] >= Duration::from_secs(128), "{account:?}");
        assert!(
            account.iter().all(|w| *w <= Duration::from_secs(300)),
            "{account:?}"
        );
        let limit: Vec<Duration> = (0..4)
            .map(|_| b.after_refusal(RefusalKind::ConnectionLimit))
            .collect();
        assert!(limit[0] >= Duration::from_secs(2), "{limit:?}");
        assert!(limit[3] >= Duration::from_secs(16), "{limit:?}");
        // The floors hold whatever the policy says.
        let mut b = Backoffs::new(BackoffPolicy {
            account_min: Duration::from_millis(1),
            limit_min: Duration::from_millis(1),
            ..BackoffPolicy::default()
        });
        assert!(b.after_refusal(RefusalKind::Account) >= ACCOUNT_FLOOR);
        assert!(b.after_refusal(RefusalKind::ConnectionLimit) >= LIMIT_FLOOR);
    }

    #[test]
    fn wire_traces_are_filtered_out() {
        use tracing_subscriber::EnvFilter;
        for directive in WIRE_LOG_DIRECTIVES {
            assert!(
                directive
                    .parse::<tracing_subscriber::filter::Directive>()
                    .is_ok(),
                "{directive}"
            );
        }
        for asked in [
            "trace",
            "trace,tungstenite=trace",
            "info,tungstenite::protocol=trace",
            "tokio_tungstenite[conn]=trace , debug",
        ] {
            let filter = EnvFilter::new(quiet_wire_logs(asked));
            let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
            tracing::subscriber::with_default(subscriber, || {
                use tracing::Level;
                assert!(!tracing::enabled!(target: "tungstenite::protocol", Level::DEBUG));
                assert!(!tracing::enabled!(target: "tokio_tungstenite::compat", Level::DEBUG));
                assert!(tracing::enabled!(target: "tungstenite::protocol", Level::WARN));
            });
        }
        assert_eq!(
            quiet_wire_logs("trace,mdingest=debug"),
            "trace,mdingest=debug,tungstenite=warn,tokio_tungstenite=warn"
        );
    }

    #[test]
    fn texts() {
        let r = Refusal {
            vendor: "polygon",
            kind: RefusalKind::Account,
            status: "auth_failed".into(),
            message: "authentication failed".into(),
        };
        assert_eq!(r.to_string(), "polygon: auth_failed: authentication failed");
        assert_eq!(
            DisconnectReason::Stale(Duration::from_secs(90)).to_string(),
            "no frame for 90.0 s: the connection is stale"
        );
        assert_eq!(
            DisconnectReason::ClosedByServer {
                code: Some(1000),
                reason: String::new()
            }
            .to_string(),
            "closed by the server (code 1000)"
        );
    }

    struct Dummy(&'static str);
    impl Protocol for Dummy {
        type Data = ();
        fn vendor(&self) -> &'static str {
            "dummy"
        }
        fn url(&self) -> &str {
            self.0
        }
        fn auth_messages(&self) -> Vec<Secret> {
            vec![Secret::new("sekrit")]
        }
        fn subscribe_messages(&self) -> Vec<String> {
            Vec::new()
        }
        fn decode(&self, _: &str) -> Vec<Inbound<()>> {
            Vec::new()
        }
    }

    #[test]
    fn urls_are_checked_and_not_echoed() {
        for bad in ["http://x", "nonsense", "wss://", "ws://user:sekrit@"] {
            let e =
                Session::new(Dummy(bad), SessionConfig::new(Duration::from_secs(1))).unwrap_err();
            assert!(!e.to_string().contains("sekrit"), "{e}");
        }
        let s = Session::new(
            Dummy("wss://u:sekrit@example.com/x"),
            SessionConfig::new(Duration::from_secs(1)),
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("sekrit"), "{debug}");
        assert!(debug.contains("Idle"), "{debug}");
    }
}
