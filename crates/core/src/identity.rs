//! Process identity: what the kernel reports of a flow's owner, and the full
//! identity that goes into records.

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
}

/// The identity that a record carries under `process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    /// Full path of the real executable.
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// cgroup v2 path, relative to the hierarchy's root (e.g. `/system.slice/ssh.service`).
    pub cgroup: Option<String>,
}

/// What was captured in the kernel when a process called exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecInfo {
    pub exe: String,
    pub cmdline: String,
}

/// The system lookups identity resolution needs; the binary implements them
/// over /proc, /etc/passwd and the cgroup filesystem, tests with fakes.
pub trait SystemLookup {
    /// Executable and command line of a running process (from /proc).
    fn process(&mut self, pid: u32) -> Option<ExecInfo>;
    fn user_name(&mut self, uid: u32) -> Option<String>;
    fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String>;
}

/// Turns kernel owners into full identities.
///
/// Exec events captured in the kernel come first; /proc is the fallback for
/// processes that were running before procflow started. A process that
/// exited before it could be looked up keeps what the kernel told.
#[derive(Debug, Default)]
pub struct IdentityResolver {
    execs: HashMap<u32, ExecInfo>,
}

/// How many exec records are kept before the oldest are dropped.
const MAX_EXECS: usize = 65_536;

impl IdentityResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what the kernel captured at exec for `pid`.
    pub fn exec(&mut self, pid: u32, info: ExecInfo) {
        if self.execs.len() >= MAX_EXECS && !self.execs.contains_key(&pid) {
            // Bound memory: forget everything; /proc still answers for the living.
            self.execs.clear();
        }
        self.execs.insert(pid, info);
    }

    /// Builds the identity of `owner`, caching what /proc says about it.
    pub fn resolve(&mut self, owner: &Owner, sys: &mut dyn SystemLookup) -> ProcessIdentity {
        let exec = match self.execs.get(&owner.pid) {
            Some(e) => Some(e.clone()),
            None => {
                let found = sys.process(owner.pid);
                if let Some(e) = &found {
                    self.execs.insert(owner.pid, e.clone());
                }
                found
            }
        };
        ProcessIdentity {
            pid: owner.pid,
            ppid: owner.ppid,
            uid: owner.uid,
            user: sys.user_name(owner.uid),
            comm: owner.comm.clone(),
            exe: exec.as_ref().map(|e| e.exe.clone()),
            cmdline: exec.map(|e| e.cmdline),
            cgroup: sys.cgroup_path(owner.cgroup_id),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scripted system: one running process (pid 100) and root.
    #[derive(Default)]
    pub struct FakeSystem {
        pub proc_lookups: usize,
    }

    impl SystemLookup for FakeSystem {
        fn process(&mut self, pid: u32) -> Option<ExecInfo> {
            self.proc_lookups += 1;
            (pid == 100).then(|| ExecInfo {
                exe: "/usr/bin/old".into(),
                cmdline: "old --flag".into(),
            })
        }
        fn user_name(&mut self, uid: u32) -> Option<String> {
            (uid == 0).then(|| "root".into())
        }
        fn cgroup_path(&mut self, id: u64) -> Option<String> {
            (id == 1).then(|| "/".into())
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            ppid: 1,
            uid: 0,
            comm: "x".into(),
            cgroup_id: 1,
        }
    }

    #[test]
    fn exec_capture_wins_over_proc() {
        let mut r = IdentityResolver::new();
        let mut sys = FakeSystem::default();
        r.exec(
            100,
            ExecInfo {
                exe: "/opt/new".into(),
                cmdline: "new".into(),
            },
        );
        let id = r.resolve(&owner(100), &mut sys);
        assert_eq!(id.exe.as_deref(), Some("/opt/new"));
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
        assert_eq!(a, b);
        assert_eq!(sys.proc_lookups, 1);
    }

    #[test]
    fn vanished_process_keeps_kernel_fields() {
        let mut r = IdentityResolver::new();
        let id = r.resolve(&owner(555), &mut FakeSystem::default());
        assert_eq!((id.pid, id.comm.as_str(), id.exe), (555, "x", None));
    }
}
