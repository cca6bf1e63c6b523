/* The epoll backend: the same completion-style ops as io_uring, emulated with readiness.
 *
 * Each fd with an op in flight is in the epoll set once, edge-triggered for both directions, with
 * per-fd state: which op waits on which side and whether an edge was seen and not yet drained.
 * Registration costs one epoll_ctl when an fd's first op starts and one when its last op ends
 * (the caller closes the fd only after that, so a recycled fd number never inherits stale
 * interest). Syscalls run when the fd is ready (reads) or straight from the submitting call
 * (sends, connects, writes: they usually succeed at once); their results are queued as completion
 * records and delivered by reap, so no callback ever fires from a submitting call, as with
 * io_uring. The provided-buffer pool is a FIFO free list of the same buffers. */
#include "loop/loop_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log/log.h"

#define EP_MAXEV 256
/* Per fd and per turn, so one busy connection cannot starve the others. */
#define EP_RECV_BUDGET 4
#define EP_ACCEPT_BUDGET 16

typedef struct {
    mr_op_t *op;
    int res;
    uint32_t flags;
    uint8_t kind;     /* copied: the op may be gone when the loop is freed with this queued */
} ep_cqe_t;

typedef struct {
    ep_cqe_t *v;
    uint32_t len, cap;
} ep_cq_t;

typedef struct {
    int *v;
    uint32_t len, cap;
} ep_fdvec_t;

/* One per fd number up to the highest seen: every idle connection has one, so 56 bytes. */
typedef struct {
    mr_op_t *rd;                /* accept, recv or read */
    mr_op_t *wr;                /* sendmsg or write */
    mr_op_t *cn;                /* connect */
    union {
        const struct msghdr *msg;   /* wr is a sendmsg */
        const void *wbuf;           /* wr is a write (wlen bytes) */
    } w;
    void *rbuf;                 /* rd is a read (rlen bytes) */
    uint32_t wlen, rlen;        /* a longer read or write completes short */
    bool registered;
    /* An edge was seen and the side not yet drained to EAGAIN (or a short read, see try_recv). */
    bool rd_ready, wr_ready;
    /* Peer hung up or the socket has an error: read on to EOF/error even after a short read. */
    bool hup;
    /* The last recv filled every buffer it had: read the next with several (see try_recv). */
    bool bulk;
    /* List membership; survives the fd leaving the epoll set, since the entry is still listed. */
    bool queued, starved;
} ep_fd_t;

typedef struct {
    mr_loop_t base;
    int epfd;
    /* Indexed by fd. Anonymous memory reserved for the descriptor limit: pages are zero until
     * first touched and only touched pages cost, so no copy and no memset of unused slots. */
    ep_fd_t *fds;
    uint32_t nfds;
    uint16_t *free_bids;         /* FIFO ring of free buffer ids, buf_count long */
    uint32_t free_head, nfree;
    ep_cq_t cq, spare;           /* spare: the batch being delivered */
    ep_fdvec_t ready, ready2;    /* fds to try at the next flush (budget spent, op just armed) */
    ep_fdvec_t starved;          /* fds whose recv waits for free buffers */
    struct epoll_event evs[EP_MAXEV];
} mr_epoll_t;

static inline mr_epoll_t *E(mr_loop_t *loop) { return (mr_epoll_t *)loop; }

/* ---- small containers; running out of memory here leaves no way to report a completion ---- */

static void oom(const char *what)
{
    mr_error("epoll loop: out of memory (%s)", what);
    abort();
}

static void cq_push(mr_epoll_t *e, mr_op_t *op, int res, uint32_t flags)
{
    ep_cq_t *q = &e->cq;
    if (q->len == q->cap) {
        uint32_t cap = q->cap ? q->cap * 2 : 256;
        ep_cqe_t *v = realloc(q->v, cap * sizeof *v);
        if (!v) oom("completion queue");
        q->v = v;
        q->cap = cap;
    }
    q->v[q->len++] = (ep_cqe_t){ .op = op, .res = res, .flags = flags, .kind = op->kind };
}

