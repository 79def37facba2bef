//! Progress of long work: a bar on a terminal, a log line every few seconds otherwise (journald
//! and CI logs must not fill with redraws).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    total: u64,
    unit: Unit,
    bar: Option<ProgressBar>,
    last_log: Instant,
}

/// What the position counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of input (a file's size).
    Bytes,
    /// Tasks of a work queue.
    Tasks,
    /// Symbols of a table.
    Symbols,
}

impl Progress {
    /// `total` is in `unit`s; `visible` is false for quiet callers (tests).
    pub fn new(what: &'static str, total: u64, unit: Unit, visible: bool) -> Progress {
        let bar = (visible && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            let counts = match unit {
                Unit::Bytes => "{bytes}/{total_bytes}",
                Unit::Tasks => "{pos}/{len} tasks",
                Unit::Symbols => "{pos}/{len} symbols",
            };
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix}} [{{bar:30}}] {counts} {{msg}} ({{elapsed}}, eta {{eta}})"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar
        });
        Progress {
            what,
            total,
            unit,
            bar,
            last_log: Instant::now(),
        }
    }

    pub fn update(&mut self, done: u64, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(message());
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let pct = if self.total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / self.total as f64
            };
            let of = match self.unit {
                Unit::Bytes => String::new(),
                Unit::Tasks => format!(" ({done} of {} tasks)", self.total),
                Unit::Symbols => format!(" ({done} of {} symbols)", self.total),
            };
            tracing::info!("{}: {:.0}%{of} {}", self.what, pct, message());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
