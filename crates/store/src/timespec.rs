//! Times, durations and sizes as users write them (`30m`, `7d`, RFC 3339,
//! `100M`) and as the store keeps them (integer seconds or microseconds since
//! the Unix epoch).

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use crate::error::StoreError;

/// Parses an RFC 3339 timestamp into microseconds since the Unix epoch.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    if let Some(us) = parse_utc_us(s.as_bytes()) {
        return Some(us);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000).ok()
}

/// The form the daemon writes, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, parsed
/// without the general parser (twice per flow record); `None` for any
/// other form, which the general parser then reads.
fn parse_utc_us(b: &[u8]) -> Option<i64> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |a, d| {
            d.is_ascii_digit().then(|| a * 10 + i64::from(d - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in = [
        31,
        28 + i64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in[mo as usize - 1]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let mut frac_us = 0i64;
    let rest = &b[19..];
    let rest = match rest.split_first() {
        Some((b'.', f)) => {
            let digits = f.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            for (i, c) in f[..digits].iter().enumerate().take(6) {
                frac_us += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
            }
            &f[digits..]
        }
        _ => rest,
    };
    if rest != b"Z" {
        return None;
    }
    // Days since the epoch of a civil date (H. Hinnant's algorithm).
    let (yy, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + sec) * 1_000_000) + frac_us)
}

/// Parses a duration: a sequence of `<number><unit>` with units `s`, `m`,
/// `h`, `d`, `w` (for example `90s`, `30m`, `1h30m`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, StoreError> {
    let bad = |reason: &str| StoreError::invalid("duration", s, reason);
    let s_trim = s.trim();
    if s_trim.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for ch in s_trim.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => {
                return Err(bad(
                    "use a number and a unit: s, m, h, d or w (e.g. 30m, 7d)",
                ))
            }
        };
        if num.is_empty() {
            return Err(bad("a unit needs a number before it"));
        }
        let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad("missing unit: s, m, h, d or w (e.g. 30m, 7d)"));
    }
    Ok(Duration::from_secs(total))
}

/// A time span given on the command line: plain seconds (`10`, `0.5`) or a
/// duration as `--retain` takes it (`10s`, `5m`, `1h30m`). It must be
/// longer than zero.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| {
            format!("{s:?} is not a number of seconds or a duration (10, 0.5, 30s, 1h)")
        })?;
        Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too long"))?
    } else {
        parse_duration(t).map_err(|_| {
            format!("{s:?} is not a number of seconds or a duration (10, 0.5, 30s, 1h)")
        })?
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

/// A size: a number of bytes, or a number with a binary unit (K, M, G;
/// `100M`, `1GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let mult = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
    };
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (e.g. 100M)"));
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is too large (at most {} bytes)", u64::MAX))
}

/// Parses a point in time, in seconds since the Unix epoch: `now`, a
/// duration back from `now_s` (`1h`, `7d`), an RFC 3339 timestamp, or a
/// date `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(s: &str, now_s: i64) -> Result<i64, StoreError> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_s);
    }
    if let Some(us) = parse_rfc3339_us(t) {
        return Ok(us.div_euclid(1_000_000));
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(t, &date_fmt) {
        return Ok(d.midnight().assume_utc().unix_timestamp());
    }
    match parse_duration(t) {
        Ok(d) => Ok(now_s.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        Err(_) => Err(StoreError::invalid(
            "time",
            s,
            "use a duration back from now (30m, 1h, 7d), an RFC 3339 timestamp \
             (2026-11-26T09:00:00Z) or a date (2026-11-26)",
        )),
    }
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2026-11-26T09:00:00Z`).
pub fn rfc3339_s(unix_s: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_s.to_string())
}

/// Formats seconds since the Unix epoch for people: `2026-11-26 09:00:00`
/// (UTC), or `2026-11-26 09:00` when `seconds` is false.
pub fn human_time(unix_s: i64, seconds: bool) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(unix_s) else {
        return unix_s.to_string();
    };
    let (d, h) = (t.date(), t.time());
    let base = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        h.hour(),
        h.minute()
    );
    if seconds {
        format!("{base}:{:02}", h.second())
    } else {
        base
    }
}

/// Start of the bucket of width `width_s` that holds `t_s`: buckets are
/// aligned to multiples of their width since the Unix epoch.
pub fn bucket_start(t_s: i64, width_s: i64) -> i64 {
    t_s - t_s.rem_euclid(width_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1_800);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5_400);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        assert_eq!(parse_duration("2w").unwrap().as_secs(), 1_209_600);
        for bad in ["", "5", "h", "5x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes_and_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("5X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("17179869184G").is_err());
    }

    #[test]
    fn periods_in_seconds_or_durations() {
        assert_eq!(parse_period("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_period("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_period("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_period("30s"), Ok(Duration::from_secs(30)));
        for bad in [
            "0", "0s", "0.0", "-1", "NaN", "nan", "inf", "-inf", "", "1e400", "10x",
        ] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        let now = 1_795_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("1h", now).unwrap(), now - 3_600);
        assert_eq!(
            parse_time("2026-11-18T11:06:40Z", now).unwrap(),
            1_795_000_000
        );
        assert_eq!(
            parse_time("2026-11-18T12:06:40+01:00", now).unwrap(),
            1_795_000_000
        );
        assert_eq!(parse_time("2026-11-18", now).unwrap(), 1_794_960_000);
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339_s(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(human_time(1_795_000_000, true), "2026-11-18 11:06:40");
        assert_eq!(human_time(1_795_000_000, false), "2026-11-18 11:06");
        assert_eq!(
            parse_rfc3339_us("2026-11-18T11:06:40.123456Z"),
            Some(1_795_000_000_123_456)
        );
    }

    #[test]
    fn buckets_are_aligned_to_the_epoch() {
        assert_eq!(bucket_start(59, 60), 0);
        assert_eq!(bucket_start(60, 60), 60);
        assert_eq!(bucket_start(119, 60), 60);
        assert_eq!(bucket_start(1_795_000_000, 420), 1_794_999_780);
        assert_eq!(bucket_start(1_794_999_780, 420), 1_794_999_780);
        assert_eq!(bucket_start(-1, 10), -10);
    }

    #[test]
    fn the_daemons_timestamps_parse_as_the_general_parser_reads_them() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-11-18T10:36:40Z",
            "2026-11-18T10:36:40.123456Z",
            "2026-11-18T10:36:40.5Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-03-01T00:00:00.000001Z",
            "1969-12-31T23:59:59Z",
        ] {
            let t = OffsetDateTime::parse(s, &Rfc3339).unwrap();
            let want = i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap();
            assert_eq!(parse_utc_us(s.as_bytes()), Some(want), "{s}");
        }
        for s in [
            "2026-02-30T00:00:00Z",
            "2026-11-18T10:36:40+01:00",
            "2026-11-18T24:00:00Z",
            "2026-11-18T10:36:40.Z",
        ] {
            assert_eq!(parse_utc_us(s.as_bytes()), None, "{s}");
        }
    }
}
