//! OS signals become one shutdown, for every command: the first SIGINT or SIGTERM stops taking
//! data (what was read is still committed), a second gives up on what is not committed yet, a
//! third exits at once.
//! systemd, containers and CI send SIGTERM; a terminal sends SIGINT. Exit codes are 128 + the
//! signal's number (130, 143), as shells report them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    fn code(self) -> u8 {
        self.exit_code()
    }

    fn from_code(c: u8) -> Option<Signal> {
        [Signal::Interrupt, Signal::Terminate]
            .into_iter()
            .find(|s| s.code() == c)
    }
}

/// Cheap to clone; every clone sees the same shutdown.
#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abandon: CancellationToken,
    /// The first signal received (its exit code), 0 while none.
    first: Arc<AtomicU8>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts listening for SIGINT and SIGTERM; call inside the runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    Some(()) = int.recv() => Signal::Interrupt,
                    Some(()) = term.recv() => Signal::Terminate,
                    else => return,
                };
                if this.receive(got) {
                    // A third signal: whatever still holds the process (a database that does
                    // not answer even to a rollback, a read that will not end) is left behind.
                    tracing::error!("{}: exiting now", got.name());
                    std::process::exit(i32::from(got.exit_code()));
                }
            }
        });
        Ok(())
    }

    /// What a signal does: the first stops, the second abandons; true for any further one,
    /// which the listener answers by exiting at once.
    pub fn receive(&self, signal: Signal) -> bool {
        if self.abandon.is_cancelled() {
            return true;
        }
        if !self.stop.is_cancelled() {
            self.first.store(signal.code(), Ordering::SeqCst);
            tracing::warn!(
                "{}: stopping; committing what was read (send it again to give up)",
                signal.name()
            );
            self.stop.cancel();
            false
        } else {
            tracing::warn!("{}: giving up on what is not committed yet", signal.name());
            self.abandon.cancel();
            false
        }
    }

    /// Cancelled at the first signal: stop reading or fetching.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancelled at the second signal (or a deadline): stop waiting for the database.
    pub fn abandon_token(&self) -> CancellationToken {
        self.abandon.clone()
    }

    /// Gives up on what is not committed (the daemon's shutdown deadline).
    pub fn give_up(&self) {
        self.abandon.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The signal that started the shutdown, if one did.
    pub fn signal(&self) -> Option<Signal> {
        Signal::from_code(self.first.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_stops_second_abandons() {
        let s = Shutdown::new();
        assert!(!s.receive(Signal::Terminate));
        assert!(s.is_stopping() && !s.abandon_token().is_cancelled());
        assert_eq!(s.signal(), Some(Signal::Terminate));
        assert!(!s.receive(Signal::Interrupt));
        assert!(s.abandon_token().is_cancelled());
        assert!(s.receive(Signal::Interrupt), "a third signal exits");
        assert_eq!(s.signal().map(Signal::exit_code), Some(143));
    }
}
