//! RFC 3339 timestamps for records, from nanoseconds since the Unix epoch.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC with
/// microsecond precision, e.g. `2026-11-26T09:44:06.123456Z`.
pub fn rfc3339(unix_ns: u64) -> String {
    let micros = (unix_ns / 1_000) as i128 * 1_000;
    match OffsetDateTime::from_unix_timestamp_nanos(micros) {
        Ok(t) => t.format(&Rfc3339).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Nanoseconds since the Unix epoch of an RFC 3339 timestamp (as
/// [`rfc3339`] writes them, or with any offset); `None` when it is not one
/// or lies before the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_micros() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.123456Z"),
            Some(1_795_000_000_123_456_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40+01:00"),
            Some(1_795_000_000_000_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
