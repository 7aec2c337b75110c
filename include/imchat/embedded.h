/*
 * imchat - embedded backends: implementations of the backend vtables that
 * need no external service. imchatd runs on them by default; tests use
 * them as the reference for the vtable conformance suites.
 */
#ifndef IMCHAT_EMBEDDED_H
#define IMCHAT_EMBEDDED_H

#include <imchat/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * In-memory registry. Completes every operation before returning. Leases
 * expire by the clock (NULL: the system clock): lookup never reports an
 * expired entry. Watch reports PUT and DELETE of keys
 * "<user_id>/<device_id>" whose key starts with the prefix.
 */
typedef struct imc_memreg imc_memreg;

/* Returns 0 or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_memreg_new(imc_memreg **out, const imc_clock *clock,
                              const imc_mem *mem);
IMC_EXTERN void imc_memreg_del(imc_memreg *reg);
IMC_EXTERN void imc_memreg_set_user_data(imc_memreg *reg, void *ud);
IMC_EXTERN void *imc_memreg_get_user_data(const imc_memreg *reg);
/* The vtable; its ud is the imc_memreg. */
IMC_EXTERN const imc_registry_vtbl *imc_memreg_vtbl(void);
/* Live entries held (for metrics and tests). */
IMC_EXTERN size_t imc_memreg_size(imc_memreg *reg);

/*
 * SQLite backends: sequence counters, the dedup set, the store and a
 * durable queue (the bus) in one database file, in WAL mode with
 * synchronous=NORMAL: a completed operation survives a crash of the
 * process, though not necessarily a power loss. One imc_sqlite should own
 * a file; it is single-threaded and starts no threads.
 *
 * seq, dedup, store, publish and commit complete before returning. A poll
 * never completes inside the call, even if records are waiting: the host
 * calls imc_sqlite_dispatch() once per event-loop iteration, which
 * completes the polls that have records. A completion may call the
 * backend again, but must not delete it.
 *
 * Dedup TTLs run on the clock's wall time (NULL: the system clock); a
 * TTL of 0 is refused with IMC_ERR_INVALID_ARGUMENT. The store's purge
 * also drops expired dedup keys. Seqs and offsets above INT64_MAX are
 * refused; a cursor above it finds nothing. Bus records are in partition
 * 0; a consumer group is known to a topic from its first poll or commit,
 * and records are deleted once every known group has committed them. Within one
 * imc_sqlite each record is delivered to a group once; after a restart
 * every uncommitted record is delivered again.
 *
 * Besides the codes of each vtable, operations may return
 * IMC_ERR_INVALID_ARGUMENT (NULL or empty ids, limit or max 0, partition
 * other than 0), IMC_ERR_NOMEM, IMC_ERR_IO (reason: imc_sqlite_errmsg()),
 * IMC_ERR_UNAVAILABLE (the file is locked by another process),
 * IMC_ERR_EXISTS (store append: a different msg_id already holds the
 * (conversation_id, seq); bus poll: a poll of that topic and group is
 * outstanding) and IMC_ERR_CLOSED (imc_sqlite_new failed).
 */
typedef struct imc_sqlite imc_sqlite;

/*
 * Open the database at path, creating the file and its schema if needed.
 * clock and mem may be NULL (system clock, malloc); both must outlive the
 * object. Returns 0, IMC_ERR_INVALID_ARGUMENT (out or path NULL),
 * IMC_ERR_NOMEM (*out is NULL) or IMC_ERR_IO (the file cannot be opened,
 * created or used: *out is then set to an object on which only
 * imc_sqlite_errmsg() and imc_sqlite_del() are legal, and the caller
 * must still delete it).
 */
IMC_EXTERN int imc_sqlite_new(imc_sqlite **out, const char *path,
                              const imc_clock *clock, const imc_mem *mem);
/*
 * Close the database. Outstanding polls complete first with
 * IMC_ERR_CLOSED. NULL is a no-op.
 */
IMC_EXTERN void imc_sqlite_del(imc_sqlite *db);
IMC_EXTERN void imc_sqlite_set_user_data(imc_sqlite *db, void *ud);
IMC_EXTERN void *imc_sqlite_get_user_data(const imc_sqlite *db);
/*
 * Why the last operation failed with IMC_ERR_IO (or another storage
 * error); "" if none has. Valid until the next call on db.
 */
