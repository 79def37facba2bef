//! The deterministic bar series the simulator serves.
//!
//! Every value is a pure function of (symbol, timeframe, bar start), so any page of any range can
//! be produced without state and tests can recompute exactly what the server sent. Arithmetic is
//! integer (prices in units of 0.0001): floating point would make the wire text depend on
//! formatting details, and `Decimal` per value would be too slow for a million bars.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::America::New_York;
use rust_decimal::Decimal;

use crate::domain::Timeframe;

/// Earliest and latest bar start the simulator considers (1900-01-01 and 2200-01-01 UTC). A
/// request's range is clamped to them so hostile epoch values cannot overflow date arithmetic.
pub(crate) const MIN_MS: i64 = -2_208_988_800_000;
pub(crate) const MAX_MS: i64 = 7_258_118_400_000;

const MINUTE_MS: i64 = 60_000;
/// 09:30 to 16:00 New York.
const SESSION_MINUTES: i64 = 390;
/// The price path is interpolated between anchors this far apart, so prices drift over days
/// rather than jumping from bar to bar.
const ANCHOR_MS: i64 = 5 * 86_400_000;

/// One bar as [`series`] describes it; compare with what a client parsed off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBar {
    /// Bar start, epoch milliseconds (the wire's `t`).
    pub t_ms: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    /// Volume-weighted average price (`vw`), four decimals.
    pub vw: Decimal,
    /// Number of trades (`n`); `None` on the bars whose `n` is omitted, as Polygon sometimes does.
    pub n: Option<u64>,
    /// `v` exactly as written on the wire: `4110`, `642646396.0`, `25933.6` or `1.0471e+07`.
    pub volume_wire: String,
    /// `v` rounded half away from zero: what the database should hold.
    pub volume: i64,
}

/// The bars of `symbol` whose start lies in `[from, to]` (both inclusive), ascending. The
/// simulator serves exactly these (restricted to its configured data window), whatever the page
/// size. Weekdays only, no holidays; intraday bars lie in the 09:30-16:00 New York session on
/// their UTC grid, about 2% of them missing (no trades); daily bars are stamped at midnight New
/// York.
pub fn series(
    symbol: &str,
    timeframe: Timeframe,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<SimBar> {
    let gen = Generator::new(symbol, timeframe);
    Grid::new(
        symbol,
        timeframe,
        from.timestamp_millis(),
        to.timestamp_millis(),
    )
    .map(|t| gen.bar(t).to_sim_bar())
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Hashing: FNV-1a over the inputs (cheap, and the symbol prefix is hashed once per series), then
// a splitmix64 finaliser, because FNV alone mixes short inputs too poorly for `% n` choices.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A value keyed by (symbol, purpose, x); `sym` is the FNV state after the symbol's bytes.
fn keyed(sym: u64, tag: u8, x: i64) -> u64 {
    splitmix(fnv(fnv(sym, &[tag]), &x.to_le_bytes()))
}

pub(crate) fn symbol_hash(symbol: &str) -> u64 {
    fnv(FNV_OFFSET, symbol.as_bytes())
}

const TAG_BASE: u8 = 1;
const TAG_ANCHOR: u8 = 2;
const TAG_MISSING: u8 = 3;
const TAG_BAR: u8 = 16;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }

    /// In `0..n`, by multiply-shift rather than `%`: a dozen draws per bar, a million bars per
    /// backfill, and a 64-bit division is the dearest instruction in the loop.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn signed(&mut self, amplitude: i64) -> i64 {
        self.below(2 * amplitude as u64 + 1) as i64 - amplitude
    }
}

/// Whether the minute starting at `t` had no trades (about 2%, independent of timeframe so a
/// client sees the same holes whatever it asks for).
fn no_trades(sym: u64, t: i64) -> bool {
    keyed(sym, TAG_MISSING, t).is_multiple_of(50)
}

// ---------------------------------------------------------------------------------------------
// Calendar.

pub(crate) fn ny_date(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(ms)
        .map(|d| d.with_timezone(&New_York).date_naive())
        .unwrap_or_default()
}

