//! Property test: the compiled matcher (the kernel's algorithm) decides every
//! connection exactly as the reference evaluator does.
//!
//! Rule sets and connections are drawn from small pools of values, so that
//! patterns overlap, nest and collide (prefixes of prefixes, a suffix that
//! is also a prefix, covering CIDRs, adjacent port ranges, cgroups that share
//! a name prefix but not a path component).

use std::net::IpAddr;

use proptest::option::weighted;
use proptest::prelude::*;

use super::*;

const PATHS: &[&str] = &[
    "/usr/bin/curl",
    "/usr/bin/curlx",
    "/usr/local/bin/curl",
    "/usr/bin/wget",
    "/opt/app",
    "/opt/app/bin/run",
    "/opt/application/run",
    "/bin/sh",
    "/curl",
];
const PREFIXES: &[&str] = &[
    "",
    "/",
    "/usr/",
    "/usr/bin/",
    "/usr/bin/cu",
    "/usr/bin/curl",
    "/opt/app",
    "/opt/app/",
];
const SUFFIXES: &[&str] = &[
    "/curl",
    "curl",
    "url",
    "/sh",
    "n/curl",
    "x",
    "/usr/bin/curl",
    "/opt/app",
];
const COMMS: &[&str] = &["curl", "wget", "sh", "run", "a-very-long-pro"];
const QUERY_COMMS: &[&str] = &["curl", "wget", "sh", "run", "a-very-long-process", "x"];
const UIDS: &[u32] = &[0, 1000, 1001, 65534];
const RULE_CGROUPS: &[&str] = &["/", "/a", "/a/b", "/a/bc", "/a/b/c", "/system.slice"];
const LEAF_CGROUPS: &[&str] = &["/", "/a", "/a/b", "/a/bc", "/a/b/c/d", "/x"];
const PROTOS: &[u8] = &[6, 17, 1, 58, 132, 0, 255];
const V4: &[&str] = &[
    "10.0.0.0",
    "10.1.0.0",
    "10.1.2.3",
    "192.0.2.0",
    "0.0.0.0",
    "10.1.2.4",
];
const V6: &[&str] = &["fd00::", "fd00:1::", "2001:db8::1", "::", "fd00::8000"];
const QUERY_ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.200.0.1",
    "192.0.2.77",
    "8.8.8.8",
    "::ffff:10.1.2.3",
    "fd00::1",
    "fd00:1::5",
    "fd00::8001",
    "2001:db8::1",
    "2001:db8::2",
    "::1",
];
const PORTS: &[u16] = &[0, 1, 22, 53, 80, 443, 8000, 8080, 65534, 65535];

/// Failing cases are kept beside this file (`props.regressions`), inside
/// the rules module, and replayed first on the next run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

fn pick<T: Clone + std::fmt::Debug + 'static>(pool: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(pool)
}

fn exe() -> impl Strategy<Value = ExePattern> {
    prop_oneof![
        pick(PATHS).prop_map(|p| ExePattern::Exact(p.to_string())),
        pick(PREFIXES).prop_map(|p| ExePattern::Prefix(p.to_string())),
        pick(SUFFIXES).prop_map(|s| ExePattern::Suffix(s.to_string())),
    ]
}

fn prefix() -> impl Strategy<Value = IpPrefix> {
    let v4 = (pick(V4), 0u8..=32).prop_map(|(a, len)| mask(a.parse().unwrap(), len));
    let v6 = (
        pick(V6),
        prop_oneof![0u8..=128, Just(8), Just(16), Just(112), Just(128)],
    )
        .prop_map(|(a, len)| mask(a.parse().unwrap(), len));
    prop_oneof![v4, v6]
}

/// The network of `addr/len`, with host bits cleared as the checker requires.
fn mask(addr: IpAddr, len: u8) -> IpPrefix {
    let addr = match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    };
    IpPrefix { addr, len }
}

fn ports() -> impl Strategy<Value = Vec<PortRange>> {
    proptest::collection::vec(
        (pick(PORTS), pick(PORTS)).prop_map(|(a, b)| PortRange {
            lo: a.min(b),
            hi: a.max(b),
        }),
        1..3,
    )
}

