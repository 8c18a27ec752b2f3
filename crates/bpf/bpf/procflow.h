/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The ABI between procflow's eBPF programs and its Rust loader.
 *
 * Every struct that crosses the kernel boundary is defined here once; the
 * Rust side uses the types that the libbpf-rs skeleton generates from it.
 * Sizes are pinned by _Static_assert here and by const asserts in Rust.
 */
#ifndef PROCFLOW_H
#define PROCFLOW_H

#define PF_COMM_LEN 16
#define PF_ARGS_LEN 256
#define PF_FNAME_LEN 256
#define PF_EXEC_PATH 1024

/* Record kinds, in the ring buffer and in iterator output. */
enum pf_kind {
	PF_EV_OPEN = 1,    /* a flow was met for the first time */
	PF_EV_CLOSE = 2,   /* a TCP flow closed: final counters */
	PF_EV_OWNER = 3,   /* another process used a socket */
	PF_EV_RELEASE = 4, /* a datagram socket was released: its flows end */
	PF_EV_EXEC = 5,    /* a process called exec */
	PF_EV_SCAN = 6,    /* start-up scan: an existing socket */
	PF_EV_DUMP = 7,    /* periodic reading of a live socket */
	PF_EV_VERDICT = 9, /* a rule (or the default) decided a connection */
	PF_EV_DNS = 10,    /* a DNS response arrived (remote names) */
	PF_EV_FORK = 11,   /* a new process (not a thread) was created */
};

enum pf_origin {
	PF_ORIGIN_CONNECT = 1,
	PF_ORIGIN_ACCEPT = 2,
	PF_ORIGIN_SEND = 3,
	PF_ORIGIN_STARTUP = 4,
	PF_ORIGIN_PACKET = 5,
	PF_ORIGIN_PACKET_SOCKET = 6, /* a frame sent through an AF_PACKET socket */
};

enum pf_direction {
	PF_DIR_UNKNOWN = 0,
	PF_DIR_OUT = 1,
	PF_DIR_IN = 2,
};

/* pf_sock_ctx.flags */
enum pf_flag {
	PF_F_ANNOUNCED = 0x01,  /* an OPEN record was sent */
	PF_F_OWNER = 0x02,      /* owner fields are set */
	PF_F_OWNER_WEAK = 0x04, /* owner inherited (listener, scan), not seen acting */
	PF_F_BORN = 0x08,       /* created at the socket's birth: no earlier traffic */
	PF_F_CLOSED = 0x10,     /* the final record was sent */
	PF_F_BEFORE = 0x20,     /* before_start is meaningful (start-up scan) */
	PF_F_MPTCP = 0x40,      /* a TCP subflow of an MPTCP socket */
	PF_F_PACKET = 0x80,     /* an AF_PACKET socket (packet.bpf.c) */
	PF_F_SLOT = 0x100,      /* a UDP socket's first remote is counted in its context */
};

struct pf_owner {
	__u32 pid;  /* tgid */
	__u32 ppid;
	__u32 uid;
	__u32 _pad;
	__u64 cgroup_id;
	__u64 start_ns;  /* the process's start (group leader's start_boottime):
			  * with pid, a key no later process repeats */
	char comm[PF_COMM_LEN];
};

struct pf_counters {
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 rx_packets;
	__u64 tx_payload;
	__u64 rx_payload;
};

struct pf_addr {
	__u8 local[16];  /* IPv4 in the first 4 bytes */
	__u8 remote[16];
	__u16 lport;     /* host order */
	__u16 rport;     /* host order */
	__u8 family;     /* 4 or 6 */
	__u8 proto;      /* IPPROTO_* */
	__u8 direction;  /* enum pf_direction */
	__u8 origin;     /* enum pf_origin */
};

/* A UDP socket's flow with its first remote (a connected socket's only
 * one): counted in the socket's own context (pf_sock_ctx.tx, rx) instead of the
 * datagram table, so that its packets need no table lookup. */
enum pf_slot_state {
	PF_SLOT_FREE = 0,
	PF_SLOT_CLAIMING = 1, /* one CPU is filling it in */
	PF_SLOT_COUNTING = 2,
	PF_SLOT_RELEASED = 3, /* the socket was released: late packets go to the table */
};

struct pf_slot {
	__u32 state;      /* enum pf_slot_state */
	__u16 rport;
	__u16 lport;
	__u8 family;
	__u8 direction;   /* of its first packet */
	__u8 origin;
	__u8 _pad[5];
	__u64 start_ns;
	__u8 remote[16];  /* as the packets carry it (IPv4 in the first 4 bytes) */
	__u8 local[16];
};

