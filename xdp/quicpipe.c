// SPDX-License-Identifier: (MIT OR GPL-2.0)
//go:build ignore

/*
 * quicpipe.c: the relay's XDP fast path.
 *
 * For every Ethernet frame carrying UDP to one of the relay's ports, the
 * program reads the QUIC destination connection ID (DCID) and looks it up in
 * cid_map. On a hit it turns the datagram around: the destination becomes the
 * registered peer, the source becomes the relay, the MAC addresses are
 * swapped, the checksums are updated, and the frame leaves through the
 * interface it came in on (XDP_TX). Everything else goes up the stack
 * unchanged (XDP_PASS): the userspace relay stays authoritative. The only
 * frames the program drops are those over a forwarding rate cap (token
 * buckets in bucket_map). Each decision is counted in counter_map.
 *
 * The rules, in order, are documented in README.md beside this file; the
 * outcome enum below names each of them.
 */

#include "uapi.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

#define CID_LEN 12
#define MAX_PORTS 8

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ESP 50
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60
#define IPPROTO_MH 135
#define IPPROTO_HIP 139
#define IPPROTO_SHIM6 140

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define NS_PER_SEC 1000000000ULL

/* config flags */
#define CONFIG_FILTER_SOURCES 1 /* forward only from sources in src_map */

/*
 * struct config is the single entry of config_map, written by the loader.
 * Rates are per second; 0 means unlimited. The reg_ rates apply to each
 * bucket a dest names, the total_ rates to everything forwarded.
 */
struct config {
	__u16 ports[MAX_PORTS]; /* the relay's UDP ports, host byte order */
	__u32 num_ports;        /* how many of ports are in use; 0: none */
	__u32 flags;            /* CONFIG_* */
	__u64 reg_pps, reg_bps;
	__u64 total_pps, total_bps;
};

/* dest flags */
#define DEST_SRC_ADDR_FROM_PACKET 1 /* new source address: the packet's destination */
#define DEST_SRC_PORT_FROM_PACKET 2 /* new source port: the packet's destination port */

/*
 * struct dest is where packets for one DCID go. Addresses and ports are in
 * network byte order; an IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d)
 * and family says which kind the entry is.
 */
struct dest {
	__u8 dst_addr[16];
	__u8 src_addr[16];
	__u8 dst_port[2];
	__u8 src_port[2];
	__u8 family; /* 4 or 6 */
	__u8 flags;  /* DEST_* */
	__u8 pad[2];
	__u32 bucket; /* index in bucket_map of the registration's caps; 0: none */
};

/*
 * struct src_key is a source address and port that may be forwarded from
 * (src_map), with the layout of struct dest's addresses.
 */
struct src_key {
	__u8 addr[16];
	__u8 port[2];
	__u8 pad[2];
};

/*
 * struct bucket is a pair of token buckets, for packets and bytes, in
 * nanosecond-scaled tokens: one packet costs NS_PER_SEC, one byte too, and
 * each elapsed nanosecond adds the rate. Entry 0 of bucket_map caps the total.
 * CPUs update a bucket without locks: a race lets a few more frames through.
 */
struct bucket {
	__u64 last; /* bpf_ktime_get_ns of the last refill; 0: never used, full */
	__s64 pkts;
	__s64 bytes;
};

/*
 * enum outcome says what happened to a frame and why. Forwarded outcomes
 * come first; every outcome from OUTCOME_PASS_NOT_IP on is an XDP_PASS.
 * The Go package mirrors these names (xdp.go); keep both in step.
 */
