//! IPFIX flow export (RFC 7011): an observer of the hub's records that
//! sends flow records with the process that made them to a collector.

use std::sync::Arc;

use anyhow::Result;

use crate::hub::Hub;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct IpfixArgs {
    /// Export flow records over IPFIX (RFC 7011) to this collector
    /// (HOST:PORT), with the process of each flow (docs/fleet.md).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) ipfix: Option<String>,
}

/// The running exporter (a thread of its own).
pub struct Exporter {}

impl Exporter {
    /// Starts exporting when `--ipfix` is given.
    pub fn start(args: &IpfixArgs, _hub: &Arc<Hub>) -> Result<Option<Exporter>> {
        if args.ipfix.is_some() {
            anyhow::bail!("--ipfix: not built yet");
        }
        Ok(None)
    }

    /// At stop: exports what is left (open flows end as forced ends) and
    /// waits for the thread.
    pub fn finish(self) {}
}