/* One direction's counters of a socket, alone in a cache line. Each is
 * written by every packet of its direction, often on another CPU than the
 * other direction and than the hooks that only read the context (the send
 * and receive tracepoints): apart, the writes of one never take the others'
 * cache line away. */
struct pf_line {
	__u64 bytes;
	__u64 packets;
	__u64 payload;   /* a UDP slot flow's (TCP payload is read at record time) */
	__u64 _pad[5];
};

/* Per-socket context, in socket storage: freed by the kernel with the socket.
 * Socket storage puts it 8 bytes into a cache line (after the map pointer
 * of struct bpf_local_storage_data), so `tx` (at 248) and `rx` (at 312)
 * begin cache lines; what the other hooks read comes before. */
struct pf_sock_ctx {
	__u64 cookie;
	__u64 start_ns;          /* boot-time ns when first met */
	__u64 base_tx;           /* TCP payload counters when first met */
	__u64 base_rx;
	struct pf_owner owner;
	struct pf_addr addr;
	__u32 netns;
	__u32 flags;
	__u32 owner_changes;
	__u32 dgram_n;           /* datagram table entries this socket made */
	__u32 dgram_uid;         /* the uid they are charged to */
	__u32 _pad;
	struct pf_slot slot;     /* UDP: the first remote's flow, counted in tx/rx */
	__u8 _gap[48];
	struct pf_line tx;       /* TCP: wire counters; UDP: the slot flow's */
	struct pf_line rx;
};

/* Key of a datagram flow: one per socket and remote. */
struct pf_dgram_key {
	__u64 cookie;
	__u8 remote[16];
	__u16 rport;
	__u8 family;
	__u8 _pad[5];
};

struct pf_dgram_val {
	struct pf_counters c;
	__u64 start_ns;
	__u8 local[16];
	__u16 lport;
	__u8 direction;
	__u8 origin;
	__u8 proto;
	__u8 _pad[3];
};

/* Handshake packets of a connection not yet accepted, by 4-tuple. */
struct pf_tuple {
	__u8 local[16];
	__u8 remote[16];
	__u16 lport;
	__u16 rport;
	__u32 netns;
};

struct pf_pending {
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 rx_packets;
	struct pf_owner owner;  /* the listener's owner */
	__u8 has_owner;
	__u8 _pad[7];
};

/* Flow records: OPEN, CLOSE, OWNER, RELEASE, SCAN, DUMP, TASKSOCK. */
struct pf_flow_event {
	__u32 kind;
	__u32 flags;          /* pf_sock_ctx.flags */
	__u64 cookie;
	__u64 ts_ns;          /* boot-time ns of the event */
	__u64 start_ns;       /* boot-time ns the flow was first met */
	struct pf_addr addr;
	__u32 netns;
	__u32 _pad;
	struct pf_owner owner;
	struct pf_counters c;
	__u64 before_tx;
	__u64 before_rx;
};

struct pf_exec_event {
	__u32 kind;
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u16 path_len;       /* bytes of path[] used (0: not found) */
	__u16 args_len;
	__u32 _pad;
	__u64 start_ns;       /* the process's start_boottime */
	char comm[PF_COMM_LEN];  /* as set by this exec */
	char args[PF_ARGS_LEN];
	char fname[PF_FNAME_LEN];
	char path[PF_EXEC_PATH];  /* absolute path of the executable */
};

/* A process created by fork or clone (threads are not reported): it runs
 * what its parent ran until it calls exec. */
struct pf_fork_event {
	__u32 kind;  /* PF_EV_FORK */
	__u32 pid;   /* the child's tgid */
	__u32 ppid;  /* the forking process's tgid */
	__u32 _pad;
	__u64 start_ns;         /* the child's start_boottime */
	__u64 parent_start_ns;  /* the forking process's start_boottime */
};

#define PF_DNS_MAX 512

/* A DNS message on port 53 (UDP, or the first segment of a TCP message
 * after its 2-byte length): a query the socket sent to a server, or a
 * response it received from one. User space takes names only from a
 * response that answers a query the same socket sent to the same server. */
