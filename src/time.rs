//! Time as a value. The core never reads a clock: callers pass a [`UnixTime`].

use std::fmt;

/// Seconds since the Unix epoch, UTC. The unit used by JWT `iat` (RFC 7519
/// NumericDate) and by certificate validity checks here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// Seconds since the epoch.
    pub fn secs(self) -> i64 {
        self.0
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fixed instant used by tests, benches and the committed fixture PKI:
/// 2026-01-01T00:00:00Z. Fixture certificates are valid from 2020 to 2070.
pub const TEST_NOW: UnixTime = UnixTime(1_767_225_600);

/// The only place in the crate that reads the system clock.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

#[cfg(feature = "runtime")]
impl Clock {
    /// The current time.
    pub fn now(self) -> UnixTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        UnixTime(secs)
    }
}

/// RFC 3339 UTC with milliseconds (`2026-01-01T00:00:00.000Z`), from
/// milliseconds since the epoch.
pub fn format_rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses an RFC 1123 date as SIP uses it (RFC 3261 §20.17:
/// `Sat, 13 Nov 2010 23:29:00 GMT`). Only `GMT` is allowed.
pub fn parse_sip_date(s: &str) -> Option<UnixTime> {
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ').filter(|p| !p.is_empty());
    let day: i64 = it.next()?.parse::<u8>().ok()?.into();
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    // A 4-digit year (RFC 1123); unsigned fields: a caller's `Date` must
    // not overflow the arithmetic below (found by fuzzing).
    let year: u16 = it.next()?.parse().ok()?;
    let hms = it.next()?;
    if it.next()? != "GMT" || it.next().is_some() {
        return None;
    }
    let mut t = hms.split(':');
    let h: u8 = t.next()?.parse().ok()?;
    let m: u8 = t.next()?.parse().ok()?;
    let sec: u8 = t.next()?.parse().ok()?;
    if t.next().is_some()
        || !(1..=31).contains(&day)
        || !(1..=9999).contains(&year)
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    let (year, h, m, sec) = (i64::from(year), i64::from(h), i64::from(m), i64::from(sec));
    Some(UnixTime(
        days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec,
    ))
}

/// Formats a time as an RFC 1123 date for a SIP `Date` header.
pub fn format_sip_date(t: UnixTime) -> String {
    let days = t.0.div_euclid(86_400);
    let secs = t.0.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = WD
        .get(usize::try_from(days.rem_euclid(7)).unwrap_or(0))
        .copied()
        .unwrap_or("Thu");
    let mon = MO
        .get(usize::try_from(mo - 1).unwrap_or(0))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_millis() {
        assert_eq!(
            format_rfc3339_millis(TEST_NOW.0 * 1000 + 7),
            "2026-01-01T00:00:00.007Z"
        );
        assert_eq!(
            format_rfc3339_millis(951_825_599_999),
            "2000-02-29T11:59:59.999Z"
        );
    }

    #[test]
    fn sip_date_round_trips() {
        let s = format_sip_date(TEST_NOW);
        assert_eq!(s, "Thu, 01 Jan 2026 00:00:00 GMT");
        assert_eq!(parse_sip_date(&s), Some(TEST_NOW));
        assert_eq!(
            parse_sip_date("Sat, 13 Nov 2010 23:29:00 GMT"),
            Some(UnixTime(1_289_690_940))
        );
    }

    #[test]
    fn sip_date_rejects_other_zones() {
        // RFC 4475 baddate: "Fri, 01 Jan 2010 16:00:00 EST"
        assert_eq!(parse_sip_date("Fri, 01 Jan 2010 16:00:00 EST"), None);
        assert_eq!(parse_sip_date("garbage"), None);
    }
}
