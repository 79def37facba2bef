//! The NYSE's sessions (regular hours 09:30–16:00 New York, holidays, early closes at 13:00),
//! from the `exchange-hours` crate's sourced tables: the holiday rules are not ours to write.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::America::New_York;
use exchange_hours::{calendar_for_exchange, Exchange, SessionKind};

use crate::domain::Timeframe;

/// One regular session: the exchange date and its `[open, close)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub date: NaiveDate,
    pub open: DateTime<Utc>,
    pub close: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error(
        "the NYSE calendar has no answer for {date}: {reason} (it covers 2010-01-01 to 2028-12-31)"
    )]
    Uncovered { date: NaiveDate, reason: String },
}

/// The sessions whose exchange date falls in `[first, last]`, in order.
pub fn sessions(first: NaiveDate, last: NaiveDate) -> Result<Vec<Session>, CalendarError> {
    let nyse = calendar_for_exchange(Exchange::Nyse);
    let mut out = Vec::new();
    let mut date = first;
    while date <= last {
        let uncovered = |reason: String| CalendarError::Uncovered { date, reason };
        let midnight = new_york_midnight(date).ok_or_else(|| uncovered("no midnight".into()))?;
        // The session containing or next after midnight: today's, unless today has none.
        let next = nyse
            .session_bounds_with(midnight, SessionKind::Regular)
            .map_err(|e| uncovered(e.to_string()))?;
        if let Some((open, close)) = next {
            if open.with_timezone(&New_York).date_naive() == date {
                out.push(Session { date, open, close });
            }
        }
        match date.succ_opt() {
            Some(d) => date = d,
            None => break,
        }
    }
    Ok(out)
}

/// Midnight New York at the start of `d`.
pub fn new_york_midnight(d: NaiveDate) -> Option<DateTime<Utc>> {
    New_York
        .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

impl Session {
    /// Where this session's bars of `timeframe` start and end: intraday bars on their UTC grid
    /// (an hourly bar from 09:00 holds 09:30's trades), a daily bar anywhere on its exchange
    /// date (vendors stamp it at midnight New York or at the open).
    pub fn span(&self, timeframe: Timeframe) -> (DateTime<Utc>, DateTime<Utc>) {
        match timeframe {
            Timeframe::D1 => (
                new_york_midnight(self.date).unwrap_or(self.open),
                self.date
                    .succ_opt()
                    .and_then(new_york_midnight)
                    .unwrap_or(self.close),
            ),
            _ => {
                let len = timeframe.duration().num_seconds();
                let start = self.open.timestamp().div_euclid(len) * len;
                (
                    DateTime::from_timestamp(start, 0).unwrap_or(self.open),
                    self.close,
                )
            }
        }
    }

    /// The bars of `timeframe` this session should hold.
    pub fn expected(&self, timeframe: Timeframe) -> i64 {
        match timeframe {
            Timeframe::D1 => 1,
            _ => {
                let (start, end) = self.span(timeframe);
                let len = timeframe.duration();
                let secs = (end - start).num_seconds();
                (secs + len.num_seconds() - 1) / len.num_seconds()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn holidays_early_closes_and_dst_come_from_the_calendar() {
        // 2024-11-28 Thanksgiving (closed), 11-29 early close 13:00; 2024-11-03 DST ended.
        let s = sessions(d("2024-11-01"), d("2024-12-02")).unwrap();
        let dates: Vec<String> = s.iter().map(|s| s.date.to_string()).collect();
        assert!(!dates.contains(&"2024-11-28".to_string()));
        assert!(!dates.contains(&"2024-11-02".to_string()), "a Saturday");
        assert_eq!(s.len(), 21);
        let nov1 = s[0];
        assert_eq!(nov1.open.to_rfc3339(), "2024-11-01T13:30:00+00:00");
        assert_eq!(nov1.expected(Timeframe::M1), 390);
        let nov4 = s[1];
        assert_eq!(nov4.open.to_rfc3339(), "2024-11-04T14:30:00+00:00");
        assert_eq!(nov4.close.to_rfc3339(), "2024-11-04T21:00:00+00:00");
        let friday = s.iter().find(|s| s.date == d("2024-11-29")).unwrap();
        assert_eq!(friday.close.to_rfc3339(), "2024-11-29T18:00:00+00:00");
        assert_eq!(friday.expected(Timeframe::M1), 210);
        assert_eq!(friday.expected(Timeframe::M5), 42);
        // 09:00–13:00 New York in hourly bars: 14:00..18:00 UTC.
        assert_eq!(friday.expected(Timeframe::H1), 4);
        assert_eq!(nov4.expected(Timeframe::H1), 7);
        assert_eq!(nov4.expected(Timeframe::D1), 1);
    }

    #[test]
    fn a_date_outside_the_calendar_is_named() {
        let e = sessions(d("2031-01-02"), d("2031-01-03")).unwrap_err();
        assert!(e.to_string().contains("2031-01-02"), "{e}");
    }
}