static void fdvec_push(ep_fdvec_t *l, int fd)
{
    if (l->len == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 64;
        int *v = realloc(l->v, cap * sizeof *v);
        if (!v) oom("fd list");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->len++] = fd;
}

static size_t fds_bytes(uint32_t n) { return (size_t)n * sizeof(ep_fd_t); }

/* Reserves the table for n fds (n >= the current size); the new slots read as zero. */
static int fds_reserve(mr_epoll_t *e, uint32_t n)
{
    void *v = e->fds ? mremap(e->fds, fds_bytes(e->nfds), fds_bytes(n), MREMAP_MAYMOVE)
                     : mmap(NULL, fds_bytes(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v == MAP_FAILED) return -ENOMEM;
    e->fds = v;
    e->nfds = n;
    return 0;
}

static ep_fd_t *fd_state(mr_epoll_t *e, int fd)
{
    if (fd < 0) return NULL;
    if ((uint32_t)fd >= e->nfds) {
        /* Only when the descriptor limit was raised after the loop was made. */
        uint32_t n = e->nfds;
        while (n <= (uint32_t)fd) n *= 2;
        if (fds_reserve(e, n) < 0) return NULL;
    }
    return &e->fds[fd];
}

static void ready_push(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    if (st->queued) return;
    st->queued = true;
    fdvec_push(&e->ready, fd);
}

/* ASan builds poison free buffers, so a read of a buffer after its last unref (which the kernel
 * ring cannot catch) is reported where it happens. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define BUF_FREED(e, bid) ASAN_POISON_MEMORY_REGION(mr_loop_buf_ptr(&(e)->base, bid), (e)->base.buf_size)
#define BUF_TAKEN(e, bid) ASAN_UNPOISON_MEMORY_REGION(mr_loop_buf_ptr(&(e)->base, bid), (e)->base.buf_size)
#define BUF_ALL_TAKEN(e) ASAN_UNPOISON_MEMORY_REGION((e)->base.bufs, (size_t)(e)->base.buf_count * (e)->base.buf_size)
#else
#define BUF_ALL_TAKEN(e) ((void)0)
#define BUF_FREED(e, bid) ((void)0)
#define BUF_TAKEN(e, bid) ((void)0)
#endif

/* The free list is a FIFO, as the kernel's buffer ring is: a released buffer is reused last, so
 * both backends behave alike. */
static uint16_t free_pop(mr_epoll_t *e)
{
    uint16_t bid = e->free_bids[e->free_head];
    e->free_head = (e->free_head + 1) % e->base.buf_count;
    e->nfree--;
    BUF_TAKEN(e, bid);
    return bid;
}

static void free_push(mr_epoll_t *e, uint16_t bid)
{
    BUF_FREED(e, bid);
    e->free_bids[(e->free_head + e->nfree) % e->base.buf_count] = bid;
    e->nfree++;
}

/* Returns a buffer the last free_pop took but did not use, to where it came from. */
static void free_push_front(mr_epoll_t *e, uint16_t bid)
{
    BUF_FREED(e, bid);
    e->free_head = (e->free_head + e->base.buf_count - 1) % e->base.buf_count;
    e->free_bids[e->free_head] = bid;
    e->nfree++;
}

static void op_start(mr_op_t *op, int fd, uint8_t kind)
{
    op->fd = fd;
    op->kind = kind;
    op->active = true;
}

/* ---- epoll interest ---- */

static int watch(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    if (st->registered) return 0;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd };
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        if (errno != EEXIST || epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) return -errno;
    }
    st->registered = true;
    /* Adding polls the fd once, so whatever is ready now arrives as the first event. */
    st->rd_ready = st->wr_ready = st->hup = st->bulk = false;
    return 0;
}

/* Drops the fd from the set once no op waits on it. Must run before the final completion is
 * delivered: its callback may close the fd, and the number may come back as a new socket. */
static void settle(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    if (st->rd || st->wr || st->cn || !st->registered) return;
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
    st->registered = false;
    st->rd_ready = st->wr_ready = st->hup = st->bulk = false;
}

