//! `procflow run --rules FILE`: loads the rules into the kernel, reloads them
//! on SIGHUP (a refused file leaves the rules in force untouched) and
//! acknowledges every load with a `"type":"rules"` record, turns the
//! kernel's decisions into `"type":"verdict"` records and flow `verdict` /
//! `rule` fields, and with `--enforce-existing` closes established TCP
//! connections that the rules block.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use procflow_bpf::policy::{KernelVerdict, Policy, Prepared, RuleIdentity};
use procflow_bpf::sock_destroy::{self, TcpId};
use procflow_bpf::Kernel;
use procflow_core::event::{Decision, DecisionTarget};
use procflow_core::flow::{FlowKey, Proto, Verdict};
use procflow_core::identity::SystemLookup;
use procflow_core::rules::{
    cgroup_ancestors, normalize_ip, CompiledRules, Direction, Query, Rules,
};
use procflow_core::timefmt::rfc3339;
use procflow_core::{FlowEvent, FlowTable, RulesOutcome, RulesRecord, VerdictRecord};

use crate::rules_cmd;
use crate::sinks::now_ns;

#[derive(Debug, Clone, clap::Args)]
pub struct RulesArgs {
    /// Allow or block connections by the rules in FILE (see docs/rules.md).
    /// SIGHUP reloads the file; a refused file leaves the rules in force.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// When rules are loaded or reloaded, also close the established TCP
    /// connections they block (sock_diag SOCK_DESTROY).
    #[arg(long, requires = "rules")]
    pub enforce_existing: bool,
}

/// Programs without which rules cannot be enforced.
const NEEDED: &[&str] = &[
    "pf_connect4",
    "pf_connect6",
    "pf_sendmsg4",
    "pf_sendmsg6",
    "pf_egress",
    "pf_ingress",
    "pf_pol_exec",
    "pf_pol_bind4",
    "pf_pol_bind6",
    "pf_pol_sock",
];

#[derive(Debug)]
pub struct Enforcer {
    path: Option<PathBuf>,
    enforce_existing: bool,
    policy: Policy,
    /// SIGHUP asked for the rules file to be read again.
    reload_wanted: bool,
    /// Rule sets accepted so far in this run (the generation in force).
    generation: u64,
    /// The generation held in each of the kernel's two table copies.
    slot_generation: [u64; 2],
    /// A reload being read, checked and compiled.
    reloading: Option<std::thread::JoinHandle<Result<Prepared, String>>>,
}

impl Enforcer {
    /// Loads the rules file, if one was given, into the kernel, and says so
    /// (or why not) in a rules record put in `out`.
    pub fn start(
        args: &RulesArgs,
        kernel: &Kernel,
        out: &mut Vec<RulesRecord>,
    ) -> Result<Enforcer> {
        let mut e = Enforcer {
            path: args.rules.clone(),
            enforce_existing: args.enforce_existing,
            policy: Policy::new(),
            reload_wanted: false,
            generation: 0,
            slot_generation: [0; 2],
            reloading: None,
        };
        if let Some(path) = e.path.clone() {
            if let Some(r) = kernel
                .refused()
                .iter()
                .find(|r| NEEDED.contains(&r.name.as_str()))
            {
                bail!(
                    "cannot enforce rules: this kernel refused {}: {}",
                    r.name,
                    r.reason
                );
            }
            if let Err(err) = e.load(kernel, &path, out) {
                bail!("{err}");
            }
            tracing::info!(
                "rules: {} loaded ({} rules)",
                path.display(),
                e.policy.rules().map_or(0, |r| r.rules.len())
            );
        }
        Ok(e)
    }

    /// Reads, checks and installs the rules file; writes the rules record
    /// of the outcome. On error (the file's problems, or what the kernel
    /// tables could not take) the rules in force stay in force.
    fn load(
        &mut self,
        kernel: &Kernel,
        path: &std::path::Path,
        out: &mut Vec<RulesRecord>,
    ) -> Result<(), String> {
        let prepared = prepare(path, &kernel.cgroup_root);
        self.install(kernel, path, prepared, out)
    }

    /// Installs a rule set [`prepare`]d (or says why it was refused); writes
    /// the rules record of the outcome.
    fn install(
        &mut self,
        kernel: &Kernel,
        path: &std::path::Path,
        prepared: Result<Prepared, String>,
        out: &mut Vec<RulesRecord>,
    ) -> Result<(), String> {
        let result = prepared.and_then(|p| {
            self.policy
                .install_prepared(kernel, p)
                .map_err(|e| format!("{}: {e}", path.display()))
        });
        let outcome = match &result {
            Ok(()) => {
                self.generation += 1;
                // The first set goes into copy 0, each later one into the
                // copy not in force (see `Policy::install`).
                self.slot_generation[((self.generation - 1) & 1) as usize] = self.generation;
                RulesOutcome::Accepted
            }
            Err(_) => RulesOutcome::Refused,
        };
        out.push(RulesRecord {
            kind: RulesRecord::KIND,
            time: rfc3339(now_ns()),
            generation: self.generation,
            outcome,
            path: path.display().to_string(),
            rules: self.policy.rules().map_or(0, |r| r.rules.len()),
            error: result.as_ref().err().cloned(),
        });
        result
    }

