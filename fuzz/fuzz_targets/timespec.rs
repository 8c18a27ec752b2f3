//! Sizes, durations and times as users write them on the command line:
//! `procflow run --log-max-size`, `--interval`, `--duration`, `--retain`,
//! and `procflow report --since/--until/--bucket`; and the timestamps
//! records and reports are written with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procflow_core::timefmt;
use procflow_store::timespec::{
    human_time, parse_duration, parse_period, parse_rfc3339_us, parse_size, parse_time, rfc3339_s,
};

fuzz_target!(|data: &[u8]| {
    let mut word = [0u8; 8];
    let n = data.len().min(8);
    word[..n].copy_from_slice(&data[..n]);
    let number = u64::from_le_bytes(word);
    let _ = timefmt::rfc3339(number);
    let t = number as i64;
    let _ = human_time(t, true);
    let formatted = rfc3339_s(t);
    if formatted != t.to_string() {
        assert_eq!(
            parse_rfc3339_us(&formatted),
            Some(t * 1_000_000),
            "{formatted}"
        );
    }

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(s);
    let _ = parse_size(s);
    let _ = parse_rfc3339_us(s);
    if let Ok(d) = parse_period(s) {
        assert!(!d.is_zero(), "{s:?}: a zero period");
    }
    for now in [1_795_000_000, 0, i64::MAX, i64::MIN] {
        let _ = parse_time(s, now);
    }
});
