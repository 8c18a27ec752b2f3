// SPDX-License-Identifier: GPL-2.0
/* Counting: every IP packet of a socket, in cgroup_skb egress and ingress,
 * added to its flow. Offset 0 is the IP header. A GSO/GRO packet counts as
 * the segments it stands for, each with its own headers, as a NIC sees them.
 * These hooks may run in softirq: they never take ownership. */
#include "common.h"
#include "policy.h" /* rules enforcement */

struct pkt {
	__u8 version;   /* 4 or 6 */
	__u8 l4;        /* IPPROTO_* of the transport header */
	__u16 l3len;    /* IP header length */
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;    /* host order; 0 if the protocol has no ports */
	__u16 dport;
	__u16 l4len;    /* transport header length (TCP doff*4, UDP 8) */
	__u8 tcpflags;
	__u8 jumbo;     /* bytes of a BIG TCP jumbo header no segment carries */
	__u8 rthdr;     /* an IPv6 routing header was walked */
	__u32 len;      /* skb->len */
	__u32 segs;     /* segments it stands for (GSO/GRO), at least 1 */
	__u64 wire;     /* bytes of those segments on the wire */
};

/* The transport header at `off`, through bpf_skb_load_bytes. */
static __always_inline int parse_l4_slow(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	p->sport = p->dport = 0;
	p->l4len = 0;
	p->tcpflags = 0;
	if (p->l4 == IPPROTO_TCP) {
		__u8 th[14];
		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)) == 0) {
			p->sport = (th[0] << 8) | th[1];
			p->dport = (th[2] << 8) | th[3];
			p->l4len = (th[12] >> 4) * 4;
			p->tcpflags = th[13];
		}
	} else if (p->l4 == IPPROTO_UDP || p->l4 == IPPROTO_UDPLITE) {
		__u8 uh[4];
		if (bpf_skb_load_bytes(skb, off, uh, sizeof(uh)) == 0) {
			p->sport = (uh[0] << 8) | uh[1];
			p->dport = (uh[2] << 8) | uh[3];
		}
		p->l4len = 8;
	}
	return 0;
}

#define IPPROTO_HOPOPTS 0   /* IPv6 extension headers (linux/in6.h) */
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS 60
#define GRO_LEGACY_MAX_SIZE 65536
#define IPV6_TLV_JUMBO 0xc2 /* jumbo payload option */

static __always_inline bool ipv6_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_FRAGMENT ||
	       nh == IPPROTO_DSTOPTS || nh == IPPROTO_AH;
}

/* IPv6 extension headers (hop-by-hop, routing, fragment, destination
 * options, authentication) between the IPv6 and the transport header are
 * walked, so that the flow gets its real protocol and ports and the headers
 * count as headers. Rare: only packets that have them get here.
 *
 * IPv6 BIG TCP: TCP may build a GSO packet of more than 64 KiB even when the
 * device's gso_max_size is 64 KiB (tcp_tso_autosize sends at least
 * tcp_min_tso_segs = 2 segments; on loopback, MTU 65536, two segments pass
 * 64 KiB). ip6_xmit then puts an 8-byte hop-by-hop header holding only the
 * jumbo payload option between the IPv6 and TCP headers (payload length 0),
 * and segmentation takes it away again (ipv6_hopopt_jumbo_remove): no
 * segment on the wire carries it. Such a header (the kernel's
 * ipv6_has_hopopt_jumbo test) is noted in p->jumbo. */
__noinline int parse_v6_ext(struct __sk_buff *skb, struct pkt *p, __u32 len)
{
	if (!p)
		return -1;
	__u32 off = 40;
	__u8 nh = p->l4;
	for (int i = 0; i < 8 && ipv6_ext(nh); i++) {
		__u8 h[4];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			break;
		if (i == 0 && nh == IPPROTO_HOPOPTS && h[0] == IPPROTO_TCP && h[1] == 0 &&
		    h[2] == IPV6_TLV_JUMBO && len > GRO_LEGACY_MAX_SIZE)
			p->jumbo = 8;
		if (nh == IPPROTO_ROUTING)
			p->rthdr = 1;
		if (nh == IPPROTO_FRAGMENT)
			off += 8;
		else if (nh == IPPROTO_AH)
			off += (h[1] + 2) * 4;
		else
			off += (h[1] + 1) * 8;
		nh = h[0];
	}
	p->l4 = nh;
	p->l3len = off;
	return parse_l4_slow(skb, p, off);
}

