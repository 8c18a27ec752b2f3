/* SPDX-License-Identifier: GPL-2.0 */
/* Maps and helpers shared by procflow's programs. Maps are defined once, in
 * maps.bpf.c (PF_DEFINE_MAPS), and declared extern everywhere else; the BPF
 * linker joins the objects into one. */
#ifndef PF_COMMON_H
#define PF_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "procflow.h"

#define AF_UNSPEC 0
#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_STREAM 1
#define PF_KTHREAD 0x00200000
#define IPPROTO_ICMPV6 58
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#ifdef PF_DEFINE_MAPS
#define PF_MAP
#else
#define PF_MAP extern
#endif

/* Load-time knob: rules are enforced (procflow run --rules). When 0, the
 * verifier drops the rules paths as dead code, so the programs load fast. */
#ifdef PF_DEFINE_MAPS
const volatile __u32 pf_rules_on = 0;
#else
extern const volatile __u32 pf_rules_on;
#endif

/* The flow context of every socket procflow has met. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pf_sock_ctx);
} sk_ctx SEC(".maps");

PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Datagram flows (UDP, ping, raw): one entry per socket and remote, with a
 * value per CPU so that the per-packet adds need no atomics (user space sums
 * them). User space deletes a socket's entries after its RELEASE record. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct pf_dgram_key);
	__type(value, struct pf_dgram_val);
} dgram_flows SEC(".maps");

/* Datagram flows that got no entry in dgram_flows (the table full, or the
 * kernel's allocator for its entries dry in a burst of new flows): counted
 * in their socket's overflow flow (remote all zeros, port 0; the key and
 * value of dgram_flows), one entry per socket and family. Preallocated, so
 * that an insert never waits on the allocator; one value for all CPUs
 * (atomic adds: this is not the common path). User space adds an entry to
 * the overflow flow's dgram_flows entry, and deletes both together. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct pf_dgram_key);
	__type(value, struct pf_dgram_val);
} dgram_spill SEC(".maps");

/* Datagram table entries by the uid they are charged to (see
 * PF_DGRAM_UID); sock_release gives a socket's back. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} dgram_uid SEC(".maps");

/* Handshake packets seen on a listener, waiting for the accepted socket. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pf_tuple);
	__type(value, struct pf_pending);
} pending SEC(".maps");

/* Start-up scan: the owner of every socket a process holds, by the socket's
 * kernel address, from iter/task_file (where the socket pointer is not one
 * socket storage accepts) for iter/tcp and iter/udp, which give the sockets'
 * contexts these owners. User space empties it after the scan. */
PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct pf_owner);
} scan_owner SEC(".maps");

PF_MAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PF_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

/* Keeps the most bytes seen waiting in the ring buffer (this CPU's view),
 * for sizing it from measurement; called before each record is reserved. */
static __always_inline void rb_note_fill(void)
{
	__u32 k = PF_STAT_RB_PEAK;
	__u64 *v = bpf_map_lookup_elem(&stats, &k);
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	if (v && waiting > *v)
		*v = waiting;
}

static __always_inline __u64 now_ns(void)
{
	return bpf_ktime_get_boot_ns();
}

/* The current process as an owner; false for kernel threads. Its parent and leader are read through
 * CO-RE, not BTF pointers, which cost the verifier a walk of task_struct's
 * members on every path (see pol_process_comm); this runs only when a
 * socket's owner changes. */
static __always_inline bool owner_current(struct pf_owner *o)
{
	struct task_struct *t = bpf_get_current_task_btf();
	if (t->flags & PF_KTHREAD)
		return false;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->ppid = BPF_CORE_READ(t, real_parent, tgid);
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	return true;
}

/* The owner of a socket from a process that holds it (start-up scan). */
static __always_inline void owner_of_task(struct pf_owner *o, struct task_struct *t)
{
	o->pid = t->tgid;
	o->ppid = BPF_CORE_READ(t, real_parent, tgid);
	o->uid = BPF_CORE_READ(t, cred, uid.val);
	o->cgroup_id = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	o->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_probe_read_kernel_str(o->comm, sizeof(o->comm), t->comm);
}

