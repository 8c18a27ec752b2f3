//! Tests of the rules file as a person writes it: every refusal with its
//! position and message, order and default, `explain` and `summary`.

use std::net::IpAddr;

use super::*;

fn users(name: &str) -> Option<u32> {
    match name {
        "alice" => Some(1000),
        "root" => Some(0),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Rules, RulesError> {
    parse_rules("rules.toml", text, &users)
}

/// The single error of `text`, as `line:col: message`.
fn error(text: &str) -> String {
    let e = parse(text).expect_err("file should be refused");
    assert_eq!(e.diagnostics.len(), 1, "expected one error, got: {e}");
    let d = &e.diagnostics[0];
    assert_eq!(d.file, "rules.toml");
    format!("{}:{}: {}", d.line, d.column, d.message)
}

fn rule_with(cond: &str) -> String {
    format!("[[rule]]\nname = \"r\"\naction = \"block\"\n{cond}\n")
}

fn assert_error(text: &str, pos: &str, needle: &str) {
    let e = error(text);
    assert!(
        e.starts_with(&format!("{pos}: ")) && e.contains(needle),
        "got `{e}`, wanted `{pos}: ...{needle}...`"
    );
}

#[test]
fn full_example_parses() {
    let text = r#"
default = "block"

[[rule]]
name = "no-curl-to-lan"
action = "block"
exe = "/usr/bin/curl"
comm = "curl"
user = "alice"
cgroup = "/system.slice/foo.service/"
direction = "out"
proto = "tcp"
remote = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]
remote_port = [53, "8000-8080"]
local_port = 22

[[rule]]
name = "apps"
action = "allow"
exe = "/opt/app/*"
user = 1001

[[rule]]
name = "any-curl"
action = "allow"
exe = "*/curl"
user = "1002"
remote = "2001:db8::1"
"#;
    let r = parse(text).unwrap();
    assert_eq!(r.default, Action::Block);
    assert_eq!(r.rules.len(), 3);
    let a = &r.rules[0];
    assert_eq!(a.line, 4);
    assert_eq!(a.exe, Some(ExePattern::Exact("/usr/bin/curl".into())));
    assert_eq!(a.user.as_ref().unwrap().uid, 1000);
    assert_eq!(a.cgroup.as_deref(), Some("/system.slice/foo.service"));
    assert_eq!(a.direction, Some(Direction::Out));
    assert_eq!(a.proto, Some(ProtoMatch::Tcp));
    assert_eq!(a.remote.len(), 3);
    assert_eq!(a.remote[2].len, 32);
    assert_eq!(
        a.remote_port,
        [
            PortRange { lo: 53, hi: 53 },
            PortRange { lo: 8000, hi: 8080 }
        ]
    );
    assert_eq!(a.local_port, [PortRange { lo: 22, hi: 22 }]);
    assert_eq!(r.rules[1].exe, Some(ExePattern::Prefix("/opt/app/".into())));
    assert_eq!(r.rules[1].user.as_ref().unwrap().uid, 1001);
    assert_eq!(r.rules[2].exe, Some(ExePattern::Suffix("/curl".into())));
    assert_eq!(r.rules[2].user.as_ref().unwrap().uid, 1002);
    assert_eq!(r.rules[2].remote[0].len, 128);
}

#[test]
fn empty_file_allows_everything() {
    let r = parse("").unwrap();
    assert_eq!(r.default, Action::Allow);
    assert!(r.rules.is_empty());
}

#[test]
fn unknown_rule_key_suggests_closest() {
    assert_error(
        &rule_with("remote_prot = 53"),
        "4:1",
        "unknown key `remote_prot` in [[rule]]; did you mean `remote_port`?",
    );
    assert_error(
        &rule_with("dst = 53"),
        "4:1",
        "unknown key `dst` in [[rule]]; valid keys are: name, action, exe",
    );
}

#[test]
fn unknown_top_level_key_suggests_closest() {
    assert_error("defualt = \"allow\"", "1:1", "did you mean `default`?");
    assert_error(
        "exe = \"/bin/sh\"",
        "1:1",
        "`exe` belongs to a rule; put it under an `[[rule]]` header",
    );
    assert_error(
        "[rule]\nname = \"x\"",
        "1:2",
        "write each rule as an `[[rule]]` section",
    );
}

#[test]
fn toml_syntax_error_has_position() {
    assert_error(
        "[[rule]]\nname = \"x\naction = 1",
        "2:10",
        "TOML syntax: invalid basic string",
    );
}

#[test]
fn wrong_types_are_named() {
    assert_error(
        &rule_with("comm = 5"),
        "4:8",
        "`comm` must be a string, found an integer",
    );
    assert_error(
        &rule_with("remote_port = 1.5"),
        "4:15",
        "`remote_port` must be a port number or a \"low-high\" range, found a float",
    );
}

#[test]
fn bad_address_is_refused() {
    assert_error(
        &rule_with("remote = [\"10.0.0.0/8\", \"10.0.0.300\"]"),
        "4:25",
        "\"10.0.0.300\" is not an IP address or CIDR prefix",
    );
    assert_error(
        &rule_with("remote = \"10.0.0.0/33\""),
        "4:10",
        "prefix length \"33\" is not a number from 0 to 32",
    );
}

#[test]
fn host_bits_set_is_an_error_that_names_the_network() {
    assert_error(
        &rule_with("remote = \"10.1.2.3/8\""),
        "4:10",
        "\"10.1.2.3/8\" has host bits set: the network is 10.0.0.0/8",
    );
    assert_error(
        &rule_with("remote = \"fd00::1/8\""),
        "4:10",
        "the network is fd00::/8",
    );
}

#[test]
fn ipv4_mapped_prefix_is_refused() {
    assert_error(
        &rule_with("remote = \"::ffff:10.0.0.0/104\""),
        "4:10",
        "write \"10.0.0.0/8\"",
    );
}

#[test]
fn port_errors() {
    assert_error(
        &rule_with("remote_port = \"8080-8000\""),
        "4:15",
        "inverted port range \"8080-8000\": the low end comes first; write \"8000-8080\"",
    );
    assert_error(
        &rule_with("local_port = [22, 70000]"),
        "4:19",
        "port 70000 is out of range (0-65535)",
    );
    assert_error(
        &rule_with("remote_port = \"80-99999\""),
        "4:15",
        "port 99999 is out of range",
    );
    assert_error(
        &rule_with("remote_port = \"http\""),
        "4:15",
        "\"http\" is not a port or a \"low-high\" range",
    );
    assert_error(
        &rule_with("remote_port = []"),
        "4:15",
        "`remote_port` is an empty list, which would match nothing",
    );
}

#[test]
fn duplicate_rule_name() {
    let text = "[[rule]]\nname = \"a\"\naction = \"allow\"\n\n[[rule]]\nname = \"a\"\naction = \"block\"\n";
    assert_error(
        text,
        "6:8",
        "duplicate rule name `a`: rule #1 repeats the name of the rule at line 1",
    );
}

#[test]
fn missing_and_empty_name_and_action() {
    assert_error(
        "[[rule]]\naction = \"allow\"\n",
        "1:1",
        "rule has no `name`",
    );
    let e = parse("\n[[rule]]\nname = \"a\"\n").unwrap_err();
    assert_eq!(
        e.diagnostics[0].to_string(),
        "rules.toml:2:1: rule has no `action`; add `action = \"allow\"` or `action = \"block\"`"
    );
    assert_error(
        "[[rule]]\nname = \" \"\naction = \"allow\"\n",
        "2:8",
        "rule `name` is empty",
    );
    assert_error(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\n",
        "3:10",
        "`action` must be \"allow\" or \"block\", not \"deny\" (did you mean \"block\"?)",
    );
    assert_error("default = \"permit\"\n", "1:11", "did you mean \"allow\"?");
}

#[test]
fn exe_forms_the_kernel_cannot_evaluate_are_refused() {
    let cases = [
        ("exe = \"/usr/*/curl\"", "has a `*` in the middle"),
        ("exe = \"/usr/**\"", "has 2 `*`"),
        ("exe = \"*/bin/*\"", "has 2 `*`"),
        (
            "exe = \"/usr/bin/curl?\"",
            "uses `?`, which is not supported",
        ),
        ("exe = \"/usr/bin/[ab]\"", "uses `[`"),
        ("exe = \"curl\"", "is not an absolute path"),
        (
            "exe = \"usr/*\"",
            "can never match: an executable's path starts with `/`",
        ),
        (
            "exe = \"*/bin/\"",
            "can never match: an executable's path does not end",
        ),
        ("exe = \"/usr/bin/\"", "is a directory"),
        ("exe = \"/usr//bin/curl\"", "canonical path"),
        ("exe = \"/usr/../bin/curl\"", "canonical path"),
        ("exe = \"\"", "`exe` is empty"),
    ];
    for (cond, needle) in cases {
        let e = error(&rule_with(cond));
        assert!(e.starts_with("4:7: "), "{cond}: {e}");
        assert!(e.contains(needle), "{cond}: {e}");
        if !needle.contains("canonical") && !needle.contains("directory") {
            assert!(
                e.contains("supported forms")
                    || e.contains("absolute path")
                    || e.contains("can never match")
                    || e.contains("is empty"),
                "{cond}: {e}"
            );
        }
    }
    let long = format!("exe = \"/{}\"", "a".repeat(255));
    assert_error(&rule_with(&long), "4:7", "is 256 bytes long");
    let ok = format!("exe = \"/{}\"", "a".repeat(254));
    assert!(parse(&rule_with(&ok)).is_ok());
}

#[test]
fn comm_user_cgroup_errors() {
    assert_error(
        &rule_with("comm = \"a-very-long-process-name\""),
        "4:8",
        "keeps only the first 15 bytes of a task's name, so it can never match; write \"a-very-long-pro\"",
    );
    assert_error(&rule_with("user = \"bob\""), "4:8", "unknown user \"bob\"");
    assert_error(&rule_with("user = -1"), "4:8", "uid -1 is out of range");
    assert_error(
        &rule_with("cgroup = \"system.slice\""),
        "4:10",
        "must be an absolute path",
    );
    assert_error(
        &rule_with("cgroup = \"/a//b\""),
        "4:10",
        "empty, `.` or `..` component",
    );
    assert_error(
        &rule_with("direction = \"outbound\""),
        "4:13",
        "`direction` must be \"out\" or \"in\"",
    );
    assert_error(&rule_with("proto = \"sctp\""), "4:9", "`proto` must be");
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text =
        "[[rule]]\nname = \"a\"\naction = \"nope\"\nremote = \"1.2.3\"\n[[rule]]\nnme = \"b\"\n";
    let e = parse(text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(pos, [(3, 10), (4, 10), (5, 1), (5, 1), (6, 1)], "{e}");
    assert_eq!(e.to_string().lines().count(), 5);
}

#[test]
fn too_many_rules() {
    let mut text = String::new();
    for i in 0..=MAX_RULES {
        text.push_str(&format!("[[rule]]\nname = \"r{i}\"\naction = \"allow\"\n"));
    }
    let e = parse(&text).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1);
    assert!(e.diagnostics[0].message.contains("too many rules: 1025"));
    assert_eq!(e.diagnostics[0].line, 3 * MAX_RULES + 1);
}

fn query<'a>(exe: &'a str, remote: &str, port: u16, ancestors: &'a [String]) -> Query<'a> {
    Query {
        exe,
        comm: exe.rsplit('/').next().unwrap(),
        uid: 1000,
        cgroup_ancestors: ancestors,
        direction: Direction::Out,
        proto: IPPROTO_TCP,
        remote: remote.parse::<IpAddr>().unwrap(),
        remote_port: port,
        local_port: 40000,
        packet: false,
    }
}

const ORDERED: &str = r#"
default = "block"

[[rule]]
name = "dns"
action = "allow"
remote_port = 53

[[rule]]
name = "no-curl-lan"
action = "block"
exe = "*/curl"
remote = ["10.0.0.0/8", "fd00::/8"]

[[rule]]
name = "curl"
action = "allow"
exe = "/usr/bin/curl"
"#;

#[test]
fn first_match_decides_and_default_decides_the_rest() {
    let rules = parse(ORDERED).unwrap();
    let compiled = CompiledRules::compile(&rules);
    let cg = cgroup_ancestors("/user.slice");
    let cases = [
        ("/usr/bin/curl", "10.1.1.1", 53, Some(0), Action::Allow),
        ("/usr/bin/curl", "10.1.1.1", 443, Some(1), Action::Block),
        ("/usr/bin/curl", "fd00::5", 443, Some(1), Action::Block),
        (
            "/usr/bin/curl",
            "::ffff:10.0.0.1",
            443,
            Some(1),
            Action::Block,
        ),
        ("/usr/bin/curl", "192.0.2.1", 443, Some(2), Action::Allow),
        ("/usr/local/bin/curl", "192.0.2.1", 443, None, Action::Block),
        ("/usr/bin/wget", "10.1.1.1", 443, None, Action::Block),
    ];
    for (exe, remote, port, rule, action) in cases {
        let q = query(exe, remote, port, &cg);
        let want = Decision { rule, action };
        assert_eq!(reference::decide(&rules, &q), want, "{exe} {remote}:{port}");
        assert_eq!(compiled.decide(&q), want, "{exe} {remote}:{port}");
    }
}

#[test]
fn explain_names_the_rule_and_each_failed_condition() {
    let rules = parse(ORDERED).unwrap();
    let compiled = CompiledRules::compile(&rules);
    let cg = cgroup_ancestors("/user.slice");
    let q = query("/usr/bin/curl", "192.0.2.1", 443, &cg);
    let e = explain(&rules, &compiled, &q);
    assert!(e.agrees());
    assert_eq!(e.deciding_rule().unwrap().name, "curl");
    assert_eq!(e.rules.len(), 3);
    assert_eq!(e.rules[0].failed.len(), 1);
    assert_eq!(e.rules[0].failed[0].condition, Condition::RemotePort);
    assert_eq!(e.rules[1].failed[0].condition, Condition::Remote);
    let text = e.to_string();
    let want = "\
connection: exe=/usr/bin/curl comm=curl uid=1000 cgroup=/user.slice direction=out proto=tcp remote=192.0.2.1:443 local_port=40000
decision:   allow by rule #2 `curl` (line 15)
  #0    allow `dns`: does not match:
           remote_port wants 53, connection has 443
  #1    block `no-curl-lan`: does not match:
           remote wants one of [10.0.0.0/8, fd00::/8], connection has 192.0.2.1
  #2    allow `curl`: matches: exe=/usr/bin/curl
";
    assert_eq!(text, want);

    let q = query("/bin/wget", "192.0.2.1", 443, &cg);
    let text = explain(&rules, &compiled, &q).to_string();
    assert!(
        text.contains("decision:   block by default (no rule matches)"),
        "{text}"
    );
    assert!(
        text.contains("exe wants /usr/bin/curl, connection has /bin/wget"),
        "{text}"
    );
    assert!(text.contains("  default: block"), "{text}");
}

#[test]
fn summary_lists_every_rule() {
    let rules = parse_rules("/etc/procflow/rules.toml", ORDERED, &users).unwrap();
    let want = "\
/etc/procflow/rules.toml: 3 rules, default block
  #0    allow dns                  remote_port=53
  #1    block no-curl-lan          exe=*/curl remote=[10.0.0.0/8, fd00::/8]
  #2    allow curl                 exe=/usr/bin/curl
";
    assert_eq!(rules.summary(), want);
}

#[test]
fn readme_example_is_a_valid_rules_file() {
    let readme = include_str!("../../../../docs/rules.md");
    let start = readme.find("```toml\n").expect("README has a toml example") + 8;
    let len = readme[start..].find("```").unwrap();
    let rules = parse(&readme[start..start + len]).unwrap();
    assert_eq!(rules.rules.len(), 5);
    let compiled = CompiledRules::compile(&rules);
    let cg = cgroup_ancestors("/user.slice/user-1000.slice");
    let q = query("/usr/local/bin/curl", "192.168.1.1", 443, &cg);
    assert_eq!(
        compiled.decide(&q),
        Decision {
            rule: Some(1),
            action: Action::Block
        }
    );
}

#[test]
fn shadowed_rules_are_warned_about() {
    let text = r#"
[[rule]]
name = "lan"
action = "block"
exe = "/usr/*"
remote = "10.0.0.0/8"

[[rule]]
name = "curl-lan-web"
action = "allow"
exe = "/usr/bin/curl"
remote = ["10.1.0.0/16", "10.2.0.0/16"]
remote_port = 443

[[rule]]
name = "curl-anywhere"
action = "allow"
exe = "*/curl"
"#;
    let rules = parse(text).unwrap();
    assert_eq!(rules.shadowed(), [(1, 0)]);
    assert_eq!(
        rules.warnings(),
        [
            "rules.toml:8: rule #1 `curl-lan-web` can never match: rule #0 `lan` (line 2) \
          comes first and matches every connection it would"
        ]
    );
}

/// `n` rules, rule `i` with the condition `cond(i)`.
fn rules_with(n: usize, cond: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\naction = \"block\"\n{}\n",
                cond(i)
            )
        })
        .collect()
}

