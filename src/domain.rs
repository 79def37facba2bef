//! Domain types, parsed at the edge so the core never re-checks raw strings.
//!
//! A `Bar` is built only through [`Bar::new`], which applies SPEC's storage rules (prices rounded
//! half away from zero to 4 places, volume to an integer). The semantic checks (OHLC consistency,
//! ranges, the timeframe grid) live in `pipeline::validate`, because a bar that fails them must
//! still reach `data_quality_logs` with its values.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Timelike, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Longest symbol the `VARCHAR(20)` column holds.
pub const SYMBOL_MAX_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty symbol")]
    EmptySymbol,
    #[error("symbol \"{0}\" is longer than {SYMBOL_MAX_LEN} characters")]
    SymbolTooLong(String),
    #[error("symbol \"{0}\" is not a ticker (letters, digits and . - / ^ = : only, starting with an upper-case letter, a digit or ^)")]
    SymbolNotTicker(String),
    #[error("unknown data source {0:?} (expected polygon, yahoo, yahoo_adjusted or alpaca)")]
    UnknownSource(String),
    #[error("unknown timeframe {0:?} (expected 1m, 5m, 15m, 1h or 1d)")]
    UnknownTimeframe(String),
    /// `value` is the wire's text: a JSON string keeps its own quotes, which are not doubled.
    #[error("{field} {} is not a number", quoted_once(.value))]
    NotANumber { field: &'static str, value: String },
    #[error("volume {0} does not fit a BIGINT")]
    VolumeOutOfRange(Decimal),
    /// A well-formed number too large for any column (`1e30`, 30 digits).
    #[error("{field} {value} is out of range")]
    OutOfRange { field: &'static str, value: String },
}

fn quoted_once(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value.to_string()
    } else {
        format!("\"{value}\"")
    }
}

impl DomainError {
    /// The `data_quality_logs.check_name` of a value that could not become part of a bar.
    pub fn check_name(&self) -> &'static str {
        match self {
            DomainError::EmptySymbol
            | DomainError::SymbolTooLong(_)
            | DomainError::SymbolNotTicker(_) => "invalid_symbol",
            DomainError::NotANumber { value, .. } if value.is_empty() => "missing_value",
            DomainError::VolumeOutOfRange(_) | DomainError::OutOfRange { .. } => {
                "value_out_of_range"
            }
            DomainError::NotANumber { .. }
            | DomainError::UnknownSource(_)
            | DomainError::UnknownTimeframe(_) => "not_a_number",
        }
    }
}

/// A ticker as stored in `market_data.symbol`: 1..=20 characters of letters, digits and the
/// punctuation vendors use in class shares and indices (`BRK.B`, `BF-B`, `^GSPC`, `EURUSD=X`),
/// starting with an upper-case letter, a digit or `^`. Lower-case letters occur inside real
/// tickers (Polygon writes preferreds as `ABRpD`), never at the start.
/// Shared (`Arc`), so the bars of one symbol do not each carry a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol(Arc<str>);

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Symbol {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Symbol {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DomainError::EmptySymbol);
        }
        if s.chars().count() > SYMBOL_MAX_LEN {
            return Err(DomainError::SymbolTooLong(crate::text::excerpt(s, 40)));
        }
        let ticker_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '/' | '^' | '=' | ':');
        let starts_well = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '^');
        if !starts_well || !s.chars().all(ticker_char) {
            return Err(DomainError::SymbolNotTicker(crate::text::excerpt(s, 40)));
        }
        Ok(Symbol(Arc::from(s)))
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `data_source` column's allowed values (the seed's CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    Polygon,
    Yahoo,
    YahooAdjusted,
    Alpaca,
}

impl DataSource {
    pub const ALL: [DataSource; 4] = [
        DataSource::Polygon,
        DataSource::Yahoo,
        DataSource::YahooAdjusted,
        DataSource::Alpaca,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataSource::Polygon => "polygon",
            DataSource::Yahoo => "yahoo",
            DataSource::YahooAdjusted => "yahoo_adjusted",
            DataSource::Alpaca => "alpaca",
        }
    }

    /// Daily bars of Polygon and Alpaca are stamped at midnight New York; Yahoo's at the session
    /// open, which depends on the exchange.
    fn daily_stamp_is_midnight_new_york(self) -> bool {
        matches!(self, DataSource::Polygon | DataSource::Alpaca)
    }
}

