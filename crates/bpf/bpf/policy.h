/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rules enforcement: the compiled rule tables (crates/core/src/rules/compile.rs)
 * in maps, and the decision the hooks call.
 *
 * Every condition kind is a dimension that maps a connection's value to a
 * 1024-bit mask of the rules whose condition holds; the AND of the nine masks
 * holds the matching rules, the lowest set bit decides, none means the
 * default. The cost does not grow with the number of rules.
 *
 * Atomic swap: every table exists for two generations (LPM and hash maps as
 * two maps, `_0` and `_1`; arrays indexed by generation). User space writes
 * the generation not in use, then flips pol_state.gen; a program reads the
 * generation once and uses only that one.
 *
 * The maps are defined in policy.bpf.c (PF_POLICY_DEFINE) and declared
 * extern elsewhere; the functions are inlined into the hooks that call them
 * (owner.bpf.c on_addr, count.bpf.c count).
 */
#ifndef PF_POLICY_H
#define PF_POLICY_H

#include "common.h"

#ifdef PF_POLICY_DEFINE
#define PF_PMAP
#else
#define PF_PMAP extern
#endif

#define PF_PATH_BUF 2048 /* scratch for composing a path backwards */
#define PF_PATH_END PF_EXEC_PATH /* the path ends here; bytes above stay zero */
#define PF_WALK_STEPS 80

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_policy_state);
} pol_state SEC(".maps");

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pf_policy_hdr);
} pol_hdr SEC(".maps");

#define PF_LPM(name, key_t, n)                                   \
	PF_PMAP struct {                                         \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);             \
		__uint(map_flags, BPF_F_NO_PREALLOC);            \
		__uint(max_entries, n);                          \
		__type(key, key_t);                              \
		__type(value, struct pf_mask);                   \
	} name SEC(".maps")

#define PF_HASH(name, key_t, n)                                  \
	PF_PMAP struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);                 \
		__uint(max_entries, n);                          \
		__type(key, key_t);                              \
		__type(value, struct pf_mask);                   \
	} name SEC(".maps")

PF_LPM(pol_exe_pre_0, struct pf_exe_key, 2048);
PF_LPM(pol_exe_pre_1, struct pf_exe_key, 2048);
PF_LPM(pol_exe_suf_0, struct pf_exe_key, 2048);
PF_LPM(pol_exe_suf_1, struct pf_exe_key, 2048);
PF_LPM(pol_r4_0, struct pf_ip4_key, PF_REMOTE_ENTRIES);
PF_LPM(pol_r4_1, struct pf_ip4_key, PF_REMOTE_ENTRIES);
PF_LPM(pol_r6_0, struct pf_ip6_key, PF_REMOTE_ENTRIES);
PF_LPM(pol_r6_1, struct pf_ip6_key, PF_REMOTE_ENTRIES);
PF_HASH(pol_comm_0, char[PF_COMM_LEN], 1024);
PF_HASH(pol_comm_1, char[PF_COMM_LEN], 1024);
PF_HASH(pol_uid_0, __u32, 1024);
PF_HASH(pol_uid_1, __u32, 1024);
PF_HASH(pol_cg_0, __u64, 1024);
PF_HASH(pol_cg_1, __u64, 1024);

/* gen * 2 + direction (0 out, 1 in) */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct pf_mask);
} pol_dir SEC(".maps");

/* gen * 256 + IP protocol */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, struct pf_mask);
} pol_proto SEC(".maps");

/* gen * 2 + dim (0 remote, 1 local): each port's segment. The masks of the
 * segments are in pol_port_mask at (gen * 2 + dim) * PF_PORT_SEGS + segment. */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct pf_port_index);
} pol_port_idx SEC(".maps");

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * PF_PORT_SEGS);
	__type(key, __u32);
	__type(value, struct pf_mask);
} pol_port_mask SEC(".maps");

/* The executable of each process, on its thread-group leader: computed at
 * its first connect from mm->exe_file, dropped at exec. */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pf_exe_ident);
} pol_task SEC(".maps");

/* The identity of the process that bound (TCP, UDP) or created (ICMP, raw)
 * a socket, for decisions in packet hooks, where the current process is
 * anyone's. */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pf_exe_ident);
} pol_sk SEC(".maps");

