/* Shared dictionaries: `moonring.shared.<name>` key/value stores shared by every worker thread.
 *
 * They live in C, outside the Lua VMs, in a process-wide registry, so a VM (re)start or a config
 * reload does not lose them. Each dict has a fixed memory budget (its configured size): every
 * entry is charged sizeof(entry header) + key + value, rounded up like malloc does, and when a
 * store would exceed the budget the least recently used entries are evicted (reported to Lua as
 * `forcible`). Expiry is lazy: an expired entry is invisible, and is reclaimed when it is touched,
 * when it reaches the LRU tail during a store, or by flush_expired. Time is CLOCK_MONOTONIC_COARSE
 * in milliseconds (a few ms of resolution; immune to wall-clock steps).
 *
 * Locking: one mutex per dict (glibc adaptive: spins briefly, then sleeps). The request path is
 * otherwise lock-free, but here a lock is the right tool, exactly as nginx's shm zone mutex is:
 * every critical section is short and bounded (a hash lookup, O(1) list moves, one memcpy of the
 * value, and evictions that each free one entry), no I/O, no Lua, no callbacks run under it, and
 * locks are never nested, so there is no deadlock and the hold time is proportional to the bytes
 * touched. The O(n) operations (get_keys, flush_expired, shrinking on redefine) are explicit and
 * documented as such; flush_all is O(1) (a generation bump).
 *
 * Values never leave the lock by pointer: string values are copied into a caller buffer while the
 * lock is held (another worker may free the entry right after), with MR_FFI_TOO_SMALL + the needed
 * size when the buffer is too small.
 *
 * The exported mr_shdict_* functions below are the FFI surface (lua/moonring/shared.lua): plain C
 * ABI, MR_FFI_* codes, out-parameters, no Lua stack, no allocation on the get/set/incr paths
 * beyond the entry itself, so the Lua side JIT-compiles. */
#ifndef MR_SHDICT_H
#define MR_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#include "util/export.h"

typedef struct mr_shdict mr_shdict_t;

/* The FFI functions return the code set of util/export.h: MR_FFI_OK, MR_FFI_DECLINED (no such
 * key: "not found"), MR_FFI_BAD_ARG (empty key, key > MR_SHDICT_KEY_MAX, NULL dict, bad op or
 * type), MR_FFI_EXISTS (add: "exists"), MR_FFI_BAD_TYPE (incr on a value that is not a number),
 * MR_FFI_NOMEM (a value bigger than the dict, safe_* would have to evict, malloc failed),
 * MR_FFI_TOO_SMALL (the caller's buffer is too small; *len holds the size needed: retry),
 * MR_FFI_RETIRED (a reload removed the dict from the config: "dict removed"). */

/* Value types, numbered like Lua's LUA_T* (as lua-resty-core does). */
#define MR_SHD_TNIL     0
#define MR_SHD_TBOOLEAN 1
#define MR_SHD_TNUMBER  3
#define MR_SHD_TSTRING  4
#define MR_SHD_TLIST    5   /* lpush/rpush made it; get() refuses it ("value is a list") */

/* Store operations (mr_shdict_store's op). SAFE may be or-ed into any of them: never evict a live
 * entry; fail with MR_FFI_NOMEM instead. */
#define MR_SHD_SET     0
#define MR_SHD_ADD     1
#define MR_SHD_REPLACE 2
#define MR_SHD_SAFE    8

#define MR_SHDICT_KEY_MAX  65535
#define MR_SHDICT_NAME_MAX 255

/* ---- main thread: registry ----------------------------------------------------------------
 * (Exported so unit specs can drive them through FFI; server-side Lua must not call them.) */

/* Declares dict `name` with a budget of `size` bytes. Idempotent: an existing dict keeps its
 * contents. A new size is applied in place: growing keeps everything; shrinking keeps the
 * contents if they fit the new budget and otherwise evicts least recently used entries until
 * they do. Redefining a dict retired by mr_shdict_reload_end revives it, empty.
 * Returns MR_FFI_OK, MR_FFI_BAD_ARG (empty or too long name, size 0) or MR_FFI_NOMEM.
 * Thread-safe, but meant for the main thread at startup / reload. Dicts are never freed: pointers stay valid for the process. */
MR_EXPORT int mr_shdict_define(const char *name, size_t size);

/* Reload bracketing (optional at first startup): mr_shdict_reload_begin(), then define every
 * dict of the new config, then mr_shdict_reload_end(), which retires every dict not defined since
 * begin: its contents are freed, find() stops returning it, and VMs still holding it (old workers
 * draining) see it empty and get MR_FFI_RETIRED from stores. Call them only once the new config
 * has been fully validated. */
