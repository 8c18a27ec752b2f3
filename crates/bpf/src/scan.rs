//! The start-up scan: every network namespace's existing TCP and UDP
//! sockets get a flow context, and every socket held by a process gets its
//! owner, so flows opened before procflow started are seen and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use procflow_core::FlowEvent;

use crate::decode::{self, Clock};
use crate::loader::Kernel;
use crate::skel::types::pf_flow_event;
use crate::{BpfError, Record};

/// What the scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub namespaces: usize,
    pub sockets: usize,
    pub elapsed: Duration,
    /// Namespaces that could not be entered, with the reason.
    pub failed: Vec<String>,
}

/// Reads an iterator to its end: creates a fresh iterator from the link and
/// reads every record it writes.
pub(crate) fn read_iter(link_fd: RawFd) -> Result<Vec<u8>, BpfError> {
    // SAFETY: bpf_iter_create takes a link fd and returns a new fd or a
    // negative error; it does not keep the pointer-free argument.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_iter_create(link_fd) };
    if fd < 0 {
        return Err(BpfError::Load(format!(
            "creating an iterator: {}",
            std::io::Error::from_raw_os_error(-fd)
        )));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut out = Vec::new();
    f.read_to_end(&mut out)
        .map_err(|e| BpfError::Load(format!("reading an iterator: {e}")))?;
    Ok(out)
}

/// Every network namespace on the machine, by inode: those of processes,
/// those bound under /run/netns, and procflow's own.
pub fn namespaces() -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    let mut add = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            found.entry(m.ino()).or_insert(p);
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            add(e.path());
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                add(e.path().join("ns/net"));
            }
        }
    }
    found
}

/// Runs `f` in a thread that has entered the network namespace at `path`.
pub(crate) fn in_netns<T: Send>(
    path: &PathBuf,
    f: impl FnOnce() -> Result<T, BpfError> + Send,
) -> Result<T, BpfError> {
    let ns = File::open(path).map_err(|e| BpfError::Scan(format!("{}: {e}", path.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd we own changes only this
            // thread's network namespace; the thread ends with the scope.
            if unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(BpfError::Scan(format!(
                    "entering {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                )));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(BpfError::Scan("scan thread panicked".into())))
    })
}

fn records(bytes: &[u8]) -> impl Iterator<Item = pf_flow_event> + '_ {
    bytes
        .chunks_exact(decode::FLOW_EVENT_SIZE)
        .filter_map(decode::read_struct::<pf_flow_event>)
}

const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;

fn scan_records(bytes: &[u8], clock: &Clock, out: &mut Vec<Record>) -> usize {
    let mut n = 0;
    for e in records(bytes) {
        n += 1;
        // The scan writes the socket state in the padding word.
        let state = e._pad;
        if e.addr.proto == 6 && state != TCP_LISTEN && state != TCP_CLOSE {
            out.push(Record::Event(FlowEvent::Open(decode::flow_view(&e, clock))));
        }
    }
    n
}

impl Kernel {
    /// The start-up scan. Owners first (so that flows announced by the
    /// socket walk carry them), then each namespace's TCP and UDP sockets.
    pub fn scan(&mut self) -> Result<(Vec<Record>, ScanReport), BpfError> {
        let started = Instant::now();
        let clock = self.clock;
        let mut out = Vec::new();
        let mut report = ScanReport::default();

        // Every socket held by a process, with its owner (scan_owner);
        // writes nothing.
        let task_fd = self.iter_link("pf_iter_task_file")?.as_fd().as_raw_fd();
        read_iter(task_fd)?;

        let tcp_fd = self.iter_link("pf_iter_tcp")?.as_fd().as_raw_fd();
        let udp_fd = self.iter_link("pf_iter_udp")?.as_fd().as_raw_fd();
        for (_ino, path) in namespaces() {
            let got = in_netns(&path, || Ok((read_iter(tcp_fd)?, read_iter(udp_fd)?)));
            match got {
                Ok((tcp, udp)) => {
                    report.namespaces += 1;
                    report.sockets += scan_records(&tcp, &clock, &mut out);
                    report.sockets += records(&udp).count();
                }
                Err(e) => report.failed.push(e.to_string()),
            }
        }
        self.clear_scan_owners();
        report.elapsed = started.elapsed();
        Ok((out, report))
    }
}
