// SPDX-License-Identifier: GPL-2.0
/* Rules enforcement: the definition of the rule maps (see policy.h) and the
 * programs that keep the identities the decisions need. The decisions
 * themselves are made in on_addr (owner.bpf.c) and count (count.bpf.c),
 * which call into policy.h. */
#define PF_POLICY_DEFINE
#include "policy.h"

struct pf_verdict_event _pf_verdict_event = {};
struct pf_policy_hdr _pf_policy_hdr = {};
struct pf_policy_state _pf_policy_state = {};
struct pf_exe_ident _pf_exe_ident = {};
struct pf_ip4_key _pf_ip4_key = {};
struct pf_ip6_key _pf_ip6_key = {};
struct pf_port_index _pf_port_index = {};
struct pf_exe_key _pf_exe_key = {};
struct pf_mask _pf_mask = {};

/* The rule words, one bpf_loop step each (the verifier checks the step
 * once, not sixteen times per path): the lowest matching rule decides. */
struct pol_words {
	const struct pf_mask *m[10]; /* exe prefix, exe suffix, then ANDed */
	const struct pf_mask *block;
	struct pol_decision *d;
};

static int pol_word_step(__u32 i, struct pol_words *pw)
{
	if (i >= PF_RULE_WORDS)
		return 1;
	__u64 w = (pw->m[0]->w[i] | pw->m[1]->w[i]) & pw->m[2]->w[i] & pw->m[3]->w[i] &
		  pw->m[4]->w[i] & pw->m[5]->w[i] & pw->m[6]->w[i] & pw->m[7]->w[i] &
		  pw->m[8]->w[i] & pw->m[9]->w[i];
	if (!w)
		return 0;
	__u32 r = i * 64 + lowest_bit(w);
	pw->d->rule = r;
	pw->d->block = (pw->block->w[i] >> (r & 63)) & 1;
	return 1;
}

/* See policy.h. Returns 1 when decided, 0 when a table is missing. */
__noinline int pol_decide_g(struct pol_query *q, const struct pf_exe_ident *exe,
			    const struct pf_mask *cg, __u32 gen, struct pol_decision *d)
{
	if (!q || !exe || !cg || !d)
		return 0;
	gen &= 1;
	struct pf_policy_hdr *h = bpf_map_lookup_elem(&pol_hdr, &gen);
	if (!h)
		return 0;
	struct pol_ident id;
	if (!pol_identity(gen, q, exe, &id))
		return 0;
	const struct pf_mask *dir, *proto, *rem, *rp, *lp;
	__u32 k = gen * 2 + (q->dir & 1);
	dir = bpf_map_lookup_elem(&pol_dir, &k);
	k = gen * 256 + q->proto;
	proto = bpf_map_lookup_elem(&pol_proto, &k);
	if (!dir || !proto)
		return 0;
	if (q->family == 4) {
		struct pf_ip4_key k4 = { .prefixlen = 32 };
		__builtin_memcpy(k4.addr, q->remote, 4);
		rem = PF_GEN_LOOKUP(gen, pol_r4, &k4);
	} else {
		struct pf_ip6_key k6 = { .prefixlen = 128 };
		__builtin_memcpy(k6.addr, q->remote, 16);
		rem = PF_GEN_LOOKUP(gen, pol_r6, &k6);
	}
	if (!rem)
		return 0;
	rp = pol_port(gen, 0, q->rport);
	lp = pol_port(gen, 1, q->lport);
	if (!rp || !lp)
		return 0;

	d->gen = gen;
	d->rule = -1;
	d->block = h->default_block;
	struct pol_words pw = {
		.m = { id.pre, id.suf, id.comm, id.uid, cg, dir, proto, rem, rp, lp },
		.block = &h->block,
		.d = d,
	};
	bpf_loop(PF_RULE_WORDS, pol_word_step, &pw, 0);
	return 1;
}

/* See policy.h. */
__noinline int pol_exe_current_g(struct pf_exe_ident *id)
{
	if (!id)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	pol_exe_of_file(BPF_CORE_READ(t, mm, exe_file), id);
	return 1;
}

/* See policy.h: the current process's cgroup. */
__noinline int pol_cg_current_g(__u32 gen, __u32 levels, __u64 *found)
{
	if (!found)
		return 0;
	pol_cg_walk(0, gen & 1, levels, found);
	return 1;
}

/* exec: the process runs another executable; its identity is recomputed at
 * its next decision (from mm->exe_file, which is set by now). */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(pf_pol_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	bpf_task_storage_delete(&pol_task, p);
	return 0;
}

/* Keeps the current process's identity on the socket, for the packet hooks. */
static __always_inline void keep_identity(struct bpf_sock *sk)
{
	struct pf_exe_ident *cur = pol_current_exe();
	if (!cur)
		return;
	struct pf_exe_ident *id = bpf_sk_storage_get(&pol_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!id)
		return;
	__builtin_memcpy(id, cur, sizeof(*id));
	id->uid = (__u32)bpf_get_current_uid_gid();
	pol_process_comm(id->comm);
}

static __always_inline int on_pol_bind(struct bpf_sock *sk)
{
	__u32 zero = 0;
	struct pf_policy_state *st = bpf_map_lookup_elem(&pol_state, &zero);
	if (st && st->enabled)
		keep_identity(sk);
	return 1;
}

SEC("cgroup/post_bind4")
int pf_pol_bind4(struct bpf_sock *sk)
{
	return on_pol_bind(sk);
}

SEC("cgroup/post_bind6")
int pf_pol_bind6(struct bpf_sock *sk)
{
	return on_pol_bind(sk);
}

/* ICMP and raw sockets are decided at egress: keep their creator. */
SEC("cgroup/sock_create")
int pf_pol_sock(struct bpf_sock *sk)
{
	__u32 family = sk->family;
	__u32 proto = sk->protocol;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		return 1;
	return on_pol_bind(sk);
}

/* The identity a process's next connect would be decided with, for
 * `--enforce-existing`: its executable as pol_current_exe computes it (and
 * keeps it: the next decision uses this very entry), its leader's comm as
 * pol_process_comm reads it, its uid and cgroup. Each record is a
 * pf_task_ident followed by the pf_exe_ident. */
struct pf_task_ident {
	__u32 pid;         /* thread-group id */
	__u32 uid;
	__u64 start_ns;    /* the leader's start_boottime */
	__u64 cgroup_id;
	char comm[PF_COMM_LEN];
};

struct pf_task_ident _pf_task_ident = {};

SEC("iter/task")
int pf_iter_pol_task(struct bpf_iter__task *it)
{
	struct task_struct *task = it->task;
	if (!pf_rules_on) /* load-time constant: without --rules, nothing to verify */
		return 0;
	if (!task || task->pid != task->tgid || (task->flags & PF_KTHREAD))
		return 0;
	struct pf_exe_ident *id = bpf_task_storage_get(&pol_task, task, 0, 0);
	if (!id) {
		id = bpf_task_storage_get(&pol_task, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!id)
			return 0;
		pol_exe_of_file(BPF_CORE_READ(task, mm, exe_file), id);
	}
	struct pf_task_ident r = {};
	r.pid = task->tgid;
	r.uid = BPF_CORE_READ(task, cred, uid.val);
	r.start_ns = task->start_boottime;
	r.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	bpf_probe_read_kernel_str(r.comm, PF_COMM_LEN, task->comm);
	/* Both parts or neither: output that does not fit is dropped and the
	 * task shown again in the next read. */
	bpf_seq_write(it->meta->seq, &r, sizeof(r));
	bpf_seq_write(it->meta->seq, id, sizeof(*id));
	return 0;
}