enum outcome {
	OUTCOME_FORWARDED_IPV4,
	OUTCOME_FORWARDED_IPV6,
	OUTCOME_PASS_NOT_IP,          /* EtherType neither IPv4 nor IPv6 */
	OUTCOME_PASS_VLAN,            /* 802.1Q or 802.1ad tagged */
	OUTCOME_PASS_MULTICAST,       /* group destination MAC */
	OUTCOME_PASS_MALFORMED,       /* truncated, bad version or lengths, bad IPv4 header checksum, zero UDP checksum over IPv6 */
	OUTCOME_PASS_NOT_UDP,         /* another transport protocol */
	OUTCOME_PASS_IP_OPTIONS,      /* IPv4 header longer than 20 bytes */
	OUTCOME_PASS_FRAGMENT,        /* IPv4 fragment */
	OUTCOME_PASS_IPV6_EXT,        /* IPv6 extension header before UDP */
	OUTCOME_PASS_WRONG_PORT,      /* UDP to a port not in config */
	OUTCOME_PASS_SHORT,           /* UDP payload too short to hold a 12-byte DCID */
	OUTCOME_PASS_DCID_LEN,        /* long header whose DCID length is not 12 */
	OUTCOME_PASS_RELAY_CID,       /* DCID with the high bit set: the relay's own */
	OUTCOME_PASS_MISS,            /* DCID not in cid_map */
	OUTCOME_PASS_FAMILY_MISMATCH, /* entry and packet differ in IP version */
	OUTCOME_PASS_TTL,             /* TTL or hop limit would reach 0 */
	OUTCOME_PASS_UNKNOWN_SOURCE,  /* source not in src_map (with CONFIG_FILTER_SOURCES) */
	OUTCOME_PASS_RELAY_SCID,      /* long header whose source CID is a relay's */
	OUTCOME_DROP_RATE_LIMIT,      /* over a rate cap: XDP_DROP */
	OUTCOME_LEN
};

/* struct stat is one counter_map value (per CPU). */
struct stat {
	__u64 packets;
	__u64 bytes; /* whole frames, Ethernet header included */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u8[CID_LEN]);
	__type(value, struct dest);
	__uint(max_entries, 65536); /* the loader sets Config.MapSize */
} cid_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct src_key);
	__type(value, __u8);
	__uint(max_entries, 65536); /* the loader sets Config.MapSize */
} src_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct bucket);
	__uint(max_entries, 65537); /* the loader sets Config.Buckets + 1 */
} bucket_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum outcome);
	__type(value, struct stat);
	__uint(max_entries, OUTCOME_LEN);
} counter_map SEC(".maps");

struct eth {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct ip4 {
	__u8 vihl; /* version (4 bits), header length in words (4 bits) */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u16 saddr[2];
	__u16 daddr[2];
};

struct ip6 {
	__u8 vtc_flow[4]; /* version (4 bits), traffic class, flow label */
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u16 saddr[8];
	__u16 daddr[8];
};

struct udp {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

/* fold adds the carries of a 32-bit one's complement sum back in. */
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* ip4_sum is the one's complement sum of the 20-byte IPv4 header. */
static __always_inline __u16 ip4_sum(const struct ip4 *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < sizeof(*ip) / 2; i++)
		sum += w[i];
	return fold(sum);
}

/*
 * csum_replace updates checksum check for n 16-bit words changing from from
 * to to (RFC 1624, eqn. 3). One's complement sums do not depend on byte
 * order, so the words are added as they sit in memory.
 */
static __always_inline __u16 csum_replace(__u16 check, const __u16 *from, const __u16 *to, int n)
{
	__u32 sum = (__u16)~check;

#pragma unroll
	for (int i = 0; i < n; i++)
		sum += (__u16)~from[i] + (__u32)to[i];
	return ~fold(sum);
}

static __always_inline int port_wanted(const struct config *cfg, __be16 port)
{
	__u16 p = bpf_ntohs(port);

#pragma unroll
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= cfg->num_ports)
			return 0;
		if (cfg->ports[i] == p)
			return 1;
	}
	return 0;
}

static __always_inline __u16 load16(const __u8 *b)
{
	__u16 w;

	__builtin_memcpy(&w, b, 2);
	return w;
}

/*
 * lookup finds the destination for the QUIC packet of plen bytes at p, or
 * returns the reason there is none.
 */
