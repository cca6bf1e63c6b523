/* The io_uring backend: multishot accept and recv with a provided-buffer ring, everything else as
 * plain SQEs. The op pointer is the SQE user data; cancel requests carry NULL. */
#include "loop/loop_int.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log/log.h"

/* liburing 2.3 headers predate some kernel flags; define what we use when missing. */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define MR_BGID 1

/* A list of ops, kept here rather than linked through the ops, which every socket embeds. */
typedef struct {
    mr_op_t **v;
    uint32_t len, cap;
} op_list_t;

typedef struct {
    mr_loop_t base;
    struct io_uring ring;
    bool ring_ok;
    struct io_uring_buf_ring *br;
    uint32_t buf_mask, buf_free, buf_pending;
    op_list_t starved;             /* recvs that ended on ENOBUFS, re-armed when buffers return */
    op_list_t starved_cancelled;   /* starved recvs cancelled by their owner: report -ECANCELED */
    /* fds to close with the next submit (mr_loop_close): queued here rather than as SQEs at
     * once, so that one the loop never submits (freed after a stop) is closed by uring_free. */
    int *closing;
    uint32_t nclosing, closing_cap;
    bool cqe_skip;                 /* IOSQE_CQE_SKIP_SUCCESS works: a close posts no CQE */
} mr_uring_t;

static inline mr_uring_t *U(mr_loop_t *loop) { return (mr_uring_t *)loop; }

static void op_list_push(op_list_t *l, mr_op_t *op)
{
    if (l->len == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 64;
        mr_op_t **v = realloc(l->v, cap * sizeof *v);
        /* A recv's final completion would be lost: nothing sane is left to do. */
        if (!v) { mr_error("io_uring loop: out of memory (starved recvs)"); abort(); }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->len++] = op;
}

/* Removes op, keeping the order (starved recvs are re-armed first come, first served). */
static bool op_list_remove(op_list_t *l, mr_op_t *op)
{
    for (uint32_t i = 0; i < l->len; i++) {
        if (l->v[i] != op) continue;
        memmove(&l->v[i], &l->v[i + 1], (l->len - i - 1) * sizeof l->v[0]);
        l->len--;
        return true;
    }
    return false;
}

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
              io_uring_opcode_supported(probe, IORING_OP_READ) &&
              io_uring_opcode_supported(probe, IORING_OP_WRITE) &&
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

static void uring_free(mr_loop_t *loop)
{
    mr_uring_t *u = U(loop);
    for (uint32_t i = 0; i < u->nclosing; i++) close(u->closing[i]);
    free(u->closing);
    if (u->ring_ok) {
        if (u->br) io_uring_unregister_buf_ring(&u->ring, MR_BGID);
        io_uring_queue_exit(&u->ring);
    }
    if (u->br) munmap(u->br, loop->buf_count * sizeof(struct io_uring_buf));
    free(u->starved.v);
    free(u->starved_cancelled.v);
    mr_loop_base_free(loop);
    free(u);
}

static struct io_uring_sqe *get_sqe(mr_uring_t *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        /* SQ full: flush what we have; rare with a large SQ. */
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    return sqe;
}

static int arm(mr_op_t *op, uint8_t kind, struct io_uring_sqe *sqe)
{
    op->kind = kind;
    op->active = true;
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

static int uring_accept(mr_loop_t *loop, mr_op_t *op, int fd)
{
    struct io_uring_sqe *sqe = get_sqe(U(loop));
    if (!sqe) return -EBUSY;
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    op->fd = fd;
    return arm(op, MR_OPK_ACCEPT, sqe);
}

static int prep_recv(mr_uring_t *u, mr_op_t *op)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = MR_BGID;
    return arm(op, MR_OPK_RECV, sqe);
}

static int uring_recv(mr_loop_t *loop, mr_op_t *op, int fd)
{
    op->fd = fd;
    return prep_recv(U(loop), op);
}

static int uring_recv_once(mr_loop_t *loop, mr_op_t *op, int fd)
{
    mr_uring_t *u = U(loop);
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = MR_BGID;
    op->fd = fd;
    /* The same kind as a multishot recv: ENOBUFS parks it with the starved ones, which re-arm
     * as multishot, which the caller handles alike. */
    return arm(op, MR_OPK_RECV, sqe);
}

