//! The Debian package (scripts/build-deb.sh), built from this build's
//! binary: lintian reports no errors, and in a fresh Debian 12 root made as
//! CI's (scripts/fresh-root.sh) `apt-get install ./procflow_*.deb` gives a
//! working `procflow`, its man pages and completions, a unit that
//! `systemd-analyze verify` accepts and that is enabled, the group, a
//! root-only history directory and a registered conffile; reinstalling and
//! removing keep the history, purging deletes it; where systemd runs (a
//! systemctl that records its calls stands in for it) installing starts
//! the unit, reinstalling restarts it and removing stops it.
//! docs/package.md describes the package. Each step's time is printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `f` and prints how long it took.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    eprintln!("package_root: {name}: {:.1} s", t.elapsed().as_secs_f64());
    v
}

fn check(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh root under /var/tmp, deleted on drop (also when a check fails).
/// Nothing stays mounted in it: every command runs in a mount namespace of
/// its own, and its /proc, /dev and /sys go with it.
struct FreshRoot {
    path: PathBuf,
}

impl FreshRoot {
    fn new() -> FreshRoot {
        let path = tempfile::Builder::new()
            .prefix("procflow-package-root.")
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        let root = FreshRoot { path };
        check(
            "scripts/fresh-root.sh",
            Command::new("bash")
                .arg(repo().join("scripts/fresh-root.sh"))
                .arg(&root.path)
                .output()
                .unwrap(),
        );
        root
    }

    /// `script` run by sh -eu in the root (chroot), with /proc, /dev and
    /// /sys mounted for it; its output.
    fn run(&self, script: &str) -> Output {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-euc"])
            .arg(
                r#"R=$1
                mount -t proc proc "$R/proc"
                mount --rbind /dev "$R/dev"
                mount -t sysfs -o ro sysfs "$R/sys"
                exec chroot "$R" env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
                    DEBIAN_FRONTEND=noninteractive \
                    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
                    sh -euc "$2""#,
            )
            .args(["sh"])
            .arg(&self.path)
            .arg(script)
            .output()
            .unwrap()
    }

    /// `script` in the root; its stdout, or a panic with its output.
    fn sh(&self, script: &str) -> String {
        check(&format!("in the fresh root: {script}"), self.run(script))
    }

    fn exists(&self, path: &str) -> bool {
        self.path
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }
}

impl Drop for FreshRoot {
    fn drop(&mut self) {
        // Never cross into another file system while deleting.
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_file(self.path.with_extension("debootstrap.log"));
    }
}

/// PID 1 is not systemd here. Where it is, the maintainer scripts call
/// systemctl (through deb-systemd-invoke): a systemctl that records its
/// calls, and /run/systemd/system (how they tell), stand in for it. It
/// replaces systemd's (diverted): apt runs dpkg with PATH /usr/sbin:/usr/bin:
/// /sbin:/bin.
const FAKE_SYSTEMCTL: &str = r#"mkdir -p /run/systemd/system
dpkg-divert --local --rename --add /usr/bin/systemctl >/dev/null
cat > /usr/bin/systemctl <<'END'
#!/bin/sh
# Offline work on the file system (deb-systemd-helper's preset) is real.
case "$*" in --root=*) exec /usr/bin/systemctl.distrib "$@" ;; esac
echo "$*" >> /run/systemctl.calls
case "$*" in *is-enabled*) echo enabled ;; esac
exit 0
END
chmod 0755 /usr/bin/systemctl"#;

/// The units started, stopped or restarted since the last call
/// ("start procflow.service" ...), and whether systemd was told to reload
/// its units (postinst, postrm and systemd's own trigger do).
fn systemctl_actions(root: &FreshRoot) -> (Vec<String>, bool) {
    let calls = root.sh("cat /run/systemctl.calls 2>/dev/null || true; rm -f /run/systemctl.calls");
    let words: Vec<Vec<&str>> = calls
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect()
        })
        .collect();
    let actions = words
        .iter()
        .filter(|w| matches!(w.first(), Some(&"start" | &"stop" | &"restart")))
        .map(|w| w.join(" "))
        .collect();
    let reload = words.iter().any(|w| w.first() == Some(&"daemon-reload"));
    (actions, reload)
}