static __always_inline enum outcome lookup(__u8 *p, __u32 plen, void *data_end, struct dest **d)
{
	__u8 key[CID_LEN];
	__u8 *dcid;

	if (plen < 1 + CID_LEN || (void *)(p + 1 + CID_LEN) > data_end)
		return OUTCOME_PASS_SHORT;
	if (p[0] & 0x80) {
		/* Long header: flags, version (4 bytes), DCID length, DCID. */
		if (plen < 6 + CID_LEN || (void *)(p + 6 + CID_LEN) > data_end)
			return OUTCOME_PASS_SHORT;
		if (p[5] != CID_LEN)
			return OUTCOME_PASS_DCID_LEN;
		dcid = p + 6;
	} else {
		dcid = p + 1;
	}
	if (dcid[0] & 0x80)
		return OUTCOME_PASS_RELAY_CID;
	__builtin_memcpy(key, dcid, CID_LEN);
	*d = bpf_map_lookup_elem(&cid_map, key);
	if (!*d)
		return OUTCOME_PASS_MISS;
	/*
	 * A relay's Initial, Handshake or Retry (its source CID, after the
	 * DCID, is 12 bytes with the high bit set) is never forwarded.
	 */
	if ((p[0] & 0x80) && plen >= 7 + 2 * CID_LEN && (void *)(p + 7 + 2 * CID_LEN) <= data_end &&
	    p[6 + CID_LEN] == CID_LEN && (p[7 + CID_LEN] & 0x80))
		return OUTCOME_PASS_RELAY_SCID;
	return OUTCOME_LEN; /* found */
}

/*
 * source_known reports whether the datagram's source may be forwarded from:
 * always, unless the loader asked to filter sources; then only if it is in
 * src_map. words and saddr are as for rewrite.
 */
static __always_inline int source_known(const struct config *cfg, const __u16 *saddr, const int words, __be16 sport)
{
	struct src_key k = {};

	if (!(cfg->flags & CONFIG_FILTER_SOURCES))
		return 1;
	if (words == 2) {
		k.addr[10] = 0xff;
		k.addr[11] = 0xff;
		__builtin_memcpy(k.addr + 12, saddr, 4);
	} else {
		__builtin_memcpy(k.addr, saddr, 16);
	}
	__builtin_memcpy(k.port, &sport, 2);
	return bpf_map_lookup_elem(&src_map, &k) != 0;
}

/* take takes one frame of len bytes from bucket idx, or reports it is over the caps. */
static __always_inline int take(__u32 idx, __u64 pps, __u64 bps, __u64 len, __u64 now)
{
	struct bucket *b;
	__s64 pkts, bytes, elapsed;

	if (!pps && !bps)
		return 1;
	b = bpf_map_lookup_elem(&bucket_map, &idx);
	if (!b)
		return 1;
	if (!b->last) {
		pkts = pps * NS_PER_SEC;
		bytes = bps * NS_PER_SEC;
	} else {
		elapsed = now - b->last;
		if (elapsed < 0)
			elapsed = 0;
		if (elapsed > NS_PER_SEC)
			elapsed = NS_PER_SEC;
		pkts = b->pkts + elapsed * pps;
		bytes = b->bytes + elapsed * bps;
		if (pkts > (__s64)(pps * NS_PER_SEC))
			pkts = pps * NS_PER_SEC;
		if (bytes > (__s64)(bps * NS_PER_SEC))
			bytes = bps * NS_PER_SEC;
	}
	b->last = now;
	if ((pps && pkts < (__s64)NS_PER_SEC) || (bps && bytes < (__s64)(len * NS_PER_SEC))) {
		b->pkts = pkts;
		b->bytes = bytes;
		return 0;
	}
	b->pkts = pps ? pkts - NS_PER_SEC : 0;
	b->bytes = bps ? bytes - len * NS_PER_SEC : 0;
	return 1;
}

/* within_caps takes a frame of len bytes from d's bucket and the total's. */
static __always_inline int within_caps(const struct config *cfg, const struct dest *d, __u64 len)
{
	__u64 now = bpf_ktime_get_ns();

	if (d->bucket && !take(d->bucket, cfg->reg_pps, cfg->reg_bps, len, now))
		return 0;
	return take(0, cfg->total_pps, cfg->total_bps, len, now);
}