static int uring_sendmsg(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg)
{
    struct io_uring_sqe *sqe = get_sqe(U(loop));
    if (!sqe) return -EBUSY;
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    op->fd = fd;
    return arm(op, MR_OPK_SEND, sqe);
}

static int uring_connect(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len)
{
    struct io_uring_sqe *sqe = get_sqe(U(loop));
    if (!sqe) return -EBUSY;
    io_uring_prep_connect(sqe, fd, sa, len);
    op->fd = fd;
    return arm(op, MR_OPK_CONNECT, sqe);
}

static int uring_read(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len)
{
    struct io_uring_sqe *sqe = get_sqe(U(loop));
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, (uint64_t)-1);
    op->fd = fd;
    return arm(op, MR_OPK_READ, sqe);
}

static int uring_write(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len)
{
    struct io_uring_sqe *sqe = get_sqe(U(loop));
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, (unsigned)len, (uint64_t)-1);
    op->fd = fd;
    return arm(op, MR_OPK_WRITE, sqe);
}

static void uring_close(mr_loop_t *loop, int fd)
{
    mr_uring_t *u = U(loop);
    if (u->nclosing == u->closing_cap) {
        uint32_t cap = u->closing_cap ? u->closing_cap * 2 : 64;
        int *v = realloc(u->closing, cap * sizeof *v);
        if (!v) { close(fd); return; }
        u->closing = v;
        u->closing_cap = cap;
    }
    u->closing[u->nclosing++] = fd;
}

/* The queued closes become SQEs of the submit about to happen. Their result is of no use (the
 * fd is gone either way), so they post no CQE where the kernel allows; otherwise the CQE carries
 * no op and is skipped. */
static void closes_prep(mr_uring_t *u)
{
    for (uint32_t i = 0; i < u->nclosing; i++) {
        struct io_uring_sqe *sqe = get_sqe(u);
        if (!sqe) { close(u->closing[i]); continue; }
        io_uring_prep_close(sqe, u->closing[i]);
        io_uring_sqe_set_data(sqe, NULL);
        if (u->cqe_skip) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
    u->nclosing = 0;
}

static int uring_cancel(mr_loop_t *loop, mr_op_t *target)
{
    mr_uring_t *u = U(loop);
    if (op_list_remove(&u->starved, target)) {
        /* Not in the kernel: complete it ourselves at the end of this turn. */
        op_list_push(&u->starved_cancelled, target);
        return 0;
    }
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel(sqe, target, 0);
    io_uring_sqe_set_data(sqe, NULL);
    return 0;
}

static void uring_buf_release(mr_loop_t *loop, uint16_t bid)
{
    mr_uring_t *u = U(loop);
    io_uring_buf_ring_add(u->br, mr_loop_buf_ptr(loop, bid), loop->buf_size, bid,
                          (int)u->buf_mask, (int)u->buf_pending++);
}

static void uring_flush(mr_loop_t *loop)
{
    mr_uring_t *u = U(loop);
    if (u->buf_pending) {
        io_uring_buf_ring_advance(u->br, (int)u->buf_pending);
        u->buf_free += u->buf_pending;
        u->buf_pending = 0;
    }
    /* Re-arm starved recvs only with a margin of free buffers, so they do not bounce on ENOBUFS. */
    uint32_t armed = 0;
    while (armed < u->starved.len && u->buf_free > 4) {
        if (prep_recv(u, u->starved.v[armed]) < 0) break;
        armed++;
    }
    if (armed) {
        memmove(u->starved.v, u->starved.v + armed, (u->starved.len - armed) * sizeof u->starved.v[0]);
        u->starved.len -= armed;
    }
    /* Callbacks may cancel other starved recvs, which appends to this list: take it first. */
    while (u->starved_cancelled.len) {
        op_list_t l = u->starved_cancelled;
        u->starved_cancelled = (op_list_t){ 0 };
        for (uint32_t i = 0; i < l.len; i++) {
            mr_op_t *op = l.v[i];
            op->active = false;
            op->fn(loop, op, -ECANCELED, 0);
        }
        if (!u->starved_cancelled.v) { l.len = 0; u->starved_cancelled = l; }
        else free(l.v);
    }
}

static bool uring_pending(mr_loop_t *loop) { return U(loop)->starved_cancelled.len != 0; }

static int uring_wait(mr_loop_t *loop, int timeout_ms)
{
    mr_uring_t *u = U(loop);
    struct __kernel_timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
        tsp = &ts;
    }
    if (u->nclosing) closes_prep(u);
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, tsp, NULL);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY) {
        mr_error("io_uring_submit_and_wait_timeout: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

static void dispatch(mr_uring_t *u, struct io_uring_cqe *cqe)
{
    mr_op_t *op = io_uring_cqe_get_data(cqe);
    if (!op) return; /* cancel requests and fire-and-forget ops */
    uint32_t flags = 0;
    int res = cqe->res;
    if (cqe->flags & IORING_CQE_F_MORE) flags |= MR_F_MORE;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        u->buf_free--;
        u->base.buf_refs[bid] = 1;
        flags |= MR_F_BUF | ((uint32_t)bid << 16);
    }
    if (op->kind == MR_OPK_RECV && res == -ENOBUFS && !(flags & MR_F_MORE)) {
        op_list_push(&u->starved, op);
        return;
    }
    if (!(flags & MR_F_MORE)) op->active = false;
    op->fn(&u->base, op, res, flags);
}

static void uring_reap(mr_loop_t *loop)
{
    mr_uring_t *u = U(loop);
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
        n++;
        dispatch(u, cqe);
    }
    io_uring_cq_advance(&u->ring, n);
}

