//! The one backoff policy: capped exponential waits with jitter, for every retry in the
//! program (HTTP requests, WebSocket reconnects, the writers' retries, the daemon's waits for
//! the database, the work queue's workers).
//!
//! backon's jitter adds up to one more base delay on top of each wait, so the exponential part
//! is capped at half of `max`: the waits, jitter included, never pass `max`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait (jitter may add up to as much again, within `max`).
    pub min: Duration,
    /// The longest wait, jitter included.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// For backon's `Retryable`: retries for ever (the caller decides when to stop).
    pub fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min.min(self.max / 2))
            .with_max_delay(self.max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// The waits, one per failed attempt, for ever.
    pub fn waits(&self) -> Waits {
        Waits {
            inner: self.builder().build(),
            max: self.max,
        }
    }
}

/// An endless series of waits; see [`Backoff`].
#[derive(Debug)]
pub struct Waits {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Waits {
    /// The next wait, never past the policy's `max`.
    pub fn next_wait(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.max).min(self.max)
    }
}

impl Iterator for Waits {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_wait())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_and_never_pass_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let waits: Vec<Duration> = b.waits().take(200).collect();
        assert_eq!(waits.len(), 200, "waits for ever");
        assert!(waits.iter().all(|w| *w <= b.max), "{waits:?}");
        assert!(waits.iter().any(|w| *w > b.max / 2), "{waits:?}");
        assert!(waits[0] >= Duration::from_millis(100));
        // Jitter: two series differ.
        let other: Vec<Duration> = b.waits().take(200).collect();
        assert_ne!(waits, other);
    }
}