/*
 * rewrite points the datagram at d: words is 2 for IPv4, 8 for IPv6, and
 * saddr and daddr are the packet's address fields. The UDP checksum is
 * updated incrementally for the changed pseudo-header addresses and ports.
 */
static __always_inline void rewrite(__u16 *saddr, __u16 *daddr, const int words,
				    struct udp *udp, const struct dest *d)
{
	const int off = 16 - 2 * words; /* IPv4 sits in the last 4 bytes */
	__u16 old[2 * 8 + 2], new[2 * 8 + 2];

#pragma unroll
	for (int i = 0; i < words; i++) {
		old[i] = saddr[i];
		old[words + i] = daddr[i];
		new[words + i] = load16(d->dst_addr + off + 2 * i);
		if (d->flags & DEST_SRC_ADDR_FROM_PACKET)
			new[i] = daddr[i];
		else
			new[i] = load16(d->src_addr + off + 2 * i);
	}
	old[2 * words] = udp->source;
	old[2 * words + 1] = udp->dest;
	new[2 * words] = (d->flags & DEST_SRC_PORT_FROM_PACKET) ? udp->dest : load16(d->src_port);
	new[2 * words + 1] = load16(d->dst_port);

#pragma unroll
	for (int i = 0; i < words; i++) {
		saddr[i] = new[i];
		daddr[i] = new[words + i];
	}
	udp->source = new[2 * words];
	udp->dest = new[2 * words + 1];

	/* Zero means "no checksum" over IPv4: leave it so. */
	if (udp->check) {
		__u16 c = csum_replace(udp->check, old, new, 2 * words + 2);
		udp->check = c ? c : 0xffff; /* a computed zero is sent as all ones */
	}
}

static __always_inline void swap_macs(struct eth *eth)
{
	__u8 tmp[6];

	__builtin_memcpy(tmp, eth->dst, 6);
	__builtin_memcpy(eth->dst, eth->src, 6);
	__builtin_memcpy(eth->src, tmp, 6);
}

static __always_inline enum outcome handle_ip4(const struct config *cfg, struct eth *eth, void *data_end)
{
	struct ip4 *ip = (void *)(eth + 1);
	struct udp *udp = (void *)(ip + 1);
	struct dest *d = 0;
	enum outcome o;
	__u32 tot_len, ulen;

	if ((void *)(udp + 1) > data_end) {
		if ((void *)(ip + 1) <= data_end && ip->protocol != IPPROTO_UDP)
			return OUTCOME_PASS_NOT_UDP;
		return OUTCOME_PASS_MALFORMED;
	}
	if (ip->vihl >> 4 != 4)
		return OUTCOME_PASS_MALFORMED;
	if (ip->protocol != IPPROTO_UDP)
		return OUTCOME_PASS_NOT_UDP;
	if ((ip->vihl & 0xf) != 5)
		return (ip->vihl & 0xf) < 5 ? OUTCOME_PASS_MALFORMED : OUTCOME_PASS_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return OUTCOME_PASS_FRAGMENT;
	if (!port_wanted(cfg, udp->dest))
		return OUTCOME_PASS_WRONG_PORT;
	tot_len = bpf_ntohs(ip->tot_len);
	ulen = bpf_ntohs(udp->len);
	if (tot_len < sizeof(*ip) + sizeof(*udp) || (void *)ip + tot_len > data_end ||
	    ulen != tot_len - sizeof(*ip))
		return OUTCOME_PASS_MALFORMED;
	if (ip4_sum(ip) != 0xffff)
		return OUTCOME_PASS_MALFORMED;

	o = lookup((__u8 *)(udp + 1), ulen - sizeof(*udp), data_end, &d);
	if (o != OUTCOME_LEN)
		return o;
	if (!source_known(cfg, ip->saddr, 2, udp->source))
		return OUTCOME_PASS_UNKNOWN_SOURCE;
	if (d->family != 4)
		return OUTCOME_PASS_FAMILY_MISMATCH;
	if (ip->ttl <= 1)
		return OUTCOME_PASS_TTL;
	if (!within_caps(cfg, d, ulen - sizeof(*udp)))
		return OUTCOME_DROP_RATE_LIMIT;

	rewrite(ip->saddr, ip->daddr, 2, udp, d);
	ip->ttl--;
	ip->check = 0;
	ip->check = ~ip4_sum(ip);
	swap_macs(eth);
	return OUTCOME_FORWARDED_IPV4;
}

