//! `procflow report` on its own, for trying reports on a database:
//!
//! ```text
//! cargo run -p procflow-store --example report -- --db PATH --by exe,remote
//! ```

use clap::Parser;
use procflow_store::{run_report, ReportArgs, StoreError};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    report: ReportArgs,
}

fn main() {
    let cli = Cli::parse();
    match run_report(&cli.report, &mut std::io::stdout().lock()) {
        Ok(()) | Err(StoreError::BrokenPipe) => {}
        Err(e) => {
            eprintln!("procflow report: {e}");
            std::process::exit(1);
        }
    }
}