    /// Once the start-up scan is done: closes what the rules block.
    pub fn after_start(
        &mut self,
        kernel: &mut Kernel,
        table: &mut FlowTable,
        sys: &mut dyn SystemLookup,
    ) -> Result<()> {
        if self.enforce_existing && self.policy.rules().is_some() {
            self.close_blocked(kernel, table, sys)?;
        }
        Ok(())
    }

    /// SIGHUP: read the rules file again, as the settings now name it.
    /// Whether rules are enforced at all is fixed at start (the kernel
    /// programs are loaded for it), so a path is only taken over while
    /// one is in force.
    pub fn request_reload(&mut self, args: &RulesArgs) {
        if self.path.is_some() && args.rules.is_some() {
            self.path = args.rules.clone();
        }
        self.enforce_existing = args.enforce_existing;
        self.reload_wanted = true;
    }

    /// Reloads the rules file when SIGHUP asked for it.
    pub fn check_reload(
        &mut self,
        kernel: &mut Kernel,
        table: &mut FlowTable,
        sys: &mut dyn SystemLookup,
        out: &mut Vec<RulesRecord>,
    ) -> Result<()> {
        let Some(path) = self.path.clone() else {
            if std::mem::take(&mut self.reload_wanted) {
                tracing::warn!("SIGHUP: no --rules file to reload");
            }
            return Ok(());
        };
        // The file is read, checked and compiled on a thread of its own, so
        // that the kernel's records keep being read meanwhile; the rules in
        // force stay in force until the new ones are installed here.
        let prepared = match self.reloading.take() {
            Some(worker) if worker.is_finished() => worker
                .join()
                .unwrap_or_else(|_| Err("checking the rules file panicked".to_string())),
            Some(worker) => {
                self.reloading = Some(worker);
                return Ok(());
            }
            None => {
                if std::mem::take(&mut self.reload_wanted) {
                    let root = kernel.cgroup_root.clone();
                    let file = path.clone();
                    let worker = std::thread::Builder::new()
                        .name("rules-reload".into())
                        .spawn(move || prepare(&file, &root))
                        .context("starting the rules reload")?;
                    self.reloading = Some(worker);
                }
                return Ok(());
            }
        };
        if let Err(e) = self.install(kernel, &path, prepared, out) {
            tracing::error!("rules: reload refused, the rules in force stay in force:\n{e}");
            return Ok(());
        }
        tracing::info!(
            "rules: {} reloaded (generation {}, {} rules)",
            path.display(),
            self.generation,
            self.policy.rules().map_or(0, |r| r.rules.len())
        );
        if self.enforce_existing {
            self.close_blocked(kernel, table, sys)?;
        }
        Ok(())
    }

    /// A kernel decision as the flow table takes it (the flow's `verdict`
    /// and `rule`), and the deciding rule's name.
    pub fn decision(&self, v: &KernelVerdict) -> (FlowEvent, Option<String>) {
        let rule = v.rule.and_then(|i| {
            self.policy
                .rules_of(v.generation)
                .and_then(|r| r.rules.get(i))
                .map(|r| r.name.clone())
        });
        let verdict = if v.block {
            Verdict::Block
        } else {
            Verdict::Allow
        };
        let target = if v.proto == 6 && v.direction == procflow_core::flow::Direction::In {
            // Decided at the SYN on the listener: the verdict belongs to the
            // socket the connection will be accepted on.
            DecisionTarget::Inbound {
                netns: v.netns,
                local: v.local,
                remote: v.remote,
            }
        } else if v.proto == 6 || v.hook == procflow_bpf::policy::Hook::Packet {
            // A packet socket's decision holds for all of its flows.
            DecisionTarget::Flow(FlowKey::socket(v.cookie))
        } else {
            DecisionTarget::Flow(FlowKey::datagram(v.cookie, v.remote.0, v.remote.1))
        };
        let ev = FlowEvent::Decision(Decision {
            target,
            verdict,
            rule: rule.clone(),
        });
        (ev, rule)
    }

    /// The verdict record of a kernel decision, with its process.
    pub fn verdict_record(
        &self,
        v: &KernelVerdict,
        rule: Option<String>,
        mut process: procflow_core::ProcessIdentity,
    ) -> VerdictRecord {
        if v.exe.is_some() {
            process.exe = v.exe.clone();
        }
        let generation = self.slot_generation[(v.generation & 1) as usize];
        verdict_record(v, rule, generation, process)
    }

