#include "lua/cosock.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lua/lua.h"
#include "net/net.h"
#include "net/resolver.h"
#include "tls/tls.h"
#include "util/export.h"

#define RBUF_SIZE 16384
#define KEY_MAX 384 /* host:port or opts.pool, plus "\ntls\n<server name>\n<verify>" */
enum { CS_NEW = 0, CS_CONNECTING, CS_CONNECTED, CS_POOLED };
enum { OPK_NONE = 0, OPK_CONNECT, OPK_READ, OPK_WRITE, OPK_TLS };
/* What a TLS operation (OPK_TLS) is for, and which ciphertext I/O it has in flight. */
enum { TM_HS = 1, TM_SEND, TM_RECV };
enum { TIO_NONE = 0, TIO_READ, TIO_WRITE };

/* A client session handed to Lua by sslhandshake. The socket keeps a reference and refreshes
 * it while it reads (TLS 1.3 tickets arrive after the handshake); Lua's reference is dropped
 * by the GC. Only the owning worker touches it. */
typedef struct mr_cosock_sess {
    int refs;
    mr_tls_session_t *s;
    /* A resumed session is not verified again: it is only offered to a handshake with the same
     * context (same generation and verification) and the same server name. */
    mr_tls_ctx_t *ctx; /* a reference: the address is never another context's */
    char *sni;
} mr_cosock_sess_t;

struct mr_cosock {
    mr_op_t op;              /* the one operation in flight; first member (op_done casts) */
    mr_timer_t timer;        /* timeout of that operation, or idle timeout while pooled */
    mr_timer_t *waker;       /* park timer of the coroutine waiting for the result */
    int fd;
    int res;                 /* result of the last finished operation */
    int err;                 /* errno of the last failure reported to Lua (mr_cosock_error) */
    uint8_t state, opk;
    uint8_t tmode, tio;          /* TLS operation and its ciphertext I/O in flight */
    bool timed_out, closing;
    uint32_t reused;
    uint32_t timeout_ms;
    char *rbuf;
    char *wbuf;
    char *cbuf;                  /* TLS: ciphertext read buffer */
    mr_tls_conn_t *tls;          /* after sslhandshake; holds its context's reference */
    mr_cosock_sess_t *sess;
    size_t wlen, woff, wcap;
    char key[KEY_MAX];
    mr_addr_t addr;              /* named by the connect SQE: must live until its completion */
    mr_resolve_req_t rq;         /* name resolution in progress (mr_resolve_pending) */
    mr_cosock_t *next, *prev;    /* every live socket of the thread */
    mr_cosock_t *pnext, *pprev;  /* idle pool */
};

typedef struct {
    mr_loop_t *loop;
    mr_resolver_t *res;
    mr_cosock_t *all;
    mr_cosock_t *pool;
} cs_thread_t;

static __thread cs_thread_t *T;

int mr_cosock_thread_init(mr_loop_t *loop, mr_resolver_t *res)
{
    T = calloc(1, sizeof *T);
    if (!T) return -ENOMEM;
    T->loop = loop;
    T->res = res;
    return 0;
}

mr_loop_t *mr_cosock_loop(void) { return T ? T->loop : NULL; }

static void sess_unref(mr_cosock_sess_t *b)
{
    if (!b || --b->refs > 0) return;
    if (b->s) mr_tls_session_free(b->s);
    if (b->ctx) mr_tls_ctx_unref(b->ctx);
    free(b->sni);
    free(b);
}