MR_EXPORT void mr_shdict_reload_begin(void);
MR_EXPORT void mr_shdict_reload_end(void);

/* Finds a live (not retired) dict by name. NULL when unknown. Thread-safe (registry mutex, not a
 * hot path: Lua caches the handle). */
MR_EXPORT mr_shdict_t *mr_shdict_find(const char *name, size_t len);

/* ---- any thread: FFI surface ------------------------------------------------------------- */

/* get / get_stale. On MR_FFI_OK: *type is MR_SHD_T*, *num holds a number (or 0/1 for a boolean),
 * a string is copied into buf (capacity *len on entry, its length on return), *flags are the
 * user flags, *stale is 1 when the entry had expired (only with stale_ok). If the string does
 * not fit, returns MR_FFI_TOO_SMALL with *len = its length and copies nothing. Touches the LRU. */
MR_EXPORT int mr_shdict_get(mr_shdict_t *d, const char *k, size_t kl, int stale_ok, int *type,
                            double *num, char *buf, size_t *len, uint32_t *flags, int *stale);

/* set/add/replace (+ MR_SHD_SAFE). type MR_SHD_TNIL deletes (set, replace) or is a no-op (add
 * of a missing key). exptime in seconds, 0 = never (> 0 is rounded up to whole ms). *forcible
 * is set to 1 when live entries had to be evicted to make room. */
MR_EXPORT int mr_shdict_store(mr_shdict_t *d, int op, const char *k, size_t kl, int type,
                              const char *str, size_t sl, double num, double exptime,
                              uint32_t flags, int *forcible);

/* incr: *out = value + by. If the key is missing/expired: with has_init, stores init + by with
 * expiry init_ttl (seconds, 0 = never) and flags 0; else MR_FFI_DECLINED. An existing entry
 * keeps its expiry and flags. MR_FFI_BAD_TYPE when the value is not a number. */
MR_EXPORT int mr_shdict_incr(mr_shdict_t *d, const char *k, size_t kl, double by, int has_init,
                             double init, double init_ttl, double *out, int *forcible);

/* Removes the key (expired or not). MR_FFI_OK whether or not it existed. */
MR_EXPORT int mr_shdict_delete(mr_shdict_t *d, const char *k, size_t kl);

/* Remaining lifetime in ms (>= 1), or 0 when the entry never expires. */
MR_EXPORT int mr_shdict_ttl(mr_shdict_t *d, const char *k, size_t kl, int64_t *ms);

/* Sets a live entry's expiry to now + exptime seconds (0 = never). */
MR_EXPORT int mr_shdict_expire(mr_shdict_t *d, const char *k, size_t kl, double exptime);

/* Live keys, most recently used first, at most max (0 = all), packed into buf as
 * [uint8 len_lo][uint8 len_hi][key bytes]... On MR_FFI_OK *len is the bytes written and *count
 * the keys. MR_FFI_TOO_SMALL when buf (capacity *len) is too small: *len is the size needed.
 * Reclaims the expired entries it walks over. O(n) under the lock. */
MR_EXPORT int mr_shdict_get_keys(mr_shdict_t *d, int max, char *buf, size_t *len, int *count);

/* Makes every entry invisible at once (O(1): a generation bump); their memory is reclaimed
 * lazily, like expired entries (evicting them is never "forcible"). */
MR_EXPORT int mr_shdict_flush_all(mr_shdict_t *d);

/* Frees up to max (0 = all) expired or flushed entries; returns how many. O(n) under the lock. */
MR_EXPORT int mr_shdict_flush_expired(mr_shdict_t *d, int max);

/* Lists (ngx.shared.DICT's lpush/rpush/lpop/rpop/llen): see shdict.c for the layout. */
MR_EXPORT int mr_shdict_push(mr_shdict_t *d, const char *k, size_t kl, int left, int type, const char *str,
                             size_t sl, double num, int *len_out, int *forcible);
MR_EXPORT int mr_shdict_pop(mr_shdict_t *d, const char *k, size_t kl, int left, int *type, double *num, char *buf,
                            size_t *len);
MR_EXPORT int mr_shdict_llen(mr_shdict_t *d, const char *k, size_t kl, int *n);

MR_EXPORT size_t mr_shdict_capacity(mr_shdict_t *d);
MR_EXPORT size_t mr_shdict_free_space(mr_shdict_t *d);   /* budget minus the bytes charged */

#endif
