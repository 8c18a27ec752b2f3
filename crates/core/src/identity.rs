//! Process identity: what the kernel reports of a flow's owner, and the full
//! identity that goes into records.
//!
//! A process is keyed by its pid *and* the moment it started
//! ([`ProcessKey`]): a pid the kernel hands out again never inherits a dead
//! process's identity. The executable, command line and name of a process
//! come, in this order, from its last exec (captured in the kernel), from
//! the fork that created it (the parent's identity, captured in the kernel
//! at fork), or from /proc while it runs (processes that were running before
//! procflow started). When none of these knows, the identity says why.

use std::collections::HashMap;

use serde::Serialize;

/// The owner of a socket as a kernel hook saw it, in the owner's own context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// Thread-group id (the process id users know).
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// When the process started, boot-time nanoseconds (0: not known).
    pub start_ns: u64,
}

impl Owner {
    pub fn key(&self) -> ProcessKey {
        ProcessKey {
            pid: self.pid,
            start_ns: self.start_ns,
        }
    }
}

/// A process, as no other process before or after it: its pid and its
/// start time (boot-time nanoseconds, the kernel's `start_boottime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_ns: u64,
}

/// Nanoseconds per clock tick of /proc/PID/stat's start time (USER_HZ is
/// 100 on every architecture Linux runs procflow on).
pub const NS_PER_TICK: u64 = 10_000_000;

impl ProcessKey {
    /// Whether a process /proc shows, started at `start_ticks` (clock ticks
    /// since boot), is this one. /proc's resolution is one tick.
    pub fn matches_ticks(&self, start_ticks: u64) -> bool {
        self.start_ns == 0 || self.start_ns / NS_PER_TICK == start_ticks
    }
}

/// The identity that a record carries under `process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    /// Full path of the real executable.
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// Why `exe` and `cmdline` are not known (present only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_unknown: Option<String>,
    /// cgroup v2 path, relative to the hierarchy's root (e.g. `/system.slice/ssh.service`).
    pub cgroup: Option<String>,
}

/// The exec-time identity of a process: what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecInfo {
    pub exe: String,
    pub cmdline: String,
    /// The process's name (the kernel's comm) as set by that exec.
    pub comm: String,
}

/// A running process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProcess {
    pub info: ExecInfo,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_ticks: u64,
}

/// Why a process's executable is not known.
pub mod reason {
    /// Not running when procflow first needed it, and neither its exec nor
    /// its fork was seen (it started before procflow and exited, or its
    /// pid now belongs to another process).
    pub const EXITED: &str = "exited before first seen";
    /// Created by fork from a parent that had itself exited unseen.
    pub const PARENT_EXITED: &str = "parent exited before first seen";
    /// /proc had the process but its executable could not be read.
    pub const UNREADABLE: &str = "executable not readable in /proc";
    /// Its exec was seen, but the kernel could not walk its executable's
    /// path (too deep, or more than 1,023 bytes). The name the caller gave
    /// exec is never taken instead: it chose it.
    pub const UNWALKABLE: &str = "executable path not walkable at exec";
}

/// The system lookups identity resolution needs; the binary implements them
/// over /proc, /etc/passwd and the cgroup filesystem, tests with fakes.
pub trait SystemLookup {
    /// A running process (from /proc): Err(reason) when it runs but its
    /// executable cannot be read, Ok(None) when it does not run.
    fn process(&mut self, pid: u32) -> Result<Option<RunningProcess>, &'static str>;
    fn user_name(&mut self, uid: u32) -> Option<String>;
    fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String>;
}

#[derive(Debug, Clone)]
enum Known {
    Is(ExecInfo),
    Unknown(&'static str),
}

#[derive(Debug, Clone)]
struct Entry {
    known: Known,
    /// Insertion order, for pruning.
    seq: u64,
}

/// Turns kernel owners into full identities.
#[derive(Debug, Default)]
pub struct IdentityResolver {
    procs: HashMap<ProcessKey, Entry>,
    seq: u64,
}

/// Entries kept before those of processes that are gone are pruned.
const MAX_PROCS: usize = 65_536;
/// The newest entries are never pruned: their flows' last records may still
/// be on their way (a child that exits right after its connection closes).
const KEEP_NEWEST: u64 = 8_192;

impl IdentityResolver {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    fn put(&mut self, key: ProcessKey, known: Known, sys: &mut dyn SystemLookup) {
        if self.procs.len() >= MAX_PROCS && !self.procs.contains_key(&key) {
            self.prune(sys);
        }
        self.seq += 1;
        self.procs.insert(
            key,
            Entry {
                known,
                seq: self.seq,
            },
        );
    }

