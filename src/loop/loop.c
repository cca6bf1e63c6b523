#include "loop/loop.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "log/log.h"

/* liburing 2.3 headers predate some kernel flags; define what we use when missing. */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

enum { MR_OPK_ACCEPT = 1, MR_OPK_RECV, MR_OPK_SEND, MR_OPK_CONNECT, MR_OPK_READ, MR_OPK_WRITE };
#define MR_BGID 1

struct mr_loop {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    uint16_t *buf_refs;
    uint32_t buf_count, buf_size, buf_mask, buf_free, buf_pending;
    mr_op_t *starved;              /* recvs that ended on ENOBUFS, re-armed when buffers return */
    mr_op_t *starved_cancelled;    /* starved recvs cancelled by their owner: report -ECANCELED */
    mr_timer_t **heap;
    uint32_t heap_len, heap_cap;
    mr_defer_t *defer_head, *defer_tail;
    uint64_t now;
    bool stop;
};

static uint64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t mr_loop_now(mr_loop_t *loop) { return loop->now; }

static int ring_setup(struct io_uring *ring, unsigned entries, unsigned *flags_out)
{
    /* Strongest first: DEFER_TASKRUN (6.1+) runs completions only when we reap, which batches
     * task work; COOP_TASKRUN (5.19+) avoids IPIs; plain as the last resort. */
    static const unsigned tries[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_SUBMIT_ALL,
        0,
    };
    int rc = -ENOSYS;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;
        rc = io_uring_queue_init_params(entries, ring, &p);
        if (rc == 0) {
            if (flags_out) *flags_out = p.flags;
            if (!(p.features & IORING_FEAT_EXT_ARG)) {
                /* Without EXT_ARG a wait timeout costs an extra SQE and syscall per turn. */
                io_uring_queue_exit(ring);
                return -EOPNOTSUPP;
            }
            return 0;
        }
        if (rc == -EPERM || rc == -ENOSYS) return rc;
    }
    return rc;
}

int mr_loop_probe(mr_loop_features_t *f)
{
    memset(f, 0, sizeof *f);
    struct io_uring ring;
    unsigned flags = 0;
    int rc = ring_setup(&ring, 8, &flags);
    if (rc < 0) {
        f->kernel_note = rc == -EPERM ? "io_uring_setup: EPERM (disabled by sysctl or seccomp)"
                       : rc == -ENOSYS ? "io_uring_setup: ENOSYS (kernel without io_uring)"
                       : rc == -EOPNOTSUPP ? "io_uring: kernel lacks IORING_FEAT_EXT_ARG"
                       : "io_uring_setup failed";
        return rc;
    }
    f->single_issuer = flags & IORING_SETUP_SINGLE_ISSUER;
    f->defer_taskrun = flags & IORING_SETUP_DEFER_TASKRUN;
    f->coop_taskrun = flags & IORING_SETUP_COOP_TASKRUN;
    f->ext_arg = true;
    f->fast_poll = ring.features & IORING_FEAT_FAST_POLL;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
    bool ok = probe && io_uring_opcode_supported(probe, IORING_OP_ACCEPT) &&
              io_uring_opcode_supported(probe, IORING_OP_RECV) &&
              io_uring_opcode_supported(probe, IORING_OP_SENDMSG) &&
              io_uring_opcode_supported(probe, IORING_OP_CONNECT) &&
              io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL);
    if (probe) io_uring_free_probe(probe);
    /* Buffer rings and multishot recv arrived together (5.19/6.0); probe by registering one. */
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    void *mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem != MAP_FAILED) {
        reg.ring_addr = (uintptr_t)mem;
        reg.ring_entries = 8;
        reg.bgid = 7;
        if (io_uring_register_buf_ring(&ring, &reg, 0) == 0) {
            f->buf_ring = f->recv_multishot = true;
            io_uring_unregister_buf_ring(&ring, 7);
        }
        munmap(mem, 4096);
    }
    io_uring_queue_exit(&ring);
    if (!ok) { f->kernel_note = "io_uring lacks a required opcode"; return -EOPNOTSUPP; }
    if (!f->buf_ring) { f->kernel_note = "io_uring lacks provided buffer rings (kernel < 5.19)"; return -EOPNOTSUPP; }
    return 0;
}