IMC_EXTERN const char *imc_sqlite_errmsg(imc_sqlite *db);
/* The vtables; their ud is the imc_sqlite. */
IMC_EXTERN const imc_seq_vtbl *imc_sqlite_seq_vtbl(void);
IMC_EXTERN const imc_dedup_vtbl *imc_sqlite_dedup_vtbl(void);
IMC_EXTERN const imc_store_vtbl *imc_sqlite_store_vtbl(void);
IMC_EXTERN const imc_bus_vtbl *imc_sqlite_bus_vtbl(void);
/*
 * Complete the outstanding polls that have records (a poll made by one of
 * these completions waits for the next call). Returns the number of
 * completions made: if positive, call again before blocking, since the
 * completions may have made more work. Returns IMC_ERR_INVALID_ARGUMENT
 * (db NULL) or IMC_ERR_CLOSED (imc_sqlite_new failed). A poll whose read
 * fails completes with the error and counts as a completion.
 */
IMC_EXTERN int imc_sqlite_dispatch(imc_sqlite *db);

/*
 * In-process bus: topics in memory, for group_msg fan-out inside one
 * process. Not durable. publish and commit complete before returning;
 * polls complete only from imc_membus_dispatch(), with the same rules as
 * imc_sqlite_dispatch(). Offsets start at 1 per topic, in partition 0.
 * A consumer group is known to a topic from its first poll or commit;
 * a record is freed once every known group has committed it, and a group
 * that joins later starts from the oldest record kept. At most
 * max_records records (default 65536) are kept over all topics: publish
 * beyond returns IMC_ERR_QUEUE_FULL.
 *
 * Operations return IMC_ERR_INVALID_ARGUMENT (NULL or empty names, max 0,
 * partition other than 0), IMC_ERR_NOMEM, IMC_ERR_QUEUE_FULL (publish)
 * or IMC_ERR_EXISTS (a poll of that topic and group is outstanding).
 */
typedef struct imc_membus imc_membus;

/* mem may be NULL (malloc). Returns 0, IMC_ERR_INVALID_ARGUMENT (out
 * NULL) or IMC_ERR_NOMEM. */
IMC_EXTERN int imc_membus_new(imc_membus **out, const imc_mem *mem);
/* Outstanding polls complete first with IMC_ERR_CLOSED. NULL is a no-op. */
IMC_EXTERN void imc_membus_del(imc_membus *bus);
IMC_EXTERN void imc_membus_set_user_data(imc_membus *bus, void *ud);
IMC_EXTERN void *imc_membus_get_user_data(const imc_membus *bus);
/* The vtable; its ud is the imc_membus. */
IMC_EXTERN const imc_bus_vtbl *imc_membus_vtbl(void);
/*
 * Complete the outstanding polls that have records; returns how many
 * (call again before blocking if positive), or IMC_ERR_INVALID_ARGUMENT
 * (bus NULL). A poll that cannot get memory completes with
 * IMC_ERR_NOMEM.
 */
IMC_EXTERN int imc_membus_dispatch(imc_membus *bus);
/*
 * Bound the records kept over all topics. Lowering it below the current
 * count refuses publishes until consumers catch up. Returns 0 or
 * IMC_ERR_INVALID_ARGUMENT (bus NULL or max 0).
 */
IMC_EXTERN int imc_membus_set_max_records(imc_membus *bus, size_t max);
/* Records currently kept over all topics (for metrics and tests). */
IMC_EXTERN size_t imc_membus_size(imc_membus *bus);

/*
 * Sealed store: encryption at rest for any store. A decorator of another
 * imc_store_vtbl that stores message bodies sealed with AES-256-GCM
 * (bound to their msg_id) while its callers see plaintext. Every other
 * field, and purge and the group operations, pass through unchanged.
 *
 * The key file holds one key per line, "KEY_ID HEX64" (an id of 1..32
 * characters of [A-Za-z0-9_.-], then 64 hex digits); blank lines and
 * lines starting with '#' are skipped. The first key seals new bodies;
 * every key opens the bodies that name it. To rotate, put a new key first,
 * keep the old ones, and reload.
 *
 * A completion of the inner store is forwarded once the page is opened,
 * when the inner store makes it (inline or later). A page with a body that
 * does not open (its key is not in the file, or it was altered or moved to
 * another row) completes with IMC_ERR_IO and no messages. Bodies that do
 * not frame as sealed envelopes, such as rows written before sealing was
 * enabled, are returned as they are stored.
 *
 * Besides the inner store's codes, operations may return
 * IMC_ERR_INVALID_ARGUMENT (a NULL array, message, msg_id or completion),
 * IMC_ERR_NOMEM, IMC_ERR_TOO_LARGE (a body too large to seal) and
 * IMC_ERR_UNAVAILABLE (the cipher or the random generator failed);
 * fetches may complete with IMC_ERR_IO, IMC_ERR_NOMEM or
 * IMC_ERR_UNAVAILABLE.
 */