/// The UTC instant of a New York wall-clock time. Midnight and 09:30 never fall in a DST gap or
/// fold (US changes happen at 02:00), so the answer is unique; `None` only off chrono's range.
pub(crate) fn ny_ms(day: NaiveDate, time: NaiveTime) -> Option<i64> {
    New_York
        .from_local_datetime(&day.and_time(time))
        .earliest()
        .map(|d| d.timestamp_millis())
}

/// A `YYYY-MM-DD` day in New York as inclusive epoch-millisecond bounds.
pub(crate) fn ny_day_bounds(day: NaiveDate) -> Option<(i64, i64)> {
    let start = ny_ms(day, NaiveTime::MIN)?;
    let next = ny_ms(day.succ_opt()?, NaiveTime::MIN)?;
    Some((start, next - 1))
}

pub(crate) fn is_weekend(day: NaiveDate) -> bool {
    matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
}

fn step_ms(tf: Timeframe) -> i64 {
    match tf {
        Timeframe::M1 => MINUTE_MS,
        Timeframe::M5 => 5 * MINUTE_MS,
        Timeframe::M15 => 15 * MINUTE_MS,
        Timeframe::H1 => 60 * MINUTE_MS,
        Timeframe::D1 => 86_400_000,
    }
}

/// The bar starts of one symbol in an inclusive range, ascending, produced lazily day by day so
/// a page of a decades-long range costs only the page.
pub(crate) struct Grid {
    intraday: bool,
    step: i64,
    from: i64,
    to: i64,
    day: NaiveDate,
    last_day: NaiveDate,
    next: i64,
    end: i64,
    sym: u64,
}

impl Grid {
    pub(crate) fn new(symbol: &str, tf: Timeframe, from: i64, to: i64) -> Grid {
        let empty = from > to || from > MAX_MS || to < MIN_MS;
        let from = from.clamp(MIN_MS, MAX_MS);
        let to = to.clamp(MIN_MS, MAX_MS);
        let (day, last_day) = if !empty {
            (ny_date(from), ny_date(to))
        } else {
            // Empty: a first day after the last.
            (NaiveDate::MAX, NaiveDate::MIN)
        };
        Grid {
            intraday: tf != Timeframe::D1,
            step: step_ms(tf),
            from,
            to,
            day,
            last_day,
            next: 0,
            end: 0,
            sym: symbol_hash(symbol),
        }
    }

    /// Loads the next weekday's candidate starts into `next..end`; false when no days remain.
    fn advance_day(&mut self) -> bool {
        loop {
            if self.day > self.last_day {
                return false;
            }
            let day = self.day;
            match day.succ_opt() {
                Some(next) => self.day = next,
                // Unreachable with clamped bounds, but must end rather than loop.
                None => self.last_day = NaiveDate::MIN,
            }
            if is_weekend(day) {
                continue;
            }
            let (start, end) = if self.intraday {
                let Some(open) = ny_ms(day, NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default())
                else {
                    continue;
                };
                (open, open + SESSION_MINUTES * MINUTE_MS)
            } else {
                let Some(midnight) = ny_ms(day, NaiveTime::MIN) else {
                    continue;
                };
                (midnight, midnight + 1)
            };
            let lo = start.max(self.from);
            // Intraday bars sit on the UTC grid of their length (the 1h grid starts at 10:00).
            let first = if self.intraday {
                lo + (self.step - lo.rem_euclid(self.step)) % self.step
            } else {
                lo
            };
            self.next = first;
            self.end = end.min(self.to + 1);
            if self.next < self.end {
                return true;
            }
        }
    }
}

