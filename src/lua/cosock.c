#include "lua/cosock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/net.h"

#define MR_EXPORT __attribute__((visibility("default"), used))
#define RBUF_SIZE 16384
#define KEY_MAX 96

enum { CS_NEW = 0, CS_CONNECTING, CS_CONNECTED, CS_POOLED };
enum { OPK_NONE = 0, OPK_CONNECT, OPK_READ, OPK_WRITE };

struct mr_cosock {
    mr_op_t op;              /* the one operation in flight; first member (op_done casts) */
    mr_timer_t timer;        /* timeout of that operation, or idle timeout while pooled */
    mr_timer_t *waker;       /* park timer of the coroutine waiting for the result */
    int fd;
    int res;                 /* result of the last finished operation */
    uint8_t state, opk;
    bool timed_out, closing;
    uint32_t reused;
    uint32_t timeout_ms;
    char *rbuf;
    char *wbuf;
    size_t wlen, woff, wcap;
    char key[KEY_MAX];
    mr_addr_t addr;              /* named by the connect SQE: must live until its completion */
    mr_cosock_t *next, *prev;    /* every live socket of the thread */
    mr_cosock_t *pnext, *pprev;  /* idle pool */
};

typedef struct {
    mr_loop_t *loop;
    mr_cosock_t *all;
    mr_cosock_t *pool;
} cs_thread_t;

static __thread cs_thread_t *T;

int mr_cosock_thread_init(mr_loop_t *loop)
{
    T = calloc(1, sizeof *T);
    if (!T) return -ENOMEM;
    T->loop = loop;
    return 0;
}

mr_loop_t *mr_cosock_loop(void) { return T ? T->loop : NULL; }

static void cs_free(mr_cosock_t *s)
{
    if (s->fd >= 0) close(s->fd);
    if (s->prev) s->prev->next = s->next;
    else T->all = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s->rbuf);
    free(s->wbuf);
    free(s);
}

static void pool_unlink(mr_cosock_t *s)
{
    if (s->pprev) s->pprev->pnext = s->pnext;
    else T->pool = s->pnext;
    if (s->pnext) s->pnext->pprev = s->pprev;
    s->pnext = s->pprev = NULL;
}

MR_EXPORT void mr_cosock_close(mr_cosock_t *s)
{
    if (!s || s->closing) return;
    if (s->state == CS_POOLED) pool_unlink(s);
    s->closing = true;
    s->waker = NULL;
    mr_timer_stop(T->loop, &s->timer);
    /* The kernel may still write into rbuf: free only after the final completion. */
    if (s->op.active) mr_loop_cancel(T->loop, &s->op);
    else cs_free(s);
}

void mr_cosock_thread_drain(void)
{
    if (!T) return;
    while (T->pool) mr_cosock_close(T->pool);
}

void mr_cosock_thread_free(void)
{
    if (!T) return;
    while (T->all) cs_free(T->all);
    free(T);
    T = NULL;
}

static void wake(mr_cosock_t *s)
{
    if (s->waker) mr_timer_set(T->loop, s->waker, 0);
}

static void cs_timer(mr_loop_t *loop, mr_timer_t *t)
{
    mr_cosock_t *s = (mr_cosock_t *)((char *)t - offsetof(mr_cosock_t, timer));
    if (s->state == CS_POOLED) { mr_cosock_close(s); return; }
    s->timed_out = true;
    if (s->op.active) mr_loop_cancel(loop, &s->op);
}

static void op_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_cosock_t *s = (mr_cosock_t *)op;
    if (s->closing) { if (!s->op.active) cs_free(s); return; }
    if (s->opk == OPK_WRITE && res > 0 && !s->timed_out) {
        s->woff += (size_t)res;
        if (s->woff < s->wlen) {
            int rc = mr_loop_write(loop, &s->op, s->fd, s->wbuf + s->woff, s->wlen - s->woff);
            if (rc == 0) { mr_timer_set(loop, &s->timer, s->timeout_ms); return; }
            res = rc;
        } else {
            res = (int)(s->wlen > 0x7fffffff ? 0x7fffffff : s->wlen);
        }
    }
    mr_timer_stop(loop, &s->timer);
    if (s->timed_out && (res < 0 || s->opk != OPK_READ)) res = -ETIMEDOUT;
    if (s->opk == OPK_CONNECT) s->state = res == 0 ? CS_CONNECTED : CS_NEW;
    s->opk = OPK_NONE;
    s->res = res;
    wake(s);
}

static int start(mr_cosock_t *s, int opk, int timeout_ms, void *waker)
{
    s->opk = (uint8_t)opk;
    s->timed_out = false;
    s->waker = waker;
    s->timeout_ms = timeout_ms > 0 ? (uint32_t)timeout_ms : 1;
    mr_timer_set(T->loop, &s->timer, s->timeout_ms);
    return 1;
}

MR_EXPORT mr_cosock_t *mr_cosock_new(void)
{
    if (!T) return NULL;
    mr_cosock_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->fd = -1;
    s->op.fn = op_done;
    s->timer.fn = cs_timer;
    s->next = T->all;
    if (T->all) T->all->prev = s;
    T->all = s;
    return s;
}

