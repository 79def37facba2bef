//! History restated by a vendor for a split or a dividend (Yahoo's close and volume are
//! split-adjusted, its adjclose also dividend-adjusted, up to the day of the fetch).
//!
//! When a fetch shows an action not seen before for a symbol, and the symbol has stored bars
//! older than that fetch's start, those bars are stale: the stretch from the symbol's earliest
//! stored bar (of every data source the fetch writes; never wider) to the fetch's start is
//! fetched again and rewritten (the upsert rewrites only rows whose values changed). The action
//! is logged in `data_quality_logs` (severity `info`, action `repaired`) with the bars, and is
//! remembered in `data_ingestion.corporate_actions` only once they are committed: a process that
//! dies in between rewrites again.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::backfill::windows;
use crate::db::{self, DbError};
use crate::domain::{DataSource, Mode, Symbol, Timeframe};
use crate::ingest::{Action, Chunk, Rejection, Severity};
use crate::pipeline::PipelineClosed;
use crate::sources::driver::SourceContext;
use crate::sources::{CorporateAction, FetchError, History};

#[derive(Debug, thiserror::Error)]
pub enum RestateError {
    #[error("rewriting history after a corporate action: {0}")]
    Db(#[from] DbError),
    #[error("rewriting history after a corporate action: {0}")]
    Fetch(#[from] FetchError),
    #[error("the run stopped")]
    Stopped,
}

impl From<PipelineClosed> for RestateError {
    fn from(_: PipelineClosed) -> Self {
        RestateError::Stopped
    }
}

impl RestateError {
    /// As the fetch's own failure; `None` when the run stopped.
    pub fn into_fetch_error(self) -> Option<FetchError> {
        match self {
            RestateError::Fetch(e) => Some(e),
            RestateError::Db(e) => Some(FetchError::new(
                format!("rewriting history after a corporate action: {e}"),
                crate::sources::Blame::Unavailable,
            )),
            RestateError::Stopped => None,
        }
    }
}

impl From<tokio_postgres::Error> for RestateError {
    fn from(e: tokio_postgres::Error) -> Self {
        RestateError::Db(e.into())
    }
}

/// What a fetch was: its vendor's history, the data sources it writes, and where it started.
pub struct Fetch<'a> {
    pub history: &'a dyn History,
    /// The task's own data source, then the ones the same rows also write.
    pub sources: Vec<DataSource>,
    pub timeframe: Timeframe,
    pub mode: Mode,
    /// The fetch's first instant: stored bars before it were fetched earlier.
    pub from: DateTime<Utc>,
}

const SEEN_SQL: &str = "SELECT kind, effective_at FROM data_ingestion.corporate_actions
    WHERE data_source = $1 AND symbol = $2";

const EARLIEST_SQL: &str = "SELECT min(timestamp) FROM data_ingestion.market_data
    WHERE symbol = $1 AND data_source = ANY($2)";

const REMEMBER_SQL: &str = "INSERT INTO data_ingestion.corporate_actions
    (data_source, symbol, kind, effective_at, detail)
SELECT $1, $2, k, t, d FROM unnest($3::text[], $4::timestamptz[], $5::text[]) AS a(k, t, d)
ON CONFLICT DO NOTHING";

/// Handles the actions one fetch of `symbol` showed. Returns the bars sent for the rewrite.
pub async fn on_actions(
    ctx: &SourceContext,
    fetch: &Fetch<'_>,
    symbol: &Symbol,
    actions: &[CorporateAction],
) -> Result<u64, RestateError> {
    let actions: Vec<&CorporateAction> = actions.iter().filter(|a| &a.symbol == symbol).collect();
    let Some(&source) = fetch.sources.first() else {
        return Ok(0);
    };
    if actions.is_empty() {
        return Ok(0);
    }
    let client = db::get(ctx.pool()).await?;
    let seen: Vec<(String, DateTime<Utc>)> = client
        .query(SEEN_SQL, &[&source.as_str(), &symbol.as_str()])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let new: Vec<&CorporateAction> = actions
        .into_iter()
        .filter(|a| !seen.iter().any(|(k, t)| k == a.kind.as_str() && *t == a.at))
        .collect();
    if new.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = fetch.sources.iter().map(|s| s.as_str()).collect();
    let earliest: Option<DateTime<Utc>> = client
        .query_one(EARLIEST_SQL, &[&symbol.as_str(), &names])
        .await?
        .get(0);
    drop(client);
    let mut sent = 0u64;
    let rewrite = earliest.filter(|e| *e < fetch.from);
    if let Some(earliest) = rewrite {
        tracing::info!(
            symbol = %symbol,
            actions = new.len(),
            "{source}: a new split or dividend restates {symbol}'s history; rewriting it from {earliest}"
        );
        sent = refetch(ctx, fetch, symbol, earliest).await?;
    }
    let log: Vec<Rejection> = new
        .iter()
        .map(|a| Rejection {
            source,
            symbol: Some(symbol.to_string()),
            bar_timestamp: Some(a.at),
            check: "corporate_action",
            severity: Severity::Info,
            action: Action::Repaired,
            details: json!({
                "kind": a.kind.as_str(),
                "detail": a.detail,
                "reason": match rewrite {
                    Some(e) => format!("the vendor restated history for this {}; stored bars from {} rewritten", a.kind.as_str(), e.to_rfc3339()),
                    None => format!("the vendor restated history for this {}; nothing stored before the fetch", a.kind.as_str()),
                },
                "rewritten_from": rewrite.map(|e| e.to_rfc3339()),
                "rewritten_to": rewrite.map(|_| fetch.from.to_rfc3339()),
            }),
        })
        .collect();
    ctx.send_counted(Chunk::new(fetch.mode, Vec::new(), log), 0)
        .await?;
    if ctx.committed_through(symbol).await.is_none() {
        return Err(RestateError::Stopped);
    }
    let kinds: Vec<&str> = new.iter().map(|a| a.kind.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = new.iter().map(|a| a.at).collect();
    let details: Vec<&str> = new.iter().map(|a| a.detail.as_str()).collect();
    let client = db::get(ctx.pool()).await?;
    client
        .execute(
            REMEMBER_SQL,
            &[&source.as_str(), &symbol.as_str(), &kinds, &ats, &details],
        )
        .await?;
    Ok(sent)
}

/// Fetches `[earliest, fetch.from)` again, window by window, and sends its bars on.
async fn refetch(
    ctx: &SourceContext,
    fetch: &Fetch<'_>,
    symbol: &Symbol,
    earliest: DateTime<Utc>,
) -> Result<u64, RestateError> {
    let mut sent = 0u64;
    let len = fetch.history.window_len(fetch.timeframe);
    for (start, end) in windows(len, earliest, fetch.from, Utc::now()) {
        let from = start.max(earliest);
        let to = end.min(fetch.from) - Duration::milliseconds(1);
        if from > to {
            continue;
        }
        let mut pages =
            fetch
                .history
                .pages(std::slice::from_ref(symbol), fetch.timeframe, from, to);
        loop {
            let page = tokio::select! {
                p = pages.next() => p?,
                _ = ctx.stop().cancelled() => return Err(RestateError::Stopped),
            };
            let Some(page) = page else { break };
            // The rewrite's own pages may show the same actions: they are being handled.
            sent += page.bars.len() as u64;
            ctx.send_counted(Chunk::new(fetch.mode, page.bars, page.rejections), 0)
                .await?;
        }
    }
    Ok(sent)
}
