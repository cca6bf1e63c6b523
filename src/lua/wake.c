/* Small helpers for Lua's own schedulers (moonring.thread, ngx.semaphore), reached through FFI.
 *
 * mr_lua_wake arms an owner's waker (the park timer of a request or a Lua timer, as handed to
 * Lua by mr_req_waker or the fiber's address) at 0 ms, so the owner resumes on a later loop
 * turn, never synchronously. Lua calls it to wake another request or timer of the same worker
 * (a semaphore post); the caller must know the waker is still alive (Lua forgets a waiting
 * owner when it ends, see moonring.semaphore). Thread affinity: the worker whose loop owns the
 * timer. */
#include <time.h>

#include <stdlib.h>

#include "log/log.h"
#include "loop/loop.h"
#include "util/export.h"

/* MR_FFI_OK, or MR_FFI_BAD_CONTEXT outside a worker's loop (config load, unit specs). */
MR_EXPORT int mr_lua_wake(void *waker)
{
    mr_loop_t *loop = mr_loop_current();
    if (!loop || !waker) return MR_FFI_BAD_CONTEXT;
    mr_timer_set(loop, waker, 0);
    return MR_FFI_OK;
}

/* Seconds on the monotonic clock: deadlines of sleeps and waits do not jump with the wall clock. */
MR_EXPORT double mr_lua_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The index of the calling worker (0-based), or -1 off a worker: its log tag is "w<index>". */
MR_EXPORT int mr_lua_worker_id(void)
{
    const char *t = mr_log_thread_tag();
    if (!t || t[0] != 'w' || t[1] < '0' || t[1] > '9') return -1;
    return atoi(t + 1);
}