impl FromStr for DataSource {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataSource::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| DomainError::UnknownSource(s.to_string()))
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a feed reaches us; the third part of `ingestion_status`'s key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Stream,
    Poll,
    Backfill,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Poll => "poll",
            Mode::Backfill => "backfill",
        }
    }

    /// As `ingestion_status.mode` stores it.
    pub fn from_column(s: &str) -> Option<Mode> {
        [Mode::Stream, Mode::Poll, Mode::Backfill]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// `ingestion_status.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedState {
    Running,
    Idle,
    Completed,
    Error,
}

impl FeedState {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Running => "running",
            FeedState::Idle => "idle",
            FeedState::Completed => "completed",
            FeedState::Error => "error",
        }
    }

    /// As `ingestion_status.state` stores it.
    pub fn from_column(s: &str) -> Option<FeedState> {
        [
            FeedState::Running,
            FeedState::Idle,
            FeedState::Completed,
            FeedState::Error,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeframe {
    M1,
    M5,
    M15,
    H1,
    D1,
}

impl Timeframe {
    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::M1 => "1m",
            Timeframe::M5 => "5m",
            Timeframe::M15 => "15m",
            Timeframe::H1 => "1h",
            Timeframe::D1 => "1d",
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            Timeframe::M1 => Duration::minutes(1),
            Timeframe::M5 => Duration::minutes(5),
            Timeframe::M15 => Duration::minutes(15),
            Timeframe::H1 => Duration::hours(1),
            Timeframe::D1 => Duration::days(1),
        }
    }

    /// Whether `ts` is a bar start of this timeframe for `source`. Intraday bars sit on the UTC
    /// grid of their length; daily bars on the vendor's stamp (see `DataSource`).
    pub fn is_on_grid(self, ts: DateTime<Utc>, source: DataSource) -> bool {
        if ts.nanosecond() != 0 {
            return false;
        }
        match self {
            Timeframe::D1 if source.daily_stamp_is_midnight_new_york() => is_midnight_new_york(ts),
            // Yahoo stamps a daily bar at its exchange's session open: on the minute grid.
            Timeframe::D1 => ts.second() == 0,
            _ => ts.timestamp().rem_euclid(self.duration().num_seconds()) == 0,
        }
    }
}

pub fn is_midnight_new_york(ts: DateTime<Utc>) -> bool {
    let local = ts.with_timezone(&chrono_tz::America::New_York);
    local.num_seconds_from_midnight() == 0 && local.nanosecond() == 0
}

impl FromStr for Timeframe {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Timeframe::M1,
            Timeframe::M5,
            Timeframe::M15,
            Timeframe::H1,
            Timeframe::D1,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| DomainError::UnknownTimeframe(s.to_string()))
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Timeframe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Timeframe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One OHLCV bar as stored: `timestamp` is the bar's start in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub symbol: Symbol,
    pub timestamp: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: i64,
    pub source: DataSource,
}

/// The upsert key of `market_data`.
pub type BarKey = (Symbol, DateTime<Utc>, DataSource);

impl Bar {
    /// Applies the storage rounding: prices half away from zero to 4 places, a fractional volume
    /// half away from zero to an integer. Fails only when the volume cannot be a BIGINT.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        symbol: Symbol,
        timestamp: DateTime<Utc>,
        open: Decimal,
        high: Decimal,
        low: Decimal,
        close: Decimal,
        volume: Decimal,
        source: DataSource,
    ) -> Result<Bar, DomainError> {
        let volume = volume
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
            .to_i64()
            .ok_or(DomainError::VolumeOutOfRange(volume))?;
        Ok(Bar {
            symbol,
            timestamp,
            open: round_price(open),
            high: round_price(high),
            low: round_price(low),
            close: round_price(close),
            volume,
            source,
        })
    }

    pub fn key(&self) -> BarKey {
        (self.symbol.clone(), self.timestamp, self.source)
    }
}

pub fn round_price(p: Decimal) -> Decimal {
    p.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
}

/// Parses a vendor number straight to `Decimal`, never through `f64`. Accepts the scientific
/// notation Polygon uses for large volumes (`1.0471e+07`).
pub fn parse_decimal(field: &'static str, s: &str) -> Result<Decimal, DomainError> {
    let s = s.trim();
    let parsed = if s.contains(['e', 'E']) {
        Decimal::from_scientific(s)
    } else {
        Decimal::from_str(s)
    };
    parsed.map_err(|_| {
        if looks_numeric(s) {
            DomainError::OutOfRange {
                field,
                value: crate::text::excerpt(s, 40),
            }
        } else {
            DomainError::NotANumber {
                field,
                value: crate::text::excerpt(s, 40),
            }
        }
    })
}

