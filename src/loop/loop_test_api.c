/* Test-only entry points for spec/unit/loop_starved_spec.lua (FFI test library only): scenarios that need
 * C callbacks on a real loop. Each returns 0, -1 with the first failed expectation in `why`, or 1
 * when the backend cannot be set up here (`why` says why). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop/loop.h"
#include "util/export.h"

#define NSOCK 3
#define NBUF 8
#define BUFSZ 64

typedef struct {
    mr_op_t op;
    int fd, peer;
    int ncqe, bytes, last_res;
    bool final;
    uint16_t held[NBUF * 2];
    int nheld;
} t_recv_t;

static char *g_why;
static size_t g_why_len;

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_why, g_why_len, fmt, ap);
    va_end(ap);
    return -1;
}

#define EXPECT(cond, ...) do { if (!(cond)) { rc = fail(__VA_ARGS__); goto out; } } while (0)

static void on_recv(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop;
    t_recv_t *r = (t_recv_t *)op;
    r->ncqe++;
    r->last_res = res;
    if (res > 0) r->bytes += res;
    if (flags & MR_F_BUF) r->held[r->nheld++] = mr_op_bid(flags);
    if (!(flags & MR_F_MORE)) r->final = true;
}

static void stop_timer(mr_loop_t *loop, mr_timer_t *t)
{
    (void)t;
    mr_loop_stop(loop);
}

/* Runs the loop for about ms milliseconds. */
static void turns(mr_loop_t *loop, uint64_t ms)
{
    mr_timer_t t = { .fn = stop_timer };
    mr_timer_set(loop, &t, ms);
    mr_loop_run(loop);
    mr_timer_stop(loop, &t);
}

static void release(mr_loop_t *loop, t_recv_t *r)
{
    for (int i = 0; i < r->nheld; i++) mr_loop_buf_unref(loop, r->held[i]);
    r->nheld = 0;
}

/* Receives that find no free buffer wait (starved) without a completion; a starved one that is
 * cancelled completes with -ECANCELED; the others resume, in order, once buffers come back. */
MR_EXPORT int mr_loop_test_starved(int backend, char *why, size_t why_len)
{
    g_why = why;
    g_why_len = why_len;
    mr_loop_opts_t o = { .entries = 64, .buf_count = NBUF, .buf_size = BUFSZ, .backend = (mr_loop_backend_t)backend };
    mr_loop_t *loop = NULL;
    t_recv_t r[NSOCK];
    memset(r, 0, sizeof r);
    for (int i = 0; i < NSOCK; i++) r[i].fd = r[i].peer = -1;
    int rc = mr_loop_init(&loop, &o);
    if (rc < 0) { fail("mr_loop_init: %s", strerror(-rc)); return 1; } /* backend unavailable */
    char data[NBUF * BUFSZ + 88];
    memset(data, 'x', sizeof data);
    for (int i = 0; i < NSOCK; i++) {
        int sv[2];
        EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s", strerror(errno));
        r[i].fd = sv[0];
        r[i].peer = sv[1];
        r[i].op.fn = on_recv;
        EXPECT(mr_loop_recv(loop, &r[i].op, r[i].fd) == 0, "mr_loop_recv %d", i);
    }
    /* More than every buffer holds: the first receiver takes them all, then starves. */
    EXPECT(write(r[0].peer, data, sizeof data) == (ssize_t)sizeof data, "write 0");
    turns(loop, 50);
    EXPECT(r[0].bytes == NBUF * BUFSZ && r[0].nheld == NBUF, "receiver 0: %d bytes in %d buffers", r[0].bytes, r[0].nheld);
    EXPECT(!r[0].final, "receiver 0 ended (%d) instead of waiting for buffers", r[0].last_res);
    EXPECT(write(r[1].peer, "one", 3) == 3 && write(r[2].peer, "two", 3) == 3, "write 1, 2");
    turns(loop, 50);
    EXPECT(r[1].ncqe == 0 && r[2].ncqe == 0, "starved receivers completed: %d %d", r[1].ncqe, r[2].ncqe);
    /* Cancelling a starved receiver completes it, once. */
    EXPECT(mr_loop_cancel(loop, &r[1].op) == 0, "cancel");
    turns(loop, 20);
    EXPECT(r[1].ncqe == 1 && r[1].final && r[1].last_res == -ECANCELED, "cancelled: %d completions, last %d",
           r[1].ncqe, r[1].last_res);
    EXPECT(!r[1].op.active, "cancelled op still active");
    /* Buffers back: the other two resume and get the rest. */
    release(loop, &r[0]);
    turns(loop, 50);
    EXPECT(r[0].bytes == (int)sizeof data, "receiver 0 got %d of %zu bytes", r[0].bytes, sizeof data);
    EXPECT(r[2].bytes == 3, "receiver 2 got %d bytes", r[2].bytes);
    EXPECT(r[1].ncqe == 1, "the cancelled receiver completed again");
    EXPECT(!r[0].final && !r[2].final, "resumed receivers ended");
    rc = 0;
out:
    for (int i = 0; i < NSOCK; i++) {
        if (r[i].op.active) mr_loop_cancel(loop, &r[i].op);
        release(loop, &r[i]);
    }
    for (int i = 0; i < 5; i++) {
        bool busy = false;
        for (int k = 0; k < NSOCK; k++) busy |= r[k].op.active;
        if (!busy) break;
        turns(loop, 10);
        for (int k = 0; k < NSOCK; k++) release(loop, &r[k]);
    }
    for (int i = 0; i < NSOCK; i++) {
        if (r[i].fd >= 0) close(r[i].fd);
        if (r[i].peer >= 0) close(r[i].peer);
    }
    mr_loop_free(loop);
    return rc;
}

