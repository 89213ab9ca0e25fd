//! Time: a feature's instant, the `datetime` parameter and CQL2's temporal
//! literals, all as microseconds since the Unix epoch (UTC), the
//! resolution of PostgreSQL's `timestamptz`.
//!
//! A feature's time is the value of the dataset's temporal property: an
//! RFC 3339 date-time, or a date (which stands for its midnight, UTC).
//! Anything else means the feature has no time, and then no temporal
//! condition holds for it (SQL's unknown), exactly as a NULL would. The
//! projector parses it with [`instant`] while loading, so the database
//! compares numbers it was given and never parses dates itself.

use chrono::{DateTime, NaiveDate};

use crate::{QueryError, quote};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

const DAY: Micros = 86_400_000_000;

/// A date's midnight, UTC.
fn date_start(d: NaiveDate) -> Option<Micros> {
    d.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_micros())
}

/// An RFC 3339 date-time, or a date (`YYYY-MM-DD`, its midnight UTC).
/// `None` for anything else.
pub fn instant(s: &str) -> Option<Micros> {
    let s = s.trim();
    if s.len() == 10 {
        return NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(date_start);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// Whether `s` is a plain date (then, as a bound, it means its whole day).
fn is_date(s: &str) -> bool {
    s.trim().len() == 10
}

/// A closed interval of instants; `None` is an open end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: Option<Micros>,
    pub end: Option<Micros>,
}

impl Interval {
    pub fn contains(&self, t: Micros) -> bool {
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t <= e)
    }
}

/// One end of an interval as written (`..` or empty: open). A date as the
/// end means the end of that day.
fn bound(param: &'static str, s: &str, is_end: bool) -> Result<Option<Micros>, QueryError> {
    let s = s.trim();
    if s.is_empty() || s == ".." {
        return Ok(None);
    }
    let t = instant(s).ok_or_else(|| {
        QueryError::new(
            param,
            format!(
                "{} is not an RFC 3339 date-time (2024-05-01T12:00:00Z) or date (2024-05-01)",
                quote(s)
            ),
        )
    })?;
    Ok(Some(if is_end && is_date(s) { t + DAY - 1 } else { t }))
}

/// The `datetime` parameter of OGC API – Features: an instant, or an
/// interval `start/end` whose ends may be open (`..`). A date alone means
/// its whole day.
pub fn datetime_param(s: &str) -> Result<Interval, QueryError> {
    let (start, end) = match s.split_once('/') {
        Some((a, b)) => (bound("datetime", a, false)?, bound("datetime", b, true)?),
        None => {
            if s.trim() == ".." || s.trim().is_empty() {
                return Err(QueryError::new(
                    "datetime",
                    "an instant cannot be open: give a date-time, a date, or an interval such as 2020-01-01/..",
                ));
            }
            (bound("datetime", s, false)?, bound("datetime", s, true)?)
        }
    };
    if let (Some(a), Some(b)) = (start, end)
        && a > b
    {
        return Err(QueryError::new(
            "datetime",
            "the interval ends before it starts",
        ));
    }
    Ok(Interval { start, end })
}

/// A CQL2 temporal literal's text as an instant (`TIMESTAMP('...')`,
/// `DATE('...')`), or an interval end (`..` open).
pub(crate) fn literal(s: &str, is_end: bool) -> Result<Option<Micros>, QueryError> {
    bound("filter", s, is_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_dates_and_intervals() {
        assert_eq!(instant("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(instant("1970-01-02"), Some(DAY));
        assert_eq!(instant("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(instant("yesterday"), None);
        assert_eq!(instant("2021-02-30"), None);
        let day = datetime_param("1970-01-02").unwrap();
        assert_eq!(day.start, Some(DAY));
        assert_eq!(day.end, Some(2 * DAY - 1));
        let open = datetime_param("../1970-01-01T00:00:00Z").unwrap();
        assert_eq!(
            open,
            Interval {
                start: None,
                end: Some(0)
            }
        );
        assert!(datetime_param("1970-01-02/1970-01-01").is_err());
        assert!(datetime_param("..").is_err());
        assert!(datetime_param("2020-13-01").is_err());
        assert!(datetime_param("../..").is_ok());
    }
}
