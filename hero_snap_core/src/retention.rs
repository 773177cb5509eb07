//! Retention rules: which archives of one series `prune` keeps, and why. restic's
//! semantics (`restic forget`), on the archives' creation times in UTC:
//!
//! - `keep_last N`: the N newest.
//! - `keep_hourly/daily/weekly/monthly/yearly N`: for the N most recent hours (days, ISO
//!   weeks, months, years) that have an archive, the newest archive of each. Periods
//!   without an archive do not count.
//! - `keep_within D`: every archive made within D of the newest one (not of now: a series
//!   that stopped is not emptied by time passing).
//!
//! Rules add up: an archive is kept when any rule keeps it, and the reasons list every
//! rule that does. The newest archive of a series is always kept.

use std::fmt;
use std::str::FromStr;

use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// A span for `keep_within`: years, months, days and hours, as restic writes it (`1y6m`,
/// `30d`, `2d12h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    /// Calendar years.
    pub years: u32,
    /// Calendar months.
    pub months: u32,
    /// Days.
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

impl FromStr for Within {
    type Err = Error;

    /// ```
    /// use hero_snap_core::Within;
    /// assert_eq!("1y2m3d4h".parse::<Within>().unwrap(), Within { years: 1, months: 2, days: 3, hours: 4 });
    /// assert_eq!("30d".parse::<Within>().unwrap(), Within { days: 30, ..Within::default() });
    /// assert!("30".parse::<Within>().is_err());
    /// assert!("2w".parse::<Within>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Within> {
        let bad = || Error::Usage(format!("--keep-within `{s}`: expected numbers with units y, m, d, h (e.g. 30d, 1y6m, 2d12h)"));
        let mut w = Within::default();
        let mut num = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().map_err(|_| bad())?;
            num.clear();
            let slot = match c {
                'y' => &mut w.years,
                'm' => &mut w.months,
                'd' => &mut w.days,
                'h' => &mut w.hours,
                _ => return Err(bad()),
            };
            *slot = slot.checked_add(n).ok_or_else(bad)?;
            any = true;
        }
        if !num.is_empty() || !any {
            return Err(bad());
        }
        Ok(w)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Within {
    /// The earliest time within this span before `latest`; `None` past the calendar's range.
    fn start(&self, latest: OffsetDateTime) -> Option<OffsetDateTime> {
        let months = i64::from(self.years) * 12 + i64::from(self.months);
        let month0 = i64::from(latest.year()) * 12 + i64::from(u8::from(latest.month())) - 1 - months;
        let (year, month) = (i32::try_from(month0.div_euclid(12)).ok()?, time::Month::try_from(u8::try_from(month0.rem_euclid(12) + 1).ok()?).ok()?);
        // Like Go's AddDate (restic): a day past the month's end rolls into the next month.
        let first = time::Date::from_calendar_date(year, month, 1).ok()?;
        let date = first.checked_add(Duration::days(i64::from(latest.day()) - 1))?;
        let shifted = latest.replace_date(date);
        shifted.checked_sub(Duration::days(i64::from(self.days)) + Duration::hours(i64::from(self.hours)))
    }
}

/// Which archives of a series to keep. All zero keeps only the newest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest N.
    pub last: usize,
    /// The newest of each of the N most recent hours that have one.
    pub hourly: usize,
    /// The newest of each of the N most recent days that have one.
    pub daily: usize,
    /// The newest of each of the N most recent ISO weeks that have one.
    pub weekly: usize,
    /// The newest of each of the N most recent months that have one.
    pub monthly: usize,
    /// The newest of each of the N most recent years that have one.
    pub yearly: usize,
    /// Everything made within this span of the newest archive.
    pub within: Option<Within>,
}

impl Retention {
    /// Whether any rule is set (prune refuses to run without one).
    pub fn is_set(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly > 0 || self.within.is_some()
    }

