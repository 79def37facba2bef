//! Logging: human-readable on a terminal, JSON lines for journald and log shippers
//! (`log.format = "json"`), and [`Throttled`] for errors that repeat.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, LogFormat};

/// `RUST_LOG` wins over `log.level`; logs go to stderr so stdout stays the command's output.
pub fn init(cfg: &Config) {
    // refinery narrates every migration at info; `migrate` prints its own summary.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| tracing_subscriber::EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| format!("{},refinery_core=warn", cfg.log.level));
    // tungstenite logs every frame it sends at trace, the auth message (the key) included.
    let filter =
        tracing_subscriber::EnvFilter::new(crate::sources::ws::quiet_wire_logs(&directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        // One object per line, the fields flattened beside the message.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// A repeated error is logged once a minute with how many times it happened: an outage of
/// hours is a line a minute, not millions, and its size still shows.
pub struct Throttled {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub fn per_minute() -> Throttled {
        Throttled::every(Duration::from_secs(60))
    }

    pub fn every(every: Duration) -> Throttled {
        Throttled {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due, `n` counting this one and every
    /// one not logged since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_many(1)
    }

    /// Counts `n` occurrences at once (see [`Throttled::hit`]).
    pub fn hit_many(&self, n: u64) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, count) = &mut *state;
        *count += n;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_line_with_the_count_per_period() {
        let t = Throttled::every(Duration::from_millis(200));
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit_many(3), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            t.hit(),
            Some(5),
            "the suppressed ones are counted in the next line"
        );
        assert_eq!(t.hit(), None);
    }
}
