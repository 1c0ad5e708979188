//! Invoices from usage records and a price list.
//!
//! Contract: pure. The invoicing command reads a [`PriceList`] (TOML), asks the store
//! for the usage records overlapping a calendar month
//! ([`crate::store::FleetStore::usage`] with [`Period::start_ms`] /
//! [`Period::end_ms`]) and calls [`invoice`], which never fails and never panics.
//!
//! Rules:
//! - A [`Period`] is one UTC calendar month, `[start_ms, end_ms)`.
//! - Only the part of each usage interval `[from_ms, to_ms)` inside the period counts:
//!   CPU time and uptime are prorated by the overlapping fraction of the interval;
//!   memory (average resident memory) and disk (bytes at the interval's end) are
//!   multiplied by the overlapping time. An empty interval (`from_ms == to_ms`) counts
//!   whole if it lies in the period. Records that are not usage, or whose interval
//!   ends before it starts, are ignored.
//! - One [`Line`] per (node, instance), sorted; GB are 10^9 bytes.
//! - Everything is integer arithmetic, no floating point: CPU time and uptime are
//!   prorated to whole microseconds (each record rounded half up once), memory and disk
//!   are exact byte-milliseconds, prices are exact nano-units (at most 9 decimals).
//! - Money is integer **micro-units** of the currency (`cost_micros`,
//!   `total_micros`; 1 EUR = 1 000 000). A line's cost is computed exactly from its
//!   integer quantities and rounded half up to the micro-unit once; the total is the
//!   exact sum of the lines. The quantities shown (`cpu_seconds`, `mem_gb_hours`, …)
//!   are those integers in display units, to 6 decimals. The CSV writes amounts as
//!   decimals with 6 places. Round to cents only when presenting a final amount due.
//!
//! The price list format (`deny_unknown_fields`) is [`PRICE_LIST_EXAMPLE`]. Prices are
//! non-negative decimals in the currency's unit, with at most 9 decimals.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hedge_wire::{Name, Record, RecordKind};
use serde::{Deserialize, Serialize};

/// A commented price list, the format [`PriceList::parse`] reads.
pub const PRICE_LIST_EXAMPLE: &str = r#"# hedge master price list.
# Currency code printed on invoices (1-16 ASCII letters or digits).
currency = "EUR"
# Price of one second of CPU time (user + system of the instance's process tree).
cpu_second = 0.00002
# Price of one GB (10^9 bytes) of average resident memory held for one hour.
mem_gb_hour = 0.004
# Price of one GB of partition disk held for one hour.
disk_gb_hour = 0.0001
# Optional: price of one hour of instance uptime (default 0).
instance_hour = 0.001
"#;

/// Milliseconds in an hour.
const MS_PER_HOUR: u128 = 3_600_000;
/// Bytes in a GB.
const BYTES_PER_GB: u128 = 1_000_000_000;
/// Nano-units in a unit of the currency.
const NANOS: u128 = 1_000_000_000;

/// Errors of billing.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Reading the price list failed.
    #[error("{path}: {source}")]
    Io {
        /// The price list file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The price list is not valid TOML of the documented format.
    #[error("price list: {0}")]
    Toml(#[from] toml::de::Error),
    /// A price is negative, not a finite number, or has more than 9 decimals.
    #[error("price list: {field} = {value} must be a finite number >= 0 with at most 9 decimals")]
    Price {
        /// The price list key (`cpu_second`, …).
        field: &'static str,
        /// The refused price.
        value: f64,
    },
    /// The currency code is empty, too long or not alphanumeric.
    #[error("price list: currency {0:?} must be 1-16 ASCII letters or digits")]
    Currency(String),
    /// A period is not `YYYY-MM` with a year in 1970..=9999.
    #[error("period {0:?} is not YYYY-MM (1970-01 to 9999-12)")]
    Period(String),
}

/// Prices. See [`PRICE_LIST_EXAMPLE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceList {
    /// Currency code.
    pub currency: String,
    /// Per CPU-second.
    pub cpu_second: f64,
    /// Per GB-hour of average memory.
    pub mem_gb_hour: f64,
    /// Per GB-hour of disk.
    pub disk_gb_hour: f64,
    /// Per hour of uptime.
    #[serde(default)]
    pub instance_hour: f64,
}