    /// Closes established TCP connections that the rules in force block.
    fn close_blocked(
        &mut self,
        kernel: &mut Kernel,
        table: &mut FlowTable,
        sys: &mut dyn SystemLookup,
    ) -> Result<()> {
        let Some(rules) = self.policy.rules() else {
            return Ok(());
        };
        let targets = blocked_connections(rules, kernel, table, sys)?;
        for (netns, ids) in targets {
            match sock_destroy::destroy_in(netns, &ids) {
                Ok(n) => {
                    tracing::info!("rules: closed {n} established connections (netns {netns})")
                }
                Err(e) => tracing::warn!("rules: closing connections in netns {netns}: {e}"),
            }
        }
        Ok(())
    }
}

/// Reads, checks and compiles the rules file at `path`.
fn prepare(path: &std::path::Path, cgroup_root: &std::path::Path) -> Result<Prepared, String> {
    crate::system::only_root_can_change(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rules = rules_cmd::load(path).map_err(|e| e.to_string())?;
    Prepared::new(rules, cgroup_root).map_err(|e| format!("{}: {e}", path.display()))
}

/// The live TCP connections that `rules` block, by network namespace.
fn blocked_connections(
    rules: &Rules,
    kernel: &mut Kernel,
    table: &mut FlowTable,
    sys: &mut dyn SystemLookup,
) -> Result<BTreeMap<u64, Vec<TcpId>>> {
    let compiled = CompiledRules::compile(rules);
    let views = kernel.dump().context("reading live connections")?.views;
    // Each owner as the connect hook sees it: the executable the kernel
    // resolves (not the /proc path), the leader's comm (not the comm of the
    // thread that connected), uid and cgroup of the process now.
    let kernel_ids = match kernel.rule_identities() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(
                "rules: reading processes as the rules see them: {e}; deciding existing \
                 connections by their recorded owners"
            );
            Default::default()
        }
    };
    let mut out: BTreeMap<u64, Vec<TcpId>> = BTreeMap::new();
    for v in views {
        let (rip, rport) = v.info.remote;
        if !matches!(v.info.proto, Proto::Tcp | Proto::Mptcp) || rport == 0 || rip.is_unspecified()
        {
            continue; // listeners and sockets not connected
        }
        let Some(owner) = &v.owner else { continue };
        let ident = table.identity(owner, sys);
        let ancestors = ident
            .cgroup
            .as_deref()
            .map(cgroup_ancestors)
            .unwrap_or_default();
        let same_process = |k: &&RuleIdentity| owner.start_ns == 0 || k.start_ns == owner.start_ns;
        let (exe, comm, uid) = match kernel_ids.get(&owner.pid).filter(same_process) {
            Some(k) => (k.exe.clone(), k.comm.clone(), k.uid),
            None => (
                ident.exe.clone().unwrap_or_default(),
                owner.comm.clone(),
                owner.uid,
            ),
        };
        let q = Query {
            exe: &exe,
            comm: &comm,
            uid,
            cgroup_ancestors: &ancestors,
            direction: if v.info.direction == procflow_core::flow::Direction::In {
                Direction::In
            } else {
                Direction::Out
            },
            proto: 6,
            remote: normalize_ip(rip),
            remote_port: rport,
            local_port: v.info.local.1,
            packet: false,
        };
        if compiled.decide(&q).action == procflow_core::rules::Action::Block {
            out.entry(v.info.netns).or_default().push(TcpId {
                family: v.info.family,
                local: v.info.local,
                remote: v.info.remote,
                cookie: v.key.cookie,
            });
        }
    }
    Ok(out)
}

fn verdict_record(
    v: &KernelVerdict,
    rule: Option<String>,
    generation: u64,
    process: procflow_core::ProcessIdentity,
) -> VerdictRecord {
    use procflow_core::flow::Direction as FlowDirection;
    VerdictRecord {
        kind: VerdictRecord::KIND,
        time: rfc3339(v.time_ns),
        verdict: if v.block {
            Verdict::Block
        } else {
            Verdict::Allow
        },
        rule,
        rule_index: v.rule,
        generation,
        hook: v.hook.name(),
        proto: if v.hook == procflow_bpf::policy::Hook::Packet {
            Proto::Packet
        } else {
            Proto::from_number(v.proto)
        },
        family: v.family,
        direction: if v.direction == FlowDirection::In {
            FlowDirection::In
        } else {
            FlowDirection::Out
        },
        local_ip: v.local.0,
        local_port: v.local.1,
        remote_ip: v.remote.0,
        remote_port: v.remote.1,
        process,
        netns: v.netns,
        socket: v.cookie,
    }
}