fn maybe_list<T: std::fmt::Debug>(
    s: impl Strategy<Value = Vec<T>>,
) -> impl Strategy<Value = Vec<T>> {
    weighted(0.3, s).prop_map(Option::unwrap_or_default)
}

fn rule() -> impl Strategy<Value = Rule> {
    let a = (
        any::<bool>(),
        weighted(0.4, exe()),
        weighted(0.2, pick(COMMS)),
        weighted(0.2, pick(UIDS)),
        weighted(0.25, pick(RULE_CGROUPS)),
        weighted(0.3, prop_oneof![Just(Direction::Out), Just(Direction::In)]),
    );
    let b = (
        weighted(
            0.3,
            prop_oneof![
                Just(ProtoMatch::Tcp),
                Just(ProtoMatch::Udp),
                Just(ProtoMatch::Icmp),
                Just(ProtoMatch::Any)
            ],
        ),
        maybe_list(proptest::collection::vec(prefix(), 1..4)),
        maybe_list(ports()),
        maybe_list(ports()),
        weighted(
            0.3,
            prop_oneof![Just(FamilyMatch::Ip), Just(FamilyMatch::Packet)],
        ),
    );
    (a, b).prop_map(
        |((block, exe, comm, uid, cgroup, direction), (proto, remote, rport, lport, family))| {
            let mut r = Rule::new("", if block { Action::Block } else { Action::Allow });
            r.exe = exe;
            r.comm = comm.map(str::to_string);
            r.user = uid.map(|uid| UserMatch { uid, name: None });
            r.cgroup = cgroup.map(str::to_string);
            r.direction = direction;
            r.proto = proto;
            r.remote = remote;
            r.remote_port = rport;
            r.local_port = lport;
            // `family = "packet"` with a protocol, remote or port is refused
            // by the checker (it could never match).
            let addressed = r.proto.is_some_and(|p| p != ProtoMatch::Any)
                || !r.remote.is_empty()
                || !r.remote_port.is_empty()
                || !r.local_port.is_empty();
            r.family = match family {
                Some(FamilyMatch::Packet) if addressed => Some(FamilyMatch::Ip),
                f => f,
            };
            r
        },
    )
}

fn rules() -> impl Strategy<Value = Rules> {
    (any::<bool>(), proptest::collection::vec(rule(), 1..50)).prop_map(|(block, mut rs)| {
        for (i, r) in rs.iter_mut().enumerate() {
            r.name = format!("r{i}");
        }
        Rules {
            default: if block { Action::Block } else { Action::Allow },
            rules: rs,
            source: String::new(),
        }
    })
}

#[derive(Debug, Clone)]
struct Conn {
    exe: &'static str,
    comm: &'static str,
    uid: u32,
    cgroup: Option<&'static str>,
    direction: Direction,
    proto: u8,
    remote: IpAddr,
    remote_port: u16,
    local_port: u16,
    packet: bool,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        pick(PORTS),
        (pick(PORTS), prop_oneof![Just(-1i32), Just(1)])
            .prop_map(|(p, d)| (i32::from(p) + d).clamp(0, 65535) as u16),
        any::<u16>(),
    ]
}