/* Headers through bpf_skb_load_bytes: for packets whose headers are not
 * all in the linear part. */
__noinline int parse_slow(struct __sk_buff *skb, struct pkt *p)
{
	if (!p)
		return -1;
	__u8 b0;
	if (bpf_skb_load_bytes(skb, 0, &b0, 1))
		return -1;
	p->version = b0 >> 4;
	if (p->version == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		p->l3len = ip.ihl * 4;
		p->l4 = ip.protocol;
		__builtin_memcpy(p->src, &ip.saddr, 4);
		__builtin_memcpy(p->dst, &ip.daddr, 4);
	} else if (p->version == 6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		p->l3len = 40;
		p->l4 = ip6.nexthdr;
		__builtin_memcpy(p->src, &ip6.saddr, 16);
		__builtin_memcpy(p->dst, &ip6.daddr, 16);
		if (ipv6_ext(p->l4))
			return parse_v6_ext(skb, p, skb->len);
	} else {
		return -1;
	}
	return parse_l4_slow(skb, p, p->l3len & 0x3c);
}

/* Headers by direct packet access (offset 0 is the IP header), falling back
 * to parse_slow when they are not all in the linear part. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *b = data;
	if ((void *)(b + 1) > end)
		return parse_slow(skb, p);
	__u8 version = b[0] >> 4;
	__u32 off;
	if (version == 4) {
		struct iphdr *ip = data;
		if ((void *)(ip + 1) > end)
			return parse_slow(skb, p);
		p->version = 4;
		p->l3len = ip->ihl * 4;
		p->l4 = ip->protocol;
		__builtin_memcpy(p->src, &ip->saddr, 4);
		__builtin_memcpy(p->dst, &ip->daddr, 4);
		off = p->l3len & 0x3c;
	} else if (version == 6) {
		struct ipv6hdr *ip6 = data;
		if ((void *)(ip6 + 1) > end)
			return parse_slow(skb, p);
		p->version = 6;
		p->l3len = 40;
		p->l4 = ip6->nexthdr;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
		off = 40;
	} else {
		return -1;
	}
	p->sport = p->dport = 0;
	p->l4len = 0;
	p->tcpflags = 0;
	__u8 *t = b + off;
	if (p->l4 == IPPROTO_TCP) {
		if ((void *)(t + 14) > end)
			return parse_slow(skb, p);
		p->sport = (t[0] << 8) | t[1];
		p->dport = (t[2] << 8) | t[3];
		p->l4len = (t[12] >> 4) * 4;
		p->tcpflags = t[13];
	} else if (p->l4 == IPPROTO_UDP || p->l4 == IPPROTO_UDPLITE) {
		if ((void *)(t + 4) > end)
			return parse_slow(skb, p);
		p->sport = (t[0] << 8) | t[1];
		p->dport = (t[2] << 8) | t[3];
		p->l4len = 8;
	} else if (version == 6 && ipv6_ext(p->l4)) {
		return parse_v6_ext(skb, p, skb->len);
	}
	return 0;
}

#define IPOPT_END 0
#define IPOPT_NOOP 1
#define IPOPT_LSRR 131
#define IPOPT_SSRR 137

struct ip4_opts {
	__u8 b[40];
	__u32 len;
	__u32 pos;
	__u32 srr;
};

static int ip4_opt_step(__u32 i, struct ip4_opts *o)
{
	__u32 pos = o->pos;
	if (pos >= o->len || pos >= 39)
		return 1;
	__u8 t = o->b[pos];
	if (t == IPOPT_END)
		return 1;
	if (t == IPOPT_NOOP) {
		o->pos = pos + 1;
		return 0;
	}
	__u8 l = o->b[pos + 1];
	if (t == IPOPT_LSRR || t == IPOPT_SSRR || l < 2) {
		o->srr = 1; /* a source route, or malformed options */
		return 1;
	}
	o->pos = pos + l;
	return 0;
}

