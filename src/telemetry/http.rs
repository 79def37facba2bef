//! `GET /metrics`, `/healthz` and `/readyz` on `metrics.listen`, from one small router: the
//! exporter's own listener serves only metrics and cannot answer 503.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::Health;

/// The exporter's histograms are compacted this often (its documented upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A scraper that opens a connection and sends nothing is dropped after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("metrics.listen = {addr:?}: cannot listen there: {reason}")]
    Bind { addr: String, reason: String },
}

/// Binds `addr` now, so that a port already taken is an error at start.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    let bad = |reason: String| ServeError::Bind {
        addr: addr.to_string(),
        reason,
    };
    let parsed: SocketAddr = addr.parse().map_err(|e| bad(format!("{e}")))?;
    TcpListener::bind(parsed).await.map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the address is already in use (another mdingest, or another exporter?)".into()
            }
            _ => e.to_string(),
        })
    })
}

/// Serves until `stop`.
pub fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let upkeep = handle.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_stop.cancelled() => return,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: the daemon goes on, the scrape fails.
                        tracing::warn!(error = %e, "metrics: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let reply = respond(&req, &handle, &health);
                    async move { Ok::<_, Infallible>(reply) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
            });
        }
    })
}

fn respond(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            health.sample();
            let mut r = text(StatusCode::OK, handle.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "alive\n".into()),
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