/* Numeric addresses only (and "localhost"): resolving a name here would block the worker. */
static int parse_addr(const char *h, size_t n, int port, mr_addr_t *a)
{
    char buf[64];
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') { h++; n -= 2; }
    if (n == 0 || n >= sizeof buf || port < 1 || port > 65535) return -EINVAL;
    memcpy(buf, h, n);
    buf[n] = 0;
    if (strcmp(buf, "localhost") == 0) strcpy(buf, "127.0.0.1");
    memset(a, 0, sizeof *a);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a->sa;
    if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        a->len = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        a->len = sizeof *v6;
        return 0;
    }
    return -EAFNOSUPPORT;
}

MR_EXPORT int mr_cosock_connect(mr_cosock_t *s, const char *host, size_t hlen, int port, int timeout_ms, void *waker)
{
    if (s->closing || s->fd >= 0 || s->op.active) return -EISCONN;
    mr_addr_t *a = &s->addr;
    int rc = parse_addr(host, hlen, port, a);
    if (rc < 0) return rc;
    int fd = mr_net_socket_for(a);
    if (fd < 0) return fd;
    s->fd = fd;
    s->state = CS_CONNECTING;
    rc = mr_loop_connect(T->loop, &s->op, fd, (struct sockaddr *)&a->sa, a->len);
    if (rc < 0) {
        close(fd);
        s->fd = -1;
        s->state = CS_NEW;
        return rc;
    }
    return start(s, OPK_CONNECT, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_send(mr_cosock_t *s, const char *p, size_t n, int timeout_ms, void *waker)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (n == 0) { s->res = 0; return 0; }
    if (n > s->wcap) {
        char *nb = realloc(s->wbuf, n);
        if (!nb) return -ENOMEM;
        s->wbuf = nb;
        s->wcap = n;
    }
    memcpy(s->wbuf, p, n);
    s->wlen = n;
    s->woff = 0;
    int rc = mr_loop_write(T->loop, &s->op, s->fd, s->wbuf, n);
    if (rc < 0) return rc;
    return start(s, OPK_WRITE, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_recv(mr_cosock_t *s, int timeout_ms, void *waker)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (!s->rbuf && !(s->rbuf = malloc(RBUF_SIZE))) return -ENOMEM;
    int rc = mr_loop_read(T->loop, &s->op, s->fd, s->rbuf, RBUF_SIZE);
    if (rc < 0) return rc;
    return start(s, OPK_READ, timeout_ms, waker);
}

/* Result of the last finished operation: bytes (a read's data at *p), 0, or -errno. */
MR_EXPORT int mr_cosock_result(mr_cosock_t *s, const char **p)
{
    *p = s->rbuf;
    return s->res;
}

MR_EXPORT void mr_cosock_set_waker(mr_cosock_t *s, void *waker)
{
    if (!s->closing) s->waker = waker;
}

MR_EXPORT int mr_cosock_reused(mr_cosock_t *s) { return (int)s->reused; }

MR_EXPORT int mr_cosock_busy(mr_cosock_t *s) { return s->op.active; }

/* Parks a connected, idle socket in the pool under key (at most pool_size per key; a socket
 * beyond that is closed). idle_ms 0 = no idle timeout. The caller's handle is dead after this. */
MR_EXPORT int mr_cosock_keepalive(mr_cosock_t *s, const char *key, size_t klen, int idle_ms, int pool_size)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (klen >= KEY_MAX) { mr_cosock_close(s); return 0; }
    memcpy(s->key, key, klen);
    s->key[klen] = 0;
    int n = 0;
    for (mr_cosock_t *p = T->pool; p; p = p->pnext)
        if (strcmp(p->key, s->key) == 0) n++;
    if (n >= pool_size) { mr_cosock_close(s); return 0; }
    s->state = CS_POOLED;
    s->waker = NULL;
    s->pprev = NULL;
    s->pnext = T->pool;
    if (T->pool) T->pool->pprev = s;
    T->pool = s;
    if (idle_ms > 0) mr_timer_set(T->loop, &s->timer, (uint64_t)idle_ms);
    else mr_timer_stop(T->loop, &s->timer);
    return 0;
}

/* The most recently parked live socket for key, or NULL. A socket the peer closed (or sent
 * unexpected bytes on) while idle is dropped here: MSG_PEEK|MSG_DONTWAIT never blocks. */
MR_EXPORT mr_cosock_t *mr_cosock_pool_get(const char *key, size_t klen)
{
    if (!T || klen >= KEY_MAX) return NULL;
    mr_cosock_t *p = T->pool;
    while (p) {
        mr_cosock_t *next = p->pnext;
        if (strlen(p->key) == klen && memcmp(p->key, key, klen) == 0) {
            char b;
            ssize_t r = recv(p->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                pool_unlink(p);
                mr_timer_stop(T->loop, &p->timer);
                p->state = CS_CONNECTED;
                p->reused++;
                return p;
            }
            mr_cosock_close(p);
        }
        p = next;
    }
    return NULL;
}