/* Per-socket: the last allowed (remote, generation) announced, so an
 * unconnected socket's every send does not make an event. */
struct pf_pol_last {
	__u8 remote[16];
	__u16 rport;
	__u16 _pad;
	__u32 gen1; /* generation + 1; 0 = none */
};

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pf_pol_last);
} pol_last SEC(".maps");

/* Inbound datagram flows (socket, remote) the rules decided: (generation + 1) << 1
 * | blocked, so later datagrams are dropped or let through without deciding
 * again until the rules change. */
PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pf_dgram_key);
	__type(value, __u32);
} pol_udp_in SEC(".maps");

/* Scratch: a path composed backwards, and an all-zero identity. */
struct pf_path_buf {
	char b[PF_PATH_BUF];
};

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_path_buf);
} pol_scratch SEC(".maps");

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_exe_ident);
} pol_zero SEC(".maps");

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pf_rate);
} pol_rate SEC(".maps");

PF_PMAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pf_rate_key);
	__type(value, struct pf_rate);
} pol_rate_uid SEC(".maps");

/* ---- the executable's path ---- */

struct pol_walk {
	char *buf;
	struct dentry *d;
	struct mount *mnt;
	__u32 pos; /* the path starts here, up to PF_PATH_END */
	__u32 full;
};

