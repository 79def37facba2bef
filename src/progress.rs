//! Progress of long work: a bar on a terminal, a log line every few seconds otherwise (journald
//! and CI logs must not fill with redraws).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    last_log: Instant,
}

impl Progress {
    /// `total` is in bytes (the input's size); `visible` is false for quiet callers (tests).
    pub fn new(what: &'static str, total: u64, visible: bool) -> Progress {
        let bar = (visible && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar
        });
        Progress {
            what,
            total,
            bar,
            last_log: Instant::now(),
        }
    }

    pub fn update(&mut self, done_bytes: u64, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(done_bytes);
            bar.set_message(message());
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let pct = if self.total == 0 {
                100.0
            } else {
                done_bytes as f64 * 100.0 / self.total as f64
            };
            tracing::info!("{}: {:.0}% {}", self.what, pct, message());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