/* Whether an IPv4 header of `l3len` bytes carries a loose or strict source
 * route (IP_OPTIONS lets any process set one): such a packet goes to the
 * route's first hop, not to the address its connect or send was decided
 * on. Malformed options count as one. */
__noinline int ip4_source_route(struct __sk_buff *skb, __u32 l3len)
{
	struct ip4_opts o = {};
	__u32 n = l3len > 20 ? l3len - 20 : 0;
	if (n == 0)
		return 0;
	if (n > 40)
		return 1;
	/* ihl counts 32-bit words: options come in whole words. */
	for (int i = 0; i < 10; i++) {
		if (i * 4 >= n)
			break;
		if (bpf_skb_load_bytes(skb, 20 + i * 4, o.b + i * 4, 4))
			return 1;
	}
	o.len = n;
	bpf_loop(40, ip4_opt_step, &o, 0);
	return o.srr;
}

static __always_inline void add(__u64 *v, __u64 n)
{
	__sync_fetch_and_add(v, n);
}

/* Handshake packets of a listener, kept by 4-tuple for the accepted socket. */
static __always_inline void count_pending(struct pf_sock_ctx *lctx, struct sock *sk,
					  struct pkt *p, bool egress, __u64 wire, __u64 segs)
{
	struct pf_tuple t = {};
	__builtin_memcpy(t.local, egress ? p->src : p->dst, 16);
	__builtin_memcpy(t.remote, egress ? p->dst : p->src, 16);
	t.lport = egress ? p->sport : p->dport;
	t.rport = egress ? p->dport : p->sport;
	t.netns = lctx ? lctx->netns : sk_netns(sk);
	struct pf_pending *pe = bpf_map_lookup_elem(&pending, &t);
	if (!pe) {
		struct pf_pending fresh = {};
		if (lctx && (lctx->flags & PF_F_OWNER)) {
			fresh.owner = lctx->owner;
			fresh.has_owner = 1;
		}
		bpf_map_update_elem(&pending, &t, &fresh, BPF_NOEXIST);
		pe = bpf_map_lookup_elem(&pending, &t);
		if (!pe)
			return;
	}
	if (egress) {
		add(&pe->tx_bytes, wire);
		add(&pe->tx_packets, segs);
	} else {
		add(&pe->rx_bytes, wire);
		add(&pe->rx_packets, segs);
	}
}

/* Claims a UDP socket's slot for the remote of its packet `p` (see
 * struct pf_slot); false if another CPU got there first. */
static __always_inline bool slot_claim(struct pf_sock_ctx *ctx, struct pkt *p, bool egress)
{
	struct pf_slot *s = &ctx->slot;
	if (__sync_val_compare_and_swap(&s->state, PF_SLOT_FREE, PF_SLOT_CLAIMING) != PF_SLOT_FREE)
		return false;
	__builtin_memcpy(s->remote, egress ? p->dst : p->src, 16);
	__builtin_memcpy(s->local, egress ? p->src : p->dst, 16);
	s->rport = egress ? p->dport : p->sport;
	s->lport = egress ? p->sport : p->dport;
	s->family = p->version;
	s->direction = egress ? PF_DIR_OUT : PF_DIR_IN;
	s->origin = egress ? PF_ORIGIN_SEND : PF_ORIGIN_PACKET;
	s->start_ns = now_ns();
	/* While this CPU claimed the slot, another may have counted a packet
	 * of the same remote in the table: the flow is announced then, and
	 * user space adds the two. */
	struct pf_dgram_key k = {};
	k.cookie = ctx->cookie;
	__builtin_memcpy(k.remote, s->remote, 16);
	k.rport = s->rport;
	k.family = s->family;
	if (!bpf_map_lookup_elem(&dgram_flows, &k))
		dgram_open(ctx, s->remote, s->local, s->rport, s->lport, s->family, IPPROTO_UDP,
			   s->direction, s->origin, s->start_ns);
	__sync_fetch_and_add(&s->state, PF_SLOT_COUNTING - PF_SLOT_CLAIMING);
	return true;
}

