//! `procflow rules check` and `procflow rules explain`: tools for people
//! writing rules. Both read the file exactly as `procflow run --rules` does,
//! and `explain` decides with the same compiled tables the kernel holds.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use procflow_core::rules::{
    cgroup_ancestors, explain, parse_rules, CompiledRules, Direction, Rules, UserLookup,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

#[derive(Debug, clap::Subcommand)]
pub enum RulesCmd {
    /// Validate a rules file and print a summary; exit 1 with every error
    /// (file:line:column) if it is refused.
    Check {
        /// The rules file (TOML, see docs/rules.md).
        file: PathBuf,
    },
    /// Say which rule decides a connection, and why each earlier rule does
    /// not match.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The rules file.
    file: PathBuf,
    /// Full path of the process's executable.
    #[arg(long, value_name = "PATH")]
    exe: String,
    /// The remote end: IP:PORT (`10.0.0.1:443`, `[2001:db8::1]:53`), or IP
    /// alone for ICMP. Needed unless `--family packet`.
    #[arg(long, value_name = "IP:PORT")]
    remote: Option<String>,
    /// ip (an IPv4 or IPv6 socket) or packet (a packet socket sending
    /// frames: decided by who sends, without remote, protocol or ports).
    #[arg(long, default_value = "ip")]
    family: String,
    /// tcp, udp, icmp, icmpv6 or an IP protocol number.
    #[arg(long, default_value = "tcp")]
    proto: String,
    /// User name or uid (default: yours).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// out (this host connects) or in (a peer connects here).
    #[arg(long, default_value = "out")]
    direction: String,
    /// Task name (default: the executable's file name, cut to 15 bytes).
    #[arg(long, value_name = "COMM")]
    comm: Option<String>,
    /// The process's cgroup v2 path (`/system.slice/foo.service`); without
    /// it, no rule with a `cgroup` condition matches.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// This host's port.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    local_port: u16,
}

/// User names from /etc/passwd.
#[derive(Debug, Default)]
pub struct Passwd {
    users: Vec<(String, u32)>,
}

impl Passwd {
    pub fn read() -> Self {
        let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let users = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid = f.nth(1)?.parse().ok()?;
                Some((name.to_string(), uid))
            })
            .collect();
        Passwd { users }
    }
}

impl UserLookup for Passwd {
    fn uid_of(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|(n, _)| n == name).map(|(_, u)| *u)
    }
}

/// Why a rules file could not be used: unreadable, or refused (shown as
/// one `file:line:column: message` line per problem).
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: String,
        source: std::io::Error,
    },
    Refused(procflow_core::rules::RulesError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read { path, source } => write!(f, "reading {path}: {source}"),
            LoadError::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and checks a rules file.
pub fn load(path: &Path) -> Result<Rules, LoadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: name.clone(),
        source,
    })?;
    parse_rules(&name, &text, &Passwd::read()).map_err(LoadError::Refused)
}

pub fn run(cmd: RulesCmd) -> Result<()> {
    match cmd {
        RulesCmd::Check { file } => check(&file),
        RulesCmd::Explain(a) => explain_cmd(a),
    }
}

fn check(file: &Path) -> Result<()> {
    match load(file) {
        Ok(rules) => {
            let c = CompiledRules::compile(&rules);
            if let Err(e) = procflow_bpf::policy::check_fits(&c) {
                bail!("{}: {e}", file.display());
            }
            print!("{}", rules.summary());
            Ok(())
        }
        Err(LoadError::Refused(e)) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            bail!(
                "{} refused: {} error{}",
                file.display(),
                e.diagnostics.len(),
                if e.diagnostics.len() == 1 { "" } else { "s" }
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn proto_number(s: &str) -> Result<u8> {
    Ok(match s {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        "icmp" => IPPROTO_ICMP,
        "icmpv6" => IPPROTO_ICMPV6,
        n => n
            .parse()
            .with_context(|| format!("--proto {n}: use tcp, udp, icmp, icmpv6 or a number"))?,
    })
}

fn remote(s: &str) -> Result<(IpAddr, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().map(|ip| (ip, 0)).with_context(|| {
        format!("--remote {s}: write IP:PORT (10.0.0.1:443, [2001:db8::1]:53) or an IP alone")
    })
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

fn explain_cmd(a: ExplainArgs) -> Result<()> {
    let rules = load(&a.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let compiled = CompiledRules::compile(&rules);
    let packet = match a.family.as_str() {
        "ip" => false,
        "packet" => true,
        f => bail!("--family {f}: use ip or packet"),
    };
    let (ip, port) = match (&a.remote, packet) {
        (Some(r), false) => remote(r)?,
        (None, false) => bail!("--remote IP:PORT is needed (but not with --family packet)"),
        (Some(_), true) => {
            bail!("--remote with --family packet: a packet socket has no remote for rules")
        }
        (None, true) => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    };
    let proto = proto_number(&a.proto)?;
    let uid = match &a.user {
        None => my_uid(),
        Some(u) => match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Passwd::read()
                .uid_of(u)
                .with_context(|| format!("--user {u}: no such user"))?,
        },
    };
    let direction = match a.direction.as_str() {
        "out" => Direction::Out,
        "in" => Direction::In,
        d => bail!("--direction {d}: use out or in"),
    };
    let comm = a.comm.clone().unwrap_or_else(|| {
        let base = a.exe.rsplit('/').next().unwrap_or_default();
        let mut end = base.len().min(15);
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        base[..end].to_string()
    });
    let ancestors = a
        .cgroup
        .as_deref()
        .map(|c| cgroup_ancestors(c.trim_end_matches('/')))
        .unwrap_or_default();
    let q = procflow_core::rules::Query {
        exe: &a.exe,
        comm: &comm,
        uid,
        cgroup_ancestors: &ancestors,
        direction,
        proto,
        remote: ip,
        remote_port: port,
        local_port: a.local_port,
        packet,
    };
    print!("{}", explain(&rules, &compiled, &q));
    Ok(())
}
