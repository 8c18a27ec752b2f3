//! Ring-buffer records as the kernel writes them: any kind, any length, any
//! field values (lengths beyond their buffers, unknown families, kinds and
//! flags). decode_record must return a record or None, never panic or read
//! outside the bytes (the build runs under AddressSanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use procflow_bpf::decode::{decode_record, Clock};

fuzz_target!(|data: &[u8]| {
    let clock = Clock::with_offset_ns(1_795_000_000_000_000_000);
    let _ = decode_record(data, &clock);
    let _ = decode_record(data, &Clock::with_offset_ns(-(1 << 62)));
});