int mr_loop_init(mr_loop_t **out, const mr_loop_opts_t *opts)
{
    int rc;
    mr_loop_t *loop = calloc(1, sizeof *loop);
    if (!loop) return -ENOMEM;
    loop->buf_count = opts->buf_count;
    loop->buf_size = opts->buf_size;
    rc = ring_setup(&loop->ring, opts->entries, NULL);
    if (rc < 0) goto fail_free;

    size_t ring_bytes = loop->buf_count * sizeof(struct io_uring_buf);
    loop->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (loop->br == MAP_FAILED) { rc = -errno; loop->br = NULL; goto fail_ring; }
    loop->bufs = malloc((size_t)loop->buf_count * loop->buf_size);
    loop->buf_refs = calloc(loop->buf_count, sizeof *loop->buf_refs);
    loop->heap_cap = 1024;
    loop->heap = malloc(loop->heap_cap * sizeof *loop->heap);
    if (!loop->bufs || !loop->buf_refs || !loop->heap) { rc = -ENOMEM; goto fail_ring; }

    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uintptr_t)loop->br;
    reg.ring_entries = loop->buf_count;
    reg.bgid = MR_BGID;
    rc = io_uring_register_buf_ring(&loop->ring, &reg, 0);
    if (rc < 0) goto fail_ring;
    io_uring_buf_ring_init(loop->br);
    loop->buf_mask = (uint32_t)io_uring_buf_ring_mask(loop->buf_count);
    for (uint32_t i = 0; i < loop->buf_count; i++)
        io_uring_buf_ring_add(loop->br, loop->bufs + (size_t)i * loop->buf_size, loop->buf_size,
                              (unsigned short)i, (int)loop->buf_mask, (int)i);
    io_uring_buf_ring_advance(loop->br, (int)loop->buf_count);
    loop->buf_free = loop->buf_count;
    loop->now = clock_ms();
    *out = loop;
    return 0;

fail_ring:
    if (loop->br) munmap(loop->br, ring_bytes);
    free(loop->bufs);
    free(loop->buf_refs);
    free(loop->heap);
    io_uring_queue_exit(&loop->ring);
fail_free:
    free(loop);
    return rc;
}

void mr_loop_free(mr_loop_t *loop)
{
    if (!loop) return;
    io_uring_unregister_buf_ring(&loop->ring, MR_BGID);
    munmap(loop->br, loop->buf_count * sizeof(struct io_uring_buf));
    io_uring_queue_exit(&loop->ring);
    free(loop->bufs);
    free(loop->buf_refs);
    free(loop->heap);
    free(loop);
}

void mr_loop_stop(mr_loop_t *loop) { loop->stop = true; }

static struct io_uring_sqe *get_sqe(mr_loop_t *loop)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    if (!sqe) {
        /* SQ full: flush what we have; rare with a large SQ. */
        io_uring_submit(&loop->ring);
        sqe = io_uring_get_sqe(&loop->ring);
    }
    return sqe;
}

static int arm(mr_loop_t *loop, mr_op_t *op, uint8_t kind, struct io_uring_sqe *sqe)
{
    op->kind = kind;
    op->active = true;
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int mr_loop_accept(mr_loop_t *loop, mr_op_t *op, int fd)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    op->fd = fd;
    return arm(loop, op, MR_OPK_ACCEPT, sqe);
}

static int prep_recv(mr_loop_t *loop, mr_op_t *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = MR_BGID;
    return arm(loop, op, MR_OPK_RECV, sqe);
}

int mr_loop_recv(mr_loop_t *loop, mr_op_t *op, int fd)
{
    op->fd = fd;
    return prep_recv(loop, op);
}

int mr_loop_sendmsg(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    op->fd = fd;
    return arm(loop, op, MR_OPK_SEND, sqe);
}

int mr_loop_connect(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_connect(sqe, fd, sa, len);
    op->fd = fd;
    return arm(loop, op, MR_OPK_CONNECT, sqe);
}

