// SPDX-License-Identifier: GPL-2.0
/* Iterators: the start-up scan of existing sockets and their owners, and the
 * periodic reading of live TCP flows. Each writes pf_flow_event records to
 * its seq file; user space reads them. */
#include "common.h"

static __always_inline void seq_flow(struct seq_file *seq, struct pf_flow_event *e)
{
	bpf_seq_write(seq, e, sizeof(*e));
}

/* An existing socket: give it a context (origin startup) if it has none. */
static __always_inline void scan_sock(struct seq_file *seq, struct sock *sk, bool tcp)
{
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return;
	}
	if (!ctx->cookie && ctx_claim(ctx, bpf_get_socket_cookie(sk))) {
		ctx_init(ctx, sk, false);
		ctx->addr.origin = PF_ORIGIN_STARTUP;
	}
	if (!(ctx->flags & PF_F_OWNER)) {
		__u64 key = (__u64)sk;
		struct pf_owner *o = bpf_map_lookup_elem(&scan_owner, &key);
		if (o) {
			ctx->owner = *o;
			__sync_fetch_and_or(&ctx->flags, PF_F_OWNER | PF_F_OWNER_WEAK);
		}
	}
	struct pf_flow_event e = {};
	event_from_ctx(&e, PF_EV_SCAN, ctx);
	addr_of_sock(sk, &e.addr);
	e.addr.origin = ctx->addr.origin ?: PF_ORIGIN_STARTUP;
	__u8 state = sk->__sk_common.skc_state;
	e._pad = state;
	if (tcp) {
		tcp_counters_into(&e, sk, ctx);
		/* Established flows are announced by the scan itself. */
		if (state != TCP_LISTEN && state != TCP_CLOSE && !(ctx->flags & PF_F_ANNOUNCED)) {
			__sync_fetch_and_or(&ctx->flags, PF_F_ANNOUNCED);
			ctx->addr = e.addr;
			e.flags = ctx->flags | PF_F_ANNOUNCED;
		}
	}
	seq_flow(seq, &e);
}

SEC("iter/tcp")
int pf_iter_tcp(struct bpf_iter__tcp *it)
{
	struct sock_common *skc = it->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* time-wait and request sockets carry no context */
	scan_sock(it->meta->seq, (struct sock *)tp, true);
	return 0;
}

SEC("iter/udp")
int pf_iter_udp(struct bpf_iter__udp *it)
{
	struct udp_sock *udp = it->udp_sk;
	if (!udp)
		return 0;
	scan_sock(it->meta->seq, (struct sock *)udp, false);
	return 0;
}

/* Every socket file of every process: its owner, by the socket's address,
 * for the TCP and UDP walks that follow (scan_owner). It writes nothing.
 * Threads share the table of their leader: leaders only. The first process
 * found holding a socket is its owner (weak until it acts on it). */
SEC("iter/task_file")
int pf_iter_task_file(struct bpf_iter__task_file *it)
{
	struct task_struct *task = it->task;
	struct file *file = it->file;
	if (!task || !file)
		return 0;
	if (task->pid != task->tgid)
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family == AF_PACKET) {
		/* Its frames skip dev_queue_xmit, where frames are counted:
		 * reported (packet.bpf.c, pf_packet_sockopt). */
		struct packet_sock *po = bpf_core_cast(sk, struct packet_sock);
		if (po->flags & (1UL << PACKET_SOCK_QDISC_BYPASS))
			stat_inc(PF_STAT_BYPASS_FOUND);
		return 0;
	}
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 key = (__u64)sk;
	struct pf_owner o = {};
	owner_of_task(&o, task);
	bpf_map_update_elem(&scan_owner, &key, &o, BPF_NOEXIST);
	return 0;
}

/* Periodic reading, per namespace: current counters of the live TCP flows
 * and of UDP sockets' slot flows (PF_EV_DUMP), and a kind-0 record with the
 * cookie for every other socket that has a context, so user space can count
 * live contexts and end the flows of UDP sockets that are gone. Creates
 * nothing. */
static __always_inline void dump_sock(struct seq_file *seq, struct sock *sk, bool tcp)
{
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, sk, 0, 0);
	if (!ctx)
		return;
	struct pf_flow_event e = {};
	e.cookie = ctx->cookie;
	e.netns = ctx->netns;
	e.addr.proto = tcp ? IPPROTO_TCP : IPPROTO_UDP;
	__u32 flags = ctx->flags;
	if (tcp && (flags & PF_F_ANNOUNCED) && !(flags & PF_F_CLOSED)) {
		event_from_ctx(&e, PF_EV_DUMP, ctx);
		tcp_counters_into(&e, sk, ctx);
	} else if (!tcp && ctx->slot.state == PF_SLOT_COUNTING) {
		event_from_ctx(&e, PF_EV_DUMP, ctx);
		event_slot(&e, ctx);
	}
	seq_flow(seq, &e);
}

SEC("iter/tcp")
int pf_dump_tcp(struct bpf_iter__tcp *it)
{
	struct sock_common *skc = it->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	dump_sock(it->meta->seq, (struct sock *)tp, true);
	return 0;
}

SEC("iter/udp")
int pf_dump_udp(struct bpf_iter__udp *it)
{
	struct udp_sock *udp = it->udp_sk;
	if (!udp)
		return 0;
	dump_sock(it->meta->seq, (struct sock *)udp, false);
	return 0;
}