/// Decimal's syntax (sign, digits, one point, an exponent): a string of this shape that does not
/// parse is too large, not malformed.
fn looks_numeric(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let unsigned = |t: &str| t.strip_prefix(['+', '-']).unwrap_or(t).to_string();
    let m = unsigned(mantissa);
    let digits = m.chars().filter(char::is_ascii_digit).count();
    let points = m.chars().filter(|c| *c == '.').count();
    let mantissa_ok = digits > 0 && points <= 1 && digits + points == m.len();
    let exponent_ok = exponent.is_none_or(|e| {
        let e = unsigned(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_value_is_quoted_once() {
        let e = |v: &str| {
            DomainError::NotANumber {
                field: "open",
                value: v.into(),
            }
            .to_string()
        };
        assert_eq!(e("\"1.5\""), "open \"1.5\" is not a number");
        assert_eq!(e("abc"), "open \"abc\" is not a number");
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn symbols() {
        assert!("AAPL".parse::<Symbol>().is_ok());
        assert!("BRK.B".parse::<Symbol>().is_ok());
        assert!("^GSPC".parse::<Symbol>().is_ok());
        assert!("ABRpD".parse::<Symbol>().is_ok());
        assert_eq!("".parse::<Symbol>(), Err(DomainError::EmptySymbol));
        assert!(matches!(
            "ABCDEFGHIJKLMNOPQRSTU".parse::<Symbol>(),
            Err(DomainError::SymbolTooLong(_))
        ));
        assert!(matches!(
            "aapl".parse::<Symbol>(),
            Err(DomainError::SymbolNotTicker(_))
        ));
        assert!(matches!(
            "A B".parse::<Symbol>(),
            Err(DomainError::SymbolNotTicker(_))
        ));
        assert!(matches!(
            "...".parse::<Symbol>(),
            Err(DomainError::SymbolNotTicker(_))
        ));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let bar = Bar::new(
            "AAPL".parse().unwrap(),
            Utc.with_ymd_and_hms(2024, 1, 2, 14, 30, 0).unwrap(),
            d("1.00005"),
            d("2.00004"),
            d("0.99995"),
            d("1.5"),
            d("25933.5"),
            DataSource::Polygon,
        )
        .unwrap();
        assert_eq!(bar.open, d("1.0001"));
        assert_eq!(bar.high, d("2.0000"));
        assert_eq!(bar.low, d("1.0000"));
        assert_eq!(bar.volume, 25934);
    }

    #[test]
    fn scientific_volumes_and_overflow() {
        assert_eq!(
            parse_decimal("volume", "1.0471e+07").unwrap(),
            d("10471000")
        );
        assert!(matches!(
            parse_decimal("open", "abc"),
            Err(DomainError::NotANumber { .. })
        ));
        for big in ["1e30", "100000000000000000000000000000", "-1E+40"] {
            let e = parse_decimal("volume", big).unwrap_err();
            assert_eq!(e.check_name(), "value_out_of_range", "{big}");
        }
        assert_eq!(
            parse_decimal("open", "").unwrap_err().check_name(),
            "missing_value"
        );
        assert_eq!(
            parse_decimal("open", "1.2.3").unwrap_err().check_name(),
            "not_a_number"
        );
        let huge = parse_decimal("volume", "1e20").unwrap();
        let r = Bar::new(
            "AAPL".parse().unwrap(),
            Utc::now(),
            d("1"),
            d("1"),
            d("1"),
            d("1"),
            huge,
            DataSource::Polygon,
        );
        assert!(matches!(r, Err(DomainError::VolumeOutOfRange(_))));
    }

    #[test]
    fn grids() {
        let t = |h, m| Utc.with_ymd_and_hms(2024, 1, 2, h, m, 0).unwrap();
        assert!(Timeframe::M1.is_on_grid(t(14, 31), DataSource::Polygon));
        assert!(!Timeframe::M5.is_on_grid(t(14, 31), DataSource::Polygon));
        assert!(Timeframe::M15.is_on_grid(t(14, 45), DataSource::Alpaca));
        assert!(!Timeframe::H1.is_on_grid(t(14, 30), DataSource::Alpaca));
        // 2024-01-02 is EST: midnight New York is 05:00Z.
        assert!(Timeframe::D1.is_on_grid(t(5, 0), DataSource::Polygon));
        assert!(!Timeframe::D1.is_on_grid(t(0, 0), DataSource::Polygon));
        assert!(Timeframe::D1.is_on_grid(t(14, 30), DataSource::Yahoo));
        let summer = Utc.with_ymd_and_hms(2024, 7, 1, 4, 0, 0).unwrap();
        assert!(Timeframe::D1.is_on_grid(summer, DataSource::Alpaca));
    }
}
