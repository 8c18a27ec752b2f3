//! Finding (or making) the root of the cgroup v2 hierarchy that procflow's
//! cgroup programs attach to.

use std::fs;
use std::path::{Path, PathBuf};

use crate::BpfError;

/// The cgroup2 mount point from a /proc/self/mounts text, if there is one.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
    })
}

/// /proc/self/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The root of the cgroup v2 hierarchy; mounts one under /run/procflow when
/// the machine has none.
pub fn cgroup2_root() -> Result<PathBuf, BpfError> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| BpfError::Cgroup(format!("reading /proc/self/mounts: {e}")))?;
    if let Some(p) = cgroup2_mount_in(&mounts) {
        return Ok(p);
    }
    let dir = Path::new("/run/procflow/cgroup2");
    fs::create_dir_all(dir)
        .map_err(|e| BpfError::Cgroup(format!("creating {}: {e}", dir.display())))?;
    let status = std::process::Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(dir)
        .status()
        .map_err(|e| BpfError::Cgroup(format!("running mount: {e}")))?;
    if !status.success() {
        return Err(BpfError::Cgroup(format!(
            "no cgroup v2 hierarchy is mounted and mounting one at {} failed; \
             this kernel needs CONFIG_CGROUP_BPF and cgroup v2",
            dir.display()
        )));
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
    }
}
