//! DNS responses as the kernel hands them over (PF_EV_DNS payloads, up to
//! 512 bytes, from any process's socket): the question and the answer's
//! addresses, into the name table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procflow_core::dns::{parse_answer, question, NameTable};
use procflow_core::identity::ProcessKey;

fuzz_target!(|msg: &[u8]| {
    let _ = question(msg);
    if let Some(answer) = parse_answer(msg) {
        assert!(!answer.addrs.is_empty(), "an answer without addresses");
        assert_eq!(answer.name, answer.name.to_ascii_lowercase());
        let process = ProcessKey {
            pid: 1,
            start_ns: 2,
        };
        let mut table = NameTable::default();
        table.learn(process, 3, &answer);
        assert_eq!(
            table.lookup(Some(process), 3, &answer.addrs[0]),
            Some(answer.name.as_str())
        );
    }
});
