// SPDX-License-Identifier: GPL-2.0
/* Packet sockets (AF_PACKET): no cgroup packet hook sees what they send, so
 * their frames are counted when they are queued to a device, where the skb
 * still carries its packet socket: tp_btf/net_dev_queue (dev_queue_xmit, in
 * the sender's context; PACKET_QDISC_BYPASS, which skips it, is turned off
 * by pf_packet_sockopt). Each frame is added
 * to a datagram flow (socket, remote) in dgram_flows, keyed as count.bpf.c
 * keys them: for IPv4 and IPv6 frames the IP destination and port; for
 * other frames the destination MAC (remote[0..6], then ten 0xff bytes) and
 * the ethertype (rport); their records say family 0.
 *
 * Neither cgroup/sock_create nor cgroup/sock_release runs for packet
 * sockets, so a socket's context and owner are made at its first frame,
 * which is queued in the sending process, and its flows end when
 * /proc/net/packet no longer lists it (see sock_id).
 *
 * While rules are loaded, tcx egress (pf_packet_tc) decides each packet
 * socket and its sending process at its first frame, and drops the frames
 * of those the rules block.
 *
 * Frames a packet socket receives are not counted: the one hook in the
 * receiver's context (sock_recv_length) has the length but not the frame,
 * so no remote to count them for; and what a packet socket receives are
 * copies of frames that the IP flows they belong to count already. */
#include "common.h"
#include "policy.h" /* rules enforcement */

#define SOCK_DGRAM 2
#define ETH_HLEN 14
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

/* The rules that can match a packet socket, per generation: written by user
 * space (crates/bpf/src/policy.rs) with the other tables of a generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pf_mask);
} pol_packet SEC(".maps");

/* A packet socket's id, in place of its cookie: its inode number with the
 * top bit set (no cookie reaches it). /proc/net/packet lists the inodes of
 * the live packet sockets, which is how user space ends the flows of those
 * that are gone (their release runs no hook); a tracepoint could not have a
 * cookie made either. */
static __always_inline __u64 sock_id(struct sock *sk)
{
	return (1ULL << 63) | BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}

/* ---- rules enforcement: the decision on a packet socket ---- */

/* The rules matching a packet socket created by the current process: exe,
 * comm, user, cgroup (`cg`), direction out, and the packet mask (rules
 * without a protocol, remote or port condition, and not `family = "ip"`).
 * A global function, verified once. 1 when decided. */
__noinline int pkt_decide_g(struct pol_query *q, const struct pf_exe_ident *exe,
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
	const struct pf_mask *dir, *pk;
	__u32 k = gen * 2; /* direction out */
	dir = bpf_map_lookup_elem(&pol_dir, &k);
	pk = bpf_map_lookup_elem(&pol_packet, &gen);
	if (!dir || !pk)
		return 0;
	d->gen = gen;
	d->rule = -1;
	d->block = h->default_block;
	for (int i = 0; i < PF_RULE_WORDS; i++) {
		__u64 w = (id.pre->w[i] | id.suf->w[i]) & id.comm->w[i] & id.uid->w[i] &
			  cg->w[i] & dir->w[i] & pk->w[i];
		if (w) {
			__u32 r = i * 64 + lowest_bit(w);
			d->rule = r;
			d->block = (h->block.w[i] >> (r & 63)) & 1;
			break;
		}
	}
	return 1;
}

/* A packet socket's last decision: the sending process and (generation +
 * 1) << 1 | blocked, so that its later frames are let through or dropped
 * without deciding again until the rules change or another process sends. */
struct pf_pkt_last {
	__u32 pid;
	__u32 v;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pf_pkt_last);
} pol_pkt_last SEC(".maps");

/* Decides the current process's use of packet socket `sk` and writes the
 * verdict record; false blocks it. Runs in the process that sends. */
static __noinline bool pkt_allowed(struct bpf_sock *sk, __u64 cookie)
{
	if (!sk)
		return true;
	__u32 zero = 0;
	struct pf_policy_state *st = bpf_map_lookup_elem(&pol_state, &zero);
	if (!st || !st->enabled)
		return true;
	__u32 full = st->gen;
	__u32 gen = full & 1;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct pf_pkt_last *last = bpf_sk_storage_get(&pol_pkt_last, sk, 0,
						      BPF_SK_STORAGE_GET_F_CREATE);
	if (last && last->pid == pid && (last->v >> 1) == full + 1)
		return !(last->v & 1);
	struct pf_policy_hdr *h = bpf_map_lookup_elem(&pol_hdr, &gen);
	if (!h) {
		stat_inc(PF_STAT_FAIL_CLOSED);
		return false;
	}
	const struct pf_mask *cg = pol_cgroup(h, gen, 0);
	struct pf_exe_ident *exe = pol_current_exe();
	if (!exe)
		return true;
	struct pol_query q = {};
	pol_process_comm(q.comm);
	q.uid = (__u32)bpf_get_current_uid_gid();
	q.dir = 0;
	struct pol_decision d;
	if (pkt_decide_g(&q, exe, cg, gen, &d) != 1) {
		/* A table of the rule set in force is missing (never expected:
		 * user space writes every table before it flips): fail closed,
		 * as the connect hooks do. */
		d.rule = -1;
		d.block = 1;
		stat_inc(PF_STAT_FAIL_CLOSED);
	}
	d.gen = full;
	if (last) {
		last->pid = pid;
		last->v = ((full + 1) << 1) | (d.block ? 1 : 0);
	}
	struct pf_owner o = {};
	owner_current(&o);
	__builtin_memcpy(o.comm, q.comm, PF_COMM_LEN); /* what was matched */
	/* family 0, proto 0, no addresses: a packet socket (hook "packet") */
	pol_emit(&q, exe, &d, cookie, &o,
		 sk_netns(bpf_core_cast(sk, struct sock)), PF_HOOK_PACKET);
	return !d.block;
}