static __always_inline __u32 sk_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* Endpoints of a socket, read through BTF. */
static __always_inline void addr_of_sock(struct sock *sk, struct pf_addr *a)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	struct inet_sock *inet = (struct inet_sock *)sk;
	a->proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	a->lport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	a->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET6) {
		a->family = 6;
		BPF_CORE_READ_INTO(&a->local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&a->remote, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		a->family = 4;
		BPF_CORE_READ_INTO((__u32 *)a->local, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)a->remote, sk, __sk_common.skc_daddr);
	}
}

/* TCP payload counters from the kernel's own per-socket counters: data bytes
 * sent once (retransmissions taken out), and bytes received without the
 * peer's FIN (SOCK_DONE is set when the FIN arrived). */
static __always_inline void tcp_payload(struct sock *sk, __u64 *tx, __u64 *rx)
{
	struct tcp_sock *tp = bpf_core_cast(sk, struct tcp_sock);
	__u64 sent = tp->bytes_sent, retrans = tp->bytes_retrans;
	__u64 recv = tp->bytes_received;
	unsigned long flags = sk->__sk_common.skc_flags;
	if (flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
		recv = recv ? recv - 1 : 0;
	*tx = sent > retrans ? sent - retrans : 0;
	*rx = recv;
}

/* Claims a fresh context for initialisation; true for the one caller that
 * wins (several hooks can meet a socket at the same moment). */
static __always_inline bool ctx_claim(struct pf_sock_ctx *ctx, __u64 cookie)
{
	return __sync_val_compare_and_swap(&ctx->cookie, 0, cookie) == 0;
}

/* A context's counters, as a record carries them. */
static __always_inline void ctx_counters(struct pf_counters *c, struct pf_sock_ctx *ctx)
{
	c->tx_bytes = ctx->tx.bytes;
	c->tx_packets = ctx->tx.packets;
	c->tx_payload = ctx->tx.payload;
	c->rx_bytes = ctx->rx.bytes;
	c->rx_packets = ctx->rx.packets;
	c->rx_payload = ctx->rx.payload;
}

/* Fills the common part of a flow record from a socket context. */
static __always_inline void event_from_ctx(struct pf_flow_event *e, __u32 kind,
					   struct pf_sock_ctx *ctx)
{
	e->kind = kind;
	e->flags = ctx->flags;
	e->cookie = ctx->cookie;
	e->ts_ns = now_ns();
	e->start_ns = ctx->start_ns;
	e->addr = ctx->addr;
	e->netns = ctx->netns;
	e->_pad = 0;
	e->owner = ctx->owner;
	ctx_counters(&e->c, ctx);
	if (ctx->flags & PF_F_BEFORE) {
		e->before_tx = ctx->base_tx;
		e->before_rx = ctx->base_rx;
	} else {
		e->before_tx = 0;
		e->before_rx = 0;
	}
}

static __always_inline void emit_ctx(__u32 kind, struct pf_sock_ctx *ctx)
{
	rb_note_fill();
	struct pf_flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return;
	}
	event_from_ctx(e, kind, ctx);
	bpf_ringbuf_submit(e, 0);
}

/* A record of a UDP socket's slot flow (DUMP, RELEASE; the slot must be
 * counting or released): its endpoints, start and counters (e->c, from the
 * context's tx and rx), flagged PF_F_SLOT. */
static __always_inline void event_slot(struct pf_flow_event *e, struct pf_sock_ctx *ctx)
{
	struct pf_slot *s = &ctx->slot;
	__builtin_memcpy(e->addr.local, s->local, 16);
	__builtin_memcpy(e->addr.remote, s->remote, 16);
	e->addr.lport = s->lport;
	e->addr.rport = s->rport;
	e->addr.family = s->family;
	e->addr.proto = IPPROTO_UDP;
	e->addr.direction = s->direction;
	e->addr.origin = s->origin;
	e->start_ns = s->start_ns;
	e->flags |= PF_F_SLOT;
}

/* The OPEN record of a datagram flow. */
static __always_inline void dgram_open(struct pf_sock_ctx *ctx, __u8 *remote, __u8 *local,
				       __u16 rport, __u16 lport, __u8 family, __u8 proto,
				       __u8 direction, __u8 origin, __u64 start_ns)
{
	rb_note_fill();
	struct pf_flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return;
	}
	event_from_ctx(e, PF_EV_OPEN, ctx);
	__builtin_memcpy(e->addr.local, local, 16);
	__builtin_memcpy(e->addr.remote, remote, 16);
	e->addr.lport = lport;
	e->addr.rport = rport;
	e->addr.family = family;
	e->addr.proto = proto;
	e->addr.direction = direction;
	e->addr.origin = origin;
	e->start_ns = start_ns;
	__builtin_memset(&e->c, 0, sizeof(e->c));
	bpf_ringbuf_submit(e, 0);
}

