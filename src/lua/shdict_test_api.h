/* A multi-threaded stress run over one shared dict, for the unit specs (LuaJIT FFI on
 * libmoonring_ffi.so; not in the moonring binary). Thread affinity: any thread; it starts and
 * joins its own threads before returning. */
#ifndef MR_SHDICT_TEST_API_H
#define MR_SHDICT_TEST_API_H

#include "lua/shdict.h"
#include "util/export.h"

/* `threads` pthreads each do `iters` incr of one counter key, interleaved with
 * sets (random sizes and short ttls, so eviction and expiry churn), gets, deletes and get_keys on
 * other keys. Deletes the counter first; returns its final value (threads * iters when the dict
 * is thread-safe), or MR_FFI_ERROR. Use a dict of at least 64k. */
MR_EXPORT int mr_shdict_stress(mr_shdict_t *d, int threads, int iters);

#endif
