// SPDX-License-Identifier: GPL-2.0
/* Flow lifecycle: TCP connections announced when they connect or are
 * accepted, and final records when a TCP socket closes or a datagram socket
 * is released. */
#include "common.h"

/* Moves a v4-mapped IPv6 address (::ffff:a.b.c.d) to the IPv4 layout that
 * packets carry, so a dual-stack socket's tuple matches its packets. */
static __always_inline void unmap_v4(__u8 a[16])
{
	__u32 *w = (__u32 *)a;
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
		w[0] = w[3];
		w[2] = 0;
		w[3] = 0;
	}
}

/* An accepted connection takes the handshake packets that its listener saw,
 * and the listener's owner until the accepting process acts on it. */
static __always_inline void adopt_pending(struct sock *sk, struct pf_sock_ctx *ctx)
{
	struct pf_addr a = {};
	addr_of_sock(sk, &a);
	struct pf_tuple t = {};
	__builtin_memcpy(t.local, a.local, 16);
	__builtin_memcpy(t.remote, a.remote, 16);
	if (a.family == 6) {
		unmap_v4(t.local);
		unmap_v4(t.remote);
	}
	t.lport = a.lport;
	t.rport = a.rport;
	t.netns = ctx->netns;
	struct pf_pending *pe = bpf_map_lookup_elem(&pending, &t);
	if (!pe)
		return;
	__sync_fetch_and_add(&ctx->tx.bytes, pe->tx_bytes);
	__sync_fetch_and_add(&ctx->rx.bytes, pe->rx_bytes);
	__sync_fetch_and_add(&ctx->tx.packets, pe->tx_packets);
	__sync_fetch_and_add(&ctx->rx.packets, pe->rx_packets);
	if (pe->has_owner && !(ctx->flags & PF_F_OWNER)) {
		ctx->owner = pe->owner;
		__sync_fetch_and_or(&ctx->flags, PF_F_OWNER | PF_F_OWNER_WEAK);
	}
	bpf_map_delete_elem(&pending, &t);
}

SEC("sockops")
int pf_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return 1;
	struct sock *sk = bpf_core_cast(bsk, struct sock);
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return 1;
	}
	bool fresh = !ctx->cookie && ctx_claim(ctx, bpf_get_socket_cookie(skops));

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		/* In the connecting process, before the SYN leaves. */
		if (fresh)
			ctx_init(ctx, sk, true);
		ctx_own(ctx, true);
		tcp_announce(sk, ctx, PF_ORIGIN_CONNECT, PF_DIR_OUT);
	} else if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		/* softirq: the current process is not the owner. */
		if (fresh) {
			ctx_init(ctx, sk, true);
			adopt_pending(sk, ctx);
		}
		tcp_announce(sk, ctx, PF_ORIGIN_ACCEPT, PF_DIR_IN);
	} else {
		/* Connected before procflow attached its sockops program. */
		if (fresh)
			ctx_init(ctx, sk, false);
		tcp_announce(sk, ctx, PF_ORIGIN_PACKET, PF_DIR_OUT);
	}
	return 1;
}

/* TCP close: the final record, with the kernel's totals. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(pf_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	if (newstate != TCP_CLOSE)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct pf_sock_ctx *fc = bpf_sk_storage_get(&sk_ctx, sk, 0, 0);
	if (!fc && oldstate != TCP_LISTEN && oldstate != TCP_SYN_SENT) {
		/* A connection from before procflow attached, idle since: it gets
		 * its one record now, all of its traffic before_start. */
		fc = bpf_sk_storage_get(&sk_ctx, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!fc)
			return 0;
		if (!fc->cookie && ctx_claim(fc, bpf_get_socket_cookie(sk))) {
			ctx_init(fc, sk, false);
			addr_of_sock(sk, &fc->addr);
			fc->addr.origin = PF_ORIGIN_STARTUP;
			__sync_fetch_and_or(&fc->flags, PF_F_ANNOUNCED);
		}
	}
	if (!fc || !(fc->flags & PF_F_ANNOUNCED))
		return 0;
	if (__sync_fetch_and_or(&fc->flags, PF_F_CLOSED) & PF_F_CLOSED)
		return 0;
	rb_note_fill();
	struct pf_flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return 0;
	}
	event_from_ctx(e, PF_EV_CLOSE, fc);
	tcp_counters_into(e, sk, fc);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* A released UDP socket's slot flow, added to its datagram table entry. */
static __always_inline void slot_to_table(struct pf_sock_ctx *ctx)
{
	struct pf_slot *s = &ctx->slot;
	struct pf_dgram_key k = {};
	k.cookie = ctx->cookie;
	__builtin_memcpy(k.remote, s->remote, 16);
	k.rport = s->rport;
	k.family = s->family;
	/* This CPU's value of the entry. */
	struct pf_dgram_val *v = bpf_map_lookup_elem(&dgram_flows, &k);
	if (v) {
		v->c.tx_bytes += ctx->tx.bytes;
		v->c.rx_bytes += ctx->rx.bytes;
		v->c.tx_packets += ctx->tx.packets;
		v->c.rx_packets += ctx->rx.packets;
		v->c.tx_payload += ctx->tx.payload;
		v->c.rx_payload += ctx->rx.payload;
		return;
	}
	struct pf_dgram_val fresh = {};
	ctx_counters(&fresh.c, ctx);
	fresh.start_ns = s->start_ns;
	__builtin_memcpy(fresh.local, s->local, 16);
	fresh.lport = s->lport;
	fresh.direction = s->direction;
	fresh.origin = s->origin;
	fresh.proto = IPPROTO_UDP;
	if (bpf_map_update_elem(&dgram_flows, &k, &fresh, BPF_NOEXIST))
		stat_inc(PF_STAT_DGRAM_FULL);
}

/* A datagram socket is released: user space ends its flows, reading their
 * final counters from dgram_flows, and the slot flow's from this record. */
SEC("cgroup/sock_release")
int pf_sock_release(struct bpf_sock *bsk)
{
	__u32 family = bsk->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	if (bsk->type == SOCK_STREAM)
		return 1;
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, 0);
	if (!ctx || !ctx->cookie)
		return 1;
	/* Its datagram table entries go (user space deletes them on this
	 * record, or sweeps them): its uid's quota gets them back now. */
	__u32 n = ctx->dgram_n;
	if (n) {
		__u32 uid = ctx->dgram_uid;
		__u32 *charged = bpf_map_lookup_elem(&dgram_uid, &uid);
		if (charged)
			__sync_fetch_and_sub(charged, *charged < n ? *charged : n);
		ctx->dgram_n = 0;
	}
	/* A UDP socket's slot flow ends here: packets that still arrive go
	 * to the table, which user space reads after this record. */
	__u32 slot = __sync_val_compare_and_swap(&ctx->slot.state, PF_SLOT_COUNTING,
						 PF_SLOT_RELEASED);
	if (slot == PF_SLOT_FREE)
		__sync_val_compare_and_swap(&ctx->slot.state, PF_SLOT_FREE, PF_SLOT_RELEASED);
	rb_note_fill();
	struct pf_flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		/* No record: the slot flow's counters would go with the
		 * socket. Into the table, where the sweep of sockets whose
		 * release went unrecorded finds them. */
		if (slot == PF_SLOT_COUNTING)
			slot_to_table(ctx);
		return 1;
	}
	event_from_ctx(e, PF_EV_RELEASE, ctx);
	if (slot == PF_SLOT_COUNTING)
		event_slot(e, ctx);
	bpf_ringbuf_submit(e, 0);
	return 1;
}