impl Iterator for Grid {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        loop {
            while self.next < self.end {
                let t = self.next;
                self.next += self.step;
                if self.intraday && no_trades(self.sym, t) {
                    continue;
                }
                return Some(t);
            }
            if !self.advance_day() {
                return None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

/// A volume as it goes on the wire. Real Polygon writes integral volumes both bare and with
/// `.0`, some fractional, and large ones in scientific notation; clients must take all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Volume {
    Bare(u64),
    PointZero(u64),
    /// `int.frac` with `digits` fraction digits (frac's last digit is never 0).
    Fraction {
        int: u64,
        frac: u64,
        digits: u32,
    },
    /// `m.mmmm e+exp`: the value is `mantissa * 10^(exp-4)`, mantissa has five digits.
    Scientific {
        mantissa: u64,
        exp: u32,
    },
}

impl Volume {
    fn from_raw(v: u64, choice: u64, r: &mut Rng) -> Volume {
        match choice {
            0..=39 => Volume::Bare(v),
            40..=79 => Volume::PointZero(v),
            80..=89 => {
                let digits = 1 + r.below(3) as u32;
                let scale = 10u64.pow(digits);
                let mut frac = 1 + r.below(scale - 1);
                if frac.is_multiple_of(10) {
                    frac += 1;
                }
                Volume::Fraction {
                    int: v,
                    frac,
                    digits,
                }
            }
            _ if v >= 100_000 => {
                let exp = v.ilog10();
                Volume::Scientific {
                    mantissa: v / 10u64.pow(exp - 4),
                    exp,
                }
            }
            _ => Volume::PointZero(v),
        }
    }

    /// Rounded half away from zero, as the database stores it.
    pub(crate) fn rounded(self) -> i64 {
        let v = match self {
            Volume::Bare(v) | Volume::PointZero(v) => v,
            Volume::Fraction { int, frac, digits } => {
                int + u64::from(2 * frac >= 10u64.pow(digits))
            }
            Volume::Scientific { mantissa, exp } => mantissa * 10u64.pow(exp - 4),
        };
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    pub(crate) fn write(self, buf: &mut Vec<u8>) {
        match self {
            Volume::Bare(v) => push_u64(buf, v),
            Volume::PointZero(v) => {
                push_u64(buf, v);
                buf.extend_from_slice(b".0");
            }
            Volume::Fraction { int, frac, digits } => {
                push_u64(buf, int);
                buf.push(b'.');
                push_padded(buf, frac, digits as usize);
            }
            Volume::Scientific { mantissa, exp } => {
                let lead = mantissa / 10_000;
                let mut rest = mantissa % 10_000;
                push_u64(buf, lead);
                if rest != 0 {
                    let mut digits = 4;
                    while rest % 10 == 0 {
                        rest /= 10;
                        digits -= 1;
                    }
                    buf.push(b'.');
                    push_padded(buf, rest, digits);
                }
                buf.extend_from_slice(b"e+");
                push_padded(buf, u64::from(exp), 2);
            }
        }
    }
}

/// One bar in integer form; prices in units of 0.0001.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBar {
    pub t: i64,
    pub o: i64,
    pub h: i64,
    pub l: i64,
    pub c: i64,
    pub vw: i64,
    pub n: Option<u64>,
    pub v: Volume,
}

impl RawBar {
    pub(crate) fn to_sim_bar(self) -> SimBar {
        let price = |u: i64| Decimal::new(u, 4).normalize();
        let mut wire = Vec::with_capacity(24);
        self.v.write(&mut wire);
        SimBar {
            t_ms: self.t,
            open: price(self.o),
            high: price(self.h),
            low: price(self.l),
            close: price(self.c),
            vw: price(self.vw),
            n: self.n,
            volume_wire: String::from_utf8_lossy(&wire).into_owned(),
            volume: self.v.rounded(),
        }
    }

    /// `{"v":…,"vw":…,"o":…,"c":…,"h":…,"l":…,"t":…,"n":…}`, Polygon's key order.
    pub(crate) fn write_json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"v\":");
        self.v.write(buf);
        buf.extend_from_slice(b",\"vw\":");
        push_price(buf, self.vw);
        buf.extend_from_slice(b",\"o\":");
        push_price(buf, self.o);
        buf.extend_from_slice(b",\"c\":");
        push_price(buf, self.c);
        buf.extend_from_slice(b",\"h\":");
        push_price(buf, self.h);
        buf.extend_from_slice(b",\"l\":");
        push_price(buf, self.l);
        buf.extend_from_slice(b",\"t\":");
        push_i64(buf, self.t);
        if let Some(n) = self.n {
            buf.extend_from_slice(b",\"n\":");
            push_u64(buf, n);
        }
        buf.push(b'}');
    }
}