/* One step up from a dentry: prepend its name, or cross a mount point. */
static int pol_walk_step(__u32 i, struct pol_walk *w)
{
	struct dentry *d = w->d;
	struct mount *mnt = w->mnt;
	struct dentry *root = BPF_CORE_READ(mnt, mnt.mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (d == root || d == parent) {
		struct mount *pm = BPF_CORE_READ(mnt, mnt_parent);
		if (pm == mnt || !pm) {
			w->full = 1;
			return 1;
		}
		w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = pm;
		return 0;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	__u32 pos = w->pos;
	if (len > 255 || pos < len + 1)
		return 1; /* too long: the path stays unknown */
	pos -= len;
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	bpf_probe_read_kernel(w->buf + (pos & (PF_PATH_END - 1)), len & 255, name);
	pos -= 1;
	w->buf[pos & (PF_PATH_END - 1)] = '/';
	w->pos = pos;
	w->d = parent;
	return 0;
}

struct pol_rev {
	char *buf;
	struct pf_exe_ident *id;
	__u32 len;
};

static int pol_rev_step(__u32 i, struct pol_rev *r)
{
	if (i >= r->len || i >= PF_EXE_KEY)
		return 1;
	r->id->rev.data[i & (PF_EXE_KEY - 1)] =
		r->buf[(PF_PATH_END - 1 - i) & (PF_PATH_END - 1)];
	return 0;
}

/* The absolute path of `file`, composed backwards in the per-CPU scratch:
 * it is sb->b[*pos .. PF_PATH_END), followed by zeros. False if it cannot be
 * found or is longer than PF_PATH_END - 1 bytes. Shared by the exec capture
 * (owner.bpf.c) and the rules' exe conditions. */
static __always_inline bool pol_path_of_file(struct file *file, struct pf_path_buf **sbp,
					     __u32 *pos)
{
	__u32 zero = 0;
	struct pf_path_buf *sb = bpf_map_lookup_elem(&pol_scratch, &zero);
	if (!sb || !file)
		return false;
	struct vfsmount *vm = BPF_CORE_READ(file, f_path.mnt);
	struct pol_walk w = {
		.buf = sb->b,
		.d = BPF_CORE_READ(file, f_path.dentry),
		.mnt = container_of(vm, struct mount, mnt),
		.pos = PF_PATH_END,
		.full = 0,
	};
	bpf_loop(PF_WALK_STEPS, pol_walk_step, &w, 0);
	if (!w.full || w.pos >= PF_PATH_END)
		return false;
	*sbp = sb;
	*pos = w.pos & (PF_PATH_END - 1);
	return true;
}

/* Whether the path of `file` names the file as the host could check it:
 * false for a file in a mount namespace owned by a user namespace other
 * than the initial one (an unprivileged user can bind-mount any file over
 * any path there), on an internal mount (memfd, anonymous files), or
 * deleted. */
static __always_inline bool pol_file_trusted(struct file *file)
{
	struct vfsmount *vm = BPF_CORE_READ(file, f_path.mnt);
	struct mount *m = container_of(vm, struct mount, mnt);
	struct mnt_namespace *ns = BPF_CORE_READ(m, mnt_ns);
	unsigned long nsv = (unsigned long)ns;
	if (nsv < 4096 || nsv >= (unsigned long)-4095) /* NULL or MNT_NS_INTERNAL */
		return false;
	if (BPF_CORE_READ(ns, user_ns, level) != 0)
		return false;
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	if (!BPF_CORE_READ(d, d_hash.pprev) && d != BPF_CORE_READ(d, d_parent))
		return false; /* unhashed: unlinked while it runs */
	return true;
}

/* The absolute path of `file` into id's LPM keys. An executable whose path
 * cannot be found, is longer than PF_PATH_END - 1 bytes, or cannot be
 * trusted (pol_file_trusted) gets the key PF_EXE_UNKNOWN (len 0): the rules
 * give it the mask of an unknown program (block rules with exe conditions
 * hold for it, allow rules with exe conditions do not). */
static __always_inline void pol_exe_of_file(struct file *file, struct pf_exe_ident *id)
{
	id->len = 0;
	id->fwd.prefixlen = PF_EXE_KEY * 8;
	id->rev.prefixlen = PF_EXE_KEY * 8;
	__builtin_memset(id->fwd.data, 0, PF_EXE_KEY);
	__builtin_memset(id->rev.data, 0, PF_EXE_KEY);
	id->fwd.data[0] = PF_EXE_UNKNOWN;
	if (!file || !pol_file_trusted(file))
		return;
	struct pf_path_buf *sb = 0;
	__u32 pos = 0;
	if (!pol_path_of_file(file, &sb, &pos) || !sb)
		return;
	pos &= PF_PATH_END - 1;
	/* sb->b[PF_PATH_END..] is never written: the NUL and zero padding. */
	bpf_probe_read_kernel(id->fwd.data, PF_EXE_KEY, sb->b + pos);
	id->len = PF_PATH_END - pos;
	struct pol_rev r = { .buf = sb->b, .id = id, .len = id->len };
	bpf_loop(PF_EXE_KEY, pol_rev_step, &r, 0);
}

/* The identity of a program that cannot be known (no task storage, a
 * socket without the identity of its creator): the key of an unknown
 * program, so that block rules with exe conditions hold for it and allow
 * rules with exe conditions do not. */
static __always_inline struct pf_exe_ident *pol_unknown_exe(void)
{
	__u32 zero = 0;
	struct pf_exe_ident *id = bpf_map_lookup_elem(&pol_zero, &zero);
	if (id)
		id->fwd.data[0] = PF_EXE_UNKNOWN;
	return id;
}

/* The current process's executable into id (pol_exe_of_file), in
 * policy.bpf.c: a global function, checked once per program. */
int pol_exe_current_g(struct pf_exe_ident *id);

/* The current process's identity (task storage of its leader), computed
 * on first use. Never null: an all-zero identity when none can be had. */
static __always_inline struct pf_exe_ident *pol_current_exe(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct task_struct *leader = t->group_leader;
	struct pf_exe_ident *id = bpf_task_storage_get(&pol_task, leader, 0, 0);
	if (id)
		return id;
	if (!(t->flags & PF_KTHREAD)) {
		id = bpf_task_storage_get(&pol_task, leader, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (id) {
			pol_exe_current_g(id);
			return id;
		}
	}
	return pol_unknown_exe();
}

/* The process's comm (its thread-group leader's, as `ps -o comm` shows),
 * not the calling thread's name. Read through CO-RE rather than BTF
 * pointers: the verifier checks each BTF pointer access by walking the
 * type's members, again on every path, which made the connect programs the
 * slowest to load. */
static __always_inline void pol_process_comm(char comm[PF_COMM_LEN])
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct task_struct *leader = BPF_CORE_READ(t, group_leader);
	bpf_core_read_str(comm, PF_COMM_LEN, &leader->comm);
}

/* ---- the decision ---- */

struct pol_query {
	char comm[PF_COMM_LEN];
	__u32 uid;
	__u8 dir;                 /* 0 out, 1 in */
	__u8 proto;
	__u8 family;              /* 4 or 6 (IPv4-mapped already turned into 4) */
	__u8 _pad;
	__u16 rport;
	__u16 lport;
	__u8 remote[16];
	__u8 local[16];
};

/* Index of the lowest set bit of x (x != 0), without branches. */
static __always_inline __u32 lowest_bit(__u64 x)
{
	x = (x & -x) - 1; /* the bits below it */
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

/* Hash tables hold their miss mask under a key no real value has. */
#define PF_UID_MISS 0xffffffffU /* (uid_t)-1 is no user */
/* comm miss key: 16 bytes of 0xff (a real comm has its NUL within 16) */

#define PF_GEN_LOOKUP(gen, name, key) \
	((gen) ? bpf_map_lookup_elem(&name##_1, key) : bpf_map_lookup_elem(&name##_0, key))

/* The mask of the port segment holding `port`. */
static __always_inline const struct pf_mask *pol_port(__u32 gen, __u32 dim, __u16 port)
{
	__u32 key = gen * 2 + dim;
	struct pf_port_index *ix = bpf_map_lookup_elem(&pol_port_idx, &key);
	if (!ix)
		return 0;
	__u32 seg = ix->seg[port];
	if (seg >= PF_PORT_SEGS)
		return 0;
	key = key * PF_PORT_SEGS + seg;
	return bpf_map_lookup_elem(&pol_port_mask, &key);
}

struct pol_decision {
	__s32 rule;  /* -1: the default */
	__u32 block;
	__u32 gen;
};

/* The decision proper, in policy.bpf.c: a global function, so the verifier
 * checks it once and not once per path of every hook that calls it. `exe`
 * holds the LPM keys, `cg` the cgroup dimension's mask (from pol_cgroup). */
int pol_decide_g(struct pol_query *q, const struct pf_exe_ident *exe,
		 const struct pf_mask *cg, __u32 gen, struct pol_decision *d);

/* The identity dimensions' masks of q: the executable (prefix and suffix
 * LPM tables), comm and uid. Every LPM table has a /0 entry and every hash
 * table a miss key, so a lookup finds an entry of its own map: one
 * verifier state per generation, not one per combination of hits and
 * misses. 0 when a table is missing. */
struct pol_ident {
	const struct pf_mask *pre, *suf, *comm, *uid;
};

static __always_inline int pol_identity(__u32 gen, struct pol_query *q,
					const struct pf_exe_ident *exe, struct pol_ident *m)
{
	m->pre = PF_GEN_LOOKUP(gen, pol_exe_pre, &exe->fwd);
	m->suf = PF_GEN_LOOKUP(gen, pol_exe_suf, &exe->rev);
	if (!m->pre || !m->suf)
		return 0;
	m->comm = PF_GEN_LOOKUP(gen, pol_comm, q->comm);
	if (!m->comm) {
		char miss[PF_COMM_LEN];
		__builtin_memset(miss, 0xff, sizeof(miss));
		m->comm = PF_GEN_LOOKUP(gen, pol_comm, miss);
	}
	m->uid = PF_GEN_LOOKUP(gen, pol_uid, &q->uid);
	if (!m->uid) {
		__u32 miss = PF_UID_MISS;
		m->uid = PF_GEN_LOOKUP(gen, pol_uid, &miss);
	}
	return m->comm && m->uid;
}

/* The deepest ancestor of the current process's cgroup (pol_cg_current_g)
 * or of the socket's (pol_cg_skb_g: skb->sk) that the table of generation
 * `gen` holds, into *found (0: none). Global functions, in policy.bpf.c and
 * count.bpf.c: the verifier checks each once per program, not once for
 * every path of the hook that reaches it. */
int pol_cg_current_g(__u32 gen, __u32 levels, __u64 *found);
int pol_cg_skb_g(struct __sk_buff *skb, __u32 gen, __u32 levels, __u64 *found);

/* The walk both share, levels-1 down to 0, one bpf_loop step a level: the
 * verifier checks the step once, not once per level and per path. */
struct pol_cg_walk {
	struct bpf_sock *sk; /* null: the current process */
	__u64 found;
	__u32 gen;
	__u32 levels;
};

static int pol_cg_step(__u32 j, struct pol_cg_walk *w)
{
	__u32 levels = w->levels;
	if (j >= levels || levels > PF_CG_LEVELS)
		return 1;
	int i = levels - 1 - j;
	__u64 id = w->sk ? bpf_sk_ancestor_cgroup_id(w->sk, i)
			 : bpf_get_current_ancestor_cgroup_id(i);
	if (!id)
		return 0;
	if (PF_GEN_LOOKUP(w->gen, pol_cg, &id)) {
		w->found = id;
		return 1;
	}
	return 0;
}

static __always_inline void pol_cg_walk(struct bpf_sock *sk, __u32 gen, __u32 levels,
					__u64 *found)
{
	struct pol_cg_walk w = { .sk = sk, .found = 0, .gen = gen, .levels = levels };
	bpf_loop(PF_CG_LEVELS, pol_cg_step, &w, 0);
	*found = w.found;
}

/* The cgroup dimension's mask: that of the deepest ancestor in the table
 * (its entry already holds the rules of every named ancestor above it and
 * the wildcard rules), of skb's socket or, when skb is null, of the
 * current process. */
static __always_inline const struct pf_mask *pol_cgroup(struct pf_policy_hdr *h, __u32 gen,
							struct __sk_buff *skb)
{
	__u64 id = 0;
	if (skb)
		pol_cg_skb_g(skb, gen, h->cg_levels, &id);
	else
		pol_cg_current_g(gen, h->cg_levels, &id);
	if (!id)
		return &h->cg_wild;
	const struct pf_mask *m = PF_GEN_LOOKUP(gen, pol_cg, &id);
	return m ? m : &h->cg_wild;
}

/* Decides q under the active rules; false when no rules are loaded. The
 * cgroup is skb's socket's or, when skb is null, the current process's. */
static __always_inline bool pol_decide(struct pol_query *q, const struct pf_exe_ident *exe,
				       struct pol_decision *d, struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct pf_policy_state *st = bpf_map_lookup_elem(&pol_state, &zero);
	if (!st || !st->enabled)
		return false;
	/* The generation counts every rule set installed (so a decision cached
	 * with it is never mistaken for a newer one's); its low bit is the
	 * table slot. */
	__u32 full = st->gen;
	__u32 gen = full & 1;
	struct pf_policy_hdr *h = bpf_map_lookup_elem(&pol_hdr, &gen);
	if (!h)
		return false;
	const struct pf_mask *cg = pol_cgroup(h, gen, skb);
	int r = pol_decide_g(q, exe, cg, gen, d);
	d->gen = full;
	if (r != 1) {
		/* A table of the rule set in force is missing (never expected:
		 * user space writes every table before it flips): fail closed. */
		d->rule = -1;
		d->block = 1;
		stat_inc(PF_STAT_FAIL_CLOSED);
	}
	return true;
}

/* Writes a verdict record. */
/* Verdict records are rate-limited, so that a process making blocked
 * connects as fast as it can neither floods the ring buffer (and with it
 * other users' records) nor the log: each uid may have PF_VERDICT_RATE_UID
 * records a second (inbound decisions, made in softirq for a remote
 * sender, share one budget of their own), and each CPU PF_VERDICT_RATE in
 * all. What is left out is counted (PF_STAT_VERDICT_SUPPRESSED), so totals
 * stay exact; the decision itself is never skipped. */
static __always_inline bool pol_window_ok(struct pf_rate *r, __u64 now, __u64 limit)
{
	if (now - r->window_ns >= 1000000000ULL) {
		r->window_ns = now;
		r->count = 0;
	}
	if (r->count >= limit)
		return false;
	__sync_fetch_and_add(&r->count, 1);
	return true;
}

static __always_inline bool pol_rate_ok(__u8 hook, __u8 block)
{
	__u64 now = now_ns();
	/* Blocks and allows have budgets of their own: a uid's busy allowed
	 * traffic never crowds out the record of its blocked attempt. */
	struct pf_rate_key who = {
		.uid = hook == PF_HOOK_INGRESS ? 0xfffffffe : (__u32)bpf_get_current_uid_gid(),
		.block = block,
	};
	struct pf_rate *u = bpf_map_lookup_elem(&pol_rate_uid, &who);
	if (!u) {
		struct pf_rate fresh = {.window_ns = now};
		bpf_map_update_elem(&pol_rate_uid, &who, &fresh, BPF_NOEXIST);
		u = bpf_map_lookup_elem(&pol_rate_uid, &who);
	}
	__u32 zero = 0;
	struct pf_rate *c = bpf_map_lookup_elem(&pol_rate, &zero);
	if ((u && !pol_window_ok(u, now, PF_VERDICT_RATE_UID)) ||
	    (c && !pol_window_ok(c, now, PF_VERDICT_RATE))) {
		stat_inc(PF_STAT_VERDICT_SUPPRESSED);
		return false;
	}
	return true;
}

/* `o` null: no owner known. */
static __always_inline void pol_emit(struct pol_query *q, const struct pf_exe_ident *exe,
				     struct pol_decision *d, __u64 cookie,
				     const struct pf_owner *o,
				     __u32 netns, __u8 hook)
{
	if (!pol_rate_ok(hook, d->block))
		return;
	rb_note_fill();
	struct pf_verdict_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return;
	}
	e->kind = PF_EV_VERDICT;
	e->block = d->block;
	e->ts_ns = now_ns();
	e->cookie = cookie;
	e->rule = d->rule;
	e->gen = d->gen;
	if (o)
		e->owner = *o;
	else
		__builtin_memset(&e->owner, 0, sizeof(e->owner));
	__builtin_memcpy(e->remote, q->remote, 16);
	__builtin_memcpy(e->local, q->local, 16);
	e->rport = q->rport;
	e->lport = q->lport;
	e->family = q->family;
	e->proto = q->proto;
	e->direction = q->dir ? PF_DIR_IN : PF_DIR_OUT;
	e->hook = hook;
	e->netns = netns;
	e->exe_len = exe->len;
	__builtin_memcpy(e->exe, exe->fwd.data, PF_EXE_KEY);
	/* Not BPF_RB_NO_WAKEUP for allows: a record left unread makes the
	 * ring's adaptive wake-ups of later records (any program's) skip. */
	bpf_ringbuf_submit(e, 0);
}

/* Whether an allowed (remote, generation) was already announced for this
 * socket; records it if not. */
static __always_inline bool pol_seen(void *bsk, struct pol_query *q, __u32 gen)
{
	struct pf_pol_last *l = bpf_sk_storage_get(&pol_last, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!l)
		return false;
	if (l->gen1 == gen + 1 && l->rport == q->rport &&
	    __builtin_memcmp(l->remote, q->remote, 16) == 0)
		return true;
	__builtin_memcpy(l->remote, q->remote, 16);
	l->rport = q->rport;
	l->gen1 = gen + 1;
	return false;
}

static __always_inline bool is_v4_mapped(const __u32 *w)
{
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* connect4/6, sendmsg4/6: returns 0 to refuse (the application gets EPERM). */
static __always_inline int pf_policy_addr(struct bpf_sock_addr *sa, bool sendmsg, bool v6)
{
	struct pol_query q = {};
	__u32 family = sa->user_family;
	__u32 proto = sa->protocol;
	__u32 port = sa->user_port;
	q.rport = bpf_ntohs((__u16)port);
	/* sendto() with sin_family AF_UNSPEC on an IPv4 socket sends to
	 * sin_addr (udp_sendmsg), so it is decided as AF_INET; any other family
	 * this hook does not know is refused (fail closed). */
	if (!v6 && (family == AF_INET || family == AF_UNSPEC)) {
		__u32 ip = sa->user_ip4;
		__builtin_memcpy(q.remote, &ip, 4);
		q.family = 4;
	} else if (v6 && family == AF_INET6) {
		__u32 w[4];
		w[0] = sa->user_ip6[0];
		w[1] = sa->user_ip6[1];
		w[2] = sa->user_ip6[2];
		w[3] = sa->user_ip6[3];
		if (is_v4_mapped(w)) {
			__builtin_memcpy(q.remote, &w[3], 4);
			q.family = 4;
		} else {
			__builtin_memcpy(q.remote, w, 16);
			q.family = 6;
		}
	} else {
		stat_inc(PF_STAT_FAIL_CLOSED);
		return 0;
	}
	struct bpf_sock *sk = sa->sk;
	if (!sk)
		return 1;
	/* The unspecified address as a destination means this machine: the
	 * kernel sends to ::1 for `::`, and for 0.0.0.0 to the socket's bound
	 * address or else 127.0.0.1 (ip_route_output_key_hash_rcu). Decided as
	 * where it goes. */
	__u32 *rw = (__u32 *)q.remote;
	if (rw[0] == 0 && rw[1] == 0 && rw[2] == 0 && rw[3] == 0) {
		if (q.family == 4) {
			__u32 bound = sk->src_ip4;
			rw[0] = bound ? bound : bpf_htonl(0x7f000001);
		} else {
			rw[3] = bpf_htonl(1);
		}
	}
	__u32 sport = sk->src_port;
	q.lport = sport;
	q.proto = proto;
	q.dir = 0;
	struct pf_exe_ident *exe = pol_current_exe();
	if (!exe)
		return 1;
	pol_process_comm(q.comm);
	q.uid = (__u32)bpf_get_current_uid_gid();
	struct pol_decision d;
	if (!pol_decide(&q, exe, &d, 0))
		return 1;
	if (!d.block && sendmsg && pol_seen(sk, &q, d.gen))
		return 1;
	struct pf_owner o = {};
	owner_current(&o);
	__builtin_memcpy(o.comm, q.comm, PF_COMM_LEN); /* what was matched */
	pol_emit(&q, exe, &d, bpf_get_socket_cookie(sa), &o,
		 sk_netns(bpf_core_cast(sk, struct sock)),
		 sendmsg ? PF_HOOK_SENDMSG : PF_HOOK_CONNECT);
	return d.block ? 0 : 1;
}

/* The key of the datagram flow (socket, remote) an inbound datagram
 * belongs to, as count_dgram makes it. */
static __always_inline void udp_in_key(struct pf_dgram_key *k, struct __sk_buff *skb,
				       const __u8 *src, __u16 sport, __u8 version)
{
	k->cookie = bpf_get_socket_cookie(skb);
	__builtin_memcpy(k->remote, src, 16);
	k->rport = sport;
	k->family = version;
}

/* An inbound datagram (UDP, UDP-Lite, ICMP, raw): 1 when its flow exists
 * already (a reply to what the socket sent, or a flow allowed before; in
 * the socket's slot or the datagram table), 0 when the rules in force
 * blocked its flow, -1 when it starts a flow to decide. */
static __noinline int udp_in_known(struct __sk_buff *skb, struct bpf_sock *bsk, const __u8 *src,
				   __u32 port_version, __u32 gen)
{
	__u16 sport = port_version & 0xffff; /* five arguments at most */
	__u8 version = port_version >> 16;
	/* A UDP socket's first remote is counted in its context (its slot),
	 * not in the table. */
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, 0);
	if (ctx && ctx->slot.state == PF_SLOT_COUNTING && slot_is(ctx, src, sport, version))
		return 1;
	struct pf_dgram_key k = {};
	udp_in_key(&k, skb, src, sport, version);
	if (bpf_map_lookup_elem(&dgram_flows, &k))
		return 1;
	__u32 *decided = bpf_map_lookup_elem(&pol_udp_in, &k);
	if (decided && (*decided >> 1) == gen + 1)
		return (*decided & 1) ? 0 : 1;
	return -1;
}

/* Remembers a decision on this inbound flow: `v` is (generation + 1) << 1
 * | blocked. An allowed flow is found in dgram_flows from then on too, but
 * not when that table is full: without this entry each of its datagrams
 * would be decided and recorded again. */
static __noinline void udp_in_decided(struct __sk_buff *skb, const __u8 *src, __u16 sport,
				      __u8 version, __u32 v)
{
	struct pf_dgram_key k = {};
	udp_in_key(&k, skb, src, sport, version);
	bpf_map_update_elem(&pol_udp_in, &k, &v, BPF_ANY);
}

/* cgroup_skb: the first packet of an inbound TCP connection (a SYN on a
 * listener), the first datagram of an inbound UDP flow, and every egress
 * packet of sockets other than TCP and UDP (ICMP, raw). Returns 0 to drop. */
static __always_inline int pf_policy_skb(struct __sk_buff *skb, struct bpf_sock *bsk,
					 bool egress, bool stream, __u32 state, __u8 version,
					 __u8 l4, const __u8 *src, const __u8 *dst, __u16 sport,
					 __u16 dport, __u8 tcpflags)
{
	__u32 sproto = bsk->protocol;
	/* Inbound: a SYN without ACK on a listener, or, on any other socket
	 * (UDP, UDP-Lite, ICMP, raw: every protocol a socket can receive), a
	 * datagram that starts a flow (not a reply to what the socket sent). */
	bool dgram = !egress && !stream;
	bool inbound = !egress && ((stream && state == BPF_TCP_LISTEN &&
				    (tcpflags & 0x12) == 0x02) || dgram);
	/* Egress of sockets the connect and sendmsg hooks do not decide
	 * (ICMP, raw, UDP-Lite): every packet. */
	bool other = egress && sproto != IPPROTO_TCP && sproto != IPPROTO_UDP;
	if (!inbound && !other)
		return 1;
	__u32 zero = 0;
	struct pf_policy_state *st = bpf_map_lookup_elem(&pol_state, &zero);
	if (!st || !st->enabled)
		return 1;
	__u32 gen = st->gen;
	if (dgram) {
		int known = udp_in_known(skb, bsk, src, sport | ((__u32)version << 16), gen);
		if (known >= 0)
			return known;
	}

	struct pol_query q = {};
	q.family = version;
	q.proto = l4;
	q.dir = inbound ? 1 : 0;
	if (egress) {
		__builtin_memcpy(q.remote, dst, 16);
		__builtin_memcpy(q.local, src, 16);
		q.rport = dport;
		q.lport = sport;
	} else {
		__builtin_memcpy(q.remote, src, 16);
		__builtin_memcpy(q.local, dst, 16);
		q.rport = sport;
		q.lport = dport;
	}
	if (q.family == 6 && is_v4_mapped((__u32 *)q.remote)) {
		__builtin_memmove(q.remote, q.remote + 12, 4);
		__builtin_memset(q.remote + 4, 0, 12);
		q.family = 4;
	}

	/* Who: the identity kept when the socket was bound or created, else
	 * what its flow context knows. */
	const struct pf_owner *o = 0; /* no copy: this frame is on count's stack */
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, 0);
	if (ctx && (ctx->flags & PF_F_OWNER))
		o = &ctx->owner;
	struct pf_exe_ident *exe = bpf_sk_storage_get(&pol_sk, bsk, 0, 0);
	if (exe) {
		q.uid = exe->uid;
		__builtin_memcpy(q.comm, exe->comm, PF_COMM_LEN);
	} else {
		/* No process created this ICMP/raw socket while procflow ran:
		 * a kernel socket (echo replies, ICMP errors) or one older than
		 * procflow. Not decided. */
		if (other)
			return 1;
		exe = pol_unknown_exe();
		if (!exe)
			return 1;
		if (o) {
			q.uid = o->uid;
			__builtin_memcpy(q.comm, o->comm, PF_COMM_LEN);
		}
	}
	struct sock *sk = bpf_core_cast(bsk, struct sock);
	struct pol_decision d;
	if (!pol_decide(&q, exe, &d, skb))
		return 1;
	/* Inbound (a SYN, a UDP flow's first datagram): allows are written
	 * too, so the accepted connection or the flow carries its verdict. */
	if (dgram)
		udp_in_decided(skb, src, sport, version, ((gen + 1) << 1) | (d.block ? 1 : 0));
	if (!d.block && !inbound && pol_seen(bsk, &q, d.gen))
		return 1;
	pol_emit(&q, exe, &d, bpf_get_socket_cookie(skb), o, sk_netns(sk),
		 egress ? PF_HOOK_EGRESS : PF_HOOK_INGRESS);
	return d.block ? 0 : 1;
}

#endif /* PF_POLICY_H */
