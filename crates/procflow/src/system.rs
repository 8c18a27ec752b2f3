//! The system lookups behind process identity: /proc for processes that
//! were running before procflow, /etc/passwd for user names, and the cgroup
//! v2 filesystem for cgroup paths.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procflow_core::identity::{ExecInfo, SystemLookup};

#[derive(Debug)]
pub struct ProcSystem {
    users: HashMap<u32, Option<String>>,
    cgroup_root: PathBuf,
    cgroups: HashMap<u64, String>,
    cgroups_walked: Option<Instant>,
}

impl ProcSystem {
    pub fn new(cgroup_root: PathBuf) -> Self {
        ProcSystem {
            users: HashMap::new(),
            cgroup_root,
            cgroups: HashMap::new(),
            cgroups_walked: None,
        }
    }

    fn walk_cgroups(&mut self) {
        self.cgroups.clear();
        let root = self.cgroup_root.clone();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(m) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
                self.cgroups.insert(m.ino(), format!("/{}", rel.display()));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
        self.cgroups_walked = Some(Instant::now());
    }
}

fn passwd_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

impl SystemLookup for ProcSystem {
    fn process(&mut self, pid: u32) -> Option<ExecInfo> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = raw
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Some(ExecInfo {
            exe: exe
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
            cmdline,
        })
    }

    fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| passwd_name(uid))
            .clone()
    }

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.cgroups.get(&id) {
            return Some(p.clone());
        }
        // A cgroup made since the last walk: walk again, at most once a second.
        let stale = self
            .cgroups_walked
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
        if stale {
            self.walk_cgroups();
        }
        self.cgroups.get(&id).cloned()
    }
}
