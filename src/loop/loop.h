/* The per-worker event loop: a completion-style interface with two backends, io_uring
 * (loop_uring.c) and epoll (loop_epoll.c), chosen per loop at mr_loop_init. Everything below holds
 * for both; callers cannot tell which one runs (mr_loop_choose says which one a loop gets, for logging).
 *
 * Thread affinity: a loop belongs to the thread that called mr_loop_init; every function here must
 * be called from that thread (the ring is created SINGLE_ISSUER where the kernel allows it).
 *
 * Completion model: the caller embeds an mr_op_t in its own object, sets op->fn, and submits.
 * The callback fires later from mr_loop_run, never synchronously from the submitting call.
 * Multishot ops (accept, recv) call back with MR_F_MORE set while they stay armed; the last
 * completion of an op arrives without MR_F_MORE, and only then may the op's memory be reused.
 * A buffer passed to a send belongs to the kernel until that op's final completion.
 *
 * Provided buffers: mr_loop_recv uses the loop's buffer pool (a kernel buffer ring under io_uring,
 * a FIFO free list under epoll). A completion with res > 0 carries a buffer id (mr_op_bid(flags));
 * the callee owns one reference to it and must release it with mr_loop_buf_unref once it no longer
 * needs the bytes. Extra references (for zero-copy forwarding of body bytes to another socket) are
 * taken with mr_loop_buf_ref. A recv that runs out of buffers is re-armed by the loop itself once
 * buffers return; the callee does not see -ENOBUFS.
 *
 * Timers: a per-loop min-heap; all timeouts use it (no kernel timeout op per request).
 *
 * Per fd, at most one op of each class may be in flight: one reader (accept, recv or read), one
 * writer (sendmsg or write) and one connect. The caller closes an fd only after the final completion
 * of every op on it (the epoll backend keeps per-fd interest until then). A socket handed to
 * mr_loop_connect must be non-blocking (the epoll backend calls connect(2) on it directly). */
#ifndef MR_LOOP_H
#define MR_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "util/export.h"

typedef struct mr_loop mr_loop_t;
typedef struct mr_op mr_op_t;
typedef struct mr_timer mr_timer_t;

#define MR_F_MORE 0x1u   /* more completions will follow for this op */
#define MR_F_BUF 0x2u    /* a provided buffer id is in the upper 16 bits */

typedef void (*mr_op_fn)(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags);
typedef void (*mr_timer_fn)(mr_loop_t *loop, mr_timer_t *t);

/* 16 bytes: every socket embeds two, so an idle connection pays for these. */
struct mr_op {
    mr_op_fn fn;
    uint8_t kind;      /* internal: MR_OPK_* */
    bool active;       /* submitted and its final completion not yet delivered */
    int fd;            /* internal: the fd the op runs on */
};

static inline uint16_t mr_op_bid(uint32_t flags) { return (uint16_t)(flags >> 16); }

struct mr_timer {
    uint64_t due;      /* absolute ms; may be later than key (lazy re-arm) */
    uint64_t key;      /* position in the heap */
    uint32_t idx;      /* heap index + 1; 0 = not armed */
    mr_timer_fn fn;
};

typedef enum { MR_LOOP_AUTO = 0, MR_LOOP_IO_URING, MR_LOOP_EPOLL } mr_loop_backend_t;

typedef struct {
    uint32_t entries;      /* SQ size (io_uring) */
    uint32_t buf_count;    /* provided buffers (power of two, at most 65536) */
    uint32_t buf_size;     /* bytes each */
    mr_loop_backend_t backend;  /* AUTO probes io_uring (see mr_loop_choose) */
} mr_loop_opts_t;

typedef struct {
    bool single_issuer, defer_taskrun, coop_taskrun, ext_arg, fast_poll, recv_multishot, buf_ring;
    const char *kernel_note;  /* why a feature is off, or NULL */
} mr_loop_features_t;

/* Probes io_uring on this kernel (creates and destroys a small ring). Returns 0 or -errno; on
 * failure out->kernel_note says why. Any thread. */
int mr_loop_probe(mr_loop_features_t *out);

/* "auto", "io_uring" or "epoll" (NULL or "" = auto). Returns 0 or -EINVAL. */
int mr_loop_backend_parse(const char *name, mr_loop_backend_t *out);
const char *mr_loop_backend_name(mr_loop_backend_t b);
/* Which backend a request gets on this kernel. AUTO: io_uring when mr_loop_probe passes, else
 * epoll (returns 0; feat->kernel_note says why io_uring was passed over). IO_URING: -errno when the
 * probe fails (feat->kernel_note says why). EPOLL: always epoll. feat is filled whenever io_uring
 * was probed (all false otherwise). Any thread; probes at most once per call. */
int mr_loop_choose(mr_loop_backend_t want, mr_loop_backend_t *out, mr_loop_features_t *feat);

