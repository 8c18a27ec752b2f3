//! `procflow report`'s arguments, one a line, through its argument parser
//! and into the query it builds: the time window (`--since`, `--until`),
//! the bucket width, the port or service name, the remote address or
//! network. The window and its buckets must fit the arithmetic the
//! timeline and chart do on them.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use procflow_store::report::build_query;
use procflow_store::ReportArgs;

#[derive(Debug, Parser)]
struct Report {
    #[command(flatten)]
    args: ReportArgs,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv = std::iter::once("report").chain(text.lines());
    let Ok(r) = Report::try_parse_from(argv) else {
        return;
    };
    for now in [1_795_000_000, 0] {
        if let Ok(q) = build_query(&r.args, now) {
            assert!(0 <= q.since && q.since < q.until, "window: {q:?}");
            // What the timeline and the chart compute from the window.
            let span = q.until - q.since;
            if let Some(b) = q.bucket {
                assert!(b > 0 && span.checked_add(b).is_some(), "bucket: {q:?}");
            }
        }
    }
});
