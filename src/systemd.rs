//! systemd's notify protocol (`Type=notify`): READY=1, STOPPING=1, STATUS= lines, and watchdog
//! pings tied to the pipeline making progress. Without `NOTIFY_SOCKET` every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::telemetry::health::Health;

/// How often STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), if it asks this process: when
/// `WATCHDOG_PID` is set it must be ours.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings at half the period while no writer has been on one batch for longer than the period
/// (a wedged writer, or a database that has not taken a batch for that long, stops the pings and
/// systemd restarts the daemon). Waiting for data is not a stall: a quiet market keeps pinging.
pub async fn watchdog(health: Arc<Health>, period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(period / 2);
    let stalled = AtomicBool::new(false);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match health.longest_batch() {
            Some(on) if on > period => {
                if !stalled.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        on_batch_s = on.as_secs(),
                        "a writer has been on one batch for longer than the watchdog period; no longer telling systemd we are alive"
                    );
                }
            }
            _ => {
                if stalled.swap(false, Ordering::Relaxed) {
                    tracing::info!("the writers move again; watchdog pings resume");
                }
                notify(&[NotifyState::Watchdog]);
            }
        }
    }
}

/// STATUS= every few seconds: bars committed per second since the last line, and readiness.
pub async fn report_status(health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut last = (Instant::now(), crate::telemetry::bars_committed());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = (Instant::now(), crate::telemetry::bars_committed());
        let secs = now.0.duration_since(last.0).as_secs_f64().max(0.001);
        let rate = now.1.saturating_sub(last.1) as f64 / secs;
        last = now;
        let state = match health.ready() {
            Ok(()) => "ready".to_string(),
            Err(why) => format!("not ready: {why}"),
        };
        status(&format!(
            "{rate:.0} bars/s committed, {} in all; {state}",
            now.1
        ));
    }
}
