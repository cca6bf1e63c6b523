/* UDP cosockets (ngx.socket.udp, moonring.udp): a connected datagram socket per Lua object, on
 * the worker's own loop, so that statsd, syslog and DNS clients never block a worker.
 *
 * setpeername resolves a host name through the worker's resolver (asynchronously, like a TCP
 * cosocket's connect), then creates a non-blocking socket and connect()s it, which for UDP only
 * records the peer and never waits. send is one non-blocking send(): a datagram is taken whole
 * or refused (EAGAIN when the socket buffer is full is reported, not waited for). receive is one
 * read operation on the loop, with a timeout: it returns one datagram (cut to the buffer size).
 *
 * Waking and ownership follow cosock.h exactly: one operation at a time, the result kept in the
 * socket, the waiting coroutine woken by arming its waker at 0 ms; mr_udp_close detaches the
 * waker, cancels what is in flight and frees after the last completion. Every socket of the
 * thread is in a list that mr_udp_thread_free empties.
 * Functions exported to Lua return the FFI code set (util/export.h); mr_udp_error describes a
 * failure in words. Thread affinity: the worker thread. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <ctype.h>

#include "lua/udp.h"

#include "net/net.h"
#include "net/resolver.h"
#include "util/export.h"

#define UDP_BUF 65536 /* the largest datagram */

typedef struct mr_udp {
    mr_op_t op;           /* first member */
    mr_timer_t timer;
    mr_timer_t *waker;
    int fd;
    int res;              /* result of the last finished operation: bytes, 0, or -errno */
    int err;              /* errno of the last failure reported (mr_udp_error) */
    bool busy;            /* an operation (lookup or read) is in flight */
    bool timed_out, closing;
    uint32_t timeout_ms;
    char *buf;
    mr_addr_t addr;
    mr_resolve_req_t rq;
    struct mr_udp *next, *prev;
} mr_udp_t;

static __thread mr_udp_t *all;
static __thread mr_loop_t *t_loop;
static __thread mr_resolver_t *t_res;

void mr_udp_thread_init(mr_loop_t *loop, mr_resolver_t *res)
{
    t_loop = loop;
    t_res = res;
}

static void udp_free(mr_udp_t *u)
{
    mr_resolver_cancel(&u->rq);
    if (u->fd >= 0) close(u->fd);
    if (u->prev) u->prev->next = u->next;
    else all = u->next;
    if (u->next) u->next->prev = u->prev;
    free(u->buf);
    free(u);
}

void mr_udp_thread_free(void)
{
    while (all) udp_free(all);
    t_loop = NULL;
    t_res = NULL;
}

static int ffi_ret(mr_udp_t *u, int rc)
{
    if (rc > 0) return MR_FFI_AGAIN;
    if (rc == 0) return MR_FFI_OK;
    u->err = -rc;
    switch (-rc) {
    case ETIMEDOUT:
    case ECANCELED: return MR_FFI_TIMEOUT;
    case ECONNREFUSED: return MR_FFI_REFUSED;
    case ENOTCONN:
    case EBADF: return MR_FFI_CLOSED;
    case ENOMEM: return MR_FFI_NOMEM;
    case EBUSY: return MR_FFI_BUSY;
    case ENOENT: return MR_FFI_DECLINED;
    case EINVAL: return MR_FFI_BAD_ARG;
    default: return MR_FFI_ERROR;
    }
}

MR_EXPORT const char *mr_udp_error(mr_udp_t *u)
{
    static __thread char buf[128];
    switch (u->err) {
    case 0: return "";
    case ETIMEDOUT:
    case ECANCELED: return "timeout";
    case ECONNREFUSED: return "connection refused";
    case ENOTCONN:
    case EBADF: return "closed";
    case ENOMEM: return "no memory";
    case EBUSY: return "socket busy";
    case ENOENT: return "host not found";
    case EAGAIN: return "temporary failure in name resolution";
    case EINVAL: return "invalid host name";
    default: break;
    }
    snprintf(buf, sizeof buf, "%s", strerror(u->err));
    for (char *p = buf; *p; p++) *p = (char)tolower((unsigned char)*p);
    return buf;
}

static void wake(mr_udp_t *u)
{
    mr_loop_t *loop = t_loop;
    if (u->waker && loop) mr_timer_set(loop, u->waker, 0);
}

static void done(mr_udp_t *u, int res)
{
    mr_timer_stop(t_loop, &u->timer);
    u->busy = false;
    u->res = res;
    wake(u);
}

static void op_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop;
    (void)flags;
    mr_udp_t *u = (mr_udp_t *)op;
    if (u->closing) { udp_free(u); return; }
    if (u->timed_out && res < 0) res = -ETIMEDOUT;
    done(u, res);
}

static void on_timer(mr_loop_t *loop, mr_timer_t *t)
{
    mr_udp_t *u = (mr_udp_t *)((char *)t - offsetof(mr_udp_t, timer));
    u->timed_out = true;
    if (u->op.active) mr_loop_cancel(loop, &u->op);
    else if (mr_resolve_pending(&u->rq)) {
        mr_resolver_cancel(&u->rq);
        done(u, -ETIMEDOUT);
    }
}