static const mr_loop_ops_t uring_ops = {
    .free = uring_free,
    .accept = uring_accept,
    .recv = uring_recv,
    .recv_once = uring_recv_once,
    .sendmsg = uring_sendmsg,
    .connect = uring_connect,
    .read = uring_read,
    .write = uring_write,
    .close = uring_close,
    .cancel = uring_cancel,
    .buf_release = uring_buf_release,
    .flush = uring_flush,
    .pending = uring_pending,
    .wait = uring_wait,
    .reap = uring_reap,
};

int mr_loop_uring_create(mr_loop_t **out, const mr_loop_opts_t *opts)
{
    mr_uring_t *u = calloc(1, sizeof *u);
    if (!u) return -ENOMEM;
    mr_loop_t *loop = &u->base;
    loop->ops = &uring_ops;
    int rc = mr_loop_base_init(loop, opts);
    if (rc < 0) { free(u); return rc; }
    /* The kernel indexes the buffer ring with a mask. */
    if (loop->buf_count & (loop->buf_count - 1)) { rc = -EINVAL; goto fail; }
    rc = ring_setup(&u->ring, opts->entries, NULL);
    if (rc < 0) goto fail;
    u->ring_ok = true;
    u->cqe_skip = u->ring.features & IORING_FEAT_CQE_SKIP;
    /* Every loop turn enters the ring: a registered ring fd saves the fd lookup and reference
     * count on each io_uring_enter. Per task, which is fine: only this thread enters it. */
    (void)io_uring_register_ring_fd(&u->ring);

    size_t ring_bytes = loop->buf_count * sizeof(struct io_uring_buf);
    u->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (u->br == MAP_FAILED) { rc = -errno; u->br = NULL; goto fail; }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uintptr_t)u->br;
    reg.ring_entries = loop->buf_count;
    reg.bgid = MR_BGID;
    rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (rc < 0) {
        munmap(u->br, ring_bytes);
        u->br = NULL;
        goto fail;
    }
    io_uring_buf_ring_init(u->br);
    u->buf_mask = (uint32_t)io_uring_buf_ring_mask(loop->buf_count);
    for (uint32_t i = 0; i < loop->buf_count; i++)
        io_uring_buf_ring_add(u->br, mr_loop_buf_ptr(loop, (uint16_t)i), loop->buf_size,
                              (unsigned short)i, (int)u->buf_mask, (int)i);
    io_uring_buf_ring_advance(u->br, (int)loop->buf_count);
    u->buf_free = loop->buf_count;
    *out = loop;
    return 0;

fail:
    uring_free(loop);
    return rc;
}