impl PriceList {
    /// Parses and validates a price list.
    pub fn parse(text: &str) -> Result<Self, BillingError> {
        let p: PriceList = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Reads and parses the price list at `path`.
    pub fn load(path: &Path) -> Result<Self, BillingError> {
        let text = std::fs::read_to_string(path).map_err(|source| BillingError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Checks the currency code and that every price is finite and non-negative.
    pub fn validate(&self) -> Result<(), BillingError> {
        let c = &self.currency;
        if c.is_empty() || c.len() > 16 || !c.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BillingError::Currency(c.clone()));
        }
        for (field, value) in [
            ("cpu_second", self.cpu_second),
            ("mem_gb_hour", self.mem_gb_hour),
            ("disk_gb_hour", self.disk_gb_hour),
            ("instance_hour", self.instance_hour),
        ] {
            if nanos(value).is_none() {
                return Err(BillingError::Price { field, value });
            }
        }
        Ok(())
    }

    /// The prices in nano-units: (cpu second, memory GB-hour, disk GB-hour, hour).
    /// A price that does not validate counts as 0 (`parse` and `load` refuse it).
    fn nanos(&self) -> [u128; 4] {
        [
            self.cpu_second,
            self.mem_gb_hour,
            self.disk_gb_hour,
            self.instance_hour,
        ]
        .map(|v| nanos(v).map_or(0, u128::from))
    }
}

/// `value` in exact nano-units, from its shortest decimal form (`0.00002` is 20 000):
/// `None` when it is negative, not finite, too large or has more than 9 decimals.
fn nanos(value: f64) -> Option<u64> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // Rust prints the shortest decimal that reads back as the same f64, never an
    // exponent: the digits the price list was written with.
    let text = format!("{value}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if frac.len() > 9 {
        return None;
    }
    let int: u64 = int.parse().ok()?;
    let frac: u64 = format!("{frac:0<9}").parse().ok()?;
    int.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// One UTC calendar month. Serialized as `"YYYY-MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: u16,
    month: u8,
}