#define TCX_NEXT -1
#define TCX_DROP 2
#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20

/* Every frame a device sends passes its tcx egress programs in the sending
 * process, before the qdisc (and before net_dev_queue): a frame of a packet
 * socket the rules block is dropped here (the sender's send() fails with
 * ENOBUFS). User space attaches this program to every device of every
 * network namespace while rules are loaded. */
SEC("tcx/egress")
int pf_packet_tc(struct __sk_buff *skb)
{
	if (!pf_rules_on)
		return TCX_NEXT;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return TCX_NEXT;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->family != AF_PACKET)
		return TCX_NEXT;
	return pkt_allowed(sk, sock_id(bpf_core_cast(sk, struct sock))) ? TCX_NEXT : TCX_DROP;
}

/* PACKET_QDISC_BYPASS sends frames straight to the driver, past tcx
 * egress, where no rule could hold them, and past dev_queue_xmit, where
 * frames are counted. While rules are loaded it is refused (EPERM);
 * otherwise it is set to 0, so the socket's frames take dev_queue_xmit
 * like any other's (they reach the same device; only the qdisc is no
 * longer skipped). No hook or tracepoint sees the direct path
 * (__dev_direct_xmit has none), so a socket that had it on before
 * procflow started is not counted: the start-up scan finds such sockets
 * and reports them (PF_STAT_BYPASS_FOUND). */
SEC("cgroup/setsockopt")
int pf_packet_sockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_PACKET || ctx->optname != PACKET_QDISC_BYPASS)
		return 1;
	if (pf_rules_on) {
		__u32 zero = 0;
		struct pf_policy_state *st = bpf_map_lookup_elem(&pol_state, &zero);
		if (st && st->enabled)
			return 0;
	}
	int *v = ctx->optval;
	if ((void *)(v + 1) <= ctx->optval_end)
		*v = 0;
	return 1;
}

/* ---- counting ---- */

struct frame {
	__u8 family;    /* 4, 6, or 0 for a frame that is not IP */
	__u8 proto;     /* IPPROTO_* of an IP frame */
	__u16 rport;    /* IP: destination port; other: the ethertype */
	__u16 lport;
	__u16 l2;       /* bytes of link-layer header before the IP header */
	__u8 local[16]; /* IP source, or the source MAC */
	__u8 remote[16];
};

/* The frame at skb->data, as the device gets it. Fields are read through
 * CO-RE, not BTF pointers: the verifier checks each BTF pointer access by
 * walking the type's members, which made this program slow to load. */
static __always_inline int parse_frame(struct sk_buff *skb, struct frame *f)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	unsigned char *data = BPF_CORE_READ(skb, data);
	if (!dev || !data)
		return -1;
	__u16 hh = BPF_CORE_READ(dev, hard_header_len);
	__u16 type = BPF_CORE_READ(dev, type);
	__u16 ethertype = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u32 l2 = 0;
	if ((type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK) && hh == ETH_HLEN) {
		struct ethhdr eh;
		if (bpf_probe_read_kernel(&eh, sizeof(eh), data))
			return -1;
		__builtin_memcpy(f->remote, eh.h_dest, 6);
		__builtin_memcpy(f->local, eh.h_source, 6);
		ethertype = bpf_ntohs(eh.h_proto);
		l2 = ETH_HLEN;
		if (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
			__be16 tag[2];
			if (bpf_probe_read_kernel(tag, sizeof(tag), data + ETH_HLEN))
				return -1;
			ethertype = bpf_ntohs(tag[1]);
			l2 = ETH_HLEN + 4;
		}
	} else if (hh == 0) {
		/* No link-layer header (tun, ipip): the frame is the packet. */
		__u8 b0;
		if (bpf_probe_read_kernel(&b0, 1, data))
			return -1;
		ethertype = (b0 >> 4) == 4 ? ETH_P_IP : (b0 >> 4) == 6 ? ETH_P_IPV6 : ethertype;
	} else {
		/* Another link type: counted as a frame that is not IP. */
		ethertype = 0;
	}
	f->l2 = l2;
	f->family = 0;
	f->rport = ethertype;
	f->lport = 0;
	__u32 l4off;
	if (ethertype == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), data + l2) || ip.version != 4)
			return 0;
		f->family = 4;
		f->proto = ip.protocol;
		__builtin_memset(f->local, 0, 16);
		__builtin_memset(f->remote, 0, 16);
		__builtin_memcpy(f->local, &ip.saddr, 4);
		__builtin_memcpy(f->remote, &ip.daddr, 4);
		l4off = l2 + ip.ihl * 4;
	} else if (ethertype == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), data + l2) || ip6.version != 6)
			return 0;
		f->family = 6;
		f->proto = ip6.nexthdr;
		__builtin_memcpy(f->local, &ip6.saddr, 16);
		__builtin_memcpy(f->remote, &ip6.daddr, 16);
		l4off = l2 + 40;
	} else {
		/* Not IP: the destination MAC followed by ten 0xff bytes, an
		 * address no IPv6 flow of this socket plausibly has, so the
		 * flow's key in dgram_flows is an ordinary family-6 key. */
		__builtin_memset(f->remote + 6, 0xff, 10);
		return 0;
	}
	f->rport = 0;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
		__be16 ports[2];
		if (bpf_probe_read_kernel(ports, sizeof(ports), data + (l4off & 0x3ff)) == 0) {
			f->lport = bpf_ntohs(ports[0]);
			f->rport = bpf_ntohs(ports[1]);
		}
	}
	return 0;
}

