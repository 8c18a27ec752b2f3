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
}