    /// Forgets processes that are gone, except the newest.
    fn prune(&mut self, sys: &mut dyn SystemLookup) {
        let keep_from = self.seq.saturating_sub(KEEP_NEWEST);
        let old: Vec<ProcessKey> = self
            .procs
            .iter()
            .filter(|(_, e)| e.seq < keep_from)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            let alive = matches!(sys.process(k.pid), Ok(Some(p)) if k.matches_ticks(p.start_ticks));
            if !alive {
                self.procs.remove(&k);
            }
        }
        if self.procs.len() >= MAX_PROCS {
            // 65,536 live processes: keep the newest half.
            let cut = self.seq.saturating_sub(MAX_PROCS as u64 / 2);
            self.procs.retain(|_, e| e.seq >= cut);
        }
    }

    /// What the kernel captured when process `key` called exec.
    pub fn exec(&mut self, key: ProcessKey, info: ExecInfo, sys: &mut dyn SystemLookup) {
        self.put(key, Known::Is(info), sys);
    }

    /// Process `child` was created by fork (or clone without a new thread
    /// group's exec) from `parent`: it runs what its parent ran.
    pub fn fork(&mut self, child: ProcessKey, parent: ProcessKey, sys: &mut dyn SystemLookup) {
        let known = match self.lookup(parent, sys) {
            Known::Is(info) => Known::Is(info),
            Known::Unknown(r) if r == reason::UNREADABLE => Known::Unknown(r),
            Known::Unknown(_) => Known::Unknown(reason::PARENT_EXITED),
        };
        self.put(child, known, sys);
    }

    /// What is known of `key`, asking /proc (and remembering the answer)
    /// when nothing was captured.
    fn lookup(&mut self, key: ProcessKey, sys: &mut dyn SystemLookup) -> Known {
        if let Some(e) = self.procs.get(&key) {
            return e.known.clone();
        }
        let known = match sys.process(key.pid) {
            Ok(Some(p)) if key.matches_ticks(p.start_ticks) => Known::Is(p.info),
            // Gone, or its pid belongs to a newer process now.
            Ok(_) => Known::Unknown(reason::EXITED),
            Err(r) => Known::Unknown(r),
        };
        self.put(key, known.clone(), sys);
        known
    }