typedef struct imc_sealed_store imc_sealed_store;

/*
 * Wrap the store inner (its vtable and ud are borrowed and must outlive
 * the object) with the keys of the file at keyfile (read now and by
 * imc_sealed_store_reload; the path is copied). mem may be NULL (malloc).
 * Returns 0; IMC_ERR_INVALID_ARGUMENT (out, inner or keyfile NULL, a
 * member of inner absent, or a malformed key file, a duplicate key id or
 * a file without keys); IMC_ERR_IO (the file cannot be read);
 * IMC_ERR_NOMEM; IMC_ERR_UNAVAILABLE (libcrypto has no AES-256-GCM). On
 * error *out is untouched.
 */
IMC_EXTERN int imc_sealed_store_new(imc_sealed_store **out,
                                    const imc_store_vtbl *inner, void *inner_ud,
                                    const char *keyfile, const imc_mem *mem);
/*
 * Read the key file again, e.g. on SIGHUP. Outstanding fetches open with
 * the new keys. Returns 0 or, keeping the old keys, the codes of
 * imc_sealed_store_new for the file (IMC_ERR_INVALID_ARGUMENT also for s
 * NULL).
 */
IMC_EXTERN int imc_sealed_store_reload(imc_sealed_store *s);
/*
 * Free s and its keys. Every operation started through it must have
 * completed. The inner store is not deleted. NULL is a no-op.
 */
IMC_EXTERN void imc_sealed_store_del(imc_sealed_store *s);
IMC_EXTERN void imc_sealed_store_set_user_data(imc_sealed_store *s, void *ud);
IMC_EXTERN void *imc_sealed_store_get_user_data(const imc_sealed_store *s);
/* The vtable; its ud is the imc_sealed_store. */
IMC_EXTERN const imc_store_vtbl *imc_sealed_store_vtbl(void);
/*
 * Bodies that failed to open since s was created (for metrics and
 * alerts: a nonzero value means a missing key or altered rows). 0 if s is
 * NULL.
 */
IMC_EXTERN uint64_t imc_sealed_store_failures(const imc_sealed_store *s);

/*
 * Sealed bus: encryption at rest for a durable bus (the offline queue
 * keeps message bodies until the worker has stored them). Record values
 * are sealed on publish with the topic as authenticated data and opened
 * on poll; keys, partitions and offsets pass through. A value that is not
 * an envelope is delivered as it is (queued before encryption was on); an
 * envelope that does not open is delivered as it is and counted, so its
 * consumer drops it as a bad record. The key file is as for the sealed
 * store.
 *
 * imc_sealed_bus_new returns 0, IMC_ERR_INVALID_ARGUMENT (NULL argument,
 * an inner vtable without publish, poll or commit, a malformed key
 * file), IMC_ERR_IO (unreadable key file), IMC_ERR_UNAVAILABLE (no
 * AES-256-GCM in libcrypto) or IMC_ERR_NOMEM.
 */
typedef struct imc_sealed_bus imc_sealed_bus;

IMC_EXTERN int imc_sealed_bus_new(imc_sealed_bus **out,
                                  const imc_bus_vtbl *inner, void *inner_ud,
                                  const char *keyfile, const imc_mem *mem);
/* Read the key file again; on failure (codes of _new) the old keys stay. */
IMC_EXTERN int imc_sealed_bus_reload(imc_sealed_bus *b);
/* Free b; every operation started through it must have completed. */
IMC_EXTERN void imc_sealed_bus_del(imc_sealed_bus *b);
IMC_EXTERN void imc_sealed_bus_set_user_data(imc_sealed_bus *b, void *ud);
IMC_EXTERN void *imc_sealed_bus_get_user_data(const imc_sealed_bus *b);
/* The vtable; its ud is the imc_sealed_bus. */
IMC_EXTERN const imc_bus_vtbl *imc_sealed_bus_vtbl(void);
/* Envelopes that failed to open since b was created. */
IMC_EXTERN uint64_t imc_sealed_bus_failures(const imc_sealed_bus *b);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_EMBEDDED_H */