int mr_loop_read(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, (uint64_t)-1);
    op->fd = fd;
    return arm(loop, op, MR_OPK_READ, sqe);
}

int mr_loop_write(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, (unsigned)len, (uint64_t)-1);
    op->fd = fd;
    return arm(loop, op, MR_OPK_WRITE, sqe);
}

static bool unlink_starved(mr_op_t **head, mr_op_t *op)
{
    for (mr_op_t **pp = head; *pp; pp = &(*pp)->next_starved)
        if (*pp == op) { *pp = op->next_starved; op->next_starved = NULL; return true; }
    return false;
}

int mr_loop_cancel(mr_loop_t *loop, mr_op_t *target)
{
    if (!target->active) return -ENOENT;
    if (unlink_starved(&loop->starved, target)) {
        /* Not in the kernel: complete it ourselves at the end of this turn. */
        target->next_starved = loop->starved_cancelled;
        loop->starved_cancelled = target;
        return 0;
    }
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel(sqe, target, 0);
    io_uring_sqe_set_data(sqe, NULL);
    return 0;
}

char *mr_loop_buf_ptr(mr_loop_t *loop, uint16_t bid) { return loop->bufs + (size_t)bid * loop->buf_size; }
uint32_t mr_loop_buf_size(mr_loop_t *loop) { return loop->buf_size; }
void mr_loop_buf_ref(mr_loop_t *loop, uint16_t bid) { loop->buf_refs[bid]++; }

void mr_loop_buf_unref(mr_loop_t *loop, uint16_t bid)
{
    if (--loop->buf_refs[bid] != 0) return;
    io_uring_buf_ring_add(loop->br, mr_loop_buf_ptr(loop, bid), loop->buf_size, bid,
                          (int)loop->buf_mask, (int)loop->buf_pending++);
}

static void flush_bufs(mr_loop_t *loop)
{
    if (loop->buf_pending) {
        io_uring_buf_ring_advance(loop->br, (int)loop->buf_pending);
        loop->buf_free += loop->buf_pending;
        loop->buf_pending = 0;
    }
    /* Re-arm starved recvs only with a margin of free buffers, so they do not bounce on ENOBUFS. */
    while (loop->starved && loop->buf_free > 4) {
        mr_op_t *op = loop->starved;
        loop->starved = op->next_starved;
        op->next_starved = NULL;
        if (prep_recv(loop, op) < 0) { op->next_starved = loop->starved; loop->starved = op; break; }
    }
    while (loop->starved_cancelled) {
        mr_op_t *op = loop->starved_cancelled;
        loop->starved_cancelled = op->next_starved;
        op->next_starved = NULL;
        op->active = false;
        op->fn(loop, op, -ECANCELED, 0);
    }
}

/* ---- timers: binary min-heap keyed on `key`; `due` may be pushed later without a heap move ---- */

static void heap_swap(mr_loop_t *loop, uint32_t a, uint32_t b)
{
    mr_timer_t *t = loop->heap[a];
    loop->heap[a] = loop->heap[b];
    loop->heap[b] = t;
    loop->heap[a]->idx = a + 1;
    loop->heap[b]->idx = b + 1;
}

static void heap_up(mr_loop_t *loop, uint32_t i)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (loop->heap[p]->key <= loop->heap[i]->key) break;
        heap_swap(loop, i, p);
        i = p;
    }
}

static void heap_down(mr_loop_t *loop, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < loop->heap_len && loop->heap[l]->key < loop->heap[m]->key) m = l;
        if (r < loop->heap_len && loop->heap[r]->key < loop->heap[m]->key) m = r;
        if (m == i) break;
        heap_swap(loop, i, m);
        i = m;
    }
}

static void heap_remove(mr_loop_t *loop, mr_timer_t *t)
{
    uint32_t i = t->idx - 1;
    t->idx = 0;
    loop->heap_len--;
    if (i == loop->heap_len) return;
    loop->heap[i] = loop->heap[loop->heap_len];
    loop->heap[i]->idx = i + 1;
    heap_down(loop, i);
    heap_up(loop, i);
}