/* ---- attempts: run when a side is (probably) ready; each ends in a completion or a wait ---- */

static void try_recv(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    mr_loop_t *loop = &e->base;
    mr_op_t *op = st->rd;
    uint32_t used = 0;
    while (st->rd_ready) {
        if (used == EP_RECV_BUDGET) { ready_push(e, fd, st); return; }
        if (e->nfree == 0) {
            if (!st->starved) { st->starved = true; fdvec_push(&e->starved, fd); }
            return;
        }
        /* One buffer per call until a read fills all it was given: then a stream is flowing and
         * one recvmsg scatters into the rest of the budget, which saves syscalls on bulk data
         * without popping spare buffers for every small request. */
        uint32_t k = st->bulk ? EP_RECV_BUDGET - used : 1;
        if (k > e->nfree) k = e->nfree;
        struct iovec iov[EP_RECV_BUDGET];
        uint16_t bids[EP_RECV_BUDGET];
        for (uint32_t i = 0; i < k; i++) {
            bids[i] = free_pop(e);
            iov[i].iov_base = mr_loop_buf_ptr(loop, bids[i]);
            iov[i].iov_len = loop->buf_size;
        }
        ssize_t n;
        if (k == 1) {
            n = recv(fd, iov[0].iov_base, loop->buf_size, MSG_DONTWAIT);
        } else {
            struct msghdr mh = { .msg_iov = iov, .msg_iovlen = k };
            n = recvmsg(fd, &mh, MSG_DONTWAIT);
        }
        int err = n < 0 ? errno : 0;
        uint32_t filled = 0;
        for (size_t left = n > 0 ? (size_t)n : 0; left; filled++) {
            size_t len = left < loop->buf_size ? left : loop->buf_size;
            loop->buf_refs[bids[filled]] = 1;
            cq_push(e, op, (int)len, MR_F_MORE | MR_F_BUF | ((uint32_t)bids[filled] << 16));
            left -= len;
        }
        /* Unused buffers go back to the head, in order, as if never taken. */
        for (uint32_t i = k; i-- > filled;) free_push_front(e, bids[i]);
        if (n > 0) {
            used += filled;
            st->bulk = (size_t)n == (size_t)k * loop->buf_size;
            /* A short read emptied the socket; new data or a FIN after it raises a new edge. Once
             * a hangup was seen there will be no further edge, so read on to the EOF. */
            if (!st->bulk && !st->hup) st->rd_ready = false;
            continue;
        }
        if (err == EINTR) continue;
        st->bulk = false;
        if (err == EAGAIN || err == EWOULDBLOCK) { st->rd_ready = false; return; }
        st->rd = NULL;
        cq_push(e, op, n == 0 ? 0 : -err, 0);
        return;
    }
}

static void try_accept(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    mr_op_t *op = st->rd;
    for (int i = 0;; i++) {
        if (i == EP_ACCEPT_BUDGET) { ready_push(e, fd, st); return; }
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) { cq_push(e, op, c, MR_F_MORE); continue; }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) { st->rd_ready = false; return; }
        /* A connection reset while queued is the peer's business, not the listener's. */
        if (err == EINTR || err == ECONNABORTED) continue;
        /* Like a multishot accept in io_uring, an error (EMFILE...) ends the op. */
        st->rd = NULL;
        cq_push(e, op, -err, 0);
        return;
    }
}

/* Reads and writes serve eventfds, pipes and files, which may be blocking and whose readiness we
 * cannot drain to EAGAIN; a zero-timeout poll right before the syscall keeps it from blocking. */
static bool poll_ready(int fd, short events)
{
    struct pollfd p = { .fd = fd, .events = events };
    return poll(&p, 1, 0) > 0;
}

static void try_read(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    if (!poll_ready(fd, POLLIN)) { st->rd_ready = false; return; }
    ssize_t n;
    do n = read(fd, st->rbuf, st->rlen); while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { st->rd_ready = false; return; }
    mr_op_t *op = st->rd;
    st->rd = NULL;
    cq_push(e, op, n < 0 ? -errno : (int)n, 0);
}

