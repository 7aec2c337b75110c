/*
 * imchat - the registry on etcd v3 (libimchat-engines).
 *
 * imc_etcd implements imc_registry_vtbl (backend.h) on an etcd cluster,
 * through etcd's JSON gateway (/v3/...) over HTTP/1.1 with libcurl's
 * multi interface, driven by the host's loop (imc_loop). It starts no
 * thread and never blocks.
 *
 * Key layout, under the key prefix P (default "/imchat/"):
 *   P "users/" <user_id> "/" <device_id>  ->  <node_id> "/" <conn_id>
 *       one per connected device, attached to its node's lease;
 *   P "nodes/" <node_id>  ->  the lease id in hex
 *       one per lease, attached to it: the live gateway nodes;
 *   P "addrs/" <node_id>  ->  the node's address (e.g. its gRPC host:port)
 *       one per lease granted by an engine given an address
 *       (imc_etcd_options_set_node_address), attached to the lease: where
 *       routers reach the node (imc_etcd_node_address).
 * Entries are etcd keys on etcd leases, so etcd's TTLs, revocations and
 * DELETE events are the registry's own.
 *
 * Operations:
 *  - lease_grant is a grant then one transaction that puts the node key,
 *    and the address key when the engine has an address, on the lease
 *    (two round trips; if the transaction fails the lease is not
 *    reported and runs out by its TTL). etcd rounds TTLs up to its
 *    minimum (2 s with the default election timeout).
 *  - register_conn and unregister go through one write queue, applied
 *    in the order they were made: once per loop turn, and while the
 *    previous transaction is in flight, the operations waiting at its
 *    head are sent as ONE transaction (puts of one lease, or
 *    unregisters, at most max_txn_ops, no key twice). A put on a lease
 *    etcd does not know fails the transaction: every register_conn of
 *    it (all on that lease) completes with IMC_ERR_NOT_FOUND. An
 *    unregister is a nested transaction that deletes the key only if its
 *    value is still this node and connection.
 *  - lookup_many: one range per user, gathered from every lookup of a
 *    loop turn into transactions of at most max_txn_ops ranges, a few
 *    in flight at once; reads are linearizable.
 *  - watch: one streaming /v3/watch per watch. A new watch holds back
 *    the requests made after it until etcd has created it, so it sees
 *    every change those make. When the stream breaks (the member went
 *    away, etcd compacted past it, the member lost its leader), the
 *    watch reconnects with backoff and reports IMC_WATCH_RESYNC once
 *    it is in place again, then events as before.
 *  - imc_etcd_node_address: one linearizable range read of a node's
 *    address key.
 *
 * Failures. Every operation completes within the timeout (default 5 s,
 * imc_etcd_options_set_timeout_ms) from when it was made: with
 * IMC_ERR_UNAVAILABLE when no member answered in time or the cluster
 * cannot serve (no leader), IMC_ERR_NOT_FOUND for a lease etcd does not
 * know, IMC_ERR_NOMEM, IMC_ERR_PROTO for an answer it cannot read, or
 * another code for an error etcd reports. A request that cannot connect
 * to a member is tried on the next endpoint; later requests stay on the
 * member that answered. The engine asks a member for its status
 * (/v3/maintenance/status: answered locally, no raft round) every second
 * while the cluster is unreachable or has no leader, and after 3 s
 * without any other exchange while it is healthy; when the cluster
 * answers again its watches reconnect at once.
 *
 * The host must have initialised libcurl (curl_global_init) before
 * creating an engine, as libcurl requires of every program that uses it.
 * Host names in endpoints are resolved by libcurl (with its resolver
 * thread, in Debian's build, which reports through a socket on the
 * loop); endpoints given as IP addresses need no resolving.
 *
 * Like every libimchat object, an imc_etcd belongs to the thread that
 * runs its loop; completions and watch callbacks run from that loop,
 * never from inside a call into the engine.
 */
#ifndef IMCHAT_ENGINES_ETCD_H
#define IMCHAT_ENGINES_ETCD_H

#include <imchat/engines/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct imc_etcd imc_etcd;
typedef struct imc_etcd_options imc_etcd_options;

/* Creates options with the defaults; mem NULL means malloc. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT (out NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_etcd_options_new(imc_etcd_options **out, const imc_mem *mem);
/* Frees opt; NULL is a no-op. */
IMC_EXTERN void imc_etcd_options_del(imc_etcd_options *opt);

