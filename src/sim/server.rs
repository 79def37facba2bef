//! Connections: one task each, requests read head by head (keep-alive and pipelining), faults
//! delivered at the byte level.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::api::{self, Answer, Api};
use super::http::{self, Framing, Request, MAX_HEAD};
use super::{Fault, RequestRecord};

/// Longer than reqwest's pool idle timeout (90 s), so the client retires an idle connection
/// before the server does and never races a request against our close.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// After a `Connection: close` answer, how long unread request bytes are drained so that the
/// kernel does not turn our close into a reset that destroys the answer in flight.
const LINGER: Duration = Duration::from_millis(500);

pub(crate) struct Shared {
    pub api: Api,
    pub latency: Duration,
    pub faults: Mutex<VecDeque<Fault>>,
    pub records: Mutex<Vec<RequestRecord>>,
    ids: AtomicU64,
}

/// A poisoned lock only means a test thread panicked while holding it; the data is still fine.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(api: Api, latency: Duration, faults: Vec<Fault>) -> Shared {
        Shared {
            api,
            latency,
            faults: Mutex::new(faults.into()),
            records: Mutex::new(Vec::new()),
            ids: AtomicU64::new(0),
        }
    }

    fn next_id(&self) -> String {
        api::request_id(self.ids.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, r: RequestRecord) {
        tracing::debug!(
            method = %r.method,
            target = %api::redact_target(&r.target),
            status = r.status,
            bars = r.bars,
            fault = ?r.fault,
            "sim request"
        );
        lock(&self.records).push(r);
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    accept_each(listener, "", move |stream| {
        serve(Arc::clone(&shared), stream)
    })
    .await
}

/// Accepts connections on `listener` for ever, serving each in its own task. Owning the
/// connection tasks here means aborting this task (stop or drop of the Simulator) aborts every
/// connection too, pooled keep-alive ones included.
pub(crate) async fn accept_each<F, Fut>(listener: TcpListener, what: &str, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("mdingest-sim: {what}accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

enum HeadRead {
    Head(usize),
    Closed,
    TooLarge,
}

fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Reads until `buf` holds a complete head; returns its length (blank line included).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> HeadRead {
    let mut scanned = 0;
    let mut chunk = [0u8; 8192];
    loop {
        // RFC 9112 §2.2: ignore empty lines before a request line.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            buf.drain(..blank);
            scanned = 0;
        }
        if let Some(end) = find_blank_line(buf, scanned) {
            return if end > MAX_HEAD {
                HeadRead::TooLarge
            } else {
                HeadRead::Head(end)
            };
        }
        if buf.len() > MAX_HEAD {
            return HeadRead::TooLarge;
        }
        scanned = buf.len();
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return HeadRead::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads and drops `n` body bytes, taking what is already buffered first.
async fn discard_body(stream: &mut TcpStream, buf: &mut Vec<u8>, n: u64) -> io::Result<()> {
    let buffered = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
    buf.drain(..buffered);
    let mut left = n - buffered as u64;
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let want = usize::try_from(left)
            .unwrap_or(chunk.len())
            .min(chunk.len());
        let got = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk[..want]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "body timed out"))??;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= got as u64;
    }
    Ok(())
}

enum Delivery {
    Whole,
    /// `Content-Length` promises the whole body; half is sent, then the connection closes.
    Truncated,
    /// The body in pieces spread over this long.
    Slow(Duration),
    /// Head only: the answer to a HEAD request must not carry the body its length describes.
    HeadOnly,
}

async fn send(
    stream: &mut TcpStream,
    answer: &Answer,
    keep_alive: bool,
    delivery: Delivery,
) -> io::Result<()> {
    let mut head = http::response_head(answer.status, &answer.extra, answer.body.len(), keep_alive);
    match delivery {
        Delivery::Whole if answer.body.len() <= 64 * 1024 => {
            head.extend_from_slice(&answer.body);
            stream.write_all(&head).await?;
        }
        Delivery::Whole => {
            stream.write_all(&head).await?;
            stream.write_all(&answer.body).await?;
        }
        Delivery::HeadOnly => stream.write_all(&head).await?,
        Delivery::Truncated => {
            head.extend_from_slice(&answer.body[..answer.body.len() / 2]);
            stream.write_all(&head).await?;
        }
        Delivery::Slow(total) => {
            stream.write_all(&head).await?;
            let pieces = (total.as_millis() / 20).clamp(1, 200) as usize;
            let pieces = pieces.min(answer.body.len().max(1));
            let size = answer.body.len().div_ceil(pieces).max(1);
            let pause = total / pieces as u32;
            for piece in answer.body.chunks(size) {
                tokio::time::sleep(pause).await;
                stream.write_all(piece).await?;
            }
        }
    }
    stream.flush().await
}

/// Closes after a final answer: FIN first, then drain what the client still sends for a
/// moment, because closing with unread input makes the kernel send a reset instead.
async fn close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut drained = 0usize;
    while drained < (1 << 20) {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    at: Instant,
}

impl Shared {
    fn record_answer(&self, seen: Seen, status: u16, bars: usize, fault: Option<Fault>) {
        let d = api::describe(&seen.target);
        self.record(RequestRecord {
            method: seen.method,
            target: seen.target,
            authorization: seen.authorization,
            symbol: d.symbol,
            from_ms: d.from_ms,
            to_ms: d.to_ms,
            status,
            bars,
            at: seen.at,
            fault,
        });
    }

    /// Refuses a request that cannot be routed, then closes: after a framing error the rest of
    /// the byte stream cannot be trusted to start a request.
    async fn refuse(&self, mut stream: TcpStream, seen: Seen, status: u16, text: &str) {
        let id = self.next_id();
        let answer = api::error(status, "ERROR", "error", &id, text);
        self.record_answer(seen, status, 0, None);
        tokio::time::sleep(self.latency).await;
        if send(&mut stream, &answer, false, Delivery::Whole)
            .await
            .is_ok()
        {
            close(stream).await;
        }
    }
}

/// The normal answer, built off the async workers: a 50,000-bar page is milliseconds of CPU
/// that would otherwise stall every other connection (and, in a current-thread test runtime,
/// the client under test).
async fn answer(shared: &Arc<Shared>, req: &Request, id: &str) -> Answer {
    let (s, r, i) = (Arc::clone(shared), req.clone(), id.to_string());
    match tokio::task::spawn_blocking(move || s.api.answer(&r, &i)).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(
                "mdingest-sim: answering {} failed: {e}",
                api::redact_target(&req.target)
            );
            api::server_error(id)
        }
    }
}

