// SPDX-License-Identifier: GPL-2.0
/* The one definition of every map; the other objects declare them extern. */
#define PF_DEFINE_MAPS
#include "common.h"

/* Emit the record types into BTF so the skeleton generates them for Rust. */
struct pf_flow_event _pf_flow_event = {};
struct pf_exec_event _pf_exec_event = {};
struct pf_fork_event _pf_fork_event = {};
struct pf_dgram_key _pf_dgram_key = {};
struct pf_dgram_val _pf_dgram_val = {};
struct pf_sock_ctx _pf_sock_ctx = {};
struct pf_dns_event _pf_dns_event = {};
/* ... and the enums that Rust decodes with (record kinds, flags, origins,
 * directions, hooks, stats slots, table sizes). */
enum pf_kind _pf_kind = 0;
enum pf_flag _pf_flag = 0;
enum pf_origin _pf_origin = 0;
enum pf_direction _pf_direction = 0;
enum pf_hook _pf_hook = 0;
enum pf_stat _pf_stat = 0;
enum pf_size _pf_size = 0;

char LICENSE[] SEC("license") = "GPL";
