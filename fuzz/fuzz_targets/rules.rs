//! A rules file, text to checked rules (`procflow rules check`, `run
//! --rules`, SIGHUP reloads): TOML parsing, checking, error messages with
//! line and column, compiling into the kernel's tables, and then what must
//! hold of every accepted file: it renders back to a file that reads as the
//! same rules, and the compiled matcher decides as the reference evaluator.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use procflow_core::rules::{
    cgroup_ancestors, explain, parse_rules, reference, CompiledRules, Direction, Query, Rules,
};

fn users(name: &str) -> Option<u32> {
    match name {
        "root" => Some(0),
        "alice" => Some(1000),
        _ => None,
    }
}

fn without_lines(mut r: Rules) -> Rules {
    for rule in &mut r.rules {
        rule.line = 0;
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = match parse_rules("rules.toml", text, &users) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "an empty error");
            return;
        }
    };
    let _ = rules.summary();
    let rendered = rules.to_toml();
    let back = parse_rules("rules.toml", &rendered, &users)
        .unwrap_or_else(|e| panic!("rendered rules do not parse back: {e}\n{rendered}"));
    assert_eq!(
        without_lines(back),
        without_lines(rules.clone()),
        "rendered rules read back differently:\n{rendered}"
    );

    let compiled = CompiledRules::compile(&rules);
    let cgroups = [
        cgroup_ancestors("/user.slice/user-1000.slice/session-2.scope"),
        cgroup_ancestors("/system.slice/backup.service"),
        Vec::new(),
    ];
    let remotes: [IpAddr; 4] = [
        "10.1.2.3".parse().unwrap(),
        "192.0.2.10".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        "::ffff:192.168.1.1".parse().unwrap(),
    ];
    let exes = [
        "/usr/bin/curl",
        "/opt/app/bin/server",
        "/usr/lib/systemd/systemd",
    ];
    for (i, remote) in remotes.iter().enumerate() {
        for (j, exe) in exes.iter().enumerate() {
            let q = Query {
                exe,
                comm: exe.rsplit('/').next().unwrap_or(""),
                uid: if j == 0 { 1000 } else { 0 },
                cgroup_ancestors: &cgroups[(i + j) % cgroups.len()],
                direction: if (i + j) % 2 == 0 {
                    Direction::Out
                } else {
                    Direction::In
                },
                proto: [6, 17, 1, 58][(i + 2 * j) % 4],
                remote: *remote,
                remote_port: [53, 443, 22, 2250][(i + j) % 4],
                local_port: 40000,
                packet: (i + j) % 5 == 4,
            };
            let decision = compiled.decide(&q);
            assert_eq!(decision, reference::decide(&rules, &q), "{q:?}\n{text}");
            assert!(explain(&rules, &compiled, &q).agrees(), "{q:?}\n{text}");
        }
    }
});