/* A UDP socket's first remote (a connected socket's only one) is counted in
 * the socket's own context: one compare, no table lookup. False for a packet
 * of another remote, which the datagram table counts. */
static __always_inline bool count_slot(struct pf_sock_ctx *ctx, struct pkt *p, bool egress,
				       __u32 len, __u64 wire, __u64 segs)
{
	struct pf_slot *s = &ctx->slot;
	__u32 state = s->state;
	if (state == PF_SLOT_COUNTING) {
		if (!slot_is(ctx, egress ? p->dst : p->src, egress ? p->dport : p->sport,
			     p->version))
			return false;
	} else if (state != PF_SLOT_FREE || !slot_claim(ctx, p, egress)) {
		return false;
	}
	__u32 hdr = p->l3len + p->l4len;
	__u64 payload = len > hdr ? len - hdr : 0;
	if (egress) {
		add(&ctx->tx.bytes, wire);
		add(&ctx->tx.packets, segs);
		add(&ctx->tx.payload, payload);
	} else {
		add(&ctx->rx.bytes, wire);
		add(&ctx->rx.packets, segs);
		add(&ctx->rx.payload, payload);
	}
	return true;
}

/* The value of a new datagram flow's entry (dgram_flows, dgram_spill). */
static __always_inline void dgram_fresh(struct pf_dgram_val *v, struct pkt *p, bool egress)
{
	v->start_ns = now_ns();
	__builtin_memcpy(v->local, egress ? p->src : p->dst, 16);
	v->lport = egress ? p->sport : p->dport;
	v->direction = egress ? PF_DIR_OUT : PF_DIR_IN;
	v->origin = egress ? PF_ORIGIN_SEND : PF_ORIGIN_PACKET;
	v->proto = p->l4;
}

/* A datagram that found no entry of its own in dgram_flows, nor an
 * overflow flow there: counted in its socket's overflow flow through
 * dgram_spill (common.h), so its socket's totals stay exact. Only when that
 * table is full too is it lost (PF_STAT_DGRAM_FULL). Called from count
 * when count_flow says so (PF_COUNT_SPILL), not from count_dgram: its frame
 * and count_flow's would not fit the stack together. */
static __noinline void count_spill(struct bpf_sock *bsk, struct pkt *p, bool egress)
{
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, 0);
	if (!ctx || !p)
		return;
	struct pf_dgram_key k = {};
	k.cookie = ctx->cookie;
	k.family = p->version;
	struct pf_dgram_val *v = bpf_map_lookup_elem(&dgram_spill, &k);
	if (!v) {
		struct pf_dgram_val fresh = {};
		dgram_fresh(&fresh, p, egress);
		/* Announced unless dgram_flows holds this overflow flow already. */
		if (bpf_map_update_elem(&dgram_spill, &k, &fresh, BPF_NOEXIST) == 0 &&
		    !bpf_map_lookup_elem(&dgram_flows, &k))
			dgram_open(ctx, k.remote, fresh.local, 0, fresh.lport, p->version, p->l4,
				   fresh.direction, fresh.origin, fresh.start_ns);
		v = bpf_map_lookup_elem(&dgram_spill, &k);
		if (!v) {
			stat_inc(PF_STAT_DGRAM_FULL);
			return;
		}
	}
	stat_inc(PF_STAT_DGRAM_SPILL);
	__u32 hdr = p->l3len + p->l4len;
	__u64 payload = p->len > hdr ? p->len - hdr : 0;
	if (egress) {
		add(&v->c.tx_bytes, p->wire);
		add(&v->c.tx_packets, p->segs);
		add(&v->c.tx_payload, payload);
	} else {
		add(&v->c.rx_bytes, p->wire);
		add(&v->c.rx_packets, p->segs);
		add(&v->c.rx_payload, payload);
	}
}

/* A datagram flow (socket, remote): created on its first packet. True when
 * it got no entry (the datagram is count_spill's). */
