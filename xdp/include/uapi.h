/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/*
 * The few kernel definitions quicpipe.c needs: fixed-width types, the XDP
 * context and actions, and the map types it declares. They are stable
 * kernel ABI (include/uapi/linux/types.h and bpf.h); writing them out here
 * means generating the program needs no kernel headers and gives the same
 * result on every machine.
 */
#ifndef QUICPIPE_UAPI_H
#define QUICPIPE_UAPI_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;

/* Network byte order; to the compiler these are plain integers. */
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* struct xdp_md is the program's context. */
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

/* enum xdp_action */
enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

/* enum bpf_map_type: only the values used. */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9

#endif /* QUICPIPE_UAPI_H */