struct pf_dns_event {
	__u32 kind;      /* PF_EV_DNS */
	__u32 pid;       /* owner of the socket, 0 if unknown */
	__u32 uid;       /* the owner's uid (meaningful when pid != 0) */
	__u32 netns;     /* the socket's network namespace (inode) */
	__u64 start_ns;  /* the owner's start (start_boottime) */
	__u64 cookie;    /* the socket */
	__u64 ts_ns;     /* boot-time ns */
	__u8 remote[16]; /* the server (IPv4 in the first 4 bytes) */
	__u16 rport;     /* the server's port, host order */
	__u16 lport;     /* the socket's port, host order */
	__u8 family;     /* 4 or 6 */
	__u8 proto;      /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 query;      /* 1: sent by the socket; 0: received by it */
	__u8 _pad;
	__u32 len;       /* bytes of data used */
	__u32 _pad2;
	__u8 data[PF_DNS_MAX];
};

/* Counters for the stats record; one slot per CPU. */
enum pf_stat {
	PF_STAT_RB_LOST = 0,   /* ring buffer full: event dropped */
	PF_STAT_NO_STORAGE,    /* socket storage could not be created */
	PF_STAT_DGRAM_FULL,    /* datagram flow table full */
	PF_STAT_VERDICT_SUPPRESSED, /* verdict records over the rate limit */
	PF_STAT_FAIL_CLOSED,   /* blocked: an address family the rules do not know */
	PF_STAT_UNWALKABLE,    /* dropped inbound: headers not walkable to transport */
	PF_STAT_REROUTED,      /* dropped egress: a source route sends it elsewhere than decided */
	PF_STAT_DGRAM_QUOTA,   /* datagrams counted in their socket's overflow flow (quota) */
	PF_STAT_BYPASS_FOUND,  /* start-up scan: packet sockets with PACKET_QDISC_BYPASS on */
	PF_STAT_RB_PEAK,       /* most bytes seen waiting in the ring buffer before a record
				  was reserved (a maximum per CPU, not a count) */
	PF_STAT_DGRAM_SPILL,   /* datagrams counted through dgram_spill (no table entry) */
	PF_STAT_MAX,
};

#ifdef __bpf__
_Static_assert(sizeof(struct pf_owner) == 48, "pf_owner size");
_Static_assert(sizeof(struct pf_fork_event) == 32, "pf_fork_event size");
_Static_assert(sizeof(struct pf_counters) == 48, "pf_counters size");
_Static_assert(sizeof(struct pf_addr) == 40, "pf_addr size");
_Static_assert(sizeof(struct pf_flow_event) == 192, "pf_flow_event size");
_Static_assert(sizeof(struct pf_dgram_key) == 32, "pf_dgram_key size");
_Static_assert(sizeof(struct pf_dgram_val) == 80, "pf_dgram_val size");
_Static_assert(sizeof(struct pf_slot) == 56, "pf_slot size");
_Static_assert(sizeof(struct pf_line) == 64, "pf_line size");
_Static_assert(sizeof(struct pf_sock_ctx) == 376, "pf_sock_ctx size");
_Static_assert(__builtin_offsetof(struct pf_sock_ctx, tx) == 248, "pf_sock_ctx.tx offset");
_Static_assert(sizeof(struct pf_exec_event) == 1584, "pf_exec_event size");
_Static_assert(sizeof(struct pf_dns_event) == 584, "pf_dns_event size");
#endif

/* ---- Rules enforcement (policy.bpf.c, crates/bpf/src/policy.rs) ---- */

#define PF_RULE_WORDS 16     /* 1024 rules, one bit each */
#define PF_EXE_KEY 256       /* bytes of path in an exe LPM key */
#define PF_EXE_UNKNOWN 1     /* first byte of the exe key of an unknown program */
#define PF_CG_LEVELS 16      /* cgroup levels a rule may name: 0 (/) to 15 */
#define PF_PORT_SEGS 4096    /* port segments per dimension and generation */
#define PF_REMOTE_ENTRIES 16384 /* entries of each remote LPM table */
#define PF_VERDICT_RATE 4096    /* verdict records per second and CPU */
#define PF_VERDICT_RATE_UID 1024 /* verdict records per second and uid */
/* Datagram table quotas: entries one socket may make (its datagrams with
 * further remotes are counted in its overflow flow), and entries one uid's
 * sockets may make (overflow flows may take it up to PF_DGRAM_UID_HARD). */
#define PF_DGRAM_SOCKET 4096
#define PF_DGRAM_UID 32768
#define PF_DGRAM_UID_HARD 65536

