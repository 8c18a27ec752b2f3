#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: real DNS responses and
PTR replies, rules files from docs/rules.md and the rules tests, sizes,
durations and times as users write them, report arguments, and valid kernel
records laid out as crates/bpf/bpf/procflow.h declares them (little-endian,
x86_64). Run it from anywhere: python3 fuzz/seeds.py. Files are named by
what they hold; inputs libFuzzer finds are added with scripts/fuzz.sh merge.
"""

import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- DNS -------------------------------------------------------------------


def qname(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def rr(owner, rtype, rdata, ttl=60):
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def message(id_, flags, questions, answers, authority=b"", ns=0):
    hdr = struct.pack(">HHHHHH", id_, flags, len(questions), len(answers), ns, 0)
    return hdr + b"".join(questions) + b"".join(answers) + authority


def question(name, qtype=1):
    return qname(name) + struct.pack(">HH", qtype, 1)


PTR_TO_Q = b"\xc0\x0c"  # compression pointer to the first question's name


def dns_seeds():
    a = bytes([192, 0, 2, 7])
    aaaa = bytes.fromhex("20010db8000000000000000000000007")
    # A response with a CNAME, as resolvers send them (compressed).
    cname = bytes([3]) + b"cdn" + PTR_TO_Q
    write("dns_answer", "a_cname", message(
        0x1234, 0x8180, [question("www.example.test")],
        [rr(PTR_TO_Q, 5, cname), rr(b"\xc0\x2e", 1, a)]))
    write("dns_answer", "aaaa", message(
        0x0102, 0x8180, [question("Host.Example.test", 28)],
        [rr(PTR_TO_Q, 28, aaaa)]))
    write("dns_answer", "a_and_aaaa", message(
        0x0a0b, 0x8580, [question("two.test")],
        [rr(PTR_TO_Q, 1, a), rr(PTR_TO_Q, 28, aaaa), rr(PTR_TO_Q, 16, b"\x04text")]))
    write("dns_answer", "uncompressed", message(
        7, 0x8180, [question("plain.test")], [rr(qname("plain.test"), 1, a)]))
    write("dns_answer", "nxdomain", message(
        9, 0x8183, [question("missing.test")], [],
        authority=rr(qname("test"), 6, b"\0\0" + bytes(20)), ns=1))
    write("dns_answer", "query", message(5, 0x0100, [question("asked.test")], []))
    write("dns_answer", "loop", message(1, 0x8180, [b"\xc0\x0c\0\x01\0\x01"], []))


def reverse_name(ip):
    if ":" not in ip:
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    import ipaddress
    nib = ipaddress.IPv6Address(ip).exploded.replace(":", "")
    return ".".join(reversed(nib)) + ".ip6.arpa"


def ptr_seeds():
    for ip, tag in (("192.0.2.7", "v4"), ("2001:db8::1", "v6")):
        q = question(reverse_name(ip), 12)
        name = qname("host.example.test")
        write("dns_ptr", f"{tag}_name", message(
            0x4242, 0x8180, [q], [rr(PTR_TO_Q, 12, name)]))
        write("dns_ptr", f"{tag}_two_names", message(
            0x1111, 0x8180, [q], [rr(PTR_TO_Q, 12, qname("a.test")),
                                  rr(PTR_TO_Q, 12, b"\x01b\xc0\x0c")]))
        write("dns_ptr", f"{tag}_cname_then_ptr", message(
            0x2222, 0x8180, [q], [rr(PTR_TO_Q, 5, qname("alias.test")),
                                  rr(PTR_TO_Q, 12, name)]))
        write("dns_ptr", f"{tag}_nxdomain", message(0x3333, 0x8183, [q], []))
        write("dns_ptr", f"{tag}_servfail", message(0x4444, 0x8182, [q], []))
        write("dns_ptr", f"{tag}_query", message(0x5555, 0x0100, [q], []))


# --- rules ----------------------------------------------------------------


def rules_seeds():
    with open(os.path.join(ROOT, "docs", "rules.md")) as f:
        doc = f.read()
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc, re.S)):
        write("rules", f"docs_{i}", block)
    write("rules", "default_block", """default = "block"