    /// Builds the identity of `owner`.
    pub fn resolve(&mut self, owner: &Owner, sys: &mut dyn SystemLookup) -> ProcessIdentity {
        let known = self.lookup(owner.key(), sys);
        let (exe, cmdline, comm, exe_unknown) = match known {
            Known::Is(i) => {
                let comm = if i.comm.is_empty() {
                    owner.comm.clone()
                } else {
                    i.comm
                };
                if i.exe.is_empty() {
                    (
                        None,
                        Some(i.cmdline),
                        comm,
                        Some(reason::UNWALKABLE.to_string()),
                    )
                } else {
                    (Some(i.exe), Some(i.cmdline), comm, None)
                }
            }
            Known::Unknown(r) => (None, None, owner.comm.clone(), Some(r.to_string())),
        };
        ProcessIdentity {
            pid: owner.pid,
            ppid: owner.ppid,
            uid: owner.uid,
            user: sys.user_name(owner.uid),
            comm,
            exe,
            cmdline,
            exe_unknown,
            cgroup: sys.cgroup_path(owner.cgroup_id),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scripted system: one running process (pid 100, started at tick 5)
    /// and root.
    #[derive(Default)]
    pub struct FakeSystem {
        pub proc_lookups: usize,
        /// pid 100 has exited.
        pub gone: bool,
    }

    impl SystemLookup for FakeSystem {
        fn process(&mut self, pid: u32) -> Result<Option<RunningProcess>, &'static str> {
            self.proc_lookups += 1;
            Ok((pid == 100 && !self.gone).then(|| RunningProcess {
                info: ExecInfo {
                    exe: "/usr/bin/old".into(),
                    cmdline: "old --flag".into(),
                    comm: "old".into(),
                },
                start_ticks: 5,
            }))
        }
        fn user_name(&mut self, uid: u32) -> Option<String> {
            (uid == 0).then(|| "root".into())
        }
        fn cgroup_path(&mut self, id: u64) -> Option<String> {
            (id == 1).then(|| "/".into())
        }
    }

    pub fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            ppid: 1,
            uid: 0,
            comm: "x".into(),
            cgroup_id: 1,
            start_ns: 5 * NS_PER_TICK + 123,
        }
    }

    fn key(pid: u32, start_ns: u64) -> ProcessKey {
        ProcessKey { pid, start_ns }
    }

    fn info(exe: &str) -> ExecInfo {
        ExecInfo {
            exe: exe.into(),
            cmdline: format!("{exe} --arg"),
            comm: exe.rsplit('/').next().unwrap().into(),
        }
    }

    #[test]
    fn an_exec_whose_path_was_not_walked_has_no_exe_and_says_why() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        r.exec(owner(100).key(), info(""), &mut sys);
        let id = r.resolve(&owner(100), &mut sys);
        assert_eq!(id.exe, None, "no name the caller chose");
        assert_eq!(id.exe_unknown.as_deref(), Some(reason::UNWALKABLE));
    }

    #[test]
    fn exec_capture_wins_over_proc() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        r.exec(owner(100).key(), info("/opt/new"), &mut sys);
        let id = r.resolve(&owner(100), &mut sys);
        assert_eq!(id.exe.as_deref(), Some("/opt/new"));
        assert_eq!(id.comm, "new", "the name comes with the exec");
        assert_eq!(id.user.as_deref(), Some("root"));
        assert_eq!(id.cgroup.as_deref(), Some("/"));
        assert_eq!(sys.proc_lookups, 0);
    }

    #[test]
    fn proc_fallback_is_cached() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        let a = r.resolve(&owner(100), &mut sys);
        let b = r.resolve(&owner(100), &mut sys);
        assert_eq!(a.exe.as_deref(), Some("/usr/bin/old"));
        assert_eq!(a.comm, "old");
        assert_eq!(a, b);
        assert_eq!(sys.proc_lookups, 1);
    }

    #[test]
    fn vanished_process_says_why() {
        let mut r = IdentityResolver::new();
        let id = r.resolve(&owner(555), &mut FakeSystem::default());
        assert_eq!(
            (id.pid, id.comm.as_str(), id.exe.as_deref()),
            (555, "x", None)
        );
        assert_eq!(id.exe_unknown.as_deref(), Some(reason::EXITED));
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["exe_unknown"], reason::EXITED);
        let known = r.resolve(&owner(100), &mut FakeSystem::default());
        assert!(serde_json::to_value(&known)
            .unwrap()
            .get("exe_unknown")
            .is_none());
    }

    #[test]
    fn reused_pid_never_inherits_a_dead_process_identity() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        // Program A ran as pid 200 and exited.
        r.exec(key(200, 1_000), info("/usr/bin/a"), &mut sys);
        // A process created by fork from B (pid 300) gets pid 200 again.
        r.exec(key(300, 500), info("/usr/bin/b"), &mut sys);
        r.fork(key(200, 9_000), key(300, 500), &mut sys);
        let mut o = owner(200);
        o.start_ns = 9_000;
        assert_eq!(r.resolve(&o, &mut sys).exe.as_deref(), Some("/usr/bin/b"));
        o.start_ns = 1_000;
        assert_eq!(r.resolve(&o, &mut sys).exe.as_deref(), Some("/usr/bin/a"));
        // And /proc showing pid 100 started at another moment is not it.
        let mut o = owner(100);
        o.start_ns = 77 * NS_PER_TICK;
        let id = r.resolve(&o, &mut sys);
        assert_eq!(id.exe, None);
        assert_eq!(id.exe_unknown.as_deref(), Some(reason::EXITED));
    }

    #[test]
    fn forked_child_has_its_parents_identity_from_proc_or_capture() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        // Parent from before procflow: /proc names it at fork time.
        r.fork(key(101, 1), owner(100).key(), &mut sys);
        sys.gone = true;
        let mut child = owner(101);
        child.start_ns = 1;
        let id = r.resolve(&child, &mut sys);
        assert_eq!(id.exe.as_deref(), Some("/usr/bin/old"));
        assert_eq!(id.cmdline.as_deref(), Some("old --flag"));
        // A grandchild of a captured child.
        r.fork(key(102, 2), key(101, 1), &mut sys);
        child.pid = 102;
        child.start_ns = 2;
        assert_eq!(
            r.resolve(&child, &mut sys).exe.as_deref(),
            Some("/usr/bin/old")
        );
        // The child execs: from then on it is the new program.
        r.exec(key(102, 2), info("/usr/bin/new"), &mut sys);
        let id = r.resolve(&child, &mut sys);
        assert_eq!(
            (id.exe.as_deref(), id.comm.as_str()),
            (Some("/usr/bin/new"), "new")
        );
        // A child of an unknown parent says so.
        r.fork(key(103, 3), key(999, 3), &mut sys);
        child.pid = 103;
        child.start_ns = 3;
        let id = r.resolve(&child, &mut sys);
        assert_eq!(id.exe_unknown.as_deref(), Some(reason::PARENT_EXITED));
    }

    #[test]
    fn pruning_keeps_the_living_and_the_newest() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        r.resolve(&owner(100), &mut sys); // alive in /proc
        for pid in 0..(MAX_PROCS as u32 + 10) {
            r.exec(key(1_000_000 + pid, 7), info("/usr/bin/short"), &mut sys);
        }
        assert!(r.len() < MAX_PROCS);
        assert!(r.len() as u64 >= KEEP_NEWEST);
        assert!(r.procs.contains_key(&owner(100).key()));
        let newest = key(1_000_000 + MAX_PROCS as u32 + 9, 7);
        assert!(r.procs.contains_key(&newest));
    }
}