    /// For archives created at `times` (any order), the reasons each is kept; an empty
    /// list means it goes.
    pub(crate) fn choose(&self, times: &[OffsetDateTime]) -> Vec<Vec<String>> {
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(times[i]));
        let mut reasons = vec![Vec::new(); times.len()];
        let Some(&newest) = order.first() else { return reasons };
        reasons[newest].push("newest".to_string());
        let since = self.within.and_then(|w| w.start(times[newest]).map(|t| (w, t)));
        type Bucket = fn(OffsetDateTime) -> String;
        let periods: [(&str, usize, Bucket); 5] = [
            ("hourly", self.hourly, |t| format!("{} {:02}h", t.date(), t.hour())),
            ("daily", self.daily, |t| t.date().to_string()),
            ("weekly", self.weekly, |t| {
                let (y, w, _) = t.to_iso_week_date();
                format!("{y}-W{w:02}")
            }),
            ("monthly", self.monthly, |t| format!("{}-{:02}", t.year(), u8::from(t.month()))),
            ("yearly", self.yearly, |t| t.year().to_string()),
        ];
        let mut seen: Vec<Vec<String>> = vec![Vec::new(); periods.len()];
        for (rank, &i) in order.iter().enumerate() {
            let t = times[i];
            if rank < self.last {
                reasons[i].push("last".to_string());
            }
            for (p, (name, count, bucket)) in periods.iter().enumerate() {
                let b = bucket(t);
                // Newest first: the first archive met in a period is that period's newest.
                if seen[p].len() < *count && seen[p].last() != Some(&b) {
                    reasons[i].push(format!("{name} {b}"));
                    seen[p].push(b);
                }
            }
            if let Some((w, start)) = since {
                if t >= start {
                    reasons[i].push(format!("within {w}"));
                }
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// One archive a day at 02:30 from `from` for `days` days, plus an extra one some days.
    fn daily(from: OffsetDateTime, days: i64) -> Vec<OffsetDateTime> {
        let mut out: Vec<OffsetDateTime> = (0..days).map(|d| from + Duration::days(d)).collect();
        // A second run on some days (a manual backup): only the newest of a day counts.
        out.extend((0..days).step_by(9).map(|d| from + Duration::days(d) + Duration::hours(9)));
        out
    }

    /// The kept archives, newest first, one line each with its reasons.
    fn kept(rule: Retention, times: &[OffsetDateTime]) -> String {
        let reasons = rule.choose(times);
        let mut rows: Vec<(OffsetDateTime, &Vec<String>)> = times.iter().copied().zip(reasons.iter()).filter(|(_, r)| !r.is_empty()).collect();
        rows.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        let deleted = times.len() - rows.len();
        let mut text = format!("{} archives, {} kept, {deleted} deleted\n", times.len(), rows.len());
        for (t, r) in rows {
            text.push_str(&format!("{} {}\n", t.format(&time::format_description::well_known::Rfc3339).unwrap(), r.join(", ")));
        }
        text
    }

    /// 420 days across two year ends and every month boundary between, run by each rule.
    #[test]
    fn each_rule_keeps_what_restic_would() {
        let times = daily(datetime!(2024-12-15 02:30 UTC), 420);
        let none = Retention::default();
        insta::assert_snapshot!("last_3", kept(Retention { last: 3, ..none }, &times));
        insta::assert_snapshot!("daily_10", kept(Retention { daily: 10, ..none }, &times));
        insta::assert_snapshot!("weekly_6", kept(Retention { weekly: 6, ..none }, &times));
        insta::assert_snapshot!("monthly_15", kept(Retention { monthly: 15, ..none }, &times));
        insta::assert_snapshot!("yearly_5", kept(Retention { yearly: 5, ..none }, &times));
        insta::assert_snapshot!("within_1m", kept(Retention { within: Some("1m".parse().unwrap()), ..none }, &times));
        let mixed = Retention { last: 2, daily: 7, weekly: 4, monthly: 12, yearly: 3, ..none };
        insta::assert_snapshot!("mixed_2_7_4_12_3", kept(mixed, &times));
    }

    /// Periods without an archive do not count: with November empty, 3 months reach back to September.
    #[test]
    fn empty_periods_do_not_count() {
        let mut times = daily(datetime!(2025-09-20 02:30 UTC), 20);
        times.extend(daily(datetime!(2025-12-10 02:30 UTC), 5));
        let r = Retention { monthly: 3, ..Retention::default() }.choose(&times);
        let mut months: Vec<String> = r.iter().flatten().filter(|s| s.starts_with("monthly")).cloned().collect();
        months.sort();
        assert_eq!(months, ["monthly 2025-09", "monthly 2025-10", "monthly 2025-12"]);
    }

    /// ISO weeks cross the year: 2025-12-29 .. 2026-01-04 is 2026-W01.
    #[test]
    fn iso_weeks_cross_the_year() {
        let times = [datetime!(2025-12-29 10:00 UTC), datetime!(2026-01-04 10:00 UTC), datetime!(2025-12-28 10:00 UTC)];
        let r = Retention { weekly: 5, ..Retention::default() }.choose(&times);
        assert_eq!(r[1], vec!["newest", "weekly 2026-W01"]);
        assert!(r[0].is_empty(), "{:?}", r[0]);
        assert_eq!(r[2], vec!["weekly 2025-W52"]);
    }

    /// `within` counts from the newest archive, with calendar months (31 March - 1m = 3 March, as Go's AddDate).
    #[test]
    fn within_counts_from_the_newest_archive() {
        let w: Within = "1m".parse().unwrap();
        assert_eq!(w.start(datetime!(2026-03-31 12:00 UTC)), Some(datetime!(2026-03-03 12:00 UTC)));
        let w: Within = "1y2d12h".parse().unwrap();
        assert_eq!(w.start(datetime!(2026-01-01 00:00 UTC)), Some(datetime!(2024-12-29 12:00 UTC)));
        assert_eq!(w.to_string(), "1y2d12h");
    }
}
