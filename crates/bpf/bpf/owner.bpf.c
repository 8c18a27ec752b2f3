// SPDX-License-Identifier: GPL-2.0
/* Ownership: hooks that run in the process that owns a socket. They create
 * the socket's context if it has none and record who acts on it. Also the
 * exec capture that names short-lived processes. */
#include "common.h"
#include "policy.h" /* rules enforcement */

static __always_inline bool inet_family(__u32 family)
{
	return family == AF_INET || family == AF_INET6;
}

/* A context for `bsk` (a program-type socket pointer), created if missing. */
static __always_inline struct pf_sock_ctx *ctx_get(void *bsk, __u64 cookie, bool born)
{
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return 0;
	}
	if (!ctx->cookie && ctx_claim(ctx, cookie))
		ctx_init(ctx, bpf_core_cast(bsk, struct sock), born);
	return ctx;
}

SEC("cgroup/sock_create")
int pf_sock_create(struct bpf_sock *sk)
{
	__u32 family = sk->family;
	if (!inet_family(family))
		return 1;
	struct pf_sock_ctx *ctx = ctx_get(sk, bpf_get_socket_cookie(sk), true);
	if (ctx)
		ctx_own(ctx, true);
	return 1;
}

static __always_inline int on_bind(struct bpf_sock *sk)
{
	struct pf_sock_ctx *ctx = ctx_get(sk, bpf_get_socket_cookie(sk), false);
	if (ctx)
		ctx_own(ctx, true);
	return 1;
}

SEC("cgroup/post_bind4")
int pf_post_bind4(struct bpf_sock *sk)
{
	return on_bind(sk);
}

SEC("cgroup/post_bind6")
int pf_post_bind6(struct bpf_sock *sk)
{
	return on_bind(sk);
}

/* The rules' decision on a connect or send (policy.h), as global
 * functions: the verifier checks each once per program. */
__noinline int pf_policy_addr4_g(struct bpf_sock_addr *sa, __u32 sendmsg)
{
	return pf_policy_addr(sa, sendmsg != 0, false);
}

__noinline int pf_policy_addr6_g(struct bpf_sock_addr *sa, __u32 sendmsg)
{
	return pf_policy_addr(sa, sendmsg != 0, true);
}

static __always_inline int on_addr(struct bpf_sock_addr *sa, bool sendmsg, bool v6)
{
	/* ---- rules enforcement (policy.h): 0 refuses with EPERM ---- */
	if (pf_rules_on &&
	    !(v6 ? pf_policy_addr6_g(sa, sendmsg) : pf_policy_addr4_g(sa, sendmsg)))
		return 0;
	/* ---- end rules enforcement ---- */
	struct bpf_sock *sk = sa->sk;
	if (!sk)
		return 1;
	struct pf_sock_ctx *ctx = ctx_get(sk, bpf_get_socket_cookie(sa), false);
	if (ctx)
		ctx_own(ctx, true);
	return 1;
}

SEC("cgroup/connect4")
int pf_connect4(struct bpf_sock_addr *sa)
{
	return on_addr(sa, false, false);
}

SEC("cgroup/connect6")
int pf_connect6(struct bpf_sock_addr *sa)
{
	return on_addr(sa, false, true);
}

SEC("cgroup/sendmsg4")
int pf_sendmsg4(struct bpf_sock_addr *sa)
{
	return on_addr(sa, true, false);
}

SEC("cgroup/sendmsg6")
int pf_sendmsg6(struct bpf_sock_addr *sa)
{
	return on_addr(sa, true, true);
}

/* Every send and receive, in the calling process. A socket met here first
 * existed before procflow attached (its birth would have been seen). */
static __always_inline int on_io(struct sock *sk, int ret)
{
	if (ret <= 0)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (!inet_family(family))
		return 0;
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return 0;
	}
	if (!ctx->cookie && ctx_claim(ctx, bpf_get_socket_cookie(sk)))
		ctx_init(ctx, sk, false);
	ctx_own(ctx, true);
	if (!(ctx->flags & PF_F_ANNOUNCED) && sk->sk_protocol == IPPROTO_TCP &&
	    sk->sk_type == SOCK_STREAM && sk->__sk_common.skc_state == TCP_ESTABLISHED)
		tcp_announce(sk, ctx, PF_ORIGIN_SEND, PF_DIR_UNKNOWN);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(pf_send_len, struct sock *sk, int ret, int flags)
{
	return on_io(sk, ret);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(pf_recv_len, struct sock *sk, int ret, int flags)
{
	if (flags & 2 /* MSG_PEEK */)
		return 0;
	return on_io(sk, ret);
}

/* exec: the absolute path of the real executable (a dentry walk across
 * mounts), the name as given and the arguments, captured before the process
 * can exit. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(pf_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	rb_note_fill();
	struct pf_exec_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return 0;
	}
	e->kind = PF_EV_EXEC;
	e->pid = p->tgid;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->_pad = 0;
	e->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->fname, sizeof(e->fname), BPF_CORE_READ(bprm, filename));

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long as = BPF_CORE_READ(mm, arg_start), ae = BPF_CORE_READ(mm, arg_end);
	__u32 alen = ae > as ? ae - as : 0;
	if (alen > PF_ARGS_LEN)
		alen = PF_ARGS_LEN;
	e->args_len = 0;
	if (alen && bpf_probe_read_user(e->args, alen & (PF_ARGS_LEN - 1) ?: PF_ARGS_LEN, (void *)as) == 0)
		e->args_len = alen;

	/* The real executable's absolute path, by the dentry walk the rules
	 * use too (policy.h). */
	struct pf_path_buf *sb = 0;
	__u32 pos = 0;
	e->path_len = 0;
	if (pol_path_of_file(BPF_CORE_READ(bprm, file), &sb, &pos) && sb) {
		pos &= PF_PATH_END - 1;
		__u32 n = PF_PATH_END - pos;
		if (n > 0 && n <= PF_EXEC_PATH &&
		    bpf_probe_read_kernel(e->path, n, sb->b + pos) == 0)
			e->path_len = n;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* fork and clone: a new process runs what its parent ran until it execs, so
 * user space gives it the parent's identity from its first moment, even when
 * it exits within a millisecond. New threads are not reported. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(pf_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 tgid = child->tgid;
	if (tgid != child->pid)
		return 0;
	rb_note_fill();
	struct pf_fork_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return 0;
	}
	e->kind = PF_EV_FORK;
	e->pid = tgid;
	e->ppid = parent->tgid;
	e->_pad = 0;
	e->start_ns = child->start_boottime;
	e->parent_start_ns = BPF_CORE_READ(parent, group_leader, start_boottime);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
