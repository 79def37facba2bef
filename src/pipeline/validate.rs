//! SPEC's checks on a parsed bar, run on the values as stored (after rounding).
//!
//! A failed check never fails a batch: the bar becomes a [`Rejection`] for `data_quality_logs`.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::domain::{Bar, Timeframe};
use crate::ingest::Rejection;

/// Largest magnitude `DECIMAL(15,4)` holds: 11 integer digits.
pub const PRICE_LIMIT: Decimal = Decimal::from_parts(1215752192, 23, 0, false, 0); // 1e11
/// Vendor clocks drift a little; a bar starting further ahead than this is in the future.
pub const FUTURE_TOLERANCE: Duration = Duration::seconds(5);
/// 1900-01-01 UTC: no vendor has a bar older. An older stamp is the vendor's error (wrong units,
/// a zero date), and on a partitioned table it would otherwise make a month's partition of its own.
pub const EARLIEST_SECS: i64 = -2_208_988_800;

/// Every problem found with `bar` (empty when it may be written).
pub fn check(bar: &Bar, timeframe: Timeframe, now: DateTime<Utc>) -> Vec<Rejection> {
    let mut problems = Vec::new();
    let mut reject = |check: &'static str, reason: String| {
        problems.push(Rejection::of_bar(bar, check, reason));
    };
    let prices = [
        ("open", bar.open),
        ("high", bar.high),
        ("low", bar.low),
        ("close", bar.close),
    ];
    for (name, p) in prices {
        if p.abs() >= PRICE_LIMIT {
            reject(
                "price_out_of_range",
                format!("{name} {p} does not fit DECIMAL(15,4)"),
            );
        } else if p <= Decimal::ZERO {
            reject("non_positive_price", format!("{name} {p} is not positive"));
        }
    }
    if bar.high < bar.open.max(bar.close) {
        reject(
            "high_below_open_close",
            format!(
                "high {} is below max(open, close) {}",
                bar.high,
                bar.open.max(bar.close)
            ),
        );
    }
    if bar.low > bar.open.min(bar.close) {
        reject(
            "low_above_open_close",
            format!(
                "low {} is above min(open, close) {}",
                bar.low,
                bar.open.min(bar.close)
            ),
        );
    }
    if bar.volume < 0 {
        reject(
            "negative_volume",
            format!("volume {} is negative", bar.volume),
        );
    }
    if !timeframe.is_on_grid(bar.timestamp, bar.source) {
        reject(
            "off_timeframe_grid",
            format!(
                "{} is not a {timeframe} bar start for {}",
                bar.timestamp.to_rfc3339(),
                bar.source
            ),
        );
    }
    if bar.timestamp.timestamp() < EARLIEST_SECS {
        reject(
            "timestamp_before_1900",
            format!("{} is before 1900", bar.timestamp.to_rfc3339()),
        );
    }
    if bar.timestamp > now + FUTURE_TOLERANCE {
        reject(
            "future_timestamp",
            format!("{} is in the future", bar.timestamp.to_rfc3339()),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DataSource;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn bar(o: &str, h: &str, l: &str, c: &str, v: i64) -> Bar {
        Bar {
            symbol: "AAPL".parse().unwrap(),
            timestamp: Utc.with_ymd_and_hms(2024, 1, 2, 14, 30, 0).unwrap(),
            open: Decimal::from_str(o).unwrap(),
            high: Decimal::from_str(h).unwrap(),
            low: Decimal::from_str(l).unwrap(),
            close: Decimal::from_str(c).unwrap(),
            volume: v,
            source: DataSource::Polygon,
        }
    }

    fn checks(b: &Bar) -> Vec<&'static str> {
        check(b, Timeframe::M1, Utc::now())
            .into_iter()
            .map(|r| r.check)
            .collect()
    }

    #[test]
    fn limit_is_1e11() {
        assert_eq!(PRICE_LIMIT, Decimal::from(100_000_000_000i64));
    }

    #[test]
    fn good_bar_passes() {
        assert!(checks(&bar("10", "11", "9", "10.5", 100)).is_empty());
    }

    #[test]
    fn each_check_fires() {
        assert_eq!(
            checks(&bar("0", "11", "9", "10", 1)),
            ["non_positive_price", "low_above_open_close"]
        );
        assert_eq!(
            checks(&bar("10", "9.5", "9", "10", 1)),
            ["high_below_open_close"]
        );
        assert_eq!(
            checks(&bar("10", "11", "10.5", "10.6", 1)),
            ["low_above_open_close"]
        );
        assert_eq!(checks(&bar("10", "11", "9", "10", -1)), ["negative_volume"]);
        assert!(checks(&bar("100000000000", "100000000000", "9", "10", 1))
            .contains(&"price_out_of_range"));
        let mut off = bar("10", "11", "9", "10", 1);
        off.timestamp += Duration::seconds(30);
        assert_eq!(checks(&off), ["off_timeframe_grid"]);
        let mut future = bar("10", "11", "9", "10", 1);
        future.timestamp = Utc.with_ymd_and_hms(2100, 1, 4, 14, 30, 0).unwrap();
        assert_eq!(checks(&future), ["future_timestamp"]);
        let mut ancient = bar("10", "11", "9", "10", 1);
        ancient.timestamp = Utc.with_ymd_and_hms(1899, 12, 31, 14, 30, 0).unwrap();
        assert_eq!(checks(&ancient), ["timestamp_before_1900"]);
    }
}