fn conn() -> impl Strategy<Value = Conn> {
    (
        (
            prop_oneof![pick(PATHS), Just("/usr/bin/cu"), Just("/opt/app/")],
            pick(QUERY_COMMS),
            prop_oneof![pick(UIDS), Just(4242u32)],
            weighted(0.9, pick(LEAF_CGROUPS)),
            prop_oneof![Just(Direction::Out), Just(Direction::In)],
        ),
        (
            pick(PROTOS),
            pick(QUERY_ADDRS).prop_map(|a| a.parse::<IpAddr>().unwrap()),
            port(),
            port(),
            proptest::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (exe, comm, uid, cgroup, direction),
                (proto, remote, remote_port, local_port, packet),
            )| {
                Conn {
                    exe,
                    comm,
                    uid,
                    cgroup,
                    direction,
                    proto,
                    remote,
                    remote_port,
                    local_port,
                    packet,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn compiled_matcher_agrees_with_reference(
        rules in rules(),
        conns in proptest::collection::vec(conn(), 1..40),
    ) {
        let compiled = CompiledRules::compile(&rules);
        for c in &conns {
            let ancestors = c.cgroup.map(cgroup_ancestors).unwrap_or_default();
            let q = Query {
                exe: c.exe,
                comm: c.comm,
                uid: c.uid,
                cgroup_ancestors: &ancestors,
                direction: c.direction,
                proto: c.proto,
                remote: c.remote,
                remote_port: c.remote_port,
                local_port: c.local_port,
                packet: c.packet,
            };
            let want = reference::decide(&rules, &q);
            let got = compiled.decide(&q);
            prop_assert_eq!(got, want, "query {:?}", q);
            // The kernel's tables: `family` folded into the protocol table
            // for IP sockets, and the one packet mask for packet sockets.
            let m = compiled.masks(&q);
            let kernel = if q.packet {
                m[..5].iter().fold(compiled.kernel_packet(), |a, x| a & *x)
            } else {
                let mut k = m[..9].iter().fold(Mask([u64::MAX; MASK_WORDS]), |a, x| a & *x);
                k = k & compiled.kernel_proto(q.proto);
                k
            };
            prop_assert_eq!(kernel.first(), want.rule, "kernel tables, query {:?}", q);
            // Each dimension on its own, too: the mask holds exactly the
            // rules whose condition holds.
            let masks = compiled.masks(&q);
            for (d, cond) in Condition::ALL.iter().enumerate() {
                for (i, r) in rules.rules.iter().enumerate() {
                    prop_assert_eq!(
                        masks[d].contains(i),
                        reference::condition_holds(r, *cond, &q),
                        "rule {} {:?}, condition {}, query {:?}", i, r, cond, q
                    );
                }
            }
        }
    }
}

#[test]
fn long_paths_match_as_in_the_kernel() {
    let long = format!("/opt/{}/bin/curl", "d".repeat(300));
    let mut rs = Vec::new();
    for (i, exe) in [
        ExePattern::Exact(format!("/opt/{}", "d".repeat(250))),
        ExePattern::Suffix("/bin/curl".into()),
        ExePattern::Prefix("/opt/ddd".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = Rule::new(format!("r{i}"), Action::Block);
        r.exe = Some(exe);
        rs.push(r);
    }
    let rules = Rules {
        default: Action::Allow,
        rules: rs,
        source: String::new(),
    };
    let compiled = CompiledRules::compile(&rules);
    let masks_for = |path: &str| compiled.exe_mask(path).iter().collect::<Vec<_>>();
    assert_eq!(masks_for(&long), [1, 2]);
    assert_eq!(masks_for(&format!("/opt/{}", "d".repeat(250))), [0, 2]);
    assert_eq!(masks_for(&format!("/opt/{}", "d".repeat(251))), [2]);
}

proptest! {
    #![proptest_config(config(128))]

    /// Every rule the generator makes is one a file can express, and the
    /// parser reads `to_toml` back into the same rules.
    #[test]
    fn rendered_rules_parse_back_to_the_same_rules(rules in rules()) {
        let text = rules.to_toml();
        let mut back = parse_rules("", &text, &NoUsers)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        for r in &mut back.rules {
            r.line = 0;
        }
        prop_assert_eq!(back, rules, "{}", text);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A rule reported as shadowed never decides, and whenever it matches,
    /// the rule said to shadow it matches too.
    #[test]
    fn shadowed_rules_never_decide(
        rules in rules(),
        conns in proptest::collection::vec(conn(), 1..40),
    ) {
        let shadowed = rules.shadowed();
        for c in &conns {
            let ancestors = c.cgroup.map(cgroup_ancestors).unwrap_or_default();
            let q = Query {
                exe: c.exe,
                comm: c.comm,
                uid: c.uid,
                cgroup_ancestors: &ancestors,
                direction: c.direction,
                proto: c.proto,
                remote: c.remote,
                remote_port: c.remote_port,
                local_port: c.local_port,
                packet: c.packet,
            };
            let d = reference::decide(&rules, &q);
            for &(j, i) in &shadowed {
                prop_assert_ne!(d.rule, Some(j));
                if reference::rule_matches(&rules.rules[j], &q) {
                    prop_assert!(reference::rule_matches(&rules.rules[i], &q));
                }
            }
        }
    }
}