/// Produces the bars of one (symbol, timeframe).
pub(crate) struct Generator {
    sym: u64,
    tag: u8,
    base: i64,
    /// Half-width of the open/close noise, in basis points of the price.
    amp_bp: i64,
    /// Minutes a bar covers, to scale volume.
    minutes: u64,
    dur: i64,
}

impl Generator {
    pub(crate) fn new(symbol: &str, tf: Timeframe) -> Generator {
        let sym = symbol_hash(symbol);
        // 20.0000 to 420.0000; the anchors move it ±25%, so prices stay within about 15-525.
        let base = 200_000 + (keyed(sym, TAG_BASE, 0) % 4_000_000) as i64;
        let (tag, amp_bp, minutes) = match tf {
            Timeframe::M1 => (TAG_BAR, 20, 1),
            Timeframe::M5 => (TAG_BAR + 1, 40, 5),
            Timeframe::M15 => (TAG_BAR + 2, 70, 15),
            Timeframe::H1 => (TAG_BAR + 3, 120, 60),
            Timeframe::D1 => (TAG_BAR + 4, 300, 390),
        };
        Generator {
            sym,
            tag,
            base,
            amp_bp,
            minutes,
            dur: step_ms(tf),
        }
    }

    fn anchor(&self, k: i64) -> i64 {
        let u = (keyed(self.sym, TAG_ANCHOR, k) % 501) as i64;
        self.base * (750 + u) / 1000
    }

    /// The underlying price at the start and at the end of the bar at `t`: linear between
    /// anchors (a bar never spans more than two anchor periods).
    fn mids(&self, t: i64) -> (i64, i64) {
        let k = t.div_euclid(ANCHOR_MS);
        let (a0, a1) = (self.anchor(k), self.anchor(k + 1));
        // |a1 - a0| < 6e6 and the offset < 4.4e8: products fit an i64 with room to spare.
        let at = |a: i64, b: i64, off: i64| a + (b - a) * off / ANCHOR_MS;
        let start = at(a0, a1, t - k * ANCHOR_MS);
        let end = t + self.dur;
        let end = if end < (k + 1) * ANCHOR_MS {
            at(a0, a1, end - k * ANCHOR_MS)
        } else {
            at(a1, self.anchor(k + 2), end - (k + 1) * ANCHOR_MS)
        };
        (start, end)
    }