/* Creates a loop owned by the calling thread. opts->backend AUTO resolves as mr_loop_choose does;
 * an explicit backend that cannot be set up fails with -errno (no silent fallback). */
MR_EXPORT int mr_loop_init(mr_loop_t **out, const mr_loop_opts_t *opts);
/* The loop the calling thread created (the worker's), or NULL on a thread without one (the main
 * thread, config checks, unit specs): modules that run on whatever worker calls them (Lua timers,
 * cosockets, request phases) find their loop here instead of being handed one through layers. */
mr_loop_t *mr_loop_current(void);
mr_loop_backend_t mr_loop_backend(const mr_loop_t *loop);
MR_EXPORT void mr_loop_free(mr_loop_t *loop);
/* Runs until mr_loop_stop. Returns 0 or -errno on a fatal backend error (ring or epoll fd). The
 * stop is consumed: calling mr_loop_run again runs the loop again. */
int mr_loop_run(mr_loop_t *loop);
void mr_loop_stop(mr_loop_t *loop);
/* Cached monotonic clock in ms, refreshed once per loop turn. */
uint64_t mr_loop_now(mr_loop_t *loop);
/* The same instant as mr_loop_now, in microseconds (read once per turn, like it). */
uint64_t mr_loop_now_us(mr_loop_t *loop);

/* Submitting calls return 0 or -errno (nothing was submitted, no callback will fire). Results,
 * including errors of the operation itself, arrive only through op->fn. */
int mr_loop_accept(mr_loop_t *loop, mr_op_t *op, int fd);               /* multishot; res = fd */
int mr_loop_recv(mr_loop_t *loop, mr_op_t *op, int fd);                 /* multishot, provided bufs */
/* mr_loop_recv for a socket's first read. io_uring issues it single-shot: a fresh connection
 * usually has its first bytes waiting, so the read completes at once with no poll left armed,
 * and a connection that closes after one request has no recv to cancel first. Its completion
 * with data may therefore be final (no MR_F_MORE); the caller re-arms with mr_loop_recv, as
 * after any final completion. The epoll backend arms an ordinary recv. */
int mr_loop_recv_once(mr_loop_t *loop, mr_op_t *op, int fd);
/* May complete short (0 <= res < total bytes); the caller resubmits the rest. msg and what it
 * points to stay the caller's and must stay valid until the final completion. */
int mr_loop_sendmsg(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg);
int mr_loop_connect(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len);
int mr_loop_read(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len);
int mr_loop_write(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len);
/* Closes fd, whose ops have all delivered their final completion (the rule for close(2) above).
 * io_uring queues the close for the next submit, so closing a connection costs no syscall of its
 * own (the socket's FIN leaves then, at the latest before the loop next sleeps); epoll closes now.
 * Either way the fd belongs to the loop from this call on: the caller forgets the number. */
void mr_loop_close(mr_loop_t *loop, int fd);
/* Asks the kernel to cancel `target`; its callback still fires (with -ECANCELED or a result).
 * -ENOENT if target is not active; harmless when its final completion is already on its way. */
int mr_loop_cancel(mr_loop_t *loop, mr_op_t *target);

MR_EXPORT char *mr_loop_buf_ptr(mr_loop_t *loop, uint16_t bid);
MR_EXPORT void mr_loop_buf_ref(mr_loop_t *loop, uint16_t bid);
MR_EXPORT void mr_loop_buf_unref(mr_loop_t *loop, uint16_t bid);
uint32_t mr_loop_buf_size(mr_loop_t *loop);
/* An extra buffer of mr_loop_buf_size bytes with one reference, for bytes the loop did not
 * receive (decrypted TLS input): ids from buf_count up, never handed to the kernel, addressed and
 * referenced like provided buffers; the last unref returns it to the loop's free list. Returns
 * the id or -ENOBUFS / -ENOMEM. Up to 256 free extra buffers stay allocated for reuse; the memory
 * of further ones goes back as they are released. */
MR_EXPORT int mr_loop_buf_get(mr_loop_t *loop);

/* Arms `t` to fire `ms` from now. Cheap when only pushed later (the common keep-alive case). */
void mr_timer_set(mr_loop_t *loop, mr_timer_t *t, uint64_t ms);
void mr_timer_stop(mr_loop_t *loop, mr_timer_t *t);
static inline bool mr_timer_armed(const mr_timer_t *t) { return t->idx != 0; }

/* Runs d->fn at the end of the current loop turn (never synchronously); queueing a queued one
 * does nothing. Zeroed means not queued. next is the loop's (non-NULL exactly while queued, which
 * saves a flag: connections embed several of these). */
typedef struct mr_defer { void (*fn)(mr_loop_t *, struct mr_defer *); struct mr_defer *next; } mr_defer_t;
void mr_loop_defer(mr_loop_t *loop, mr_defer_t *d);
/* True from mr_loop_defer until its callback starts. */
static inline bool mr_defer_queued(const mr_defer_t *d) { return d->next != NULL; }

#endif
