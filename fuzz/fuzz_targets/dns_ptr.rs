//! Replies to procflow's own reverse (PTR) queries (`--resolve`): whatever
//! arrives on the query socket. The message id is taken from the message
//! itself and both families' addresses are asked, so that the fuzzer gets
//! past the id check and into the question and answer records.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use procflow_core::dns::{parse_ptr, PtrAnswer};

fuzz_target!(|msg: &[u8]| {
    let id = match msg {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    for ip in ["192.0.2.7", "2001:db8::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        if let Some(PtrAnswer::Name(name)) = parse_ptr(msg, id, &ip) {
            assert!(!name.is_empty(), "an empty name");
        }
    }
});