static void cs_free(mr_cosock_t *s)
{
    mr_resolver_cancel(&s->rq);
    if (s->fd >= 0) close(s->fd);
    /* Only now: a write SQE pointed into the engine's output until its completion. */
    if (s->tls) mr_tls_conn_free(s->tls);
    sess_unref(s->sess);
    free(s->cbuf);
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

/* The exported functions' results in the FFI code set: internal results are 1 (submitted), 0
 * (done) or -errno. A failure's errno is kept for mr_cosock_error, so Lua never decodes errno. */
static int ffi_ret(mr_cosock_t *s, int rc)
{
    if (rc > 0) return MR_FFI_AGAIN;
    if (rc == 0) return MR_FFI_OK;
    s->err = -rc;
    switch (-rc) {
    case ETIMEDOUT:
    case ECANCELED: return MR_FFI_TIMEOUT;
    case ECONNREFUSED: return MR_FFI_REFUSED;
    case ECONNRESET: return MR_FFI_RESET;
    case ENOTCONN:
    case EBADF: return MR_FFI_CLOSED;
    case ENOMEM: return MR_FFI_NOMEM;
    case EBUSY: return MR_FFI_BUSY;
    case EISCONN:
    case ENOTSUP: return MR_FFI_BAD_CONTEXT;
    case ENOENT: return MR_FFI_DECLINED;  /* the resolver found no address for the name */
    case EINVAL: return MR_FFI_BAD_ARG;   /* not a host name */
    case ENOSPC: return MR_FFI_LIMIT;     /* too many name lookups waiting */
    default: return MR_FFI_ERROR;
    }
}

/* What the last failure reported to Lua was, as OpenResty words it where it has a word for it.
 * The string is static, or the engine's (valid until the socket is closed), or in a per-thread
 * buffer valid until the next call: Lua copies it at once. */
MR_EXPORT const char *mr_cosock_error(mr_cosock_t *s)
{
    static __thread char buf[128];
    switch (s->err) {
    case 0: return "";
    case EPROTO: {
        const char *e = s->tls ? mr_tls_error(s->tls) : "";
        if (*e) return e;
        return s->tmode == TM_HS ? "handshake failed" : "protocol error";
    }
    case ETIMEDOUT:
    case ECANCELED: return "timeout";
    case ECONNREFUSED: return "connection refused";
    case ECONNRESET: return "connection reset by peer";
    case ENOTCONN:
    case EBADF: return "closed";
    case ENOMEM: return "no memory";
    case EBUSY: return "socket busy";
    case EPIPE: return "broken pipe";
    case EHOSTUNREACH: return "no route to host";
    case ENETUNREACH: return "network is unreachable";
    case ENOTSUP: return "TLS is only available on a serving worker";
    /* the resolver's and connect's own failures (see rs_lookup and mr_cosock_connect) */
    case ENOENT: return "host not found";
    case EAGAIN: return "temporary failure in name resolution";
    case EIO: return "name resolution failed";
    case ENOSPC: return "too many pending name resolutions";
    case EINVAL: return "invalid host name";
    default: break;
    }
    snprintf(buf, sizeof buf, "%s", strerror(s->err));
    for (char *p = buf; *p; p++) *p = (char)tolower((unsigned char)*p);
    return buf;
}

MR_EXPORT void mr_cosock_close(mr_cosock_t *s)
{
    if (!s || s->closing) return;
    if (s->state == CS_POOLED) pool_unlink(s);
    mr_resolver_cancel(&s->rq);
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
    else if (mr_resolve_pending(&s->rq)) {
        mr_resolver_cancel(&s->rq);
        s->state = CS_NEW;
        s->opk = OPK_NONE;
        s->res = -ETIMEDOUT;
        wake(s);
    }
}

static void tls_op_done(mr_cosock_t *s, int res);

static void op_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_cosock_t *s = (mr_cosock_t *)op;
    if (s->closing) { if (!s->op.active) cs_free(s); return; }
    if (s->opk == OPK_TLS) { tls_op_done(s, res); return; }
    if (s->opk == OPK_WRITE && res == 0) res = -EPIPE; /* nothing taken: never report success */
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

/* --- TLS (sock:sslhandshake) ------------------------------------------------------------
 * The engine sits between the Lua-facing operations and the socket exactly as in
 * src/proxy/sock.c, but with one operation at a time: an operation (handshake, send, receive)
 * is a loop of engine calls and ciphertext I/O on s->op until it can report. Ciphertext writes
 * point straight into the engine's output chunks (stable until consumed, see tls.h). */

static void sess_refresh(mr_cosock_t *s)
{
    if (!s->sess) return;
    mr_tls_session_t *n = mr_tls_get_session(s->tls);
    if (!n) return;
    if (s->sess->s) mr_tls_session_free(s->sess->s);
    s->sess->s = n;
}

/* Ends the operation with res; 0 tells the caller nothing is in flight. */
static int tls_done(mr_cosock_t *s, int res)
{
    s->res = res;
    s->tio = TIO_NONE;
    s->opk = OPK_NONE;
    mr_timer_stop(T->loop, &s->timer);
    return 0;
}

/* Advances the current TLS operation: 1 = ciphertext I/O submitted, 0 = finished (s->res). */
static int tls_step(mr_cosock_t *s)
{
    mr_tls_conn_t *t = s->tls;
    int rc;
    if (s->tmode == TM_RECV) {
        size_t got = 0;
        rc = mr_tls_read(t, s->rbuf, RBUF_SIZE, &got);
        if (rc == MR_TLS_OK && got > 0) { sess_refresh(s); return tls_done(s, (int)got); }
        if (rc == MR_TLS_CLOSED) return tls_done(s, 0);
    } else if (s->tmode == TM_HS) {
        rc = mr_tls_handshake(t);
        if (rc == MR_TLS_OK && mr_tls_pending_out(t) == 0) { sess_refresh(s); return tls_done(s, 0); }
    } else {
        rc = MR_TLS_OK;
        while (rc == MR_TLS_OK && s->woff < s->wlen) {
            size_t taken = 0;
            rc = mr_tls_write(t, s->wbuf + s->woff, s->wlen - s->woff, &taken);
            s->woff += taken;
            if (taken == 0) break; /* output full: send some first */
        }
        if (rc != MR_TLS_ERR && s->woff == s->wlen && mr_tls_pending_out(t) == 0)
            return tls_done(s, (int)(s->wlen > 0x7fffffff ? 0x7fffffff : s->wlen));
    }
    if (rc == MR_TLS_ERR) return tls_done(s, -EPROTO);
    size_t len = 0;
    const void *p = mr_tls_out_peek(t, &len);
    if (len > 0) {
        rc = mr_loop_write(T->loop, &s->op, s->fd, p, len);
        if (rc < 0) return tls_done(s, rc);
        s->tio = TIO_WRITE;
        return 1;
    }
    rc = mr_loop_read(T->loop, &s->op, s->fd, s->cbuf, RBUF_SIZE);
    if (rc < 0) return tls_done(s, rc);
    s->tio = TIO_READ;
    return 1;
}

static void tls_op_done(mr_cosock_t *s, int res)
{
    int tio = s->tio;
    s->tio = TIO_NONE;
    if (tio == TIO_WRITE && res > 0) {
        mr_tls_out_consume(s->tls, (size_t)res);
        if (s->tmode == TM_SEND && !s->timed_out) mr_timer_set(T->loop, &s->timer, s->timeout_ms);
    } else if (tio == TIO_READ && res > 0) {
        if (mr_tls_feed(s->tls, s->cbuf, (size_t)res) != MR_TLS_OK) res = -EPROTO;
    }
    if (s->timed_out) res = -ETIMEDOUT;
    else if (res == 0 && tio == TIO_WRITE) res = -EPIPE;
    /* EOF without close_notify: the end of a response body for a reader, a failure anywhere else. */
    else if (res == 0) res = s->tmode == TM_RECV ? 0 : -ECONNRESET;
    if (res <= 0) tls_done(s, res);
    else if (tls_step(s) == 1) return;
    wake(s);
}

static int tls_start(mr_cosock_t *s, int tmode, int timeout_ms, void *waker)
{
    if (!s->cbuf && !(s->cbuf = malloc(RBUF_SIZE))) return -ENOMEM;
    s->tmode = (uint8_t)tmode;
    start(s, OPK_TLS, timeout_ms, waker);
    return tls_step(s) == 1 ? 1 : 0;
}

/* Starts the client handshake on a connected plain socket. verify picks the generation's
 * verifying context (lua.ssl_trusted_certificate or the system store) or the other one; sni
 * (NUL-terminated, or NULL) is sent and checked against the certificate; reuse is a session
 * from an earlier handshake, or NULL. */
static int cs_sslhandshake(mr_cosock_t *s, void *vm, int verify, const char *sni, mr_cosock_sess_t *reuse,
                           int timeout_ms, void *waker)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (s->tls) return -EISCONN;
    const mr_config_t *cfg = mr_lua_vm_config(vm);
    mr_tls_ctx_t *ctx = cfg ? cfg->lua_tls[verify ? 1 : 0] : NULL;
    if (!ctx) return -ENOTSUP;
    if (sni && !*sni) sni = NULL;
    sess_unref(s->sess);
    if (!(s->sess = calloc(1, sizeof *s->sess))) return -ENOMEM;
    s->sess->refs = 1;
    mr_tls_ctx_ref(ctx);
    s->sess->ctx = ctx;
    if (sni && !(s->sess->sni = strdup(sni))) return -ENOMEM;
    s->tls = mr_tls_conn_new(ctx, false, sni);
    if (!s->tls) return -ENOMEM;
    if (reuse && reuse->s && reuse->ctx == ctx && (reuse->sni ? sni && strcmp(reuse->sni, sni) == 0 : !sni))
        mr_tls_set_session(s->tls, reuse->s);
    return tls_start(s, TM_HS, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_sslhandshake(mr_cosock_t *s, void *vm, int verify, const char *sni, mr_cosock_sess_t *reuse,
                                     int timeout_ms, void *waker)
{
    return ffi_ret(s, cs_sslhandshake(s, vm, verify, sni, reuse, timeout_ms, waker));
}

/* The session of a socket after its handshake, as a new reference for Lua, or NULL. */
MR_EXPORT mr_cosock_sess_t *mr_cosock_tls_session(mr_cosock_t *s)
{
    if (!s->sess) return NULL;
    s->sess->refs++;
    return s->sess;
}

MR_EXPORT void mr_cosock_sess_free(mr_cosock_sess_t *b) { sess_unref(b); }

MR_EXPORT int mr_cosock_tls_reused(mr_cosock_t *s) { return s->tls && mr_tls_session_reused(s->tls); }

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

static int connect_addr(mr_cosock_t *s)
{
    mr_addr_t *a = &s->addr;
    int rc;
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
    s->opk = OPK_CONNECT;
    return 1;
}

/* The resolver's answer for a connect by name: connect to its first address (IPv4 first). */
static void resolved(mr_resolve_req_t *rq, int rc, const mr_addr_t *addrs, int naddrs)
{
    mr_cosock_t *s = (mr_cosock_t *)((char *)rq - offsetof(mr_cosock_t, rq));
    (void)naddrs;
    if (rc == 0) {
        s->addr = addrs[0];
        rc = connect_addr(s);
    }
    if (rc < 0) {
        mr_timer_stop(T->loop, &s->timer);
        s->state = CS_NEW;
        s->opk = OPK_NONE;
        s->res = rc;
        wake(s);
    }
}

/* Numeric addresses, and names the worker's resolver has cached, connect at once; other names
 * are looked up first (net/resolver.h). The timeout covers both. A name cached as not existing
 * fails at once with -ENOENT. */
static int cs_connect(mr_cosock_t *s, const char *host, size_t hlen, int port, int timeout_ms, void *waker)
{
    if (s->closing || s->fd >= 0 || s->op.active || mr_resolve_pending(&s->rq)) return -EISCONN;
    mr_hostport_t hp;
    int rc = mr_addr_parse_host(host, hlen, port, &hp, NULL);
    if (rc < 0) return rc;
    if (rc == MR_ADDR_NAME) {
        if (!T->res) return -ENOTSUP;
        rc = mr_resolver_cached(T->res, hp.host, hp.hlen, hp.port, &s->addr, 1);
        if (rc < 0) return rc;
        if (rc == 0) {
            rc = mr_resolver_lookup(T->res, hp.host, hp.hlen, hp.port, &s->rq, resolved);
            if (rc < 0) return rc;
            s->state = CS_CONNECTING;
            s->opk = OPK_CONNECT;
            start(s, OPK_CONNECT, timeout_ms, waker);
            return 1;
        }
    } else {
        s->addr = hp.addr;
    }
    rc = connect_addr(s);
    if (rc < 0) return rc;
    return start(s, OPK_CONNECT, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_connect(mr_cosock_t *s, const char *host, size_t hlen, int port, int timeout_ms, void *waker)
{
    return ffi_ret(s, cs_connect(s, host, hlen, port, timeout_ms, waker));
}

static int cs_send(mr_cosock_t *s, const char *p, size_t n, int timeout_ms, void *waker)
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
    if (s->tls) return tls_start(s, TM_SEND, timeout_ms, waker);
    int rc = mr_loop_write(T->loop, &s->op, s->fd, s->wbuf, n);
    if (rc < 0) return rc;
    return start(s, OPK_WRITE, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_send(mr_cosock_t *s, const char *p, size_t n, int timeout_ms, void *waker)
{
    return ffi_ret(s, cs_send(s, p, n, timeout_ms, waker));
}

static int cs_recv(mr_cosock_t *s, int timeout_ms, void *waker)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (!s->rbuf && !(s->rbuf = malloc(RBUF_SIZE))) return -ENOMEM;
    if (s->tls) return tls_start(s, TM_RECV, timeout_ms, waker);
    int rc = mr_loop_read(T->loop, &s->op, s->fd, s->rbuf, RBUF_SIZE);
    if (rc < 0) return rc;
    return start(s, OPK_READ, timeout_ms, waker);
}

MR_EXPORT int mr_cosock_recv(mr_cosock_t *s, int timeout_ms, void *waker)
{
    return ffi_ret(s, cs_recv(s, timeout_ms, waker));
}

/* Result of the last finished operation: a count >= 0 (bytes sent; bytes read, at *p, 0 at
 * the end of the stream; 0 for connect and sslhandshake), or an MR_FFI_* failure code.
 * MR_FFI_AGAIN while the operation is still in flight: a coroutine can be resumed by a wake-up
 * meant for another one of its owner (moonring.thread), and then parks again. */
MR_EXPORT int mr_cosock_result(mr_cosock_t *s, const char **p)
{
    *p = s->rbuf;
    if (s->opk != OPK_NONE) return MR_FFI_AGAIN;
    return s->res >= 0 ? s->res : ffi_ret(s, s->res);
}

MR_EXPORT void mr_cosock_set_waker(mr_cosock_t *s, void *waker)
{
    if (!s->closing) s->waker = waker;
}

MR_EXPORT int mr_cosock_reused(mr_cosock_t *s) { return (int)s->reused; }

/* The key a socket taken from the pool was parked under. */
MR_EXPORT const char *mr_cosock_pool_key(mr_cosock_t *s) { return s->key; }

/* Parks a connected, idle socket in the pool under key (at most pool_size per key; a socket
 * beyond that is closed). idle_ms 0 = no idle timeout. The caller's handle is dead after this. */
static int cs_keepalive(mr_cosock_t *s, const char *key, size_t klen, int idle_ms, int pool_size)
{
    if (s->closing || s->state != CS_CONNECTED) return -ENOTCONN;
    if (s->op.active) return -EBUSY;
    if (klen >= KEY_MAX) { mr_cosock_close(s); return 0; }
    /* Decrypted bytes nobody read, or an engine reply not sent yet: the stream is not idle. */
    if (s->tls && (mr_tls_read_pending(s->tls) || mr_tls_pending_out(s->tls))) { mr_cosock_close(s); return 0; }
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

MR_EXPORT int mr_cosock_keepalive(mr_cosock_t *s, const char *key, size_t klen, int idle_ms, int pool_size)
{
    return ffi_ret(s, cs_keepalive(s, key, klen, idle_ms, pool_size));
}

/* The most recently parked live socket for key, or NULL. A socket the peer closed (or sent
 * unexpected bytes on) while idle is dropped here: MSG_PEEK|MSG_DONTWAIT never blocks. */
/* tls: 0 = a plain socket parked under exactly key; 1 = a TLS socket parked under key followed
 * by its "\ntls\n..." suffix (any server name). */
MR_EXPORT mr_cosock_t *mr_cosock_pool_get(const char *key, size_t klen, int tls)
{
    if (!T || klen >= KEY_MAX) return NULL;
    mr_cosock_t *p = T->pool;
    while (p) {
        mr_cosock_t *next = p->pnext;
        size_t pl = strlen(p->key);
        bool match = memcmp(p->key, key, klen) == 0 &&
                     (tls ? p->tls && pl > klen && p->key[klen] == '\n' : !p->tls && pl == klen);
        if (pl >= klen && match) {
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