/* ---- deferred callbacks ---- */

typedef struct {
    mr_defer_t d;
    int runs;
    int order;
    int requeue;        /* times to queue itself again from its callback */
    mr_defer_t *also;   /* queued from the callback */
} t_defer_t;

static int g_seq;

static void on_defer(mr_loop_t *loop, mr_defer_t *d)
{
    t_defer_t *t = (t_defer_t *)d;
    t->runs++;
    t->order = ++g_seq;
    if (mr_defer_queued(d)) g_seq += 1000; /* must read as not queued while it runs */
    if (t->requeue) { t->requeue--; mr_loop_defer(loop, d); }
    if (t->also) mr_loop_defer(loop, t->also);
}

/* Queued callbacks run once each per queueing, in order; queueing twice runs once; one queued
 * from a callback runs in a later pass. */
MR_EXPORT int mr_loop_test_defer(int backend, char *why, size_t why_len)
{
    g_why = why;
    g_why_len = why_len;
    g_seq = 0;
    mr_loop_opts_t o = { .entries = 64, .buf_count = 8, .buf_size = 64, .backend = (mr_loop_backend_t)backend };
    mr_loop_t *loop = NULL;
    int rc = mr_loop_init(&loop, &o);
    if (rc < 0) { fail("mr_loop_init: %s", strerror(-rc)); return 1; }
    t_defer_t a = { .d.fn = on_defer, .requeue = 1 }, b = { .d.fn = on_defer }, c = { .d.fn = on_defer };
    a.also = &c.d;
    EXPECT(!mr_defer_queued(&a.d), "zeroed reads as queued");
    mr_loop_defer(loop, &a.d);
    mr_loop_defer(loop, &b.d);
    mr_loop_defer(loop, &a.d);
    EXPECT(mr_defer_queued(&a.d) && mr_defer_queued(&b.d), "not queued after mr_loop_defer");
    turns(loop, 20);
    EXPECT(a.runs == 2 && b.runs == 1 && c.runs == 1, "runs a=%d b=%d c=%d", a.runs, b.runs, c.runs);
    EXPECT(g_seq < 1000, "a callback saw itself queued");
    /* Pass 1: a, b (a queues itself and c); pass 2: a, c. */
    EXPECT(b.order == 2 && a.order == 3 && c.order == 4, "order a=%d b=%d c=%d", a.order, b.order, c.order);
    EXPECT(!mr_defer_queued(&a.d) && !mr_defer_queued(&b.d) && !mr_defer_queued(&c.d), "left queued");
    rc = 0;
out:
    mr_loop_free(loop);
    return rc;
}
