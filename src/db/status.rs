//! `ingestion_status`: reading it for `mdingest status`, and the state changes that are not a
//! batch's progress (a load finishing or failing).

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::DbError;
use crate::domain::{DataSource, FeedState, Mode, Symbol};

#[derive(Debug, Clone)]
pub struct StatusRow {
    pub data_source: String,
    pub symbol: String,
    pub mode: String,
    pub timeframe: String,
    pub state: String,
    pub last_bar_timestamp: Option<DateTime<Utc>>,
    pub rows_written: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

pub async fn read_all(client: &Client) -> Result<Vec<StatusRow>, DbError> {
    let rows = client
        .query(
            "SELECT data_source, symbol, mode, timeframe, state, last_bar_timestamp, rows_written,
                    last_success_at, last_error, updated_at
             FROM data_ingestion.ingestion_status
             ORDER BY data_source, symbol, mode",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StatusRow {
            data_source: r.get(0),
            symbol: r.get(1),
            mode: r.get(2),
            timeframe: r.get(3),
            state: r.get(4),
            last_bar_timestamp: r.get(5),
            rows_written: r.get(6),
            last_success_at: r.get(7),
            last_error: r.get(8),
            updated_at: r.get(9),
        })
        .collect())
}

/// Moves the given feeds from `running` to `state` (`completed`, `idle`, or `error` with a
/// message). Feeds in another state are left alone.
pub async fn finish_feeds(
    client: &Client,
    source: DataSource,
    mode: Mode,
    symbols: &[Symbol],
    state: FeedState,
    error: Option<&str>,
) -> Result<u64, DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    let n = client
        .execute(
            "UPDATE data_ingestion.ingestion_status
             SET state = $4,
                 last_error = COALESCE($5, last_error),
                 last_error_at = CASE WHEN $5::text IS NULL THEN last_error_at ELSE now() END,
                 updated_at = now()
             WHERE data_source = $1 AND mode = $2 AND symbol = ANY($3) AND state = 'running'",
            &[
                &source.as_str(),
                &mode.as_str(),
                &symbols,
                &state.as_str(),
                &error,
            ],
        )
        .await?;
    Ok(n)
}

/// Renders rows as an aligned text table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let ts = |t: &Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let header = [
        "SOURCE",
        "SYMBOL",
        "MODE",
        "TF",
        "STATE",
        "LAST BAR",
        "ROWS",
        "LAST SUCCESS",
        "LAST ERROR",
    ];
    let body: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.data_source.clone(),
                r.symbol.clone(),
                r.mode.clone(),
                r.timeframe.clone(),
                r.state.clone(),
                ts(&r.last_bar_timestamp),
                r.rows_written.to_string(),
                ts(&r.last_success_at),
                r.last_error
                    .as_deref()
                    .map(|e| e.lines().next().unwrap_or("").chars().take(60).collect())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // ROWS is a number: right-aligned.
            if i == 6 {
                s.push_str(&format!("{cell:>w$}"));
            } else {
                s.push_str(&format!("{cell:<w$}"));
            }
            s.push_str("  ");
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    for row in &body {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    if body.is_empty() {
        out.push_str("(no feeds yet)\n");
    }
    out
}

/// Gives every feed its row from the start (so an error shows before the first bar) and marks
/// them `state`; rows that exist keep their progress.
pub async fn ensure_feeds(
    client: &Client,
    source: DataSource,
    mode: Mode,
    timeframe: crate::domain::Timeframe,
    symbols: &[Symbol],
    state: FeedState,
) -> Result<(), DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    client
        .execute(
            "INSERT INTO data_ingestion.ingestion_status AS st
                 (data_source, symbol, mode, timeframe, state, rows_written, updated_at)
             SELECT $1, s, $2, $3, $5, 0, now() FROM unnest($4::text[]) AS s
             ON CONFLICT (data_source, symbol, mode) DO UPDATE
             SET state = EXCLUDED.state, timeframe = EXCLUDED.timeframe, updated_at = now()",
            &[
                &source.as_str(),
                &mode.as_str(),
                &timeframe.as_str(),
                &symbols,
                &state.as_str(),
            ],
        )
        .await?;
    Ok(())
}

/// The committed `last_bar_timestamp` of each of these feeds that has one.
pub async fn last_bars(
    client: &Client,
    source: DataSource,
    mode: Mode,
    symbols: &[Symbol],
) -> Result<std::collections::HashMap<String, DateTime<Utc>>, DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    let rows = client
        .query(
            "SELECT symbol, last_bar_timestamp FROM data_ingestion.ingestion_status
             WHERE data_source = $1 AND mode = $2 AND symbol = ANY($3)
               AND last_bar_timestamp IS NOT NULL",
            &[&source.as_str(), &mode.as_str(), &symbols],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records a failure (a refused login, a gap-fill or a window that failed) on these feeds' rows,
/// creating any that is missing (a feed that failed before its first bar must show it too):
/// state `error`, `last_error`, now.
pub async fn upsert_error(
    client: &Client,
    source: DataSource,
    mode: Mode,
    timeframe: crate::domain::Timeframe,
    symbols: &[Symbol],
    error: &str,
) -> Result<(), DbError> {
    let symbols: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    client
        .execute(
            "INSERT INTO data_ingestion.ingestion_status AS st
                 (data_source, symbol, mode, timeframe, state, rows_written, last_error,
                  last_error_at, updated_at)
             SELECT $1, s, $2, $3, 'error', 0, $5, now(), now() FROM unnest($4::text[]) AS s
             ON CONFLICT (data_source, symbol, mode) DO UPDATE
             SET state = 'error', last_error = EXCLUDED.last_error, last_error_at = now(),
                 updated_at = now()",
            &[
                &source.as_str(),
                &mode.as_str(),
                &timeframe.as_str(),
                &symbols,
                &error,
            ],
        )
        .await?;
    Ok(())
}
