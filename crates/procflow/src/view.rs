//! `procflow ps`, `procflow flows` and `procflow top`: viewers of the live
//! state. They ask the daemon through its API; when none answers and the
//! user is root, they load the kernel programs themselves (standalone: the
//! totals then start when the viewer did).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use procflow_bpf::Kernel;
use procflow_core::live::{LiveFlow, LiveProcess, Snapshot};

use crate::api::DEFAULT_API;
use crate::collector::Collector;
use crate::hub::Hub;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's API socket (default: the `api` of
    /// /etc/procflow/procflow.toml when it sets one).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API)]
    pub api: PathBuf,
}

impl ClientArgs {
    /// The service's socket, from the configuration file, unless `--api`
    /// was given.
    pub fn use_configured_api(&mut self, matches: &clap::ArgMatches, command: &str) {
        let sub = matches
            .subcommand_matches(command)
            .expect("a viewer command");
        if let Some(api) = crate::config::from_default_file(sub, "api", "api") {
            self.api = api;
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the API's JSON (the snapshot's `processes`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the API's JSON (the snapshot's `flows`).
    #[arg(long)]
    json: bool,
    /// Only the flows of this process.
    #[arg(long, value_name = "N")]
    pid: Option<u32>,
    /// Only the flows of this executable (full path).
    #[arg(long, value_name = "PATH")]
    exe: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Redraw this often: seconds (1, 0.5) or a duration (2s).
    #[arg(long, value_name = "TIME", default_value = "1", value_parser = procflow_store::timespec::parse_period)]
    interval: Duration,
}

/// Where the live state comes from.
pub enum Live {
    Daemon(PathBuf),
    Standalone(Standalone),
}

/// A collector on a thread of this process, without sinks or API.
pub struct Standalone {
    pub hub: Arc<Hub>,
    /// A first snapshot was taken (rates need two ticks).
    primed: bool,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Standalone {
    /// Loads the kernel programs and runs the start-up scan on a thread of
    /// its own; returns once the scan is done.
    pub fn start() -> Result<Standalone> {
        let hub = Hub::new(crate::sinks::now_ns());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (h, st) = (Arc::clone(&hub), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                let run = || -> Result<()> {
                    let kernel = Kernel::open(false, procflow_bpf::RING_BUFFER_SIZE)
                        .context("loading the kernel programs")?;
                    let sys = crate::system::ProcSystem::new(kernel.cgroup_root.clone());
                    let mut c = Collector::new(kernel, Box::new(sys), h);
                    crate::run::start_up(&mut c)?;
                    let _ = ready_tx.send(Ok(()));
                    while !st.load(Ordering::Relaxed) {
                        c.drain(Duration::from_millis(100));
                        c.due()?;
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            })
            .context("starting the collector thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Standalone {
                hub,
                primed: false,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the collector thread ended before it was ready"),
        }
    }
}

/// The daemon at `api` if it answers, else (as root) a standalone
/// collector.
pub fn connect(api: &Path) -> Result<Live> {
    match std::os::unix::net::UnixStream::connect(api) {
        Ok(_) => Ok(Live::Daemon(api.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{}: permission denied: only root and members of the {} group may read procflow's API",
            api.display(),
            crate::api::GROUP
        ),
        Err(e) => {
            if !nix::unistd::geteuid().is_root() {
                bail!(
                    "no procflow daemon answers at {} ({e}); start `procflow run` as root, \
                     or run this as root to load the kernel programs here",
                    api.display()
                );
            }
            tracing::info!(
                "no daemon at {} ({e}): loading the kernel programs",
                api.display()
            );
            Ok(Live::Standalone(Standalone::start()?))
        }
    }
}

/// A snapshot from the daemon (`query` as in `/v1/snapshot?...`).
pub fn daemon_snapshot(api: &Path, query: &str) -> Result<Snapshot> {
    let target = if query.is_empty() {
        "/v1/snapshot".to_string()
    } else {
        format!("/v1/snapshot?{query}")
    };
    let (status, body) =
        crate::api::get(api, &target).with_context(|| format!("asking {}", api.display()))?;
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("{}: {msg}", api.display());
    }
    serde_json::from_str(&body).context("reading the daemon's snapshot")
}

impl Live {
    /// The live state now. Standalone, the first snapshot waits for a
    /// second reading of the kernel, so that rates cover one second.
    pub fn snapshot(&mut self, query: &str) -> Result<Snapshot> {
        match self {
            Live::Daemon(p) => daemon_snapshot(p, query),
            Live::Standalone(s) => {
                let req = crate::api::parse_request(&format!("GET /?{query} HTTP/1.1"))
                    .map_err(anyhow::Error::msg)?;
                let flows = req
                    .query
                    .iter()
                    .find(|(k, _)| k == "flows")
                    .map(|(_, v)| v.as_str());
                let flows_of = crate::api::flows_param(flows).map_err(anyhow::Error::msg)?;
                let keep = |f: &LiveFlow| {
                    flows_of
                        .as_ref()
                        .is_none_or(|pids| pids.contains(&f.owner.pid))
                };
                let fresh = Some(Duration::from_secs(3));
                let snap = s.hub.snapshot_with(fresh, &keep);
                if std::mem::replace(&mut s.primed, true) {
                    return Ok(snap);
                }
                // Ticks are a second apart while watched.
                std::thread::sleep(Duration::from_millis(1100));
                Ok(s.hub.snapshot_with(fresh, &keep))
            }
        }
    }
}

/// Bytes, human-readable (binary units).
pub fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Writes to standard output; a reader that closed it (`| head`) is not
/// an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    print_out(&text)
}

pub fn ps_table(procs: &[LiveProcess]) -> String {
    let mut s = format!(
        "{:>7} {:<10} {:>10} {:>10} {:>11} {:>11} {:>5} {:>7}  {}\n",
        "PID", "USER", "SENT", "RECEIVED", "SENT/s", "RECV/s", "CONN", "BLOCKED", "PROGRAM"
    );
    for p in procs {
        let o = &p.owner;
        let user = o.user.clone().unwrap_or_else(|| o.uid.to_string());
        s.push_str(&format!(
            "{:>7} {:<10} {:>10} {:>10} {:>11} {:>11} {:>5} {:>7}  {}\n",
            o.pid,
            user,
            human(p.traffic.tx_bytes as f64),
            human(p.traffic.rx_bytes as f64),
            human(p.rate.tx_1s),
            human(p.rate.rx_1s),
            p.open_flows,
            p.blocked,
            o.label()
        ));
    }
    s
}

fn endpoint(ip: &std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    }
}

pub fn flows_table(flows: &[LiveFlow]) -> String {
    let mut s = format!(
        "{:<7} {:<22} {:<30} {:>10} {:>10} {:>7}  {}\n",
        "PROTO", "LOCAL", "REMOTE", "SENT", "RECEIVED", "PID", "PROGRAM"
    );
    for f in flows {
        let remote = match &f.remote_name {
            Some(n) => format!("{n}:{}", f.remote_port),
            None => endpoint(&f.remote_ip, f.remote_port),
        };
        let verdict = match (&f.verdict, &f.rule) {
            (Some(v), Some(r)) => format!(" [{v} by {r}]"),
            (Some(v), None) => format!(" [{v}]"),
            _ => String::new(),
        };
        s.push_str(&format!(
            "{:<7} {:<22} {:<30} {:>10} {:>10} {:>7}  {}{verdict}\n",
            f.proto,
            endpoint(&f.local_ip, f.local_port),
            remote,
            human(f.traffic.tx_bytes as f64),
            human(f.traffic.rx_bytes as f64),
            f.owner.pid,
            f.owner.label()
        ));
    }
    s
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn ps(args: &PsArgs) -> Result<()> {
    let mut live = connect(&args.client.api)?;
    let snap = live.snapshot("")?;
    if args.json {
        print_json(&snap.processes)
    } else {
        print_out(&ps_table(&snap.processes))
    }
}

pub fn flows(args: &FlowsArgs) -> Result<()> {
    let mut live = connect(&args.client.api)?;
    let mut q = Vec::new();
    if let Some(p) = args.pid {
        q.push(format!("pid={p}"));
    }
    if let Some(e) = &args.exe {
        q.push(format!("exe={}", query_escape(e)));
    }
    let mut snap = live.snapshot(&q.join("&"))?;
    // Standalone, the filter is applied here.
    snap.flows.retain(|f| {
        args.pid.is_none_or(|p| f.owner.pid == p)
            && args
                .exe
                .as_deref()
                .is_none_or(|e| f.owner.exe.as_deref() == Some(e))
    });
    if args.json {
        print_json(&snap.flows)
    } else {
        print_out(&flows_table(&snap.flows))
    }
}

/// Today's traffic per executable from the daemon's history (`None`
/// without a store).
fn daemon_today(api: &Path) -> Option<std::collections::HashMap<String, (u64, u64)>> {
    let today = procflow_core::timefmt::rfc3339(crate::sinks::now_ns());
    let date = today.get(..10)?;
    let (status, body) = crate::api::get(api, &format!("/v1/history?since={date}&by=exe")).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["rows"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                Some((
                    r["exe"].as_str()?.to_string(),
                    (r["tx_bytes"].as_u64()?, r["rx_bytes"].as_u64()?),
                ))
            })
            .collect(),
    )
}

