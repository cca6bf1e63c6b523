/* The backend-independent half of the loop: backend selection, the public entry points (which
 * dispatch through loop->ops), buffer refcounts, timers, deferred callbacks and the turn itself. */
#include "loop/loop_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"

/* Reads the clock once per loop turn: now (ms) for timers, now_us for request timings. */
static uint64_t clock_ms_us(uint64_t *us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    *us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- backend selection ---- */

int mr_loop_backend_parse(const char *name, mr_loop_backend_t *out)
{
    if (!name || !*name || strcmp(name, "auto") == 0) *out = MR_LOOP_AUTO;
    else if (strcmp(name, "io_uring") == 0) *out = MR_LOOP_IO_URING;
    else if (strcmp(name, "epoll") == 0) *out = MR_LOOP_EPOLL;
    else return -EINVAL;
    return 0;
}

const char *mr_loop_backend_name(mr_loop_backend_t b)
{
    switch (b) {
    case MR_LOOP_IO_URING: return "io_uring";
    case MR_LOOP_EPOLL: return "epoll";
    default: return "auto";
    }
}

int mr_loop_choose(mr_loop_backend_t want, mr_loop_backend_t *out, mr_loop_features_t *feat)
{
    memset(feat, 0, sizeof *feat);
    if (want == MR_LOOP_EPOLL) { *out = MR_LOOP_EPOLL; return 0; }
    int rc = mr_loop_probe(feat);
    if (rc == 0) { *out = MR_LOOP_IO_URING; return 0; }
    if (want == MR_LOOP_IO_URING) return rc;
    *out = MR_LOOP_EPOLL;
    return 0;
}

int mr_loop_base_init(mr_loop_t *loop, const mr_loop_opts_t *opts)
{
    /* Buffer ids travel in 16 bits of the completion flags. */
    if (opts->buf_count == 0 || opts->buf_count > 65536 || opts->buf_size == 0) return -EINVAL;
    loop->buf_count = opts->buf_count;
    loop->buf_size = opts->buf_size;
    loop->bufs = malloc((size_t)loop->buf_count * loop->buf_size);
    /* Refcounts for every id a completion can carry, extra buffers included. */
    loop->buf_refs = calloc(65536, sizeof *loop->buf_refs);
    loop->heap_cap = 1024;
    loop->heap = malloc(loop->heap_cap * sizeof *loop->heap);
    if (!loop->bufs || !loop->buf_refs || !loop->heap) {
        mr_loop_base_free(loop);
        return -ENOMEM;
    }
    loop->now = clock_ms_us(&loop->now_us);
    return 0;
}

void mr_loop_base_free(mr_loop_t *loop)
{
    for (uint32_t i = 0; i < loop->nx; i++) free(loop->xbufs[i]);
    free(loop->xbufs);
    free(loop->xfree);
    loop->xbufs = NULL;
    loop->xfree = NULL;
    loop->nx = loop->nxfree = loop->x_cap = 0;
    free(loop->bufs);
    free(loop->buf_refs);
    free(loop->heap);
    loop->bufs = NULL;
    loop->buf_refs = NULL;
    loop->heap = NULL;
}

static _Thread_local mr_loop_t *current;

int mr_loop_init(mr_loop_t **out, const mr_loop_opts_t *opts)
{
    mr_loop_backend_t b = opts->backend;
    if (b == MR_LOOP_AUTO) {
        mr_loop_features_t feat;
        mr_loop_choose(MR_LOOP_AUTO, &b, &feat);
    }
    int rc = b == MR_LOOP_EPOLL ? mr_loop_epoll_create(out, opts) : mr_loop_uring_create(out, opts);
    if (rc == 0) {
        (*out)->backend = b;
        current = *out;
    }
    return rc;
}

mr_loop_t *mr_loop_current(void) { return current; }

mr_loop_backend_t mr_loop_backend(const mr_loop_t *loop) { return loop->backend; }

void mr_loop_free(mr_loop_t *loop)
{
    if (!loop) return;
    if (current == loop) current = NULL;
    loop->ops->free(loop);
}

void mr_loop_stop(mr_loop_t *loop) { loop->stop = true; }
uint64_t mr_loop_now(mr_loop_t *loop) { return loop->now; }
uint64_t mr_loop_now_us(mr_loop_t *loop) { return loop->now_us; }

/* ---- ops: thin dispatch ---- */

int mr_loop_accept(mr_loop_t *loop, mr_op_t *op, int fd) { return loop->ops->accept(loop, op, fd); }
int mr_loop_recv(mr_loop_t *loop, mr_op_t *op, int fd) { return loop->ops->recv(loop, op, fd); }
int mr_loop_recv_once(mr_loop_t *loop, mr_op_t *op, int fd) { return loop->ops->recv_once(loop, op, fd); }

int mr_loop_sendmsg(mr_loop_t *loop, mr_op_t *op, int fd, const struct msghdr *msg)
{
    return loop->ops->sendmsg(loop, op, fd, msg);
}

int mr_loop_connect(mr_loop_t *loop, mr_op_t *op, int fd, const struct sockaddr *sa, socklen_t len)
{
    return loop->ops->connect(loop, op, fd, sa, len);
}

int mr_loop_read(mr_loop_t *loop, mr_op_t *op, int fd, void *buf, size_t len)
{
    return loop->ops->read(loop, op, fd, buf, len);
}

int mr_loop_write(mr_loop_t *loop, mr_op_t *op, int fd, const void *buf, size_t len)
{
    return loop->ops->write(loop, op, fd, buf, len);
}

void mr_loop_close(mr_loop_t *loop, int fd)
{
    if (fd >= 0) loop->ops->close(loop, fd);
}

int mr_loop_cancel(mr_loop_t *loop, mr_op_t *target)
{
    if (!target->active) return -ENOENT;
    return loop->ops->cancel(loop, target);
}

/* ---- buffer pool: refcounts are shared, the free side belongs to the backend ---- */

char *mr_loop_buf_ptr(mr_loop_t *loop, uint16_t bid)
{
    if (bid >= loop->buf_count) return loop->xbufs[bid - loop->buf_count];
    return loop->bufs + (size_t)bid * loop->buf_size;
}
uint32_t mr_loop_buf_size(mr_loop_t *loop) { return loop->buf_size; }
void mr_loop_buf_ref(mr_loop_t *loop, uint16_t bid) { loop->buf_refs[bid]++; }

#define MR_LOOP_XKEEP 256 /* free extra buffers kept allocated (4 MiB at 16 KiB) */

void mr_loop_buf_unref(mr_loop_t *loop, uint16_t bid)
{
    if (--loop->buf_refs[bid] != 0) return;
    if (bid >= loop->buf_count) {
        /* Keep a few for reuse; give the memory of the rest back after a burst. */
        if (loop->nxfree >= MR_LOOP_XKEEP) {
            free(loop->xbufs[bid - loop->buf_count]);
            loop->xbufs[bid - loop->buf_count] = NULL;
        }
        loop->xfree[loop->nxfree++] = bid;
        return;
    }
    loop->ops->buf_release(loop, bid);
}

int mr_loop_buf_get(mr_loop_t *loop)
{
    if (!loop->nxfree) {
        uint32_t max = 65536 - loop->buf_count;
        if (loop->nx == max) return -ENOBUFS;
        if (loop->nx == loop->x_cap) {
            uint32_t cap = loop->x_cap ? loop->x_cap * 2 : 64;
            if (cap > max) cap = max;
            char **xb = realloc(loop->xbufs, cap * sizeof *xb);
            if (!xb) return -ENOMEM;
            loop->xbufs = xb;
            uint16_t *xf = realloc(loop->xfree, cap * sizeof *xf);
            if (!xf) return -ENOMEM;
            loop->xfree = xf;
            loop->x_cap = cap;
        }
        char *b = malloc(loop->buf_size);
        if (!b) return -ENOMEM;
        loop->xbufs[loop->nx] = b;
        loop->xfree[loop->nxfree++] = (uint16_t)(loop->buf_count + loop->nx++);
    }
    uint16_t bid = loop->xfree[loop->nxfree - 1];
    char **b = &loop->xbufs[bid - loop->buf_count];
    if (!*b && !(*b = malloc(loop->buf_size))) return -ENOMEM;
    loop->nxfree--;
    loop->buf_refs[bid] = 1;
    return bid;
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

/* ---- deferred callbacks ---- */

/* The last queued callback's next: never NULL while queued (mr_defer_queued). */
static mr_defer_t defer_end;
#define DEFER_END (&defer_end)

void mr_loop_defer(mr_loop_t *loop, mr_defer_t *d)
{
    if (d->next) return;
    d->next = DEFER_END;
    if (loop->defer_tail) loop->defer_tail->next = d; else loop->defer_head = d;
    loop->defer_tail = d;
}

static void run_deferred(mr_loop_t *loop)
{
    mr_defer_t *d = loop->defer_head;
    loop->defer_head = loop->defer_tail = NULL;
    while (d && d != DEFER_END) {
        mr_defer_t *next = d->next;
        d->next = NULL;
        d->fn(loop, d);
        d = next;
    }
}

/* ---- the turn ---- */

int mr_loop_run(mr_loop_t *loop)
{
    const mr_loop_ops_t *ops = loop->ops;
    while (!loop->stop) {
        run_deferred(loop);
        ops->flush(loop);
        if (loop->stop) break;
        int timeout = -1;
        if (loop->defer_head || ops->pending(loop)) {
            timeout = 0;
        } else if (loop->heap_len) {
            uint64_t key = loop->heap[0]->key;
            uint64_t wait = key > loop->now ? key - loop->now : 0;
            timeout = wait > (uint64_t)INT32_MAX ? INT32_MAX : (int)wait;
        }
        int rc = ops->wait(loop, timeout);
        if (rc < 0) return rc;
        loop->now = clock_ms_us(&loop->now_us);
        ops->reap(loop);
        run_timers(loop);
    }
    loop->stop = false; /* consumed: a later mr_loop_run runs again (test harnesses drive turns) */
    return 0;
}