[[rule]]
name = "root-anything"
action = "allow"
user = 0

[[rule]]
name = "alice-web"
action = "allow"
user = "alice"
proto = "tcp"
remote_port = [80, 443]
local_port = "1024-65535"

[[rule]]
name = "ping"
action = "allow"
proto = ["icmp", "icmpv6"]
direction = "out"

[[rule]]
name = "dhcp-client-frames"
action = "allow"
family = "packet"
exe = "/usr/sbin/dhclient"

[[rule]]
name = "ip-only"
action = "allow"
family = "ip"
comm = "curl"
""")
    write("rules", "comm_cgroup_v6", """[[rule]]
name = "sshd-in"
action = "allow"
comm = "sshd"
direction = "in"
local_port = 22

[[rule]]
name = "backup"
action = "block"
cgroup = "/system.slice/backup.service/"
remote = ["2001:db8::/32", "::ffff:10.0.0.0/104", "192.0.2.0/24"]

[[rule]]
name = "opt"
action = "block"
exe = "/opt/app/*"
remote = "fd00::1"
""")
    write("rules", "errors", """default = "deny"

[[rule]]
name = "bad"
action = "allow"
remote = "10.0.0.0/33"
remote_port = "80-22"
exe = "curl"
user = "nobody-known"

[[rule]]
name = "bad"
action = "allow"
unknown = 1
""")
    write("rules", "toml_error", '[[rule]]\nname = "x\naction = allow\n')
    write("rules", "empty", "")


# --- sizes, durations, times ------------------------------------------------


def timespec_seeds():
    for i, s in enumerate([
        "30m", "1h30m", "7d", "2w", "90s", "100M", "1GiB", "10K", "0", "0.5",
        "18446744073709551615", "now", "2026-11-18T11:06:40Z",
        "2026-11-18T12:06:40.123456+01:00", "2026-11-18",
    ]):
        write("timespec", f"s{i:02}_{re.sub(r'[^A-Za-z0-9]', '_', s)}", s)
    write("timespec", "ns_2026", struct.pack("<Q", 1_795_000_000_123_456_789))


def report_seeds():
    for i, args in enumerate([
        ["--since", "7d", "--until", "1h", "--timeline", "--bucket", "5m"],
        ["--since", "2026-11-18", "--until", "2026-11-19T00:00:00Z", "--by", "exe,remote,port"],
        ["--remote", "10.0.0.0/8", "--port", "https", "--proto", "tcp", "--top", "5"],
        ["--remote", "2001:db8::1", "--port", "443", "--user", "alice", "--exe", "/usr/bin/curl"],
        ["--chart", "out.svg", "--since", "30d"],
        ["--verdicts", "--action", "block", "--rule", "no-curl-to-lan", "--format", "json"],
        ["--rules-changes", "--since", "now"],
    ]):
        write("report_args", f"args_{i}", "\n".join(args) + "\n")


# --- kernel records (procflow.h) -----------------------------------------

EV = dict(OPEN=1, CLOSE=2, OWNER=3, RELEASE=4, EXEC=5, DUMP=7, VERDICT=9, DNS=10, FORK=11)
F_OWNER, F_BEFORE, F_MPTCP = 0x02, 0x20, 0x40


def owner(pid=4242, comm=b"curl"):
    # pf_owner: pid ppid uid _pad cgroup_id start_ns comm[16] (48 bytes)
    return struct.pack("<IIIIQQ16s", pid, 1, 1000, 0, 7, 123_000_000, comm)


def v4(a):
    return bytes(a) + bytes(12)


def mapped(a):
    return bytes(10) + b"\xff\xff" + bytes(a)


def flow(kind, flags=F_OWNER, family=4, proto=6, local=v4([10, 0, 0, 1]),
         remote=v4([192, 0, 2, 1]), lport=40000, rport=443, direction=1, origin=1):
    addr = struct.pack("<16s16sHHBBBB", local, remote, lport, rport,
                       family, proto, direction, origin)
    counters = struct.pack("<6Q", 1000, 2000, 10, 20, 500, 1500)
    rec = struct.pack("<IIQQQ", kind, flags, 77, 5_000_000_000, 4_000_000_000)
    rec += addr + struct.pack("<II", 4026531840, 0) + owner() + counters
    rec += struct.pack("<QQ", 100, 200)
    assert len(rec) == 192, len(rec)
    return rec


def exec_rec():
    path, args = b"/usr/bin/curl", b"curl\0-s\0http://192.0.2.1/\0"
    rec = struct.pack("<IIIIHHIQ", EV["EXEC"], 4242, 1, 1000, len(path), len(args), 0, 123)
    rec += struct.pack("<16s256s256s1024s", b"curl", args, b"/usr/bin/curl", path)
    assert len(rec) == 1584, len(rec)
    return rec


def dns_rec(query=0):
    if query:
        msg = message(0x1234, 0x0100, [question("www.example.test")], [])
    else:
        msg = message(0x1234, 0x8180, [question("www.example.test")],
                      [rr(PTR_TO_Q, 1, bytes([192, 0, 2, 7]))])
    # pf_dns_event: kind pid uid netns start_ns cookie ts_ns remote[16]
    # rport lport family proto query _pad len _pad2 data[512]
    rec = struct.pack("<IIIIQQQ16sHHBBBBII", EV["DNS"], 4242, 1000, 4026531840, 123, 77,
                      5_000_000_000, v4([192, 0, 2, 53]), 53, 40000, 4, 17, query, 0,
                      len(msg), 0)
    rec += msg.ljust(512, b"\0")
    assert len(rec) == 584, len(rec)
    return rec


def verdict_rec(block=1, rule=0, family=4, remote=v4([10, 1, 2, 3]), hook=1):
    exe = b"/usr/bin/curl"
    rec = struct.pack("<IIQQiI", EV["VERDICT"], block, 5_000_000_000, 77, rule, 3)
    rec += owner()
    rec += struct.pack("<16s16sHHBBBBII", remote, v4([10, 0, 0, 1]), 443, 40000,
                       family, 6, 1, hook, 4026531840, len(exe))
    rec += exe.ljust(256, b"\0")
    assert len(rec) == 384, len(rec)
    return rec


def kernel_seeds():
    six = bytes.fromhex("20010db8000000000000000000000001")
    write("kernel_record", "open_tcp_v4", flow(EV["OPEN"]))
    write("kernel_record", "open_udp_v6", flow(EV["OPEN"], family=6, proto=17,
                                               local=bytes(16), remote=six, rport=53, origin=3))
    write("kernel_record", "open_mapped_v4", flow(EV["OPEN"], family=6, local=mapped([10, 0, 0, 1]),
                                                  remote=mapped([192, 0, 2, 9]), direction=2, origin=2))
    write("kernel_record", "close_mptcp", flow(EV["CLOSE"], flags=F_OWNER | F_MPTCP | F_BEFORE))
    write("kernel_record", "owner", flow(EV["OWNER"]))
    write("kernel_record", "release", flow(EV["RELEASE"], flags=0, proto=17))
    write("kernel_record", "dump", flow(EV["DUMP"]))
    write("kernel_record", "exec", exec_rec())
    write("kernel_record", "fork", struct.pack("<IIIIQQ", EV["FORK"], 4243, 4242, 0, 124, 123))
    write("kernel_record", "dns", dns_rec())
    write("kernel_record", "dns_query", dns_rec(query=1))
    write("kernel_record", "verdict_block_v4", verdict_rec())
    write("kernel_record", "verdict_default_v6", verdict_rec(block=0, rule=-1, family=6,
                                                             remote=six, hook=3))


if __name__ == "__main__":
    dns_seeds()
    ptr_seeds()
    rules_seeds()
    timespec_seeds()
    report_seeds()
    kernel_seeds()
