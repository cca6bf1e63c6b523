/* Internal to src/loop/: the state every backend shares (buffer pool bookkeeping, timers, deferred
 * callbacks, the clock) and the table through which loop.c reaches the backend. A backend embeds
 * struct mr_loop as the first member of its own struct and casts back in its functions.
 * Same thread affinity as loop.h: everything here runs on the loop's thread. */
#ifndef MR_LOOP_INT_H
#define MR_LOOP_INT_H

#include "loop/loop.h"

enum { MR_OPK_ACCEPT = 1, MR_OPK_RECV, MR_OPK_SEND, MR_OPK_CONNECT, MR_OPK_READ, MR_OPK_WRITE };

typedef struct mr_loop_ops {
    void (*free)(mr_loop_t *loop);
    int (*accept)(mr_loop_t *loop, mr_op_t *op, int fd);
    int (*recv)(mr_loop_t *loop, mr_op_t *op, int fd);
    int (*recv_once)(mr_loop_t *loop, mr_op_t *op, int fd);
    int (*sendmsg)(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg);
    int (*connect)(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len);
    int (*read)(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len);
    int (*write)(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len);
    void (*close)(mr_loop_t *loop, int fd);
    /* Called only for an active target. */
    int (*cancel)(mr_loop_t *loop, mr_op_t *target);
    /* The last reference to bid is gone: hand the buffer back to the backend's pool. */
    void (*buf_release)(mr_loop_t *loop, uint16_t bid);
    /* Start of a turn, after deferred callbacks: publish returned buffers, re-arm starved recvs,
     * and run whatever the backend postponed. May deliver completions. */
    void (*flush)(mr_loop_t *loop);
    /* True when the next wait must not block (work is already queued). */
    bool (*pending)(mr_loop_t *loop);
    /* Submits and waits up to timeout_ms (-1: no limit) for completions, without delivering them.
     * Returns 0 or -errno (fatal only; timeouts and EINTR are 0). */
    int (*wait)(mr_loop_t *loop, int timeout_ms);
    /* Delivers the completions gathered by wait. */
    void (*reap)(mr_loop_t *loop);
} mr_loop_ops_t;

struct mr_loop {
    const mr_loop_ops_t *ops;
    mr_loop_backend_t backend;
    char *bufs;
    uint16_t *buf_refs;
    uint32_t buf_count, buf_size;
    /* Extra buffers (bids buf_count..65535): loop-owned, never given to the kernel; a TLS socket
     * puts decrypted bytes in them so they are addressed like received ones. */
    char **xbufs;               /* by bid - buf_count; grown on demand */
    uint32_t nx, x_cap;
    uint16_t *xfree;            /* stack of free extra bids */
    uint32_t nxfree;
    mr_timer_t **heap;
    uint32_t heap_len, heap_cap;
    mr_defer_t *defer_head, *defer_tail;
    uint64_t now;
    uint64_t now_us;            /* the same instant in microseconds */
    bool stop;
};

/* Shared setup of the buffer memory, refcounts and timer heap (loop.c). Returns 0 or -errno. */
int mr_loop_base_init(mr_loop_t *loop, const mr_loop_opts_t *opts);
void mr_loop_base_free(mr_loop_t *loop);

int mr_loop_uring_create(mr_loop_t **out, const mr_loop_opts_t *opts);
int mr_loop_epoll_create(mr_loop_t **out, const mr_loop_opts_t *opts);

#endif