MR_EXPORT mr_udp_t *mr_udp_new(void)
{
    if (!t_loop) return NULL;
    mr_udp_t *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->fd = -1;
    u->op.fn = op_done;
    u->timer.fn = on_timer;
    u->next = all;
    if (all) all->prev = u;
    all = u;
    return u;
}

MR_EXPORT void mr_udp_close(mr_udp_t *u)
{
    if (!u || u->closing) return;
    mr_resolver_cancel(&u->rq);
    u->closing = true;
    u->waker = NULL;
    mr_timer_stop(t_loop, &u->timer);
    /* The kernel may still write into buf: free only after the final completion. */
    if (u->op.active) mr_loop_cancel(t_loop, &u->op);
    else udp_free(u);
}

static int open_peer(mr_udp_t *u)
{
    int fd = socket(u->addr.sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&u->addr.sa, u->addr.len) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (u->fd >= 0) close(u->fd);
    u->fd = fd;
    return 0;
}

static void resolved(mr_resolve_req_t *rq, int rc, const mr_addr_t *addrs, int naddrs)
{
    mr_udp_t *u = (mr_udp_t *)((char *)rq - offsetof(mr_udp_t, rq));
    (void)naddrs;
    if (rc == 0) {
        u->addr = addrs[0];
        rc = open_peer(u);
    }
    done(u, rc);
}

static int udp_peer(mr_udp_t *u, const char *host, size_t hlen, int port, int timeout_ms, void *waker)
{
    if (u->closing) return -ENOTCONN;
    if (u->busy) return -EBUSY;
    mr_hostport_t hp;
    int rc = mr_addr_parse_host(host, hlen, port, &hp, NULL);
    if (rc < 0) return rc;
    if (rc == MR_ADDR_NAME) {
        mr_resolver_t *res = t_res;
        if (!res) return -ENOTSUP;
        rc = mr_resolver_cached(res, hp.host, hp.hlen, hp.port, &u->addr, 1);
        if (rc < 0) return rc;
        if (rc == 0) {
            rc = mr_resolver_lookup(res, hp.host, hp.hlen, hp.port, &u->rq, resolved);
            if (rc < 0) return rc;
            u->busy = true;
            u->timed_out = false;
            u->waker = waker;
            mr_timer_set(t_loop, &u->timer, timeout_ms > 0 ? (uint64_t)timeout_ms : 1);
            return 1;
        }
    } else {
        u->addr = hp.addr;
    }
    rc = open_peer(u);
    u->res = rc;
    return rc;
}

/* setpeername: MR_FFI_OK (a numeric host, or a name in the resolver's cache), MR_FFI_AGAIN (a
 * lookup is under way: yield, then mr_udp_result), or a failure code. */
MR_EXPORT int mr_udp_peer(mr_udp_t *u, const char *host, size_t hlen, int port, int timeout_ms, void *waker)
{
    return ffi_ret(u, udp_peer(u, host, hlen, port, timeout_ms, waker));
}

/* One datagram: MR_FFI_OK when the kernel took it, or a failure code (a full socket buffer is
 * an error, not a wait). */
MR_EXPORT int mr_udp_send(mr_udp_t *u, const char *p, size_t n)
{
    if (u->closing || u->fd < 0) return ffi_ret(u, -ENOTCONN);
    ssize_t w = send(u->fd, p, n, MSG_NOSIGNAL);
    if (w < 0) return ffi_ret(u, -errno);
    return MR_FFI_OK;
}

/* Starts reading one datagram: MR_FFI_AGAIN (yield, then mr_udp_result) or a failure code. */
MR_EXPORT int mr_udp_recv(mr_udp_t *u, int timeout_ms, void *waker)
{
    if (u->closing || u->fd < 0) return ffi_ret(u, -ENOTCONN);
    if (u->busy) return ffi_ret(u, -EBUSY);
    if (!u->buf && !(u->buf = malloc(UDP_BUF))) return ffi_ret(u, -ENOMEM);
    int rc = mr_loop_read(t_loop, &u->op, u->fd, u->buf, UDP_BUF);
    if (rc < 0) return ffi_ret(u, rc);
    u->busy = true;
    u->timed_out = false;
    u->waker = waker;
    mr_timer_set(t_loop, &u->timer, timeout_ms > 0 ? (uint64_t)timeout_ms : 1);
    return MR_FFI_AGAIN;
}

/* The last operation's result: bytes read (at *p; a datagram may be empty) or 0 for
 * setpeername; MR_FFI_AGAIN while it is in flight; or a failure code. */
MR_EXPORT int mr_udp_result(mr_udp_t *u, const char **p)
{
    *p = u->buf;
    if (u->busy) return MR_FFI_AGAIN;
    return u->res >= 0 ? u->res : ffi_ret(u, u->res);
}

MR_EXPORT void mr_udp_set_waker(mr_udp_t *u, void *waker)
{
    if (!u->closing) u->waker = waker;
}