/*
 * The client URLs of the cluster's members, comma-separated, e.g.
 * "http://10.0.0.1:2379,http://10.0.0.2:2379" (http or https, at most 16,
 * each at most 512 bytes, no spaces). Required. Copied. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_etcd_options_set_endpoints(imc_etcd_options *opt,
                                              const char *urls);

/*
 * The key prefix every key of this registry starts with (default
 * "/imchat/"): 1..256 bytes, no NUL. Gateways and routers that share a
 * registry use the same prefix. Copied. Returns 0,
 * IMC_ERR_INVALID_ARGUMENT or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_etcd_options_set_prefix(imc_etcd_options *opt,
                                           const char *prefix);

/*
 * How long an operation may take from the call to its completion,
 * 100..600000 ms (default 5000). Returns 0 or IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_etcd_options_set_timeout_ms(imc_etcd_options *opt,
                                               uint32_t ms);

/*
 * The most operations in one transaction, 1..100000 (default 128, etcd's
 * default --max-txn-ops; never set it above the cluster's). Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_etcd_options_set_max_txn_ops(imc_etcd_options *opt,
                                                uint32_t n);

/*
 * The address this node is reached at (e.g. "10.0.0.5:9093", its gRPC
 * address): 1..256 printable ASCII characters, no spaces. When set,
 * lease_grant also puts P "addrs/" <node_id> -> addr on the granted
 * lease, in the same transaction as the node key, so the address lives
 * and dies with the lease. Unset by default (no address key). Copied.
 * Returns 0 or IMC_ERR_INVALID_ARGUMENT (opt or addr NULL, addr empty,
 * too long or not printable).
 */
IMC_EXTERN int imc_etcd_options_set_node_address(imc_etcd_options *opt,
                                                 const char *addr);

/*
 * Log hook (NULL: none) for lines up to max_level: lost and restored
 * connections to the cluster, watch reconnects. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT.
 */
IMC_EXTERN int imc_etcd_options_set_log(imc_etcd_options *opt, imc_log_cb cb,
                                        void *ud, imc_log_level max_level);

/*
 * Creates an engine from opt (which may be deleted afterwards) on loop
 * (borrowed: it must outlive the engine); mem NULL means malloc. It
 * connects lazily: the first request, or the first health probe, which
 * it sends on the loop's next turn. Returns 0, IMC_ERR_INVALID_ARGUMENT (out,
 * loop or opt NULL, no endpoints) or IMC_ERR_NOMEM (also when libcurl cannot
 * start).
 */
IMC_EXTERN int imc_etcd_new(imc_etcd **out, const imc_loop *loop,
                            const imc_etcd_options *opt, const imc_mem *mem);

/*
 * Deletes e: every operation still pending completes with IMC_ERR_CLOSED
 * (calls made from those completions return IMC_ERR_CLOSED), watches end
 * without a further callback, and every connection, fd watch and timer
 * is released. Must not be called from one of e's callbacks. NULL is a
 * no-op.
 */
IMC_EXTERN void imc_etcd_del(imc_etcd *e);

IMC_EXTERN void imc_etcd_set_user_data(imc_etcd *e, void *ud);
IMC_EXTERN void *imc_etcd_get_user_data(const imc_etcd *e);

/* The registry vtable; its ud is the imc_etcd. Never NULL. */
IMC_EXTERN const imc_registry_vtbl *imc_etcd_registry_vtbl(void);

/*
 * Looks up the address node_id published with its lease
 * (imc_etcd_options_set_node_address): one linearizable read. done runs
 * from the loop, once, within the timeout: status 0 with addr (valid
 * during the call only), or addr NULL and IMC_ERR_NOT_FOUND (no such
 * node, or its lease is gone), IMC_ERR_UNAVAILABLE (no member answered
 * in time, or the cluster cannot serve), IMC_ERR_PROTO (an answer, or a
 * stored value, it cannot read), IMC_ERR_NOMEM, IMC_ERR_CLOSED (e was
 * deleted before it completed), or another code for an error etcd
 * reports. Returns 0 (done will run), or without calling done:
 * IMC_ERR_INVALID_ARGUMENT (e, node_id or done NULL, node_id not a valid
 * id: see imc_id_valid), IMC_ERR_CLOSED (called while e is being
 * deleted) or IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_etcd_node_address(imc_etcd *e, const char *node_id,
                                     void (*done)(void *ud, int status,
                                                  const char *addr),
                                     void *ud);

/*
 * For a host's /readyz: 0 when the last exchange with the cluster (a
 * request, a watch stream or a probe, at most a few seconds ago) got an
 * answer from a member that can serve; IMC_ERR_UNAVAILABLE when it did
 * not (no member reachable, no leader, an alarm raised), and before the
 * first answer; IMC_ERR_INVALID_ARGUMENT if e is NULL.
 */
IMC_EXTERN int imc_etcd_health(const imc_etcd *e);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_ENGINES_ETCD_H */