static void try_write(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    if (!poll_ready(fd, POLLOUT)) { st->wr_ready = false; return; }
    ssize_t n;
    do n = write(fd, st->w.wbuf, st->wlen); while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { st->wr_ready = false; return; }
    mr_op_t *op = st->wr;
    st->wr = NULL;
    cq_push(e, op, n < 0 ? -errno : (int)n, 0);
}

static void try_send(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    ssize_t n;
    do n = sendmsg(fd, st->w.msg, MSG_NOSIGNAL | MSG_DONTWAIT); while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { st->wr_ready = false; return; }
    mr_op_t *op = st->wr;
    st->wr = NULL;
    cq_push(e, op, n < 0 ? -errno : (int)n, 0);
}

static void try_connect(mr_epoll_t *e, int fd, ep_fd_t *st)
{
    /* Reported only once the handshake is over: a connecting TCP socket polls as nothing. */
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    mr_op_t *op = st->cn;
    st->cn = NULL;
    cq_push(e, op, -err, 0);
}

static void try_fd(mr_epoll_t *e, int fd)
{
    ep_fd_t *st = &e->fds[fd];
    if (st->cn && st->wr_ready) try_connect(e, fd, st);
    if (st->wr && st->wr_ready) {
        if (st->wr->kind == MR_OPK_SEND) try_send(e, fd, st);
        else try_write(e, fd, st);
    }
    if (st->rd && st->rd_ready) {
        switch (st->rd->kind) {
        case MR_OPK_RECV: try_recv(e, fd, st); break;
        case MR_OPK_ACCEPT: try_accept(e, fd, st); break;
        default: try_read(e, fd, st); break;
        }
    }
    settle(e, fd, st);
}

/* ---- submission ---- */

/* Arms a reader. Nothing is tried here: if the side is ready the fd goes on the ready list, and a
 * newly watched fd reports its readiness through the first epoll_wait anyway. */
static int arm_reader(mr_epoll_t *e, mr_op_t *op, int fd, uint8_t kind, void *buf, size_t len)
{
    ep_fd_t *st = fd_state(e, fd);
    if (!st) return fd < 0 ? -EBADF : -ENOMEM;
    if (st->rd) return -EBUSY;
    int rc = watch(e, fd, st);
    if (rc < 0) return rc;
    op_start(op, fd, kind);
    st->rd = op;
    st->rbuf = buf;
    st->rlen = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    if (st->rd_ready) ready_push(e, fd, st);
    return 0;
}

static int ep_accept(mr_loop_t *loop, mr_op_t *op, int fd)
{
    /* Draining the backlog relies on EAGAIN, which a blocking listener never returns. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
    return arm_reader(E(loop), op, fd, MR_OPK_ACCEPT, NULL, 0);
}

static int ep_recv(mr_loop_t *loop, mr_op_t *op, int fd)
{
    return arm_reader(E(loop), op, fd, MR_OPK_RECV, NULL, 0);
}

static int ep_read(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len)
{
    mr_epoll_t *e = E(loop);
    ep_fd_t *st = fd_state(e, fd);
    if (!st) return fd < 0 ? -EBADF : -ENOMEM;
    if (st->rd) return -EBUSY;
    int rc = watch(e, fd, st);
    if (rc == -EPERM) {
        /* epoll refuses regular files, which are always ready: read now, report next turn. */
        ssize_t n;
        do n = read(fd, buf, len); while (n < 0 && errno == EINTR);
        op_start(op, fd, MR_OPK_READ);
        cq_push(e, op, n < 0 ? -errno : (int)n, 0);
        return 0;
    }
    if (rc < 0) return rc;
    return arm_reader(e, op, fd, MR_OPK_READ, buf, len);
}

/* Arms a writer and tries it at once: sockets and files are writable nearly always, and this
 * saves a turn. The syscall may run now; the completion is still delivered by reap. */