/// The line of rule `i`'s condition in a file made by [`rules_with`].
fn cond_line(i: usize) -> usize {
    i * 4 + 4
}

#[test]
fn distinct_values_beyond_the_kernel_tables_are_refused_at_the_first_one_over() {
    // The comm and uid tables keep one entry for the mask of values no rule
    // names: 1023 distinct values fit, 1024 do not.
    let comms = |n| rules_with(n, |i| format!("comm = \"c{i}\""));
    parse(&comms(1023)).unwrap();
    let e = error(&comms(1024));
    assert!(
        e.starts_with(&format!(
            "{}:8: too many distinct `comm` values: 1024",
            cond_line(1023)
        )) && e.contains("comm table holds at most 1023"),
        "{e}"
    );
    // The same value many times is one entry.
    parse(&rules_with(1024, |_| "comm = \"same\"".into())).unwrap();

    let users = |n| rules_with(n, |i| format!("user = {}", 5000 + i));
    parse(&users(1023)).unwrap();
    let e = error(&users(1024));
    assert!(
        e.starts_with(&format!(
            "{}:8: too many distinct `user` values (uids): 1024",
            cond_line(1023)
        )) && e.contains("at most 1023"),
        "{e}"
    );

    // Every remote prefix is an entry, however many a rule lists; the
    // 16384th distinct IPv4 prefix is refused, IPv6 are counted apart.
    let list = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "{}{}",
        rule_with(&format!("remote = [{}]", list(0, 10000))).replace("\"r\"", "\"a\""),
        rule_with(&format!("remote = [{}, \"fd00::/8\"]", list(10000, 6383)))
    );
    parse(&text).unwrap();
    let text = format!(
        "{}{}",
        rule_with(&format!("remote = [{}]", list(0, 10000))).replace("\"r\"", "\"a\""),
        rule_with(&format!("remote = [{}]", list(10000, 6384)))
    );
    let e = error(&text);
    assert!(
        e.contains("too many distinct IPv4 `remote` prefixes: 16384")
            && e.contains("at most 16383"),
        "{e}"
    );
    let col = text
        .lines()
        .nth(7)
        .unwrap()
        .find("\"10.63.255.0/24\"")
        .unwrap()
        + 1;
    assert!(e.starts_with(&format!("8:{col}: ")), "{e}");

    // Port ranges: each range cuts the port space at its ends.
    let ports = |n: usize| {
        rule_with(&format!(
            "remote_port = [{}]",
            (0..n)
                .map(|i| (2 * i + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    // n single ports 1, 3, 5...: 2n + 1 segments.
    parse(&ports(2047)).unwrap();
    let e = error(&ports(2048));
    assert!(
        e.contains("`remote_port` ranges cut the port space into 4097 segments")
            && e.contains("at most 4096"),
        "{e}"
    );
}

#[test]
fn cgroups_beyond_the_levels_the_kernel_walks_are_refused() {
    let deep = |n: usize| format!("cgroup = \"{}\"", "/a".repeat(n));
    parse(&rule_with(&deep(15))).unwrap();
    assert_error(
        &rule_with(&deep(16)),
        "4:10",
        "16 levels deep; the kernel looks at most 15",
    );
}

#[test]
fn many_rules_are_checked_in_linear_time() {
    // 200,000 rules: refused (too many), but quickly, with the position of
    // the first rule over the limit. Finding each rule's line used to scan
    // the file from its start.
    let text = rules_with(200_000, |i| format!("remote_port = {}", i % 60000));
    let t = std::time::Instant::now();
    let e = parse(&text).expect_err("too many rules");
    let took = t.elapsed();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    assert_eq!(e.diagnostics[0].line, 1024 * 4 + 1, "{e}");
    assert!(took.as_secs() < 10, "checking 200,000 rules took {took:?}");
}

#[test]
fn the_shadowing_analysis_is_bounded_and_says_when_it_stopped() {
    // 1,024 rules of 15 prefixes each: comparing every pair's lists would
    // take 118 million prefix comparisons.
    let text = rules_with(1024, |i| {
        let list: Vec<String> = (0..15)
            .map(|k| format!("\"10.{}.{}.0/24\"", i / 16, (i % 16) * 16 + k))
            .collect();
        format!("remote = [{}]", list.join(", "))
    });
    let rules = parse(&text).unwrap();
    let t = std::time::Instant::now();
    let s = rules.shadowing(shadow::SHADOW_BUDGET);
    let compiled = CompiledRules::compile(&rules);
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    assert_eq!(compiled.remote_v4.entries.len(), 1024 * 15);
    let j = s.stopped_at.expect("the analysis stops at its budget");
    assert!(s.pairs.is_empty());
    let w = rules.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!(
            "rules.toml:{}: shadowing not checked from rule #{j}",
            j * 4 + 1
        )),
        "{w:?}"
    );

    // Within budget, nothing is said.
    let small = parse(&rules_with(3, |i| format!("remote = \"10.0.{i}.0/24\""))).unwrap();
    assert_eq!(small.shadowing(shadow::SHADOW_BUDGET).stopped_at, None);
    assert_eq!(small.shadowing(2).stopped_at, Some(2));
    assert!(small.warnings_within(2)[0].contains("shadowing not checked from rule #2 `r2`"));
}

fn packet_query<'a>(exe: &'a str, uid: u32, ancestors: &'a [String]) -> Query<'a> {
    Query {
        exe,
        comm: exe.rsplit('/').next().unwrap(),
        uid,
        cgroup_ancestors: ancestors,
        direction: Direction::Out,
        proto: 0,
        remote: "0.0.0.0".parse::<IpAddr>().unwrap(),
        remote_port: 0,
        local_port: 0,
        packet: true,
    }
}

#[test]
fn packet_sockets_are_decided_by_who_sends() {
    let text = r#"
default = "block"

[[rule]]
name = "dns"
action = "allow"
remote_port = 53

[[rule]]
name = "no-packet-for-nobody"
action = "block"
family = "packet"
user = 65534

[[rule]]
name = "dhcp-client"
action = "allow"
exe = "/usr/sbin/dhclient"

[[rule]]
name = "ip-only"
action = "allow"
family = "ip"
exe = "/usr/bin/curl"
"#;
    let rules = parse(text).unwrap();
    let compiled = CompiledRules::compile(&rules);
    let anc = cgroup_ancestors("/");
    let decide = |exe, uid| {
        let q = packet_query(exe, uid, &anc);
        let d = compiled.decide(&q);
        assert_eq!(d, reference::decide(&rules, &q));
        (d.rule, d.action)
    };
    // A rule with a port never matches a packet socket; `user` alone does.
    assert_eq!(decide("/usr/bin/x", 65534), (Some(1), Action::Block));
    // A rule naming only who sends matches its packet sockets too.
    assert_eq!(decide("/usr/sbin/dhclient", 0), (Some(2), Action::Allow));
    // `family = "ip"` leaves packet sockets to the default.
    assert_eq!(decide("/usr/bin/curl", 0), (None, Action::Block));
    // ... and a `family = "packet"` rule never matches IP traffic.
    let q = query("/usr/bin/x", "10.0.0.1", 80, &anc);
    let q = Query { uid: 65534, ..q };
    assert_eq!(compiled.decide(&q).rule, None);
    let e = explain(&rules, &compiled, &packet_query("/usr/bin/curl", 0, &anc)).to_string();
    assert!(e.contains("family=packet"), "{e}");
    assert!(e.contains("family wants ip, connection has packet"), "{e}");
    assert!(
        e.contains("remote_port wants 53, connection has none (a packet socket)"),
        "{e}"
    );
    assert!(
        rules.summary().contains("user=uid 65534 family=packet"),
        "{}",
        rules.summary()
    );
}

#[test]
fn family_errors() {
    let e = error("[[rule]]\nname = \"a\"\naction = \"block\"\nfamily = \"inet\"\n");
    assert!(e.starts_with("4:10: `family` must be \"ip\""), "{e}");
    let e = error(
        "[[rule]]\nname = \"a\"\naction = \"block\"\nremote = \"10.0.0.0/8\"\nfamily = \"packet\"\n",
    );
    assert!(
        e.starts_with("5:10: `family = \"packet\"` with `remote` can never match"),
        "{e}"
    );
    let e =
        error("[[rule]]\nname = \"a\"\naction = \"block\"\nproto = \"udp\"\nfamily = \"packet\"\n");
    assert!(e.contains("with `proto` can never match"), "{e}");
    // `proto = "any"` is no protocol condition.
    parse("[[rule]]\nname = \"a\"\naction = \"block\"\nproto = \"any\"\nfamily = \"packet\"\n")
        .unwrap();
}