/// Days from 1970-01-01 to the first of `month` in `year` (proleptic Gregorian).
fn days_before(year: u16, month: u8) -> u64 {
    // Howard Hinnant's days_from_civil, with years counted from March.
    let y = u64::from(year) - u64::from(month <= 2);
    let era = y / 400;
    let yoe = y % 400;
    let mp = (u64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 719_468 = days from 0000-03-01 to 1970-01-01; year >= 1970 keeps this positive.
    (era * 146_097 + doe).saturating_sub(719_468)
}

impl Period {
    /// The month `month` (1-12) of `year` (1970-9999).
    pub fn new(year: u16, month: u8) -> Result<Self, BillingError> {
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(BillingError::Period(format!("{year:04}-{month:02}")));
        }
        Ok(Period { year, month })
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Self, BillingError> {
        let bad = || BillingError::Period(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let year = y.parse().map_err(|_| bad())?;
        let month = m.parse().map_err(|_| bad())?;
        Self::new(year, month).map_err(|_| bad())
    }

    /// The year, 1970..=9999.
    pub fn year(&self) -> u16 {
        self.year
    }

    /// Month, 1-12.
    pub fn month(&self) -> u8 {
        self.month
    }

    /// The next month.
    pub fn next(&self) -> Period {
        if self.month == 12 {
            Period {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Period {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Start, ms since the epoch (inclusive).
    pub fn start_ms(&self) -> u64 {
        days_before(self.year, self.month) * 86_400_000
    }

    /// End, ms since the epoch (exclusive): the start of the next month.
    pub fn end_ms(&self) -> u64 {
        let next = self.next();
        days_before(next.year, next.month) * 86_400_000
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Period {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::parse(s)
    }
}

impl TryFrom<String> for Period {
    type Error = BillingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Period::parse(&s)
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

/// What one instance of one node used in the period, and its cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The node that ran the instance.
    pub node: Name,
    /// The instance, by name on that node.
    pub instance: Name,
    /// CPU seconds.
    pub cpu_seconds: f64,
    /// GB-hours of average memory.
    pub mem_gb_hours: f64,
    /// GB-hours of disk.
    pub disk_gb_hours: f64,
    /// Hours running.
    pub uptime_hours: f64,
    /// Cost, micro-units of the currency.
    pub cost_micros: u64,
}

/// An invoice for one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    /// The month invoiced.
    pub period: Period,
    /// Currency code.
    pub currency: String,
    /// One line per (node, instance), sorted.
    pub lines: Vec<Line>,
    /// Sum of the lines' costs, micro-units.
    pub total_micros: u64,
}

/// `micros` as a decimal with 6 places.
pub fn format_micros(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `num / den` rounded half up (`den > 0`).
fn div_round(num: u128, den: u128) -> u128 {
    num / den + u128::from(num % den >= den - num % den)
}

/// `num / den` in display units, to 6 decimals.
fn display6(num: u128, den: u128) -> f64 {
    let millionths = div_round(num.saturating_mul(1_000_000), den);
    // Exact up to 2^53 millionths (9e9 units), and only for display.
    millionths as f64 / 1e6
}

/// What one (node, instance) used in the period, in exact integers.
#[derive(Default)]
struct Totals {
    cpu_us: u128,
    mem_byte_ms: u128,
    disk_byte_ms: u128,
    uptime_us: u128,
}

impl Totals {
    /// The cost in micro-units: each term brought to the denominator
    /// `MS_PER_HOUR × BYTES_PER_GB × NANOS / 1e6` (3.6e18), summed, rounded once.
    fn cost_micros(&self, [cpu, mem, disk, hour]: [u128; 4]) -> u64 {
        let den = MS_PER_HOUR * BYTES_PER_GB * NANOS / 1_000_000;
        let terms = [
            // µs × nano/s: 1e-15 units = 1e-9 micros; × den / 1e9.
            self.cpu_us.saturating_mul(cpu).saturating_mul(den / NANOS),
            // byte·ms × nano/(GB·h): 1/(3.6e15 × 1e9) units = 1/3.6e18 micros.
            self.mem_byte_ms.saturating_mul(mem),
            self.disk_byte_ms.saturating_mul(disk),
            // µs × nano/h: 1/(3.6e9 × 1e9) units = 1e6/3.6e18 micros.
            self.uptime_us
                .saturating_mul(hour)
                .saturating_mul(1_000_000),
        ];
        let num = terms.iter().fold(0u128, |a, t| a.saturating_add(*t));
        u64::try_from(div_round(num, den)).unwrap_or(u64::MAX)
    }
}

impl Invoice {
    /// The invoice as CSV: a header, one row per line, then a `TOTAL` row. Names need
    /// no quoting (`[a-z0-9._-]`), nor does the validated currency.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "period,currency,node,instance,cpu_seconds,mem_gb_hours,disk_gb_hours,uptime_hours,cost\n",
        );
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{}\n",
                self.period,
                self.currency,
                l.node,
                l.instance,
                l.cpu_seconds,
                l.mem_gb_hours,
                l.disk_gb_hours,
                l.uptime_hours,
                format_micros(l.cost_micros)
            ));
        }
        out.push_str(&format!(
            "{},{},TOTAL,,,,,,{}\n",
            self.period,
            self.currency,
            format_micros(self.total_micros)
        ));
        out
    }

    /// The invoice as pretty JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// Builds the invoice of `period` from `usage` (node, record) pairs. See the module doc.
pub fn invoice(period: Period, usage: &[(Name, Record)], prices: &PriceList) -> Invoice {
    let (start, end) = (period.start_ms(), period.end_ms());
    let mut per: BTreeMap<(&Name, &Name), Totals> = BTreeMap::new();
    for (node, record) in usage {
        let RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            cpu_ms,
            mem_avg_bytes,
            disk_bytes,
            uptime_ms,
            ..
        } = &record.kind
        else {
            continue;
        };
        let (from, to) = (*from_ms, *to_ms);
        if to < from {
            continue;
        }
        // The overlapping share of the interval: overlap / len (1 / 1 for an empty
        // interval inside the period).
        let (overlap_ms, len_ms) = if from == to {
            if (start..end).contains(&from) {
                (0u128, 0u128)
            } else {
                continue;
            }
        } else {
            let overlap = to.min(end).saturating_sub(from.max(start));
            if overlap == 0 {
                continue;
            }
            (u128::from(overlap), u128::from(to - from))
        };
        let prorate_us = |ms: u64| {
            let us = u128::from(ms) * 1000;
            if len_ms == 0 {
                us
            } else {
                div_round(us * overlap_ms, len_ms)
            }
        };
        let t = per.entry((node, instance)).or_default();
        t.cpu_us = t.cpu_us.saturating_add(prorate_us(*cpu_ms));
        t.uptime_us = t.uptime_us.saturating_add(prorate_us(*uptime_ms));
        t.mem_byte_ms = t
            .mem_byte_ms
            .saturating_add(u128::from(*mem_avg_bytes) * overlap_ms);
        t.disk_byte_ms = t
            .disk_byte_ms
            .saturating_add(u128::from(*disk_bytes) * overlap_ms);
    }
    let price = prices.nanos();
    let gb_hour = BYTES_PER_GB * MS_PER_HOUR;
    let lines: Vec<Line> = per
        .into_iter()
        .map(|((node, instance), t)| Line {
            node: node.clone(),
            instance: instance.clone(),
            cpu_seconds: display6(t.cpu_us, 1_000_000),
            mem_gb_hours: display6(t.mem_byte_ms, gb_hour),
            disk_gb_hours: display6(t.disk_byte_ms, gb_hour),
            uptime_hours: display6(t.uptime_us, MS_PER_HOUR * 1000),
            cost_micros: t.cost_micros(price),
        })
        .collect();
    let total_micros = lines
        .iter()
        .fold(0u64, |acc, l| acc.saturating_add(l.cost_micros));
    Invoice {
        period,
        currency: prices.currency.clone(),
        lines,
        total_micros,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn usage(node: &str, instance: &str, from_ms: u64, to_ms: u64, cpu_ms: u64) -> (Name, Record) {
        (
            n(node),
            Record {
                seq: 1,
                time_ms: to_ms,
                kind: RecordKind::Usage {
                    instance: n(instance),
                    from_ms,
                    to_ms,
                    cpu_ms,
                    mem_avg_bytes: 2_000_000_000,
                    mem_peak_bytes: 3_000_000_000,
                    disk_bytes: 10_000_000_000,
                    net_rx_bytes: None,
                    net_tx_bytes: None,
                    uptime_ms: to_ms - from_ms,
                },
            },
        )
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn periods_parse_and_bound_months() {
        let p = Period::parse("2026-11").unwrap();
        assert_eq!(p.to_string(), "2026-11");
        assert_eq!(p.start_ms(), 1_793_491_200_000); // 2026-11-01T00:00:00Z
        assert_eq!(p.end_ms() - p.start_ms(), 30 * 24 * HOUR);
        assert_eq!(Period::parse("1970-01").unwrap().start_ms(), 0);
        let dec = Period::parse("2024-12").unwrap();
        assert_eq!(dec.end_ms(), Period::parse("2025-01").unwrap().start_ms());
        assert_eq!(
            Period::parse("2024-02").unwrap().end_ms()
                - Period::parse("2024-02").unwrap().start_ms(),
            29 * 24 * HOUR
        );
        assert_eq!(
            Period::parse("2100-02").unwrap().end_ms()
                - Period::parse("2100-02").unwrap().start_ms(),
            28 * 24 * HOUR
        );
        assert_eq!(
            Period::parse("2000-03").unwrap().start_ms(),
            951_868_800_000
        );
        for bad in [
            "2026-13",
            "2026-00",
            "1969-12",
            "2026-1",
            "26-11",
            "2026/11",
            "+026-11",
            "",
            "2026-11-01",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"2026-11\"");
        assert_eq!(serde_json::from_str::<Period>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Period>("\"2026-13\"").is_err());
    }

    #[test]
    fn price_list_example_parses_and_bad_ones_do_not() {
        let p = PriceList::parse(PRICE_LIST_EXAMPLE).unwrap();
        assert_eq!(p.currency, "EUR");
        let no_instance =
            "currency = \"EUR\"\ncpu_second = 1\nmem_gb_hour = 0.5\ndisk_gb_hour = 0\n";
        assert_eq!(PriceList::parse(no_instance).unwrap().instance_hour, 0.0);
        assert!(matches!(
            PriceList::parse(&format!("{no_instance}gpu_hour = 1\n")),
            Err(BillingError::Toml(_))
        ));
        assert!(matches!(
            PriceList::parse(&no_instance.replace("= 1\n", "= -1\n")),
            Err(BillingError::Price {
                field: "cpu_second",
                ..
            })
        ));
        assert!(matches!(
            PriceList::parse(&no_instance.replace("= 0\n", "= nan\n")),
            Err(BillingError::Price {
                field: "disk_gb_hour",
                ..
            })
        ));
        assert!(matches!(
            PriceList::parse(&no_instance.replace("EUR", "E,R")),
            Err(BillingError::Currency(_))
        ));
    }

    #[test]
    fn usage_is_prorated_to_the_period() {
        let p = Period::parse("2026-11").unwrap();
        let s = p.start_ms();
        let prices = PriceList {
            currency: "EUR".into(),
            cpu_second: 0.01,
            mem_gb_hour: 0.5,
            disk_gb_hour: 0.1,
            instance_hour: 1.0,
        };
        let recs = vec![
            // Two hours straddling the start: half counts.
            usage("pi-1", "web", s - HOUR, s + HOUR, 7_200_000),
            // One hour inside.
            usage("pi-1", "web", s + 5 * HOUR, s + 6 * HOUR, 1_000),
            // Entirely in the next month: ignored.
            usage("pi-1", "web", p.end_ms(), p.end_ms() + HOUR, 1_000),
            // Another instance, empty interval inside: CPU counts, nothing else.
            usage("pi-1", "db", s + HOUR, s + HOUR, 500),
            // Inverted interval: ignored.
            (n("pi-1"), {
                let mut r = usage("pi-1", "bad", s + 2 * HOUR, s + 3 * HOUR, 1).1;
                if let RecordKind::Usage { to_ms, .. } = &mut r.kind {
                    *to_ms = s;
                }
                r
            }),
        ];
        let inv = invoice(p, &recs, &prices);
        assert_eq!(inv.lines.len(), 2);
        let db = &inv.lines[0];
        assert_eq!(
            (
                db.instance.as_str(),
                db.cpu_seconds,
                db.mem_gb_hours,
                db.uptime_hours
            ),
            ("db", 0.5, 0.0, 0.0)
        );
        assert_eq!(db.cost_micros, 5_000);
        let web = &inv.lines[1];
        assert_eq!(web.cpu_seconds, 3601.0);
        assert_eq!(web.mem_gb_hours, 4.0); // 2 GB × 2 h
        assert_eq!(web.disk_gb_hours, 20.0); // 10 GB × 2 h
        assert_eq!(web.uptime_hours, 2.0);
        // 36.01 + 2 + 2 + 2 = 42.01
        assert_eq!(web.cost_micros, 42_010_000);
        assert_eq!(inv.total_micros, 42_015_000);
        let csv = inv.to_csv();
        assert!(csv.starts_with("period,currency,node,instance,"), "{csv}");
        assert!(
            csv.contains(
                "2026-11,EUR,pi-1,web,3601.000000,4.000000,20.000000,2.000000,42.010000\n"
            ),
            "{csv}"
        );
        assert!(csv.ends_with("2026-11,EUR,TOTAL,,,,,,42.015000\n"), "{csv}");
        let back: Invoice = serde_json::from_str(&inv.to_json().unwrap()).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn money_is_exact_integer_arithmetic() {
        assert_eq!(nanos(0.00002), Some(20_000));
        assert_eq!(nanos(0.004), Some(4_000_000));
        assert_eq!(nanos(12.5), Some(12_500_000_000));
        assert_eq!(nanos(0.000000001), Some(1));
        assert_eq!(nanos(0.0000000001), None, "10 decimals");
        assert!(matches!(
            PriceList::parse("currency = \"EUR\"\ncpu_second = 0.0000000001\nmem_gb_hour = 0\ndisk_gb_hour = 0\n"),
            Err(BillingError::Price { field: "cpu_second", .. })
        ));
        let p = Period::parse("2026-11").unwrap();
        let s = p.start_ms();
        let prices = |cpu_second: f64| PriceList {
            currency: "EUR".into(),
            cpu_second,
            mem_gb_hour: 0.0,
            disk_gb_hour: 0.0,
            instance_hour: 0.0,
        };
        // Seven CPU seconds at 0.0000065: exactly 45.5 micro-units, rounded half up to
        // 46 (in f64, 7 × 0.0000065 × 1e6 is 45.49999999999999 and rounds to 45).
        let seven = vec![usage("pi-1", "web", s, s + 7000, 7000)];
        assert_eq!(invoice(p, &seven, &prices(0.0000065)).total_micros, 46);
        // A million one-millisecond records at 0.1 per CPU second: exactly 100 000
        // micro-units, however the records fall.
        let many: Vec<(Name, Record)> = (0..1_000_000u64)
            .map(|i| usage("pi-1", "web", s + i * 10, s + i * 10 + 10, 1))
            .collect();
        let inv = invoice(p, &many, &prices(0.1));
        assert_eq!(inv.lines[0].cpu_seconds, 1000.0);
        assert_eq!(inv.total_micros, 100_000_000);
    }

    #[test]
    fn absurd_values_do_not_panic() {
        let p = Period::parse("9999-12").unwrap();
        let prices = PriceList::parse(PRICE_LIST_EXAMPLE).unwrap();
        let recs = vec![
            usage("a", "x", 0, u64::MAX, u64::MAX),
            usage("a", "y", p.start_ms(), p.start_ms() + 1, u64::MAX),
        ];
        let inv = invoice(p, &recs, &prices);
        assert_eq!(inv.lines.len(), 2);
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(5), "0.000005");
    }
}