/* The segments a frame stands for (a GSO frame of a PACKET_VNET_HDR
 * socket is several on the wire). */
static __always_inline __u32 frame_segs(struct sk_buff *skb)
{
	struct skb_shared_info *sh = (void *)(BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, end));
	__u16 segs = 0;
	bpf_probe_read_kernel(&segs, sizeof(segs), &sh->gso_segs);
	return segs ? segs : 1;
}

/* A frame of packet socket `sk`, queued to a device by the sending process. */
static __noinline int count_frame(struct sk_buff *skb, struct sock *sk)
{
	struct pf_sock_ctx *ctx = bpf_sk_storage_get(&sk_ctx, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ctx) {
		stat_inc(PF_STAT_NO_STORAGE);
		return 0;
	}
	if (!ctx->cookie && ctx_claim(ctx, sock_id(sk))) {
		/* Created before procflow attached. */
		ctx_init(ctx, sk, false);
		__sync_fetch_and_or(&ctx->flags, PF_F_PACKET);
	}
	/* dev_queue_xmit runs in the process that sends (packet_snd,
	 * tpacket_snd): it owns the socket. */
	ctx_own(ctx, true);

	struct frame f = {};
	if (parse_frame(skb, &f))
		return 0;
	__u32 len = BPF_CORE_READ(skb, len);
	__u32 segs = frame_segs(skb);
	/* Bytes as on the wire at the level the flow is at: an IP frame's IP
	 * packet (as for every other IP flow), another frame whole. */
	__u64 wire = f.family ? (len > f.l2 ? len - f.l2 : 0) : len;
	/* What the application wrote: the whole frame (SOCK_RAW), or what
	 * follows the link-layer header the kernel made (SOCK_DGRAM). */
	__u64 payload = len;
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type) == SOCK_DGRAM) {
		__u16 hh = BPF_CORE_READ(skb, dev, hard_header_len);
		payload = len > hh ? len - hh : 0;
	}

	struct pf_dgram_key k = {};
	k.cookie = ctx->cookie;
	__builtin_memcpy(k.remote, f.remote, 16);
	k.rport = f.rport;
	k.family = f.family ? f.family : 6;
	struct pf_dgram_val *v = bpf_map_lookup_elem(&dgram_flows, &k);
	if (!v) {
		struct pf_dgram_val fresh = {};
		fresh.start_ns = now_ns();
		__builtin_memcpy(fresh.local, f.local, 16);
		fresh.lport = f.lport;
		fresh.direction = PF_DIR_OUT;
		fresh.origin = PF_ORIGIN_PACKET_SOCKET;
		fresh.proto = f.proto;
		if (bpf_map_update_elem(&dgram_flows, &k, &fresh, BPF_NOEXIST) == 0) {
			dgram_open(ctx, f.remote, f.local, f.rport, f.lport, f.family, f.proto,
				   PF_DIR_OUT, PF_ORIGIN_PACKET_SOCKET, fresh.start_ns);
		}
		v = bpf_map_lookup_elem(&dgram_flows, &k);
		if (!v) {
			stat_inc(PF_STAT_DGRAM_FULL);
			return 0;
		}
	}
	/* This CPU's slot: no other CPU writes it. */
	v->c.tx_bytes += wire;
	v->c.tx_packets += segs;
	v->c.tx_payload += payload;
	return 0;
}

/* The cheap test every queued packet of every device takes: two loads. */
static __always_inline bool is_packet_sock(struct sock *sk)
{
	return sk && sk->__sk_common.skc_family == AF_PACKET;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(pf_packet_queue, struct sk_buff *skb)
{
	struct sock *sk = skb->sk;
	if (!is_packet_sock(sk))
		return 0;
	return count_frame(skb, sk);
}