async fn serve(shared: Arc<Shared>, mut stream: TcpStream) {
    // Heads and bodies go out in separate writes; Nagle would hold the last piece back.
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_len = match read_head(&mut stream, &mut buf).await {
            HeadRead::Head(n) => n,
            HeadRead::Closed => return,
            HeadRead::TooLarge => {
                let (method, target) = http::lossy_request_line(&buf);
                let seen = Seen {
                    method,
                    target,
                    authorization: None,
                    at: Instant::now(),
                };
                let text = "request head larger than 16 KiB";
                return shared.refuse(stream, seen, 431, text).await;
            }
        };
        let at = Instant::now();
        let req = match Request::parse(&buf[..head_len]) {
            Ok(req) => req,
            Err(e) => {
                let (method, target) = http::lossy_request_line(&buf[..head_len]);
                let seen = Seen {
                    method,
                    target,
                    authorization: None,
                    at,
                };
                return shared.refuse(stream, seen, e.status(), e.message()).await;
            }
        };
        buf.drain(..head_len);
        let seen = Seen {
            method: req.method.clone(),
            target: req.target.clone(),
            authorization: req.header("authorization").map(str::to_string),
            at,
        };
        match req.framing() {
            Framing::Length(n) => {
                if discard_body(&mut stream, &mut buf, n).await.is_err() {
                    return;
                }
            }
            Framing::Chunked => {
                let text = "Transfer-Encoding is not supported";
                return shared.refuse(stream, seen, 501, text).await;
            }
            Framing::Invalid => {
                let text = "invalid Content-Length";
                return shared.refuse(stream, seen, 400, text).await;
            }
            Framing::TooLarge => {
                let text = "request body too large";
                return shared.refuse(stream, seen, 413, text).await;
            }
        }

        let keep_alive = req.keep_alive();
        let fault = lock(&shared.faults).pop_front();
        let id = shared.next_id();
        let alpaca = super::alpaca::is_alpaca(&req.target);
        let yahoo = super::yahoo::is_yahoo(&req.target);
        let (answer, delivery) = match &fault {
            None | Some(Fault::None) => (answer(&shared, &req, &id).await, Delivery::Whole),
            Some(Fault::TooManyRequests { .. }) if yahoo => {
                (super::yahoo::too_many_requests(), Delivery::Whole)
            }
            Some(Fault::ServerError) if yahoo => (super::yahoo::server_error(), Delivery::Whole),
            Some(Fault::Unauthorized) if yahoo => (super::yahoo::unauthorized(), Delivery::Whole),
            Some(Fault::TooManyRequests { retry_after_secs }) if alpaca => (
                super::alpaca::rate_limited(*retry_after_secs),
                Delivery::Whole,
            ),
            Some(Fault::TooManyRequests { retry_after_secs }) => {
                (api::rate_limited(&id, *retry_after_secs), Delivery::Whole)
            }
            Some(Fault::ServerError) if alpaca => (super::alpaca::server_error(), Delivery::Whole),
            Some(Fault::Unauthorized) if alpaca => (super::alpaca::forbidden(), Delivery::Whole),
            Some(Fault::ServerError) => (api::server_error(&id), Delivery::Whole),
            Some(Fault::Html) => (api::html_page(), Delivery::Whole),
            Some(Fault::Unauthorized) => {
                (api::unauthorized(&id, "Unknown API Key"), Delivery::Whole)
            }
            Some(Fault::TruncatedBody) => (answer(&shared, &req, &id).await, Delivery::Truncated),
            Some(Fault::SlowBody { total }) => {
                (answer(&shared, &req, &id).await, Delivery::Slow(*total))
            }
            Some(Fault::ConnectionReset) => {
                shared.record_answer(seen, 0, 0, fault);
                tokio::time::sleep(shared.latency).await;
                // Zero linger turns the close into an RST: the client sees ECONNRESET, not EOF.
                let _ = stream.set_zero_linger();
                return;
            }
        };
        let delivery = if req.method == "HEAD" {
            Delivery::HeadOnly
        } else {
            delivery
        };
        let truncated = matches!(delivery, Delivery::Truncated);
        // A truncated body's bars never fully arrive.
        let bars = if truncated { 0 } else { answer.bars };
        shared.record_answer(seen, answer.status, bars, fault);
        tokio::time::sleep(shared.latency).await;
        let keep_alive = keep_alive && !truncated;
        if send(&mut stream, &answer, keep_alive, delivery)
            .await
            .is_err()
        {
            return;
        }
        if !keep_alive {
            return close(stream).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_line_search_resumes_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest";
        assert_eq!(find_blank_line(buf, 0), Some(24));
        // Resuming just after the first half of the terminator still finds it.
        assert_eq!(find_blank_line(buf, 22), Some(24));
        assert_eq!(find_blank_line(b"GET", 10), None);
    }
}
