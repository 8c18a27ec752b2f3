//! The system lookups behind process identity: /proc for processes that
//! were running before procflow, /etc/passwd for user names, and the cgroup
//! v2 filesystem for cgroup paths.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::io::Read;

use procflow_core::identity::{reason, ExecInfo, RunningProcess, SystemLookup};

/// Bytes of a command line read from /proc: a process cannot make every
/// record carry megabytes.
const MAX_CMDLINE: u64 = 4096;

/// At most `max` bytes of a file; empty if it cannot be read.
fn read_bounded(path: &str, max: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    buf
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot). The
/// name in field 2 may hold spaces and parentheses: fields are counted
/// after its last ')'.
fn stat_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Field 3 of /proc/PID/stat: the state (R, S, Z for a zombie...).
fn stat_state(stat: &str) -> Option<&str> {
    stat[stat.rfind(')')? + 1..].split_ascii_whitespace().next()
}

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
    fn process(&mut self, pid: u32) -> Result<Option<RunningProcess>, &'static str> {
        // The start time first: it tells which process holds the pid now.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Ok(None);
        };
        let Some(start_ticks) = stat_start_ticks(&stat) else {
            return Ok(None);
        };
        let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(p) => p,
            // Exited: gone, or a zombie (its stat stays until it is reaped).
            Err(_) if stat_state(&stat).is_none_or(|s| s == "Z" || s == "X") => return Ok(None),
            Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => return Ok(None),
            Err(_) => return Err(reason::UNREADABLE),
        };
        let cmdline = read_bounded(&format!("/proc/{pid}/cmdline"), MAX_CMDLINE)
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let comm = String::from_utf8_lossy(&read_bounded(&format!("/proc/{pid}/comm"), 64))
            .trim_end_matches('\n')
            .to_string();
        Ok(Some(RunningProcess {
            info: ExecInfo {
                exe: exe
                    .to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string(),
                cmdline,
                comm,
            },
            start_ticks,
        }))
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

/// Refuses a file that procflow, running as root, takes its settings or
/// rules from when someone other than root could change it: owned by
/// another user, or writable by its group or by others. (Run by anyone
/// else, procflow enforces nothing, and nothing is checked.) A file that
/// cannot be read is left to the reading to report.
pub fn only_root_can_change(path: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = m.mode() & 0o7777;
    let p = path.display();
    if m.uid() != 0 {
        return Err(format!(
            "refused: the file belongs to uid {}, who could change it; it must belong to \
             root (chown root {p})",
            m.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "refused: the file's mode {mode:04o} lets its group or others change it \
             (chmod go-w {p})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_after_a_name_with_spaces_and_parentheses() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_start_ticks(stat), Some(98765));
        assert_eq!(stat_start_ticks("garbage"), None);
        assert_eq!(stat_state(stat), Some("S"));
    }

    #[test]
    fn this_process_is_found_with_its_start_time() {
        let me = std::process::id();
        let p = ProcSystem::new("/sys/fs/cgroup".into())
            .process(me)
            .unwrap()
            .unwrap();
        assert!(p.info.exe.ends_with(
            &std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        ));
        assert!(p.start_ticks > 0);
        assert!(!p.info.comm.is_empty());
    }
}
