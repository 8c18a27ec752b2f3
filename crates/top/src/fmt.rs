//! Formatting for the tables: byte counts and rates, shortened labels,
//! service names, times.

/// A byte count in binary units: `512 B`, `1.5 KiB`, `120 MiB`. The
/// number is kept under 1000 so columns stay narrow (at most 8 chars).
pub fn bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 999.5 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v < 99.95 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// A rate in bytes per second: `1.5 KiB/s` (at most 10 chars).
pub fn rate(bps: f64) -> String {
    let n = if bps.is_finite() && bps > 0.0 {
        bps.round() as u64
    } else {
        0
    };
    format!("{}/s", bytes(n))
}

/// Fits `s` in `width` characters. Paths (starting with `/`) lose their
/// LEFT part, at a `/` when one is in reach, so the executable's name and
/// nearest directories stay (`…/lib/firefox/firefox`); other text loses
/// its right part (`curl (exe…`).
pub fn fit(s: &str, width: usize) -> String {
    let len = s.chars().count();
    if len <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    if width == 1 {
        return "…".into();
    }
    if s.starts_with('/') {
        let tail: String = s.chars().skip(len - (width - 1)).collect();
        let tail = match tail.find('/') {
            // Keep whole components when that leaves more than the last
            // few characters.
            Some(i) if tail.len() - i > 1 => &tail[i..],
            _ => &tail[..],
        };
        format!("…{tail}")
    } else {
        let head: String = s.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

/// The service name of a well-known port (the reports' table).
pub fn service(port: u16) -> Option<&'static str> {
    procflow_core::services::service_name(port)
}

/// `2026-12-01T10:00:05.123456Z` -> `2026-12-01 10:00:05 UTC` (0: none).
pub fn datetime(unix_ns: u64) -> String {
    if unix_ns == 0 {
        return "no tick yet".into();
    }
    let s = procflow_core::timefmt::rfc3339(unix_ns);
    match (s.get(..10), s.get(11..19)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => s,
    }
}

/// The time of day of an RFC 3339 time (`HH:MM:SS`), else the text.
pub fn time_of_day(rfc3339: &str) -> String {
    match rfc3339.get(11..19) {
        Some(t) if rfc3339.as_bytes().get(10) == Some(&b'T') => t.to_string(),
        _ => rfc3339.to_string(),
    }
}

/// A duration in seconds, coarse: `45s`, `12m05s`, `3h02m`, `2d04h`.
pub fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 * 1024), "100 KiB");
        assert_eq!(bytes(1023 * 1024), "1.0 MiB");
        assert_eq!(bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
        for n in [0, 999, 1000, 99_999, 1_048_575, 1 << 40, u64::MAX] {
            assert!(bytes(n).len() <= 8, "{}", bytes(n));
        }
    }

    #[test]
    fn rates_per_second() {
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(1.6), "2 B/s");
        assert_eq!(rate(2048.0), "2.0 KiB/s");
        assert_eq!(rate(f64::NAN), "0 B/s");
        assert_eq!(rate(-5.0), "0 B/s");
    }

    #[test]
    fn paths_are_shortened_from_the_left() {
        let p = "/usr/lib/firefox/firefox";
        assert_eq!(fit(p, 40), p);
        assert_eq!(fit(p, 24), p);
        assert_eq!(fit(p, 23), "…/lib/firefox/firefox");
        assert_eq!(fit(p, 21), "…/lib/firefox/firefox");
        assert_eq!(fit(p, 20), "…/firefox/firefox");
        assert_eq!(fit(p, 9), "…/firefox");
        // No whole component fits: the last characters.
        assert_eq!(fit(p, 6), "…refox");
        assert_eq!(fit(p, 1), "…");
        assert_eq!(fit(p, 0), "");
        for w in 0..30 {
            assert!(fit(p, w).chars().count() <= w, "{w}");
        }
        // Not a path: cut on the right, so the comm stays.
        assert_eq!(
            fit("[kernel socket (no process has used it)]", 12),
            "[kernel soc…"
        );
    }

    #[test]
    fn well_known_ports() {
        assert_eq!(service(22), Some("ssh"));
        assert_eq!(service(53), Some("domain"));
        assert_eq!(service(80), Some("http"));
        assert_eq!(service(443), Some("https"));
        assert_eq!(service(123), Some("ntp"));
        assert_eq!(service(40000), None);
    }

    #[test]
    fn times() {
        assert_eq!(
            datetime(1_795_000_000_123_456_789),
            "2026-11-18 11:06:40 UTC"
        );
        assert_eq!(datetime(0), "no tick yet");
        assert_eq!(time_of_day("2026-12-01T00:00:05.5Z"), "00:00:05");
        assert_eq!(time_of_day("t1"), "t1");
        assert_eq!(uptime(65), "1m05s");
        assert_eq!(uptime(3 * 3600 + 120), "3h02m");
    }
}