/* The table sizes Rust needs, as an enum so that they reach BTF and the
 * skeleton's types (procflow-bpf takes them from there). */
enum pf_size {
	PF_SIZE_PORT_SEGS = PF_PORT_SEGS,
	PF_SIZE_CG_LEVELS = PF_CG_LEVELS,
	PF_SIZE_REMOTE_ENTRIES = PF_REMOTE_ENTRIES,
	PF_SIZE_VERDICT_RATE = PF_VERDICT_RATE,
	PF_SIZE_VERDICT_RATE_UID = PF_VERDICT_RATE_UID,
	PF_SIZE_EXE_UNKNOWN = PF_EXE_UNKNOWN,
	PF_SIZE_DGRAM_SOCKET = PF_DGRAM_SOCKET,
	PF_SIZE_DGRAM_UID = PF_DGRAM_UID,
};

/* The verdict records' rate limit: one window per CPU, and one per uid and
 * kind of decision (block or allow). */
struct pf_rate {
	__u64 window_ns;
	__u64 count;
};

struct pf_rate_key {
	__u32 uid;    /* 0xfffffffe: inbound decisions (remote senders) */
	__u32 block;  /* 1 blocks, 0 allows */
};

/* A set of rules: rule i is bit i % 64 of w[i / 64]. */
struct pf_mask {
	__u64 w[PF_RULE_WORDS];
};

/* exe LPM keys: the path and its NUL (prefix table) or the path's last
 * bytes reversed (suffix table), zero padded. */
struct pf_exe_key {
	__u32 prefixlen;
	__u8 data[PF_EXE_KEY];
};

struct pf_ip4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct pf_ip6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* The executable of a process (task storage of its group leader) or of the
 * process that bound or created a socket (socket storage). */
struct pf_exe_ident {
	struct pf_exe_key fwd;
	struct pf_exe_key rev;
	__u32 len;          /* path bytes; 0 when unknown */
	__u32 uid;          /* socket storage only */
	char comm[PF_COMM_LEN];
};

/* One rule set generation's scalars and miss masks. */
struct pf_policy_hdr {
	__u32 rule_count;
	__u8 default_block;
	__u8 cg_levels;     /* cgroup levels to look up: 0..cg_levels-1 */
	__u16 nseg[2];      /* port segments: 0 remote, 1 local */
	__u16 _pad;         /* pol_cg entries already include cg_wild and the
			     * rules of every named ancestor */
	struct pf_mask block;   /* rules whose action is block */
	struct pf_mask exe_miss;
	struct pf_mask comm_miss;
	struct pf_mask uid_miss;
	struct pf_mask cg_wild;
	struct pf_mask r4_miss;
	struct pf_mask r6_miss;
};

/* Each port's segment, for one generation and port dimension. */
struct pf_port_index {
	__u16 seg[65536];
};

/* Which generation the programs read; enabled = 0 when no rules are loaded. */
struct pf_policy_state {
	__u32 gen;
	__u32 enabled;
};

enum pf_hook {
	PF_HOOK_CONNECT = 1,
	PF_HOOK_SENDMSG = 2,
	PF_HOOK_EGRESS = 3,
	PF_HOOK_INGRESS = 4,
	PF_HOOK_PACKET = 5,  /* a packet socket's frame, at tcx egress (packet.bpf.c) */
};

struct pf_verdict_event {
	__u32 kind;          /* PF_EV_VERDICT */
	__u32 block;         /* 1 blocked, 0 allowed */
	__u64 ts_ns;
	__u64 cookie;
	__s32 rule;          /* deciding rule, -1 for the default */
	__u32 gen;
	struct pf_owner owner;
	__u8 remote[16];     /* IPv4 in the first 4 bytes */
	__u8 local[16];
	__u16 rport;         /* host order */
	__u16 lport;
	__u8 family;
	__u8 proto;
	__u8 direction;      /* enum pf_direction */
	__u8 hook;           /* enum pf_hook */
	__u32 netns;
	__u32 exe_len;
	char exe[PF_EXE_KEY];
};

#ifdef __bpf__
_Static_assert(sizeof(struct pf_mask) == 128, "pf_mask size");
_Static_assert(sizeof(struct pf_exe_key) == 260, "pf_exe_key size");
_Static_assert(sizeof(struct pf_policy_hdr) == 912, "pf_policy_hdr size");
_Static_assert(sizeof(struct pf_verdict_event) == 384, "pf_verdict_event size");
#endif

#endif /* PROCFLOW_H */