static __always_inline bool count_dgram(struct pf_sock_ctx *ctx, struct pkt *p, bool egress,
					__u32 len, __u64 wire, __u64 segs)
{
	struct pf_dgram_key k = {};
	k.cookie = ctx->cookie;
	__builtin_memcpy(k.remote, egress ? p->dst : p->src, 16);
	k.rport = egress ? p->dport : p->sport;
	k.family = p->version;
	__u32 hdr = p->l3len + p->l4len;
	__u64 payload = len > hdr ? len - hdr : 0;

	struct pf_dgram_val *v = bpf_map_lookup_elem(&dgram_flows, &k);
	if (!v) {
		/* Quotas: no socket, and no uid, can take the table whole. A
		 * socket over its quota, or whose uid is over its own, counts
		 * its datagrams with further remotes in its overflow flow
		 * (remote all zeros, port 0), so its totals stay exact. */
		if (!ctx->dgram_n)
			ctx->dgram_uid = (ctx->flags & PF_F_OWNER) ? ctx->owner.uid : 0xffffffff;
		__u32 uid = ctx->dgram_uid;
		__u32 *charged = bpf_map_lookup_elem(&dgram_uid, &uid);
		if (!charged) {
			__u32 zero = 0;
			bpf_map_update_elem(&dgram_uid, &uid, &zero, BPF_NOEXIST);
			charged = bpf_map_lookup_elem(&dgram_uid, &uid);
		}
		if (!charged || *charged >= PF_DGRAM_UID || ctx->dgram_n >= PF_DGRAM_SOCKET) {
			stat_inc(PF_STAT_DGRAM_QUOTA);
			__builtin_memset(k.remote, 0, 16);
			k.rport = 0;
			v = bpf_map_lookup_elem(&dgram_flows, &k);
			if (!v && (!charged || *charged >= PF_DGRAM_UID_HARD)) {
				stat_inc(PF_STAT_DGRAM_FULL);
				return false;
			}
		}
	}
	if (!v) {
		struct pf_dgram_val fresh = {};
		dgram_fresh(&fresh, p, egress);
		if (bpf_map_update_elem(&dgram_flows, &k, &fresh, BPF_NOEXIST) == 0) {
			__u32 uid = ctx->dgram_uid;
			__u32 *charged = bpf_map_lookup_elem(&dgram_uid, &uid);
			if (charged)
				__sync_fetch_and_add(charged, 1);
			__sync_fetch_and_add(&ctx->dgram_n, 1);
			dgram_open(ctx, k.remote, fresh.local, k.rport, fresh.lport, p->version,
				   p->l4, fresh.direction, fresh.origin, fresh.start_ns);
		}
		v = bpf_map_lookup_elem(&dgram_flows, &k);
		if (!v && (k.rport || k.remote[0] || k.remote[3] || k.remote[15])) {
			/* No room (the table, or its allocator, is exhausted):
			 * the socket's overflow flow, if it has one, counts it. */
			__builtin_memset(k.remote, 0, 16);
			k.rport = 0;
			v = bpf_map_lookup_elem(&dgram_flows, &k);
		}
		if (!v)
			return true; /* count_spill's */
	}
	/* This CPU's slot: no other CPU writes it. */
	if (egress) {
		v->c.tx_bytes += wire;
		v->c.tx_packets += segs;
		v->c.tx_payload += payload;
	} else {
		v->c.rx_bytes += wire;
		v->c.rx_packets += segs;
		v->c.rx_payload += payload;
	}
	return false;
}

/* A DNS message for the remote-name table: a query the socket sends
 * (destination port 53) or a response it receives (source port 53), with
 * the socket, its namespace and owner, and the server. Over TCP, the first
 * segment of each message (after the 2-byte length). */