/* Whether a counting slot is that of the flow with this remote. */
static __always_inline bool slot_is(struct pf_sock_ctx *ctx, const __u8 *remote, __u16 rport,
				    __u8 family)
{
	__u64 a[2], b[2];
	__builtin_memcpy(a, remote, 16);
	__builtin_memcpy(b, ctx->slot.remote, 16);
	return ctx->slot.rport == rport && ctx->slot.family == family && a[0] == b[0] &&
	       a[1] == b[1];
}

/* TCP context: fills payload counters from the socket and returns the event. */
static __always_inline void tcp_counters_into(struct pf_flow_event *e, struct sock *sk,
					      struct pf_sock_ctx *ctx)
{
	__u64 tx, rx;
	tcp_payload(sk, &tx, &rx);
	e->c.tx_payload = tx > ctx->base_tx ? tx - ctx->base_tx : 0;
	e->c.rx_payload = rx > ctx->base_rx ? rx - ctx->base_rx : 0;
}

/* Announces a TCP flow (OPEN record) once. */
static __always_inline void tcp_announce(struct sock *sk, struct pf_sock_ctx *ctx,
					 __u8 origin, __u8 direction)
{
	if (ctx->flags & PF_F_ANNOUNCED)
		return;
	if (__sync_fetch_and_or(&ctx->flags, PF_F_ANNOUNCED) & PF_F_ANNOUNCED)
		return;
	addr_of_sock(sk, &ctx->addr);
	ctx->addr.origin = origin;
	ctx->addr.direction = direction;
	/* The application opened an MPTCP socket: this is its subflow. */
	if (BPF_CORE_READ((struct tcp_sock *)sk, is_mptcp))
		__sync_fetch_and_or(&ctx->flags, PF_F_MPTCP);
	rb_note_fill();
	struct pf_flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return;
	}
	event_from_ctx(e, PF_EV_OPEN, ctx);
	tcp_counters_into(e, sk, ctx);
	bpf_ringbuf_submit(e, 0);
}

/* First meeting of a socket: cookie, start time, namespace; for a socket not
 * seen at its birth (it existed before procflow attached), the kernel's TCP
 * counters so far become its before_start. */
static __always_inline void ctx_init(struct pf_sock_ctx *ctx, struct sock *sk, bool born)
{
	ctx->start_ns = now_ns();
	ctx->netns = sk_netns(sk);
	if (born) {
		ctx->flags |= PF_F_BORN;
		return;
	}
	__u8 proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	__u16 type = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type);
	if (proto == IPPROTO_TCP && type == SOCK_STREAM) {
		tcp_payload(sk, &ctx->base_tx, &ctx->base_rx);
		ctx->flags |= PF_F_BEFORE;
	}
}

/* Records the current process as the socket's owner. `strong` when the
 * process acted on the socket itself (connect, bind, send, recv). */
static __always_inline void ctx_own(struct pf_sock_ctx *ctx, bool strong)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 flags = ctx->flags;
	if ((flags & PF_F_OWNER) && ctx->owner.pid == tgid) {
		if (strong && (flags & PF_F_OWNER_WEAK))
			__sync_fetch_and_and(&ctx->flags, ~(__u32)PF_F_OWNER_WEAK);
		return;
	}
	struct pf_owner o = {};
	if (!owner_current(&o))
		return;
	ctx->owner = o;
	__sync_fetch_and_or(&ctx->flags, PF_F_OWNER);
	if (strong)
		__sync_fetch_and_and(&ctx->flags, ~(__u32)PF_F_OWNER_WEAK);
	else
		__sync_fetch_and_or(&ctx->flags, PF_F_OWNER_WEAK);
	if ((flags & PF_F_OWNER) && ctx->owner_changes < 16) {
		ctx->owner_changes++;
		emit_ctx(PF_EV_OWNER, ctx);
	} else if (!(flags & PF_F_OWNER) && (flags & PF_F_ANNOUNCED)) {
		emit_ctx(PF_EV_OWNER, ctx);
	}
}

#endif /* PF_COMMON_H */