struct TopSource(Live);

impl procflow_top::Source for TopSource {
    fn snapshot(&mut self, flows_of: Option<&[u32]>) -> Result<Snapshot, String> {
        let query = match flows_of {
            None => "flows=none".to_string(),
            Some([]) => "flows=none".to_string(),
            Some(pids) => format!(
                "flows={}",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        self.0.snapshot(&query).map_err(|e| format!("{e:#}"))
    }
    fn today(&mut self) -> Option<std::collections::HashMap<String, (u64, u64)>> {
        match &self.0 {
            Live::Daemon(p) => daemon_today(p),
            Live::Standalone(_) => None,
        }
    }
    fn describe(&self) -> String {
        match &self.0 {
            Live::Daemon(p) => format!("daemon {}", p.display()),
            Live::Standalone(_) => {
                "standalone: kernel programs loaded by top (no daemon running)".to_string()
            }
        }
    }
}

pub fn top(args: &TopArgs) -> Result<()> {
    let live = connect(&args.client.api)?;
    let mut source = TopSource(live);
    procflow_top::run(
        &mut source,
        &procflow_top::Options {
            interval: args.interval,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_binary_and_short() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("/usr/bin/a b&c"), "/usr/bin/a%20b%26c");
        let r = crate::api::parse_request(&format!(
            "GET /v1/snapshot?exe={} HTTP/1.1",
            query_escape("/opt/x y/+z")
        ))
        .unwrap();
        assert_eq!(r.query[0].1, "/opt/x y/+z");
    }
}