static int arm_writer(mr_epoll_t *e, mr_op_t *op, int fd, uint8_t kind, const struct msghdr *msg,
                      const void *buf, size_t len)
{
    ep_fd_t *st = fd_state(e, fd);
    if (!st) return fd < 0 ? -EBADF : -ENOMEM;
    if (st->wr) return -EBUSY;
    op_start(op, fd, kind);
    st->wr = op;
    if (msg) st->w.msg = msg;
    else st->w.wbuf = buf;
    st->wlen = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    if (kind == MR_OPK_SEND) try_send(e, fd, st);
    else try_write(e, fd, st);
    if (st->wr != op) return 0;
    /* Not writable yet: wait for the edge (watching polls once, so none is lost in between). */
    int rc = watch(e, fd, st);
    if (rc == 0) return 0;
    st->wr = NULL;
    if (rc == -EPERM && kind == MR_OPK_WRITE) {
        /* epoll refuses regular files, which poll never reports unwritable; just write. */
        ssize_t n;
        do n = write(fd, buf, len); while (n < 0 && errno == EINTR);
        rc = n < 0 ? -errno : (int)n;
    }
    cq_push(e, op, rc, 0);
    return 0;
}

static int ep_sendmsg(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg)
{
    return arm_writer(E(loop), op, fd, MR_OPK_SEND, msg, NULL, 0);
}

static int ep_write(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len)
{
    return arm_writer(E(loop), op, fd, MR_OPK_WRITE, NULL, buf, len);
}

static int ep_connect(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len)
{
    mr_epoll_t *e = E(loop);
    ep_fd_t *st = fd_state(e, fd);
    if (!st) return fd < 0 ? -EBADF : -ENOMEM;
    if (st->cn) return -EBUSY;
    int rc = connect(fd, sa, len) < 0 ? -errno : 0;
    op_start(op, fd, MR_OPK_CONNECT);
    /* EINTR on a non-blocking connect leaves the handshake running, like EINPROGRESS. */
    if (rc == -EINPROGRESS || rc == -EINTR) {
        rc = watch(e, fd, st);
        if (rc == 0) {
            st->cn = op;
            /* Any writability seen so far predates this connect. */
            st->wr_ready = false;
            return 0;
        }
    }
    cq_push(e, op, rc, 0);
    return 0;
}

/* The fd left the epoll set when its last op ended (settle), so closing is all there is. */
static void ep_close(mr_loop_t *loop, int fd)
{
    (void)loop;
    close(fd);
}

static int ep_cancel(mr_loop_t *loop, mr_op_t *target)
{
    mr_epoll_t *e = E(loop);
    int fd = target->fd;
    if (fd < 0 || (uint32_t)fd >= e->nfds) return -EALREADY;
    ep_fd_t *st = &e->fds[fd];
    mr_op_t **slot = st->rd == target ? &st->rd : st->wr == target ? &st->wr : st->cn == target ? &st->cn : NULL;
    /* Not waiting: its final completion is already queued, as when a kernel cancel finds nothing. */
    if (!slot) return -EALREADY;
    *slot = NULL;
    cq_push(e, target, -ECANCELED, 0);
    settle(e, fd, st);
    return 0;
}

/* ---- the turn ---- */

static void ep_buf_release(mr_loop_t *loop, uint16_t bid) { free_push(E(loop), bid); }

static void ep_flush(mr_loop_t *loop)
{
    mr_epoll_t *e = E(loop);
    /* Resume starved recvs only with a margin of free buffers, so they do not bounce. */
    uint32_t margin = loop->buf_count > 8 ? 4 : 0;
    if (e->starved.len && e->nfree > margin) {
        for (uint32_t i = 0; i < e->starved.len; i++) {
            int fd = e->starved.v[i];
            e->fds[fd].starved = false;
            ready_push(e, fd, &e->fds[fd]);
        }
        e->starved.len = 0;
    }
    /* Swap first: fds that spend their budget again go to the next turn, not round this loop. */
    ep_fdvec_t l = e->ready;
    e->ready = e->ready2;
    e->ready2 = l;
    for (uint32_t i = 0; i < l.len; i++) {
        int fd = l.v[i];
        e->fds[fd].queued = false;
        try_fd(e, fd);
    }
    e->ready2.len = 0;
}

