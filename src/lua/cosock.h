/* Cosockets: TCP client sockets for Lua code (moonring.tcp), run on the worker's own loop, and
 * the worker's pool of idle keep-alive cosockets keyed by "host:port".
 *
 * A socket runs one operation at a time (the coroutine using it waits for each). Submitting
 * returns at once; the result is kept in the socket and the waiting coroutine is woken by arming
 * its park timer (`waker`, an mr_timer_t owned by the request or the Lua timer) at 0 ms, so it
 * resumes on a later loop turn, never synchronously from a submitting call or a completion.
 *
 * Ownership: cosockets are owned by the per-thread registry, not by Lua objects. Lua code closes
 * them explicitly or through its owner's end (request finished, timer done). mr_cosock_close
 * detaches the waker at once, cancels what is in flight, and frees the socket after the last
 * completion, so no buffer named in an SQE is freed early and no dead waker is ever armed.
 *
 * Thread affinity: the worker thread that called mr_cosock_thread_init. Functions exported to
 * Lua (MR_EXPORT in cosock.c) return the FFI code set (src/util/export.h): MR_FFI_AGAIN =
 * submitted (yield until woken, then mr_cosock_result), MR_FFI_OK = done at once (the result is
 * in mr_cosock_result too), a failure code = failed at once. mr_cosock_error describes the last
 * failure in words; internally everything stays 0 / -errno. */
#ifndef MR_COSOCK_H
#define MR_COSOCK_H

#include "loop/loop.h"
#include "net/resolver.h"

typedef struct mr_cosock mr_cosock_t;

/* Binds the calling worker thread to its loop and its resolver (host names in connect; the
 * resolver must outlive mr_cosock_thread_free). Returns 0 or -ENOMEM. */
int mr_cosock_thread_init(mr_loop_t *loop, mr_resolver_t *res);
/* The calling thread's loop, or NULL when it is not a worker (config check, unit tests). */
mr_loop_t *mr_cosock_loop(void);
/* Closes the idle pool (graceful shutdown). */
void mr_cosock_thread_drain(void);
/* After the loop was freed, before the resolver is: closes every remaining fd and frees every
 * socket (cancelling its lookup). */
void mr_cosock_thread_free(void);

#endif
