//! `ingestion_status`, read for `mdingest status`. Only the writer writes it (`db::writer`):
//! progress and state changes travel through the queue with the bars.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::DbError;

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

/// How far a feed's newest committed bar lies behind `now`, in whole seconds.
fn lag_secs(r: &StatusRow, now: DateTime<Utc>) -> Option<i64> {
    r.last_bar_timestamp.map(|t| (now - t).num_seconds().max(0))
}

/// `5s`, `3m`, `2h`, `4d`: a lag as the table shows it.
fn lag_text(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7_200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3_600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// Every feed as one JSON array (`status --json`), with its lag in seconds.
pub fn render_json(rows: &[StatusRow], now: DateTime<Utc>) -> serde_json::Value {
    let ts = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "data_source": r.data_source,
                "symbol": r.symbol,
                "mode": r.mode,
                "timeframe": r.timeframe,
                "state": r.state,
                "last_bar_timestamp": ts(&r.last_bar_timestamp),
                "lag_seconds": lag_secs(r, now),
                "rows_written": r.rows_written,
                "last_success_at": ts(&r.last_success_at),
                "last_error": r.last_error,
                "updated_at": r.updated_at.to_rfc3339(),
            })
        })
        .collect()
}

/// Renders rows as an aligned text table.
pub fn render_table(rows: &[StatusRow], now: DateTime<Utc>) -> String {
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
        "LAG",
        "ROWS",
        "LAST SUCCESS",
        "LAST ERROR",
    ];
    let body: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.data_source.clone(),
                r.symbol.clone(),
                r.mode.clone(),
                r.timeframe.clone(),
                r.state.clone(),
                ts(&r.last_bar_timestamp),
                lag_text(lag_secs(r, now)),
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
            // LAG and ROWS are numbers: right-aligned.
            if i == 6 || i == 7 {
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