static __always_inline int ip6_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_ESP:
	case IPPROTO_AH:
	case IPPROTO_DSTOPTS:
	case IPPROTO_MH:
	case IPPROTO_HIP:
	case IPPROTO_SHIM6:
		return 1;
	}
	return 0;
}

static __always_inline enum outcome handle_ip6(const struct config *cfg, struct eth *eth, void *data_end)
{
	struct ip6 *ip = (void *)(eth + 1);
	struct udp *udp = (void *)(ip + 1);
	struct dest *d = 0;
	enum outcome o;
	__u32 plen, ulen;

	if ((void *)(ip + 1) > data_end)
		return OUTCOME_PASS_MALFORMED;
	if (ip->vtc_flow[0] >> 4 != 6)
		return OUTCOME_PASS_MALFORMED;
	if (ip->nexthdr != IPPROTO_UDP)
		return ip6_ext(ip->nexthdr) ? OUTCOME_PASS_IPV6_EXT : OUTCOME_PASS_NOT_UDP;
	if ((void *)(udp + 1) > data_end)
		return OUTCOME_PASS_MALFORMED;
	if (!port_wanted(cfg, udp->dest))
		return OUTCOME_PASS_WRONG_PORT;
	plen = bpf_ntohs(ip->payload_len);
	ulen = bpf_ntohs(udp->len);
	if ((void *)(ip + 1) + plen > data_end || ulen < sizeof(*udp) || ulen != plen)
		return OUTCOME_PASS_MALFORMED;
	if (udp->check == 0) /* mandatory over IPv6 */
		return OUTCOME_PASS_MALFORMED;

	o = lookup((__u8 *)(udp + 1), ulen - sizeof(*udp), data_end, &d);
	if (o != OUTCOME_LEN)
		return o;
	if (!source_known(cfg, ip->saddr, 8, udp->source))
		return OUTCOME_PASS_UNKNOWN_SOURCE;
	if (d->family != 6)
		return OUTCOME_PASS_FAMILY_MISMATCH;
	if (ip->hop_limit <= 1)
		return OUTCOME_PASS_TTL;
	if (!within_caps(cfg, d, ulen - sizeof(*udp)))
		return OUTCOME_DROP_RATE_LIMIT;

	rewrite(ip->saddr, ip->daddr, 8, udp, d);
	ip->hop_limit--;
	swap_macs(eth);
	return OUTCOME_FORWARDED_IPV6;
}

static __always_inline enum outcome handle(void *data, void *data_end)
{
	struct eth *eth = data;
	struct config *cfg;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end)
		return OUTCOME_PASS_MALFORMED;
	switch (eth->proto) {
	case bpf_htons(ETH_P_IP):
	case bpf_htons(ETH_P_IPV6):
		break;
	case bpf_htons(ETH_P_8021Q):
	case bpf_htons(ETH_P_8021AD):
		return OUTCOME_PASS_VLAN;
	default:
		return OUTCOME_PASS_NOT_IP;
	}
	if (eth->dst[0] & 1)
		return OUTCOME_PASS_MULTICAST;
	cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg)
		return OUTCOME_PASS_WRONG_PORT;
	if (eth->proto == bpf_htons(ETH_P_IP))
		return handle_ip4(cfg, eth, data_end);
	return handle_ip6(cfg, eth, data_end);
}

SEC("xdp")
int quicpipe_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	enum outcome o = handle(data, data_end);
	struct stat *s;

	s = bpf_map_lookup_elem(&counter_map, &o);
	if (s) {
		s->packets++;
		s->bytes += data_end - data;
	}
	if (o == OUTCOME_DROP_RATE_LIMIT)
		return XDP_DROP;
	return o <= OUTCOME_FORWARDED_IPV6 ? XDP_TX : XDP_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