fn workspace_version() -> String {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let section = text.split("[workspace.package]").nth(1).unwrap();
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn the_package_passes_lintian_installs_in_a_fresh_root_and_keeps_history_until_purge() {
    require_root();
    let t0 = Instant::now();
    let version = workspace_version();
    let out = tempfile::tempdir().unwrap();

    let deb = step("building the package (scripts/build-deb.sh --bin)", || {
        let stdout = check(
            "scripts/build-deb.sh",
            Command::new("bash")
                .arg(repo().join("scripts/build-deb.sh"))
                .args(["--bin", PROCFLOW, "--out"])
                .arg(out.path())
                .output()
                .unwrap(),
        );
        PathBuf::from(stdout.lines().last().unwrap_or_default())
    });
    let name = format!("procflow_{version}_amd64.deb");
    assert_eq!(deb, out.path().join(&name), "build-deb.sh made {deb:?}");
    assert!(deb.is_file(), "{deb:?} is missing");

    step("lintian", || {
        let o = Command::new("lintian")
            .args([
                "--info",
                "--display-level",
                ">=pedantic",
                "--fail-on",
                "error,warning",
            ])
            .arg(&deb)
            .output()
            .unwrap_or_else(|e| panic!("lintian is needed (scripts/install-deps.sh): {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("lintian {name}:\n{text}");
        assert!(
            o.status.success()
                && !text
                    .lines()
                    .any(|l| l.starts_with("E:") || l.starts_with("W:")),
            "lintian reports errors or warnings ({}):\n{text}",
            o.status
        );
    });

    let root = step("fresh root (scripts/fresh-root.sh)", FreshRoot::new);
    std::fs::copy(&deb, root.path.join("tmp").join(&name)).unwrap();

    step(
        "apt-get install man-db bash-completion systemd (a user's tools)",
        || {
            root.sh(
                "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
                 man-db bash-completion systemd >/dev/null",
            )
        },
    );
    root.sh(FAKE_SYSTEMCTL);
    step("apt-get install ./procflow_*.deb", || {
        root.sh(&format!(
            "cd /tmp && apt-get install -y -qq ./{name} >/dev/null"
        ))
    });
    assert_eq!(
        systemctl_actions(&root),
        (vec!["start procflow.service".to_string()], true),
        "installing did not start the unit"
    );

    step("procflow --version, man, completions", || {
        assert_eq!(
            root.sh("procflow --version").trim(),
            format!("procflow {version}")
        );
        assert_eq!(
            root.sh("man -w procflow").trim(),
            "/usr/share/man/man1/procflow.1.gz"
        );
        assert_eq!(
            root.sh("man -w procflow-run").trim(),
            "/usr/share/man/man1/procflow-run.1.gz"
        );
        let page = root.sh("MANWIDTH=80 man procflow");
        // Its subcommands are listed as their own pages.
        assert!(
            page.contains("NAME") && page.contains("procflow-run(1)"),
            "man procflow does not show `run`:\n{page}"
        );
        // bash-completion loads the completion on demand, as for a user's
        // first <TAB>, and `procflow r<TAB>` offers the three subcommands.
        let words = root.sh(r#"bash -c '. /usr/share/bash-completion/bash_completion
            _completion_loader procflow
            fn=$(complete -p procflow | sed -n "s/.*-F \([^ ]*\).*/\1/p")
            COMP_WORDS=(procflow r); COMP_CWORD=1; COMP_LINE="procflow r"; COMP_POINT=10
            "$fn" procflow r procflow
            printf "%s\n" "${COMPREPLY[@]}" | sort'"#);
        assert_eq!(
            words.split_whitespace().collect::<Vec<_>>(),
            ["report", "rules", "run"],
            "bash completion of `procflow r`"
        );
        for f in [
            "/usr/share/zsh/vendor-completions/_procflow",
            "/usr/share/fish/vendor_completions.d/procflow.fish",
        ] {
            let text = std::fs::read_to_string(root.path.join(&f[1..]))
                .unwrap_or_else(|e| panic!("{f} in the fresh root: {e}"));
            assert!(
                text.contains("procflow"),
                "{f} is not procflow's completion"
            );
        }
    });

    step(
        "systemd-analyze verify, group, state directory, unit enabled, conffile",
        || {
            let o = root.run("systemd-analyze verify /lib/systemd/system/procflow.service");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                o.status.success() && text.trim().is_empty(),
                "systemd-analyze verify in the fresh root ({}): {text}",
                o.status
            );
            assert!(root.sh("getent group procflow").starts_with("procflow:x:"));
            assert_eq!(
                root.sh("stat -c '%a %U %G' /var/lib/procflow").trim(),
                "700 root root"
            );
            assert_eq!(
                root.sh("readlink /etc/systemd/system/multi-user.target.wants/procflow.service")
                    .trim(),
                "/lib/systemd/system/procflow.service",
                "the unit is not enabled"
            );
            let conffiles = root.sh("dpkg-query -W -f='${Conffiles}' procflow");
            assert!(
                conffiles.trim().starts_with("/etc/procflow/procflow.toml "),
                "conffiles: {conffiles:?}"
            );
            assert!(root.exists("/etc/procflow/procflow.toml"));
        },
    );

    step(
        "reinstall keeps the history and the edited configuration",
        || {
            root.sh("echo history > /var/lib/procflow/procflow.db && \
             echo '# edited' >> /etc/procflow/procflow.toml");
            root.sh(&format!(
                "cd /tmp && apt-get install -y -qq --reinstall ./{name} >/dev/null"
            ));
            assert_eq!(
                systemctl_actions(&root),
                (vec!["restart procflow.service".to_string()], true),
                "reinstalling (the upgrade path) did not restart the unit"
            );
            assert_eq!(
                root.sh("cat /var/lib/procflow/procflow.db").trim(),
                "history"
            );
            assert!(root
                .sh("cat /etc/procflow/procflow.toml")
                .ends_with("# edited\n"));
            assert_eq!(
                root.sh("stat -c '%a %U %G' /var/lib/procflow").trim(),
                "700 root root"
            );
        },
    );

    step("apt-get remove keeps the history", || {
        root.sh("apt-get remove -y -qq procflow >/dev/null");
        assert_eq!(
            systemctl_actions(&root),
            (vec!["stop procflow.service".to_string()], true),
            "removing did not stop the unit"
        );
        assert!(!root.exists("/usr/bin/procflow"));
        assert!(!root.exists("/lib/systemd/system/procflow.service"));
        assert_eq!(
            root.sh("cat /var/lib/procflow/procflow.db").trim(),
            "history"
        );
        assert_eq!(
            root.sh("dpkg-query -W -f='${db:Status-Abbrev}' procflow")
                .trim(),
            "rc"
        );
    });

    step("apt-get purge deletes the history, keeps the group", || {
        root.sh("apt-get purge -y -qq procflow >/dev/null");
        assert_eq!(systemctl_actions(&root).0, Vec::<String>::new());
        assert!(
            !root.exists("/var/lib/procflow"),
            "purge kept /var/lib/procflow"
        );
        assert!(!root.exists("/etc/procflow/procflow.toml"));
        assert!(!root.exists("/etc/systemd/system/multi-user.target.wants/procflow.service"));
        assert!(root.sh("getent group procflow").starts_with("procflow:x:"));
    });

    drop(root);
    eprintln!(
        "package_root: whole test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