static void heap_insert(mr_loop_t *loop, mr_timer_t *t)
{
    if (loop->heap_len == loop->heap_cap) {
        uint32_t cap = loop->heap_cap * 2;
        mr_timer_t **h = realloc(loop->heap, cap * sizeof *h);
        if (!h) { mr_error("timer heap: out of memory"); abort(); }
        loop->heap = h;
        loop->heap_cap = cap;
    }
    t->key = t->due;
    loop->heap[loop->heap_len] = t;
    t->idx = ++loop->heap_len;
    heap_up(loop, t->idx - 1);
}

void mr_timer_set(mr_loop_t *loop, mr_timer_t *t, uint64_t ms)
{
    t->due = loop->now + ms;
    if (t->idx) {
        if (t->due >= t->key) return; /* fires early, notices the later due, and re-inserts */
        heap_remove(loop, t);
    }
    heap_insert(loop, t);
}

void mr_timer_stop(mr_loop_t *loop, mr_timer_t *t)
{
    if (t->idx) heap_remove(loop, t);
}

static void run_timers(mr_loop_t *loop)
{
    while (loop->heap_len && loop->heap[0]->key <= loop->now) {
        mr_timer_t *t = loop->heap[0];
        heap_remove(loop, t);
        if (t->due > loop->now) { heap_insert(loop, t); continue; }
        t->fn(loop, t);
    }
}

void mr_loop_defer(mr_loop_t *loop, mr_defer_t *d)
{
    if (d->queued) return;
    d->queued = true;
    d->next = NULL;
    if (loop->defer_tail) loop->defer_tail->next = d; else loop->defer_head = d;
    loop->defer_tail = d;
}

static void run_deferred(mr_loop_t *loop)
{
    mr_defer_t *d = loop->defer_head;
    loop->defer_head = loop->defer_tail = NULL;
    while (d) {
        mr_defer_t *next = d->next;
        d->queued = false;
        d->fn(loop, d);
        d = next;
    }
}

static void dispatch(mr_loop_t *loop, struct io_uring_cqe *cqe)
{
    mr_op_t *op = io_uring_cqe_get_data(cqe);
    if (!op) return; /* cancel requests and fire-and-forget ops */
    uint32_t flags = 0;
    int res = cqe->res;
    if (cqe->flags & IORING_CQE_F_MORE) flags |= MR_F_MORE;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        loop->buf_free--;
        loop->buf_refs[bid] = 1;
        flags |= MR_F_BUF | ((uint32_t)bid << 16);
    }
    if (op->kind == MR_OPK_RECV && res == -ENOBUFS && !(flags & MR_F_MORE)) {
        op->next_starved = loop->starved;
        loop->starved = op;
        return;
    }
    if (!(flags & MR_F_MORE)) op->active = false;
    op->fn(loop, op, res, flags);
}

int mr_loop_run(mr_loop_t *loop)
{
    while (!loop->stop) {
        run_deferred(loop);
        flush_bufs(loop);
        if (loop->stop) break;
        struct __kernel_timespec ts, *tsp = NULL;
        if (loop->defer_head || loop->starved_cancelled) {
            ts.tv_sec = 0; ts.tv_nsec = 0; tsp = &ts;
        } else if (loop->heap_len) {
            uint64_t key = loop->heap[0]->key;
            uint64_t wait = key > loop->now ? key - loop->now : 0;
            ts.tv_sec = (long long)(wait / 1000);
            ts.tv_nsec = (long long)(wait % 1000) * 1000000;
            tsp = &ts;
        }
        struct io_uring_cqe *cqe;
        int rc = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, tsp, NULL);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY) {
            mr_error("io_uring_submit_and_wait_timeout: %s", strerror(-rc));
            return rc;
        }
        loop->now = clock_ms();
        unsigned head, n = 0;
        io_uring_for_each_cqe(&loop->ring, head, cqe) {
            n++;
            dispatch(loop, cqe);
        }
        io_uring_cq_advance(&loop->ring, n);
        run_timers(loop);
    }
    return 0;
}