static __noinline void capture_dns(struct __sk_buff *skb, struct pkt *p, struct pf_sock_ctx *ctx,
				   __u32 len, bool egress)
{
	if (!p || !ctx)
		return;
	__u32 off = p->l3len + p->l4len + (p->l4 == IPPROTO_TCP ? 2 : 0);
	if (off >= len)
		return;
	__u32 n = len - off;
	if (n > PF_DNS_MAX)
		n = PF_DNS_MAX;
	rb_note_fill();
	struct pf_dns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PF_STAT_RB_LOST);
		return;
	}
	e->kind = PF_EV_DNS;
	if (ctx->flags & PF_F_OWNER) {
		e->pid = ctx->owner.pid;
		e->uid = ctx->owner.uid;
		e->start_ns = ctx->owner.start_ns;
	} else {
		e->pid = 0;
		e->uid = 0;
		e->start_ns = 0;
	}
	e->netns = ctx->netns;
	e->cookie = ctx->cookie;
	e->ts_ns = now_ns();
	__builtin_memcpy(e->remote, egress ? p->dst : p->src, 16);
	e->rport = egress ? p->dport : p->sport;
	e->lport = egress ? p->sport : p->dport;
	e->family = p->version;
	e->proto = p->l4;
	e->query = egress;
	e->_pad = 0;
	e->_pad2 = 0;
	barrier_var(n);
	if (n < 1 || n > PF_DNS_MAX || bpf_skb_load_bytes(skb, off, e->data, n)) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->len = n;
	bpf_ringbuf_submit(e, 0);
}

/* skb's socket as a full socket, or null. */
static __always_inline struct bpf_sock *skb_fullsock(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	return sk ? bpf_sk_fullsock(sk) : 0;
}

/* See policy.h: the cgroup of skb's socket. */
__noinline int pol_cg_skb_g(struct __sk_buff *skb, __u32 gen, __u32 levels, __u64 *found)
{
	if (!found)
		return 0;
	*found = 0;
	struct bpf_sock *sk = skb_fullsock(skb);
	if (!sk)
		return 0;
	pol_cg_walk(sk, gen & 1, levels, found);
	return 1;
}

/* The rules' decision on a packet (policy.h pf_policy_skb), as global
 * functions, one per direction: the verifier checks each once per program,
 * not once for every path of count that reaches it. 0 drops the packet. */
static __always_inline int policy_skb(struct __sk_buff *skb, struct pkt *p, __u32 state,
				      bool egress)
{
	struct bpf_sock *bsk = skb_fullsock(skb);
	if (!p || !bsk)
		return 1;
	bool stream = bsk->type == SOCK_STREAM && bsk->protocol == IPPROTO_TCP;
	return pf_policy_skb(skb, bsk, egress, stream, state, p->version, p->l4, p->src, p->dst,
			     p->sport, p->dport, p->tcpflags);
}

/* Egress needs no state (only a listener's inbound SYN is decided by it);
 * a parameter the function does not read would be left unset by clang. */
__noinline int pf_policy_out_g(struct __sk_buff *skb, struct pkt *p)
{
	return policy_skb(skb, p, 0, true);
}

__noinline int pf_policy_in_g(struct __sk_buff *skb, struct pkt *p, __u32 state)
{
	return policy_skb(skb, p, state, false);
}

#define PF_COUNT_SPILL 2 /* count_flow: the datagram is count_spill's */

/* The packet `p` (parsed, its lengths set) added to its flow: 1, or
 * PF_COUNT_SPILL. */