static bool ep_pending(mr_loop_t *loop)
{
    mr_epoll_t *e = E(loop);
    return e->cq.len || e->ready.len;
}

static int ep_wait(mr_loop_t *loop, int timeout_ms)
{
    mr_epoll_t *e = E(loop);
    int n = epoll_wait(e->epfd, e->evs, EP_MAXEV, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return 0;
        int rc = -errno;
        mr_error("epoll_wait: %s", strerror(-rc));
        return rc;
    }
    for (int i = 0; i < n; i++) {
        int fd = e->evs[i].data.fd;
        if (fd < 0 || (uint32_t)fd >= e->nfds || !e->fds[fd].registered) continue;
        ep_fd_t *st = &e->fds[fd];
        uint32_t ev = e->evs[i].events;
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) st->rd_ready = true;
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) st->hup = true;
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) st->wr_ready = true;
        try_fd(e, fd);
    }
    return 0;
}

static void ep_reap(mr_loop_t *loop)
{
    mr_epoll_t *e = E(loop);
    /* Deliver a snapshot: completions queued by these callbacks wait for the next turn, as CQEs
     * posted while the io_uring backend dispatches do. */
    ep_cq_t q = e->cq;
    e->cq = e->spare;
    e->spare = q;
    for (uint32_t i = 0; i < q.len; i++) {
        ep_cqe_t c = q.v[i];
        if (!(c.flags & MR_F_MORE)) c.op->active = false;
        c.op->fn(loop, c.op, c.res, c.flags);
    }
    e->spare.len = 0;
}

static void ep_free(mr_loop_t *loop)
{
    mr_epoll_t *e = E(loop);
    /* Accepted sockets nobody was told about would leak. */
    for (uint32_t i = 0; i < e->cq.len; i++)
        if (e->cq.v[i].kind == MR_OPK_ACCEPT && e->cq.v[i].res >= 0) close(e->cq.v[i].res);
    if (e->base.bufs) BUF_ALL_TAKEN(e);
    if (e->epfd >= 0) close(e->epfd);
    if (e->fds) munmap(e->fds, fds_bytes(e->nfds));
    free(e->free_bids);
    free(e->cq.v);
    free(e->spare.v);
    free(e->ready.v);
    free(e->ready2.v);
    free(e->starved.v);
    mr_loop_base_free(loop);
    free(e);
}

static const mr_loop_ops_t epoll_ops = {
    .free = ep_free,
    .accept = ep_accept,
    .recv = ep_recv,
    .recv_once = ep_recv, /* a registration is the cheap part here: no reason to end it early */
    .sendmsg = ep_sendmsg,
    .connect = ep_connect,
    .read = ep_read,
    .write = ep_write,
    .close = ep_close,
    .cancel = ep_cancel,
    .buf_release = ep_buf_release,
    .flush = ep_flush,
    .pending = ep_pending,
    .wait = ep_wait,
    .reap = ep_reap,
};

int mr_loop_epoll_create(mr_loop_t **out, const mr_loop_opts_t *opts)
{
    mr_epoll_t *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    mr_loop_t *loop = &e->base;
    loop->ops = &epoll_ops;
    e->epfd = -1;
    int rc = mr_loop_base_init(loop, opts);
    if (rc < 0) { free(e); return rc; }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) { rc = -errno; goto fail; }
    struct rlimit rl;
    uint32_t nfds = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > nfds)
        nfds = rl.rlim_cur > (1u << 24) ? (1u << 24) : (uint32_t)rl.rlim_cur;
    rc = fds_reserve(e, nfds);
    if (rc < 0) goto fail;
    e->free_bids = malloc(loop->buf_count * sizeof *e->free_bids);
    if (!e->free_bids) { rc = -ENOMEM; goto fail; }
    for (uint32_t i = 0; i < loop->buf_count; i++) {
        e->free_bids[i] = (uint16_t)i;
        BUF_FREED(e, (uint16_t)i);
    }
    e->nfree = loop->buf_count;
    *out = loop;
    return 0;

fail:
    ep_free(loop);
    return rc;
}
