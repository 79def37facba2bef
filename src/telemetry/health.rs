//! What `/readyz`, the metrics' sampled gauges and the systemd watchdog know about the daemon:
//! whether the database answers, which sources are healthy, and whether the pipeline moves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::pipeline::PipelineWatch;

/// How often the daemon asks the database whether it answers, and how long it waits.
pub const DB_PROBE_EVERY: Duration = Duration::from_secs(2);
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Health {
    database_up: AtomicBool,
    /// Per vendor: whether its stream is subscribed, or its last poll succeeded.
    sources: Mutex<BTreeMap<&'static str, bool>>,
    pipeline: OnceLock<PipelineWatch>,
    pool: OnceLock<Pool>,
}

impl Health {
    /// The vendors the daemon runs; each is unhealthy until it says otherwise.
    pub fn with_sources(vendors: impl IntoIterator<Item = &'static str>) -> Health {
        let health = Health::default();
        if let Ok(mut s) = health.sources.lock() {
            s.extend(vendors.into_iter().map(|v| (v, false)));
        }
        health
    }

    pub fn source(&self, vendor: &'static str, healthy: bool) {
        if let Ok(mut s) = self.sources.lock() {
            s.insert(vendor, healthy);
        }
    }

    pub fn set_pipeline(&self, watch: PipelineWatch) {
        let _ = self.pipeline.set(watch);
    }

    pub fn set_pool(&self, pool: Pool) {
        let _ = self.pool.set(pool);
    }

    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
        super::database_up(up);
    }

    /// `Ok` while the database answers and at least one source is healthy; otherwise the
    /// one-line reason `/readyz` gives.
    pub fn ready(&self) -> Result<(), String> {
        if !self.database_up() {
            return Err("the database does not answer".into());
        }
        let sources = self.sources.lock().map(|s| s.clone()).unwrap_or_default();
        if sources.values().any(|h| *h) {
            return Ok(());
        }
        if sources.is_empty() {
            return Err("no source runs".into());
        }
        let names: Vec<&str> = sources.keys().copied().collect();
        Err(format!(
            "no source is healthy yet ({}: not connected, or last poll failed)",
            names.join(", ")
        ))
    }

    /// Refreshes the gauges that are read rather than counted (queue depth, pool).
    pub fn sample(&self) {
        if let Some(p) = self.pipeline.get() {
            super::queue_depth(p.depth());
        }
        if let Some(pool) = self.pool.get() {
            super::pool(pool.status());
        }
    }

    /// The longest a writer has been on its current batch, if it is on one.
    pub fn longest_batch(&self) -> Option<Duration> {
        self.pipeline.get().and_then(PipelineWatch::longest_batch)
    }

    /// Asks the database every `DB_PROBE_EVERY` until `stop`; an outage is logged when it
    /// starts and when it ends, not on every probe.
    pub async fn probe_database(&self, pool: Pool, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(DB_PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let probe = async {
                let client = crate::db::get(&pool).await?;
                client.simple_query("SELECT 1").await?;
                Ok::<_, crate::db::DbError>(())
            };
            let up = match tokio::time::timeout(DB_PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {DB_PROBE_TIMEOUT:?}")),
            };
            match (self.database_up(), up) {
                (false, Ok(())) => {
                    tracing::info!("the database answers");
                    self.set_database_up(true);
                }
                (true, Err(e)) => {
                    tracing::warn!(error = %e, "the database does not answer; /readyz says 503 until it does");
                    self.set_database_up(false);
                }
                _ => {}
            }
        }
    }
}