static __always_inline int count_flow(struct __sk_buff *skb, struct bpf_sock *bsk,
				      struct pkt *p, bool egress)
{
	__u32 type = bsk->type;
	__u32 protocol = bsk->protocol;
	__u32 state = bsk->state;
	__u32 len = p->len;
	__u64 segs = p->segs;
	__u64 wire = p->wire;
	struct sock *sk = bpf_core_cast(bsk, struct sock);
	bool stream = type == SOCK_STREAM && protocol == IPPROTO_TCP;
	if (stream && state == BPF_TCP_LISTEN) {
		struct pf_sock_ctx *lctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, 0);
		count_pending(lctx, sk, p, egress, wire, segs);
		return 1;
	}

	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return 1;
	}
	if (!ctx->cookie && ctx_claim(ctx, bpf_get_socket_cookie(skb)))
		ctx_init(ctx, sk, false);

	if ((egress ? p->dport : p->sport) == 53 && (p->l4 == IPPROTO_UDP || p->l4 == IPPROTO_TCP))
		capture_dns(skb, p, ctx, len, egress);
	if (!stream) {
		if (protocol == IPPROTO_UDP && p->l4 == IPPROTO_UDP &&
		    count_slot(ctx, p, egress, len, wire, segs))
			return 1;
		if (count_dgram(ctx, p, egress, len, wire, segs))
			return PF_COUNT_SPILL;
		return 1;
	}
	if (egress) {
		add(&ctx->tx.bytes, wire);
		add(&ctx->tx.packets, segs);
	} else {
		add(&ctx->rx.bytes, wire);
		add(&ctx->rx.packets, segs);
	}
	if (!(ctx->flags & PF_F_ANNOUNCED) && state == BPF_TCP_ESTABLISHED)
		tcp_announce(sk, ctx, PF_ORIGIN_PACKET, PF_DIR_UNKNOWN);
	return 1;
}

/* Not inlined, one per direction: count's own frame stays small, so the
 * rules' decision (a global function called from it) fits the stack. */
static __noinline int count_out(struct __sk_buff *skb, struct bpf_sock *bsk, struct pkt *p)
{
	return count_flow(skb, bsk, p, true);
}

static __noinline int count_in(struct __sk_buff *skb, struct bpf_sock *bsk, struct pkt *p)
{
	return count_flow(skb, bsk, p, false);
}

static __always_inline int count(struct __sk_buff *skb, bool egress)
{
	struct bpf_sock *bsk = skb_fullsock(skb);
	if (!bsk)
		return 1;
	__u32 family = bsk->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	__u32 type = bsk->type;
	__u32 protocol = bsk->protocol;
	__u32 state = bsk->state;
	__u32 len = skb->len;
	__u32 segs = skb->gso_segs;
	if (!segs)
		segs = 1;

	struct pkt p = {};
	int unparsed = parse(skb, &p);
	/* ---- rules enforcement: a packet whose headers cannot be walked to
	 * its transport header (more IPv6 extension headers than the walk
	 * follows, or headers cut short) could never be decided: refuse it
	 * inbound while rules are loaded, and count it ---- */
	if (pf_rules_on && (unparsed || (p.version == 6 && ipv6_ext(p.l4)))) {
		stat_inc(PF_STAT_UNWALKABLE);
		return 0;
	}
	if (unparsed)
		return 1;
	/* ---- rules enforcement: a packet a process sends with a source route
	 * (IPv4 LSRR/SSRR options, an IPv6 routing header) goes to another
	 * address than the one its connect or send was decided on: dropped
	 * while rules are loaded, and counted ---- */
	if (pf_rules_on && egress &&
	    (p.rthdr || (p.version == 4 && p.l3len > 20 && ip4_source_route(skb, p.l3len)))) {
		stat_inc(PF_STAT_REROUTED);
		return 0;
	}
	__u64 wire = len;
	if (segs > 1) {
		/* Each segment: the IP and transport headers, as on the wire
		 * (without a BIG TCP jumbo header, which none of them has). */
		wire += (__u64)(segs - 1) * (p.l3len - p.jumbo + p.l4len);
		wire -= p.jumbo;
	}

	p.len = len;
	p.segs = segs;
	p.wire = wire;
	/* ---- rules enforcement (policy.h): 0 drops the packet ---- */
	if (pf_rules_on && !(egress ? pf_policy_out_g(skb, &p)
				    : pf_policy_in_g(skb, &p, state)))
		return 0;
	/* ---- end rules enforcement ---- */
	int r = egress ? count_out(skb, bsk, &p) : count_in(skb, bsk, &p);
	if (r == PF_COUNT_SPILL) {
		count_spill(bsk, &p, egress);
		r = 1;
	}
	return r;
}

SEC("cgroup_skb/egress")
int pf_egress(struct __sk_buff *skb)
{
	return count(skb, true);
}

SEC("cgroup_skb/ingress")
int pf_ingress(struct __sk_buff *skb)
{
	return count(skb, false);
}