    pub(crate) fn bar(&self, t: i64) -> RawBar {
        let mut r = Rng(keyed(self.sym, self.tag, t));
        // Most bars trade in cents; some carry sub-penny prints, as real tapes do.
        let tick = if r.below(100) < 85 { 100 } else { 1 };
        let snap = |x: i64| (x / tick * tick).max(tick);
        let (mid_o, mid_c) = self.mids(t);
        let o = snap(mid_o + mid_o * r.signed(self.amp_bp) / 10_000);
        let c = snap(mid_c + mid_c * r.signed(self.amp_bp) / 10_000);
        let wick = |r: &mut Rng| mid_o * r.below(self.amp_bp as u64 / 2 + 1) as i64 / 10_000;
        let h = o.max(c) + wick(&mut r) / tick * tick;
        // Clamping to one tick keeps low positive and still at most min(open, close).
        let l = (o.min(c) - wick(&mut r) / tick * tick).max(tick);
        let vw = l + (h - l) * r.below(1001) as i64 / 1000;
        let raw_volume = (100 * (1u64 << r.below(14)) + r.below(1000)) * self.minutes;
        let choice = r.below(100);
        let v = Volume::from_raw(raw_volume, choice, &mut r);
        let per_trade = 20 + r.below(200);
        let n = if r.below(100) < 5 {
            None
        } else {
            Some((raw_volume / per_trade).max(1))
        };
        RawBar {
            t,
            o,
            h,
            l,
            c,
            vw,
            n,
            v,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Number writing: by hand, so the text is exact and no per-value allocation happens.

pub(crate) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

pub(crate) fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// `v` with leading zeros to `width` (at most 20) digits.
fn push_padded(buf: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    let stop = tmp.len() - width.min(tmp.len());
    while v > 0 || i > stop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// A price in units of 0.0001 as the shortest exact decimal (`130`, `130.2`, `130.2801`), the
/// way Polygon's JSON writes it.
pub(crate) fn push_price(buf: &mut Vec<u8>, units: i64) {
    if units < 0 {
        buf.push(b'-');
    }
    let u = units.unsigned_abs();
    push_u64(buf, u / 10_000);
    let mut frac = u % 10_000;
    if frac != 0 {
        let mut digits = 4;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        buf.push(b'.');
        push_padded(buf, frac, digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{is_midnight_new_york, parse_decimal};
    use rust_decimal::prelude::ToPrimitive;
    use rust_decimal::RoundingStrategy;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut b = Vec::new();
        f(&mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn numbers_are_written_exactly() {
        assert_eq!(text(|b| push_price(b, 1_302_801)), "130.2801");
        assert_eq!(text(|b| push_price(b, 1_302_000)), "130.2");
        assert_eq!(text(|b| push_price(b, 1_300_000)), "130");
        assert_eq!(text(|b| push_price(b, 5)), "0.0005");
        assert_eq!(text(|b| push_i64(b, -1_577_941_200_000)), "-1577941200000");
        assert_eq!(text(|b| push_u64(b, 0)), "0");
        let sci = Volume::Scientific {
            mantissa: 10_471,
            exp: 7,
        };
        assert_eq!(text(|b| sci.write(b)), "1.0471e+07");
        assert_eq!(sci.rounded(), 10_471_000);
        let round = Volume::Scientific {
            mantissa: 20_000,
            exp: 5,
        };
        assert_eq!(text(|b| round.write(b)), "2e+05");
        let frac = Volume::Fraction {
            int: 25_933,
            frac: 6,
            digits: 1,
        };
        assert_eq!(text(|b| frac.write(b)), "25933.6");
        assert_eq!(frac.rounded(), 25_934);
        let low = Volume::Fraction {
            int: 7,
            frac: 49,
            digits: 3,
        };
        assert_eq!(text(|b| low.write(b)), "7.049");
        assert_eq!(low.rounded(), 7);
        assert_eq!(
            text(|b| Volume::PointZero(642_646_396).write(b)),
            "642646396.0"
        );
    }

    #[test]
    fn a_minute_day_has_the_session_minus_a_few_quiet_minutes() {
        let bars = series(
            "AAPL",
            Timeframe::M1,
            utc("2024-01-02T00:00:00Z"),
            utc("2024-01-02T23:59:59Z"),
        );
        assert!((370..390).contains(&bars.len()), "{}", bars.len());
        // EST: the session is 14:30Z to 21:00Z.
        assert!(bars[0].t_ms >= utc("2024-01-02T14:30:00Z").timestamp_millis());
        assert!(bars.last().unwrap().t_ms <= utc("2024-01-02T20:59:00Z").timestamp_millis());
        assert!(bars.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
        // EDT: one hour earlier in UTC.
        let summer = series(
            "AAPL",
            Timeframe::M1,
            utc("2024-07-01T13:30:00Z"),
            utc("2024-07-01T13:30:00Z"),
        );
        let hole = no_trades(
            symbol_hash("AAPL"),
            utc("2024-07-01T13:30:00Z").timestamp_millis(),
        );
        assert_eq!(summer.len(), usize::from(!hole));
    }

    #[test]
    fn coarser_grids_and_weekends() {
        let day = |tf| {
            series(
                "MSFT",
                tf,
                utc("2024-01-03T00:00:00Z"),
                utc("2024-01-03T23:59:59Z"),
            )
        };
        for (tf, full) in [
            (Timeframe::M5, 78),
            (Timeframe::M15, 26),
            (Timeframe::H1, 6),
        ] {
            let bars = day(tf);
            assert!(
                bars.len() <= full && bars.len() + 6 >= full,
                "{tf}: {}",
                bars.len()
            );
            let step = step_ms(tf);
            assert!(bars.iter().all(|b| b.t_ms % step == 0));
        }
        // The hourly grid starts at 10:00 New York (15:00Z in winter).
        assert!(day(Timeframe::H1)[0].t_ms >= utc("2024-01-03T15:00:00Z").timestamp_millis());
        let weekend = series(
            "MSFT",
            Timeframe::M1,
            utc("2024-01-06T00:00:00Z"),
            utc("2024-01-07T23:59:59Z"),
        );
        assert!(weekend.is_empty());
        let backwards = series(
            "MSFT",
            Timeframe::M1,
            utc("2024-01-04T00:00:00Z"),
            utc("2024-01-03T00:00:00Z"),
        );
        assert!(backwards.is_empty());
    }

    #[test]
    fn daily_bars_are_midnight_new_york_on_weekdays() {
        let bars = series(
            "AAPL",
            Timeframe::D1,
            utc("2020-01-01T00:00:00Z"),
            utc("2020-01-10T23:59:59Z"),
        );
        assert_eq!(bars.len(), 8);
        assert_eq!(bars[1].t_ms, 1_577_941_200_000);
        for b in &bars {
            let ts = DateTime::from_timestamp_millis(b.t_ms).unwrap();
            assert!(is_midnight_new_york(ts));
        }
    }

    #[test]
    fn values_are_consistent_and_every_volume_form_occurs() {
        let bars = series(
            "BRK.B",
            Timeframe::M1,
            utc("2024-03-01T00:00:00Z"),
            utc("2024-03-15T00:00:00Z"),
        );
        let (mut bare, mut point0, mut frac, mut sci, mut no_n, mut subpenny) = (0, 0, 0, 0, 0, 0);
        for b in &bars {
            assert!(b.low > Decimal::ZERO);
            assert!(b.high >= b.open.max(b.close), "{b:?}");
            assert!(b.low <= b.open.min(b.close), "{b:?}");
            assert!(b.low <= b.vw && b.vw <= b.high, "{b:?}");
            assert!(b.open > Decimal::from(5) && b.open < Decimal::from(600));
            let parsed = parse_decimal("volume", &b.volume_wire).unwrap();
            let rounded = parsed
                .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
                .to_i64()
                .unwrap();
            assert_eq!(rounded, b.volume, "{}", b.volume_wire);
            assert!(b.volume > 0);
            match b.volume_wire.as_str() {
                w if w.contains('e') => sci += 1,
                w if w.ends_with(".0") => point0 += 1,
                w if w.contains('.') => frac += 1,
                _ => bare += 1,
            }
            no_n += usize::from(b.n.is_none());
            subpenny += usize::from(b.open.scale() > 2);
        }
        for (name, count) in [
            ("bare", bare),
            (".0", point0),
            ("fraction", frac),
            ("scientific", sci),
            ("no n", no_n),
            ("sub-penny", subpenny),
        ] {
            assert!(count > 20, "{name}: {count}");
        }
    }

    #[test]
    fn deterministic_and_page_independent() {
        let from = utc("2024-01-02T00:00:00Z");
        let to = utc("2024-01-05T00:00:00Z");
        let a = series("AAPL", Timeframe::M5, from, to);
        let b = series("AAPL", Timeframe::M5, from, to);
        assert_eq!(a, b);
        let mid = a[100].t_ms;
        let tail = series(
            "AAPL",
            Timeframe::M5,
            DateTime::from_timestamp_millis(mid).unwrap(),
            to,
        );
        assert_eq!(&a[100..], &tail[..]);
        assert_ne!(a, series("MSFT", Timeframe::M5, from, to));
    }

    #[test]
    fn extreme_ranges_do_not_overflow() {
        let mut g = Grid::new("AAPL", Timeframe::M1, i64::MIN, i64::MAX);
        assert!(g.next().is_some());
        assert_eq!(
            Grid::new("AAPL", Timeframe::D1, i64::MAX, i64::MAX).count(),
            0
        );
        assert_eq!(
            Grid::new("AAPL", Timeframe::D1, i64::MIN, i64::MIN).count(),
            0
        );
        let last = Grid::new("AAPL", Timeframe::D1, MAX_MS - 10 * 86_400_000, i64::MAX).last();
        assert!(last.is_some_and(|t| t <= MAX_MS));
    }
}
