#include "upstream/h2client.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http1/http1.h"
#include "log/log.h"
#include "net/net.h"

#define HEAD_LIMIT (256u * 1024u)       /* a request head (HPACK input), a response head or trailers */
#define OUT_CHUNK (64u * 1024u)         /* bytes of frames gathered into one socket send */
#define OUT_LIMIT (256u * 1024u)        /* frames queued on the socket before mem_send waits */
/* A stream's receive window: what one response may have in flight beyond what its client took.
 * The connection's window is made large: streams bound memory one by one, and one stalled stream
 * must not stop the others (head-of-line blocking across unrelated requests). */
#define STREAM_WINDOW (256u * 1024u)
#define CONN_WINDOW (1u << 30)
#define ASSUMED_STREAMS 100u            /* before the server's SETTINGS (RFC 9113 6.5.2) */
#define CLOSE_GRACE_MS 1000u            /* a GOAWAY we sent, then the close */
#define PING_MAX_MS 30000u              /* idle connections are PINGed at least this often */
#define MAX_MOVES 2                     /* times an exchange may move to another connection */

typedef struct mr_h2conn h2c_t;
typedef struct h2x h2x_t;

/* Body pieces: received DATA the owner has not taken (each holding a reference on the loop
 * buffer it arrived in), or request body nghttp2 has not pulled yet. */
typedef struct {
    const char *p;
    uint32_t len;
    int32_t bid;
    char *owned;
} piece_t;

typedef struct {
    piece_t *v;
    uint32_t head, count, cap;
    uint64_t bytes;
} pieces_t;

/* One exchange: a stream (once its head is submitted) of connection c. */
struct h2x {
    mr_upx_t x;                 /* first: what the owner holds */
    h2c_t *c;                   /* NULL once the connection let go of it */
    h2x_t *next, *prev;         /* c->xs */
    void *owner;
    const mr_upx_ops_t *ops;
    const mr_upstream_conf_t *uc;   /* valid while bound (the owner's generation holds it) */
    const char *sni;
    int32_t id;                 /* stream id, 0 before the head */
    mr_hdrs_t hdrs, trailers;   /* the response head and trailer fields */
    mr_hdrs_t req_trailers;     /* the request's trailer fields, sent after its body */
    pieces_t in, out;
    mr_timer_t timer;           /* read timeout / deadline */
    uint64_t bp_limit;
    uint32_t read_timeout_ms;
    uint32_t hdr_bytes, nhdrs;  /* the header block being received */
    int moves;
    /* A failure recorded inside nghttp2, reported to the owner afterwards. */
    int fail_status, fail_retry;
    char why[128];
    bool waiting;               /* `ready` not told yet (the connection has no SETTINGS yet) */
    bool ng_open;               /* nghttp2 holds the stream (and a pointer to this) */
    bool headers_sent;          /* the request HEADERS left */
    bool provider, out_eof, out_deferred, out_done, want_sent;
    bool final_seen, head_in, head_told, in_eof, done_told;
    bool hold, nobody, got_bytes, failing, in_cb;
};

struct mr_h2conn {
    mr_sock_t s;                /* first member */
    mr_upx_ctx_t *ctx;
    mr_server_t *server;
    nghttp2_session *ng;
    h2c_t *next, *prev;         /* server->h2 */
    bool listed;
    h2x_t *xs;                  /* exchanges tied to it, each holding a stream slot */
    uint32_t nx, started;
    mr_timer_t timer;           /* connect (until SETTINGS), idle PING / close, close grace */
    mr_op_t connect_op;
    mr_defer_t work;            /* deliver and flush at the end of the loop turn */
    int32_t cur_bid;            /* the receive buffer mem_recv reads, for DATA references */
    uint32_t keepalive_timeout_ms, connect_timeout_ms;
    uint32_t keepalive_requests;
    int keepalive;
    uint64_t idle_since;        /* 0 while streams are open */
    bool connected;             /* TCP up (TLS started) */
    bool ready;                 /* the server's SETTINGS arrived */
    bool goaway;                /* no new streams: GOAWAY received or sent */
    bool closing, dead, in_recv, ping_out, proven, sess_saved, alpn_checked;
};

static bool x_full(const mr_upx_t *ux);
static const mr_sock_ops_t sock_ops;
static const mr_upx_vt_t vt;

static void conn_kill(h2c_t *c, int status, const char *why, int retry);
static void conn_work(h2c_t *c);
static void flush(h2c_t *c);
static ssize_t read_body_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *user);

static inline mr_loop_t *loop_of(const h2c_t *c) { return c->ctx->loop; }
static inline h2x_t *xof(mr_upx_t *x) { return (h2x_t *)x; }

/* ------------------------------------------------------------------------------------------ */
/* Pieces                                                                                       */

static int pieces_push(pieces_t *q, const char *p, size_t n, int32_t bid, char *owned, mr_loop_t *loop)
{
    if (q->count == q->cap) {
        uint32_t cap = q->cap ? q->cap * 2 : 8;
        piece_t *v = malloc(cap * sizeof *v);
        if (!v) return -ENOMEM;
        for (uint32_t i = 0; i < q->count; i++) v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->head = 0;
        q->cap = cap;
    }
    q->v[(q->head + q->count) % q->cap] = (piece_t){ .p = p, .len = (uint32_t)n, .bid = bid, .owned = owned };
    q->count++;
    q->bytes += n;
    if (bid >= 0) mr_loop_buf_ref(loop, (uint16_t)bid);
    return 0;
}

/* Takes n bytes off the front piece (all of it when n is its length). */
static void pieces_take(pieces_t *q, size_t n, mr_loop_t *loop)
{
    piece_t *e = &q->v[q->head];
    q->bytes -= n;
    if (n < e->len) {
        e->p += n;
        e->len -= (uint32_t)n;
        return;
    }
    if (e->bid >= 0) mr_loop_buf_unref(loop, (uint16_t)e->bid);
    free(e->owned);
    q->head = (q->head + 1) % q->cap;
    q->count--;
}

static uint64_t pieces_clear(pieces_t *q, mr_loop_t *loop)
{
    uint64_t n = q->bytes;
    while (q->count) pieces_take(q, q->v[q->head].len, loop);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections on the server's list                                                            */

static void list_add(h2c_t *c)
{
    mr_server_t *s = c->server;
    h2c_t **pp = &s->h2, *prev = NULL;
    while (*pp) { prev = *pp; pp = &(*pp)->next; }
    *pp = c;
    c->prev = prev;
    c->next = NULL;
    c->listed = true;
}

static void list_remove(h2c_t *c)
{
    if (!c->listed) return;
    if (c->prev) c->prev->next = c->next;
    else c->server->h2 = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->listed = false;
}

/* Streams c may carry. Before its SETTINGS: what another connection to the server was told
 * (servers say the same on every connection), or the RFC's recommended minimum. */
static uint32_t conn_limit(h2c_t *c)
{
    if (c->ready) return nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    for (h2c_t *o = c->server->h2; o; o = o->next)
        if (o->ready && !o->closing) return nghttp2_session_get_remote_settings(o->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return ASSUMED_STREAMS;
}

static bool conn_usable(h2c_t *c)
{
    return !c->goaway && !c->closing && c->nx < conn_limit(c) && c->started < c->keepalive_requests;
}

static void kick(h2c_t *c)
{
    if (!c->dead && !c->in_recv) mr_loop_defer(loop_of(c), &c->work);
}

/* ------------------------------------------------------------------------------------------ */
/* Exchanges                                                                                    */

static void x_timed_out(mr_loop_t *loop, mr_timer_t *t);

static void x_attach(h2x_t *x, h2c_t *c)
{
    x->c = c;
    x->prev = NULL;
    x->next = c->xs;
    if (c->xs) c->xs->prev = x;
    c->xs = x;
    c->nx++;
    c->started++;
    x->waiting = !c->ready;
    x->x.connected = c->ready;
    if (c->idle_since) {
        c->idle_since = 0;
        mr_timer_stop(loop_of(c), &c->timer);
    }
}

static void x_detach(h2x_t *x)
{
    h2c_t *c = x->c;
    if (!c) return;
    if (x->prev) x->prev->next = x->next;
    else c->xs = x->next;
    if (x->next) x->next->prev = x->prev;
    x->next = x->prev = NULL;
    x->c = NULL;
    c->nx--;
    kick(c); /* it may be idle now */
}

static h2x_t *x_new(mr_server_t *s)
{
    h2x_t *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    x->x.vt = &vt;
    x->x.server = s;
    x->x.hdrs = &x->hdrs;
    x->x.content_length = -1;
    x->hdrs.limit = x->trailers.limit = x->req_trailers.limit = HEAD_LIMIT;
    x->timer.fn = x_timed_out;
    return x;
}

static void x_free(h2x_t *x, mr_loop_t *loop)
{
    x_detach(x);
    mr_timer_stop(loop, &x->timer);
    pieces_clear(&x->in, loop);
    pieces_clear(&x->out, loop);
    free(x->in.v);
    free(x->out.v);
    mr_hdrs_free(&x->hdrs);
    mr_hdrs_free(&x->trailers);
    mr_hdrs_free(&x->req_trailers);
    free(x);
}

/* Frees x once neither its owner nor nghttp2 holds it (and no owner callback is running). */
static void x_reap(h2x_t *x, mr_loop_t *loop)
{
    if (!x->owner && !x->ng_open && !x->in_cb) x_free(x, loop);
}

static void x_unbind(h2x_t *x, mr_loop_t *loop)
{
    if (!x->owner) return;
    x->owner = NULL;
    x->ops = NULL;
    x->uc = NULL;
    x->x.server->active--;
    mr_timer_stop(loop, &x->timer);
}

/* The stream is abandoned: the server is told (RST_STREAM CANCEL) and what is queued either way
 * goes, the connection's window reopening for the response bytes dropped. */
static void x_cancel(h2x_t *x, mr_loop_t *loop)
{
    h2c_t *c = x->c;
    uint64_t dropped = pieces_clear(&x->in, loop);
    pieces_clear(&x->out, loop);
    if (!c || c->closing) return;
    if (dropped) nghttp2_session_consume(c->ng, x->id, dropped);
    if (x->ng_open) nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, x->id, NGHTTP2_CANCEL);
    kick(c);
}

/* Records a failure seen inside nghttp2 (reported by deliver). The first one wins. */
static void x_record(h2x_t *x, int status, int retry, const char *fmt, const char *arg)
{
    if (x->failing) return;
    x->failing = true;
    x->fail_status = status;
    x->fail_retry = retry;
    snprintf(x->why, sizeof x->why, fmt, arg);
}

/* Tells the owner the exchange failed: it is closed and unbound first, as upx.h promises. */
static void x_fail(h2x_t *x, int status, const char *why, int retry)
{
    h2c_t *c = x->c;
    mr_loop_t *loop = c ? loop_of(c) : mr_loop_current();
    void *owner = x->owner;
    const mr_upx_ops_t *ops = x->ops;
    mr_server_t *srv = x->x.server;
    if (why != x->why) snprintf(x->why, sizeof x->why, "%s", why);
    x_unbind(x, loop);
    x_cancel(x, loop);
    if (owner) {
        x->in_cb = true;
        ops->failed(owner, srv, status, x->why, retry);
        x->in_cb = false;
    }
    x_reap(x, loop);
}

static void x_arm(h2x_t *x, mr_loop_t *loop)
{
    uint64_t wait = x->read_timeout_ms, now = mr_loop_now(loop);
    if (x->x.deadline_ms) wait = x->x.deadline_ms > now ? (x->x.deadline_ms - now < wait ? x->x.deadline_ms - now : wait) : 0;
    mr_timer_set(loop, &x->timer, wait);
}

static void x_timed_out(mr_loop_t *loop, mr_timer_t *t)
{
    h2x_t *x = (h2x_t *)((char *)t - offsetof(h2x_t, timer));
    if (!x->owner) return;
    bool deadline = x->x.deadline_ms && mr_loop_now(loop) >= x->x.deadline_ms;
    x_fail(x, 504, deadline ? "deadline passed (grpc-timeout)" : "read timeout", MR_UP_RETRY_NO);
}

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                  */

static h2c_t *conn_new(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, int *err);

/* Delivers what happened on x to its owner, in order: ready, a failure, the head, body pieces
 * (until the owner holds), done. Runs outside nghttp2; the owner may release or close x from any
 * callback. */
static void pump(h2c_t *c, h2x_t *x)
{
    mr_loop_t *loop = loop_of(c);
    if (!x->owner) return;
    if (x->waiting) {
        if (!c->ready) return;
        x->waiting = false;
        x->x.connected = true;
        x->in_cb = true;
        x->ops->ready(x->owner, &x->x);
        x->in_cb = false;
        x_reap(x, loop);
        return;
    }
    if (x->failing) {
        x_fail(x, x->fail_status, x->why, x->fail_retry);
        return;
    }
    if (x->head_in && !x->head_told) {
        x->head_told = true;
        x->in_cb = true;
        int rc = x->ops->head(x->owner, &x->x);
        x->in_cb = false;
        if (!x->owner) { x_reap(x, loop); return; }
        if (rc < 0) {
            x_fail(x, x->x.error_status ? x->x.error_status : 502, x->x.error_reason ? x->x.error_reason : "response refused",
                   MR_UP_RETRY_NO);
            return;
        }
        if (rc == MR_UP_NOBODY) x->nobody = true;
        else if (rc == MR_UP_HOLD) x->hold = true;
    }
    if (!x->head_told) return;
    while (x->owner && !x->hold && x->in.count) {
        piece_t *e = &x->in.v[x->in.head];
        size_t n = e->len;
        int rc = MR_UP_GO;
        if (!x->nobody) {
            x->in_cb = true;
            rc = x->ops->body(x->owner, &x->x, e->p, n, e->bid);
            x->in_cb = false;
        }
        if (!x->c) break; /* the connection went (cannot happen from a body callback; defensive) */
        pieces_take(&x->in, n, loop);
        /* The window reopens for what the owner took, and only that. */
        nghttp2_session_consume(c->ng, x->id, n);
        if (!x->owner) break;
        if (rc < 0) {
            x_fail(x, x->x.error_status ? x->x.error_status : 502, x->x.error_reason ? x->x.error_reason : "body refused",
                   MR_UP_RETRY_NO);
            return;
        }
        if (rc == MR_UP_HOLD) x->hold = true;
    }
    if (x->owner && !x->hold && x->in_eof && !x->in.count && !x->done_told) {
        x->done_told = true;
        mr_timer_stop(loop, &x->timer);
        x->x.trailers = x->trailers.n ? &x->trailers : NULL;
        c->proven = true;
        x->in_cb = true;
        x->ops->done(x->owner, &x->x);
        x->in_cb = false;
    }
    x_reap(x, loop);
}

/* An exchange still waiting for `ready` goes to another connection (this one's SETTINGS allow
 * fewer streams than it took). */
static void x_move(h2c_t *c, h2x_t *x)
{
    x_detach(x);
    c->started--;
    h2c_t *to = NULL;
    if (++x->moves <= MAX_MOVES) {
        for (h2c_t *o = c->server->h2; o && !to; o = o->next)
            if (o != c && conn_usable(o)) to = o;
        int err = 0;
        if (!to) to = conn_new(c->ctx, c->server, x->uc, x->sni, &err);
    }
    if (!to) {
        x_fail(x, 502, x->moves > MAX_MOVES ? "the server allows no more streams" : "cannot open another connection",
               MR_UP_RETRY_ANY);
        return;
    }
    x_attach(x, to);
    kick(to);
}

static void deliver(h2c_t *c)
{
    if (c->ready) {
        /* Streams waiting for SETTINGS start now, as many as the server allows. */
        uint32_t limit = conn_limit(c), active = 0;
        for (h2x_t *x = c->xs; x; x = x->next) active += !x->waiting;
        for (h2x_t *x = c->xs, *next; x; x = next) {
            next = x->next;
            if (!x->waiting || !x->owner) continue;
            if (active < limit && !c->goaway) active++;
            else x_move(c, x);
        }
    }
    /* New exchanges go on the front: those an owner callback adds are not visited this turn. */
    for (h2x_t *x = c->xs, *next; x && !c->closing; x = next) {
        next = x->next;
        pump(c, x);
    }
}

static void conn_free(h2c_t *c)
{
    mr_upx_ctx_t *ctx = c->ctx;
    free(c);
    ctx->count--;
    if (ctx->gone) ctx->gone(ctx->gone_arg);
}

static void on_closed(mr_sock_t *s)
{
    h2c_t *c = (h2c_t *)s;
    if (c->connect_op.active) return; /* its completion frees it */
    c->dead = true;
    if (!mr_defer_queued(&c->work)) conn_free(c);
}

/* Why a socket failed: the TLS engine's reason when TLS failed, else the errno text. */
static const char *sock_why(const mr_sock_t *s, int res, char *buf, size_t len)
{
    if (res == -EPROTO && s->tls && *mr_sock_tls_error(s)) snprintf(buf, len, "TLS: %s", mr_sock_tls_error(s));
    else snprintf(buf, len, "%s", strerror(-res));
    return buf;
}

/* What a stream may do after its connection died: one whose head never left (or that waited for
 * the connection) goes again anywhere; one with response bytes cannot; one sent on a connection
 * that had served before may be idempotent-retried (the server may have closed as we sent). */
static int retry_of(const h2c_t *c, const h2x_t *x, int dflt)
{
    if (x->got_bytes) return MR_UP_RETRY_NO;
    if (x->waiting || !x->headers_sent) return MR_UP_RETRY_ANY;
    if (dflt != MR_UP_RETRY_NO) return dflt;
    return c->proven ? MR_UP_RETRY_IDEMPOTENT : MR_UP_RETRY_NO;
}

/* The connection is done for: every exchange on it fails (retry: MR_UP_RETRY_NO to let each
 * stream's progress decide), nghttp2 goes, the socket closes. Never called inside nghttp2. */
static void conn_kill(h2c_t *c, int status, const char *why, int retry)
{
    if (c->closing) return;
    c->closing = true;
    c->goaway = true;
    list_remove(c);
    mr_loop_t *loop = loop_of(c);
    mr_timer_stop(loop, &c->timer);
    while (c->xs) {
        h2x_t *x = c->xs;
        int kind = retry_of(c, x, retry);
        x->ng_open = false;
        pieces_clear(&x->in, loop);
        pieces_clear(&x->out, loop);
        x_detach(x);
        if (x->owner) x_fail(x, status, why, kind);
        else x_reap(x, loop);
    }
    nghttp2_session_del(c->ng);
    c->ng = NULL;
    if (c->connect_op.active) {
        c->s.closing = true;
        mr_loop_cancel(loop, &c->connect_op);
        return;
    }
    mr_sock_close(&c->s);
}

/* No new stream goes here; GOAWAY tells the server, and the connection closes once it is sent
 * (or after a grace period). Only for a connection without streams. */
static void conn_close_soft(h2c_t *c)
{
    if (c->closing) return;
    list_remove(c);
    if (!c->connected) { conn_kill(c, 502, "closed", MR_UP_RETRY_ANY); return; }
    if (!c->goaway) {
        c->goaway = true;
        nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    }
    mr_timer_set(loop_of(c), &c->timer, CLOSE_GRACE_MS);
    kick(c);
}

static uint32_t ping_every(const h2c_t *c)
{
    uint32_t t = c->keepalive_timeout_ms / 2;
    return t > PING_MAX_MS ? PING_MAX_MS : t ? t : 1;
}

/* A connection without streams: kept (PINGed, closed after keepalive_timeout) or closed now. */
static void conn_check_idle(h2c_t *c)
{
    if (c->nx || c->closing || !c->ready || c->idle_since) return;
    mr_server_t *s = c->server;
    int idle = 0;
    for (h2c_t *o = s->h2; o; o = o->next)
        if (o != c && !o->nx && !o->goaway) idle++;
    if (c->goaway || c->ctx->draining || c->started >= c->keepalive_requests || idle >= c->keepalive) {
        conn_close_soft(c);
        return;
    }
    c->idle_since = mr_loop_now(loop_of(c));
    c->ping_out = false;
    mr_timer_set(loop_of(c), &c->timer, ping_every(c));
}

static void conn_timer(mr_loop_t *loop, mr_timer_t *t)
{
    h2c_t *c = (h2c_t *)((char *)t - offsetof(h2c_t, timer));
    if (c->closing) return;
    if (c->goaway && !c->nx && c->listed == false && c->ready) {
        conn_kill(c, 502, "closed", MR_UP_RETRY_ANY); /* the GOAWAY grace ran out */
        return;
    }
    if (!c->ready) {
        c->server->down_until = mr_loop_now(loop) + 1000;
        conn_kill(c, 504, c->connected ? "no HTTP/2 SETTINGS from the server in time" : "connect timed out",
                  MR_UP_RETRY_ANY);
        return;
    }
    if (c->nx || !c->idle_since) return;
    uint64_t now = mr_loop_now(loop);
    if (c->ping_out) {
        mr_info("upstream %s: HTTP/2 connection did not answer a PING: closed", c->server->addr);
        conn_kill(c, 502, "no PING answer", MR_UP_RETRY_ANY);
        return;
    }
    uint64_t idle = now - c->idle_since;
    if (idle >= c->keepalive_timeout_ms) {
        conn_close_soft(c);
        return;
    }
    /* Liveness: a connection the server (or a middlebox) dropped silently is found here rather
     * than by the next request. */
    nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL);
    c->ping_out = true;
    uint64_t left = c->keepalive_timeout_ms - idle;
    mr_timer_set(loop, &c->timer, left < ping_every(c) ? left : ping_every(c));
    flush(c);
}

static void conn_work(h2c_t *c)
{
    if (c->closing) return;
    deliver(c);
    if (c->closing) return;
    flush(c);
    if (!c->closing) conn_check_idle(c);
}

static void work_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    h2c_t *c = (h2c_t *)((char *)d - offsetof(h2c_t, work));
    if (c->dead) { conn_free(c); return; }
    conn_work(c);
}

static void flush(h2c_t *c)
{
    if (c->closing || !c->connected || c->s.closing) return;
    mr_sock_t *sock = &c->s;
    char *chunk = NULL;
    size_t len = 0;
    while (!mr_sock_full(sock, OUT_LIMIT)) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n < 0) {
            free(chunk);
            char why[96];
            snprintf(why, sizeof why, "HTTP/2: %s", nghttp2_strerror((int)n));
            conn_kill(c, 502, why, MR_UP_RETRY_NO);
            return;
        }
        if (n == 0) break;
        if (chunk && len + (size_t)n > OUT_CHUNK) {
            mr_sock_send_owned(sock, chunk, len);
            chunk = NULL;
        }
        if (!chunk) {
            len = 0;
            chunk = malloc((size_t)n > OUT_CHUNK ? (size_t)n : OUT_CHUNK);
            if (!chunk) { conn_kill(c, 502, "out of memory", MR_UP_RETRY_NO); return; }
        }
        memcpy(chunk + len, data, (size_t)n);
        len += (size_t)n;
    }
    if (chunk) mr_sock_send_owned(sock, chunk, len);
    /* Request bodies that were over their limit (or had no window) and drained may go on. */
    for (h2x_t *x = c->xs, *next; x && !c->closing; x = next) {
        next = x->next;
        if (!x->owner || !x->want_sent || x_full(&x->x)) continue;
        x->want_sent = false;
        x->in_cb = true;
        x->ops->sent(x->owner, &x->x);
        x->in_cb = false;
        x_reap(x, loop_of(c));
    }
    if (!c->closing && !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng) && !mr_sock_sending(sock))
        conn_kill(c, 502, "HTTP/2 connection ended", MR_UP_RETRY_NO);
}

/* ------------------------------------------------------------------------------------------ */
/* Socket                                                                                       */

static void on_recv(mr_sock_t *sock, int res)
{
    h2c_t *c = (h2c_t *)sock;
    if (c->closing) { mr_sock_consume(sock, (size_t)-1); return; }
    char why[256];
    if (res <= 0) {
        if (res == 0) snprintf(why, sizeof why, "closed the connection");
        else sock_why(sock, res, why, sizeof why);
        if (sock->tls && !mr_tls_handshake_done(sock->tls)) c->server->down_until = mr_loop_now(sock->loop) + 1000;
        conn_kill(c, 502, why, MR_UP_RETRY_NO);
        return;
    }
    if (sock->tls && !c->alpn_checked) {
        c->alpn_checked = true;
        const char *a = mr_tls_alpn(sock->tls);
        if (!a || strcmp(a, "h2") != 0) {
            c->server->down_until = mr_loop_now(sock->loop) + 1000;
            conn_kill(c, 502, "TLS: the server did not select h2 by ALPN", MR_UP_RETRY_ANY);
            return;
        }
    }
    c->in_recv = true;
    while (sock->nin && !c->closing) {
        mr_in_t *in = &sock->in[0];
        c->cur_bid = in->bid;
        ssize_t n = nghttp2_session_mem_recv(c->ng, (const uint8_t *)mr_loop_buf_ptr(sock->loop, (uint16_t)in->bid) + in->off,
                                             in->len);
        if (n < 0) {
            c->in_recv = false;
            snprintf(why, sizeof why, "HTTP/2: %s", nghttp2_strerror((int)n));
            mr_info("upstream %s: %s", c->server->addr, why);
            flush(c); /* the GOAWAY nghttp2 queued, if it could */
            conn_kill(c, 502, why, MR_UP_RETRY_NO);
            return;
        }
        mr_sock_consume(sock, in->len);
    }
    c->in_recv = false;
    conn_work(c);
}

static void on_sent(mr_sock_t *sock, int res)
{
    h2c_t *c = (h2c_t *)sock;
    if (c->closing) return;
    if (res < 0) {
        char why[256];
        conn_kill(c, 502, sock_why(sock, res, why, sizeof why), MR_UP_RETRY_NO);
        return;
    }
    flush(c);
}

static const mr_sock_ops_t sock_ops = { on_recv, on_sent, on_closed };

static void connected(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    h2c_t *c = (h2c_t *)((char *)op - offsetof(h2c_t, connect_op));
    if (c->s.closing) {
        c->s.closing = false; /* let mr_sock_close run its normal path */
        mr_sock_close(&c->s);
        return;
    }
    char why[256];
    if (res < 0) {
        c->server->down_until = mr_loop_now(loop) + 1000;
        snprintf(why, sizeof why, "connect failed: %s", strerror(-res));
        conn_kill(c, 502, why, MR_UP_RETRY_ANY);
        return;
    }
    c->connected = true;
    if (c->s.tls && mr_sock_start_tls(&c->s, c->s.tls, true) < 0) {
        c->server->down_until = mr_loop_now(loop) + 1000;
        conn_kill(c, 502, sock_why(&c->s, -EPROTO, why, sizeof why), MR_UP_RETRY_ANY);
        return;
    }
    mr_sock_start_recv(&c->s);
    flush(c); /* the preface and our SETTINGS; streams wait for the server's */
}

/* ------------------------------------------------------------------------------------------ */
/* nghttp2 callbacks: they only record; deliver tells the owners afterwards.                   */

static bool name_is(const uint8_t *a, size_t n, const char *b)
{
    return n == strlen(b) && memcmp(a, b, n) == 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    (void)user;
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (x) x->hdr_bytes = x->nhdrs = 0;
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    (void)flags;
    h2c_t *c = user;
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!x || !x->owner || x->failing) return 0;
    x->got_bytes = true;
    /* RFC 9113 6.5.2 counts 32 bytes of overhead per field; the limits are the HTTP/1.1 ones. */
    const mr_http1_limits_t *lim = c->ctx->limits;
    x->hdr_bytes += (uint32_t)(nlen + vlen + 32);
    if ((lim && (x->hdr_bytes > lim->max_header_size || ++x->nhdrs > lim->max_headers)) || x->hdr_bytes > HEAD_LIMIT) {
        x_record(x, 502, MR_UP_RETRY_NO, "%s", x->final_seen ? "response trailers too large" : "response head too large");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
    }
    const char *n = (const char *)name, *v = (const char *)value;
    if (nlen && name[0] == ':') {
        if (!x->final_seen && name_is(name, nlen, ":status") && vlen == 3)
            x->x.status = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0'); /* nghttp2 checked it */
        return 0;
    }
    mr_hdrs_t *h = x->final_seen ? &x->trailers : &x->hdrs;
    int i = mr_hdrs_add(h, n, nlen, v, vlen);
    if (i < 0) {
        x_record(x, 502, MR_UP_RETRY_NO, "%s", "response head too large");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (!x->final_seen && nlen == 14 && name_is(name, nlen, "content-length")) {
        h->v[i].flags |= MR_HDR_HOP; /* the client side writes its own framing */
        int64_t cl = 0;
        for (size_t k = 0; k < vlen && k < 18; k++) cl = cl * 10 + (v[k] - '0'); /* nghttp2 checked the digits */
        x->x.content_length = cl;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    h2c_t *c = user;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK) && !c->ready) {
            c->ready = true;
            mr_timer_stop(loop_of(c), &c->timer);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        /* Streams above last_stream_id are closed by nghttp2 as refused (on_stream_close). */
        if (!c->goaway || f->goaway.error_code != NGHTTP2_NO_ERROR)
            mr_info("upstream %s: HTTP/2 GOAWAY (%s, last stream %d)", c->server->addr,
                    nghttp2_http2_strerror(f->goaway.error_code), f->goaway.last_stream_id);
        c->goaway = true;
        list_remove(c);
        return 0;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) c->ping_out = false;
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!x || !x->owner) return 0;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (f->hd.type == NGHTTP2_HEADERS && !x->final_seen) {
        if (x->x.status < 200) {
            /* An interim response (100, 103): not forwarded; the final one follows. */
            mr_hdrs_reset(&x->hdrs);
            x->x.status = 0;
            x->x.content_length = -1;
            return 0;
        }
        x->final_seen = x->head_in = true;
        if (end && x->x.content_length < 0) x->x.content_length = 0; /* no DATA will follow */
        x->x.length_known = x->x.content_length >= 0;
    }
    if (end) x->in_eof = true;
    if (x->owner) x_arm(x, loop_of(c));
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    (void)flags;
    h2c_t *c = user;
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, id);
    if (!x || !x->owner || x->failing || x->nobody) {
        nghttp2_session_consume(ng, id, len); /* nobody wants it: keep the windows open */
        return 0;
    }
    x->got_bytes = true;
    /* Kept in the receive buffer it arrived in (a reference), not copied. */
    if (pieces_push(&x->in, (const char *)data, len, c->cur_bid, NULL, loop_of(c)) < 0) {
        x_record(x, 502, MR_UP_RETRY_NO, "%s", "out of memory");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    (void)user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (x) x->headers_sent = true;
    return 0;
}

/* A request HEADERS that never left (GOAWAY came first, or the stream was cancelled). */
static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *f, int err, void *user)
{
    (void)err;
    h2c_t *c = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    for (h2x_t *x = c->xs; x; x = x->next) {
        if (x->id != f->hd.stream_id) continue;
        /* nghttp2 may still close the stream afterwards (a cancelled one): it must not find x. */
        nghttp2_session_set_stream_user_data(ng, x->id, NULL);
        x->ng_open = false;
        if (x->owner) x_record(x, 502, MR_UP_RETRY_ANY, "%s", "the connection took no more streams");
        else x_reap(x, loop_of(c));
        kick(c);
        break;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    h2c_t *c = user;
    h2x_t *x = nghttp2_session_get_stream_user_data(ng, id);
    if (!x) return 0;
    x->ng_open = false;
    if (x->owner && !x->in_eof) {
        /* Refused (RST_STREAM REFUSED_STREAM, or above a GOAWAY's last stream id): the server
         * did nothing with it, so it may go anywhere (RFC 9113 8.7). */
        if (code == NGHTTP2_REFUSED_STREAM && !x->got_bytes)
            x_record(x, 502, MR_UP_RETRY_ANY, "%s", "refused the stream");
        else
            x_record(x, 502, MR_UP_RETRY_NO, "stream reset (%s)", nghttp2_http2_strerror(code));
    }
    x_reap(x, loop_of(c));
    kick(c);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Opening                                                                                      */

static h2c_t *conn_new(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, int *err)
{
    int fd = mr_net_socket_for(&s->sa);
    if (fd < 0) { *err = fd; return NULL; }
    h2c_t *c = calloc(1, sizeof *c);
    if (!c) { close(fd); *err = -ENOMEM; return NULL; }
    mr_sock_init(&c->s, ctx->loop, fd, &sock_ops);
    c->ctx = ctx;
    c->server = s;
    c->keepalive = uc->keepalive;
    c->keepalive_requests = (uint32_t)uc->keepalive_requests;
    c->keepalive_timeout_ms = uc->keepalive_timeout_ms;
    c->connect_timeout_ms = uc->connect_timeout_ms;
    c->timer.fn = conn_timer;
    c->connect_op.fn = connected;
    c->work.fn = work_deferred;
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0) goto nomem;
    if (nghttp2_option_new(&opt) != 0) { nghttp2_session_callbacks_del(cb); goto nomem; }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    /* Windows reopen only for what the owners took (flow control is our backpressure). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    /* A misbehaving server gets the bounds a client gets (session/h2.c). */
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    int rc = nghttp2_session_client_new2(&c->ng, cb, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) goto nomem;
    const mr_http1_limits_t *lim = ctx->limits;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, lim ? lim->max_header_size : HEAD_LIMIT },
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)CONN_WINDOW) != 0) {
        nghttp2_session_del(c->ng);
        goto nomem;
    }
    if (uc->tls) {
        /* Made now, while the config that names the SNI is surely alive; the handshake starts
         * once the TCP connect completes. The socket owns it from here. */
        c->s.tls = mr_tls_conn_new(uc->tls, false, sni);
        if (!c->s.tls) { nghttp2_session_del(c->ng); goto nomem; }
        if (s->tls_sess) mr_tls_set_session(c->s.tls, s->tls_sess);
    }
    rc = mr_loop_connect(ctx->loop, &c->connect_op, fd, (const struct sockaddr *)&s->sa.sa, s->sa.len);
    if (rc < 0) {
        mr_tls_conn_free(c->s.tls);
        nghttp2_session_del(c->ng);
        close(fd);
        free(c);
        *err = rc;
        return NULL;
    }
    ctx->count++;
    mr_timer_set(ctx->loop, &c->timer, uc->connect_timeout_ms);
    list_add(c);
    return c;
nomem:
    close(fd);
    free(c);
    *err = -ENOMEM;
    return NULL;
}

int mr_h2client_open(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out)
{
    h2c_t *c = NULL;
    for (h2c_t *o = s->h2; o && !c; o = o->next)
        if (conn_usable(o)) c = o;
    int err = 0;
    if (!c && !(c = conn_new(ctx, s, uc, sni, &err))) return err;
    h2x_t *x = x_new(s);
    if (!x) {
        kick(c); /* a fresh connection without streams goes idle */
        return -ENOMEM;
    }
    x_attach(x, c);
    x->uc = uc;
    x->sni = sni;
    *out = &x->x;
    return 0;
}

void mr_h2client_close_idle(mr_upx_ctx_t *ctx, mr_server_t *s)
{
    (void)ctx;
    for (h2c_t *c = s->h2, *next; c; c = next) {
        next = c->next;
        if (!c->nx) conn_close_soft(c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The exchange interface                                                                       */

static void x_bind(mr_upx_t *ux, void *owner, const mr_upx_ops_t *ops, const mr_upstream_conf_t *uc, uint64_t bp_limit)
{
    h2x_t *x = xof(ux);
    x->owner = owner;
    x->ops = ops;
    x->uc = uc;
    x->bp_limit = bp_limit;
    x->read_timeout_ms = uc->read_timeout_ms;
    ux->error_status = 0;
    ux->error_reason = NULL;
    ux->deadline_ms = 0;
    ux->server->active++;
    h2c_t *c = x->c;
    if (c) {
        /* The newest settings win (a reload may have changed them). */
        c->keepalive = uc->keepalive;
        c->keepalive_requests = (uint32_t)uc->keepalive_requests;
        c->keepalive_timeout_ms = uc->keepalive_timeout_ms;
    }
}

/* Fields that only mean something to one HTTP/1.1 hop (RFC 9113 8.2.2), and those the pseudo-
 * headers or the framing replace: never sent on HTTP/2. */
static bool not_forwarded(const char *name, size_t n)
{
    switch (n) {
    case 2: return strncasecmp(name, "te", 2) == 0;
    case 4: return strncasecmp(name, "host", 4) == 0;
    case 7: return strncasecmp(name, "upgrade", 7) == 0;
    case 10: return strncasecmp(name, "connection", 10) == 0 || strncasecmp(name, "keep-alive", 10) == 0;
    case 14: return strncasecmp(name, "content-length", 14) == 0;
    case 16: return strncasecmp(name, "proxy-connection", 16) == 0;
    case 17: return strncasecmp(name, "transfer-encoding", 17) == 0;
    default: return n == 0 || name[0] == ':';
    }
}

/* "TE: trailers" is the one TE HTTP/2 allows; gRPC servers require it. Sent when the client
 * asked for it, or when the request is gRPC. */
static bool wants_te_trailers(const mr_hdrs_t *h)
{
    for (uint32_t i = 0; h && i < h->n; i++) {
        const mr_hdr_t *e = &h->v[i];
        if (e->flags & MR_HDR_DELETED) continue;
        const char *v = mr_hdr_value(h, e);
        if (mr_hdr_name_is(h, e, "te", 2)) {
            for (uint32_t k = 0; k + 8 <= e->val_len; k++)
                if (strncasecmp(v + k, "trailers", 8) == 0) return true;
        } else if (mr_hdr_name_is(h, e, "content-type", 12) && e->val_len >= 16 &&
                   strncasecmp(v, "application/grpc", 16) == 0) {
            return true;
        }
    }
    return false;
}

static _Thread_local mr_vec_t scratch;
static _Thread_local nghttp2_nv *nvs;
static _Thread_local size_t nvs_cap;

void mr_h2client_thread_free(void)
{
    mr_vec_free(&scratch);
    free(nvs);
    nvs = NULL;
    nvs_cap = 0;
}

static char *put_lower(mr_vec_t *v, const char *s, size_t n)
{
    char *d = v->p + v->len;
    for (size_t i = 0; i < n; i++) d[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    v->len += (uint32_t)n;
    return d;
}

static char *put(mr_vec_t *v, const char *s, size_t n)
{
    char *d = v->p + v->len;
    mr_vec_put(v, s, n);
    return d;
}

#define NV(nm, nl, vl, vll) ((nghttp2_nv){ (uint8_t *)(nm), (uint8_t *)(vl), (nl), (vll), NGHTTP2_NV_FLAG_NONE })

static int x_send_head(mr_upx_t *ux, const mr_http_req_head_t *h)
{
    h2x_t *x = xof(ux);
    h2c_t *c = x->c;
    if (!c || c->closing) return -EPIPE;
    /* Everything is copied into one scratch buffer sized first (so no pointer moves), and
     * nghttp2 copies it again on submit. */
    size_t bytes = h->path_len + h->query_len + 2 + h->authority_len + 64;
    size_t count = 8 + (size_t)h->nextra;
    for (uint32_t i = 0; h->hdrs && i < h->hdrs->n; i++) {
        bytes += (size_t)h->hdrs->v[i].name_len;
        count++;
    }
    for (int i = 0; i < h->nextra; i++) bytes += h->extra[i].nlen + h->extra[i].vlen + h->extra[i].vlen2 + 2;
    if (bytes > HEAD_LIMIT) return -E2BIG;
    mr_vec_reset(&scratch);
    if (mr_vec_reserve(&scratch, bytes, HEAD_LIMIT) < 0) return -E2BIG;
    if (count > nvs_cap) {
        nghttp2_nv *n = realloc(nvs, count * sizeof *n);
        if (!n) return -ENOMEM;
        nvs = n;
        nvs_cap = count;
    }
    size_t k = 0;
    nvs[k++] = NV(":method", 7, h->method, strlen(h->method));
    nvs[k++] = NV(":scheme", 7, h->scheme, strlen(h->scheme));
    if (h->authority) nvs[k++] = NV(":authority", 10, h->authority, h->authority_len);
    char *path = scratch.p + scratch.len;
    if (h->path_len == 0 || h->path[0] != '/') put(&scratch, "/", 1);
    put(&scratch, h->path, h->path_len);
    if (h->query) {
        put(&scratch, "?", 1);
        put(&scratch, h->query, h->query_len);
    }
    nvs[k++] = NV(":path", 5, path, (size_t)(scratch.p + scratch.len - path));
    size_t hbytes = 0;
    for (uint32_t i = 0; h->hdrs && i < h->hdrs->n; i++) {
        const mr_hdr_t *e = &h->hdrs->v[i];
        if (e->flags & h->skip) continue;
        const char *name = mr_hdr_name(h->hdrs, e);
        if (not_forwarded(name, e->name_len)) continue;
        char *lc = put_lower(&scratch, name, e->name_len);
        nvs[k++] = NV(lc, e->name_len, mr_hdr_value(h->hdrs, e), e->val_len);
        hbytes += e->name_len + e->val_len + 32;
    }
    for (int i = 0; i < h->nextra; i++) {
        const mr_field_t *f = &h->extra[i];
        char *lc = put_lower(&scratch, f->name, f->nlen);
        const char *val = f->val;
        size_t vlen = f->vlen;
        if (f->val2) {
            char *joined = put(&scratch, f->val, f->vlen);
            put(&scratch, ", ", 2);
            put(&scratch, f->val2, f->vlen2);
            val = joined;
            vlen = f->vlen + 2 + f->vlen2;
        }
        nvs[k++] = NV(lc, f->nlen, val, vlen);
        hbytes += f->nlen + vlen + 32;
    }
    char cl[24];
    if (h->content_length >= 0) {
        int n = snprintf(cl, sizeof cl, "%lld", (long long)h->content_length);
        nvs[k++] = NV("content-length", 14, cl, (size_t)n);
    }
    if (wants_te_trailers(h->hdrs)) nvs[k++] = NV("te", 2, "trailers", 8);
    if (hbytes > HEAD_LIMIT) return -E2BIG;
    nghttp2_data_provider prd = { .source.ptr = x, .read_callback = read_body_cb };
    int32_t id = nghttp2_submit_request(c->ng, NULL, nvs, k, h->body ? &prd : NULL, x);
    if (id < 0) {
        if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) c->goaway = true; /* ids ran out: a new connection next */
        return id == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EAGAIN;
    }
    x->id = id;
    x->ng_open = true;
    x->provider = h->body;
    x_arm(x, loop_of(c));
    kick(c);
    return 0;
}

static void x_resume_out(h2x_t *x)
{
    h2c_t *c = x->c;
    if (x->out_deferred && x->ng_open && c && !c->closing) {
        x->out_deferred = false;
        nghttp2_session_resume_data(c->ng, x->id);
    }
    if (c) kick(c);
}

static void x_send_body(mr_upx_t *ux, const char *p, size_t n, int32_t bid)
{
    h2x_t *x = xof(ux);
    h2c_t *c = x->c;
    if (!c || !x->provider || x->out_eof || !x->ng_open || !n) return;
    int rc;
    if (bid >= 0) {
        rc = pieces_push(&x->out, p, n, bid, NULL, loop_of(c));
    } else {
        char *copy = malloc(n);
        rc = copy ? pieces_push(&x->out, memcpy(copy, p, n), n, MR_NO_BID, copy, loop_of(c)) : -ENOMEM;
        if (rc < 0) free(copy);
    }
    if (rc < 0) {
        x_record(x, 502, MR_UP_RETRY_NO, "%s", "out of memory");
        kick(c);
        return;
    }
    if (x_full(ux)) x->want_sent = true;
    x_resume_out(x);
}

static void x_send_copy(mr_upx_t *ux, const char *p, size_t n)
{
    x_send_body(ux, p, n, MR_NO_BID);
}

static void x_end_body(mr_upx_t *ux, const mr_hdrs_t *trailers)
{
    h2x_t *x = xof(ux);
    if (!x->c || !x->provider || x->out_eof) return;
    x->out_eof = true;
    for (uint32_t i = 0; trailers && i < trailers->n; i++) {
        const mr_hdr_t *e = &trailers->v[i];
        const char *name = mr_hdr_name(trailers, e);
        if ((e->flags & MR_HDR_DELETED) || not_forwarded(name, e->name_len)) continue;
        int j = mr_hdrs_add(&x->req_trailers, name, e->name_len, mr_hdr_value(trailers, e), e->val_len);
        if (j >= 0) {
            char *lc = x->req_trailers.buf.p + x->req_trailers.v[j].name_off;
            for (size_t b = 0; b < e->name_len; b++) if (lc[b] >= 'A' && lc[b] <= 'Z') lc[b] += 32;
        }
    }
    x_resume_out(x);
}

/* The request's trailer fields in a HEADERS frame that ends the stream (gRPC client streams). */
static bool submit_trailers(h2x_t *x)
{
    const mr_hdrs_t *t = &x->req_trailers;
    if (!t->n) return false;
    nghttp2_nv *nv = malloc(t->n * sizeof *nv);
    if (!nv) return false;
    for (uint32_t i = 0; i < t->n; i++)
        nv[i] = NV(mr_hdr_name(t, &t->v[i]), t->v[i].name_len, mr_hdr_value(t, &t->v[i]), t->v[i].val_len);
    int rc = nghttp2_submit_trailer(x->c->ng, x->id, nv, t->n);
    free(nv);
    return rc == 0;
}

static ssize_t read_body_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *user)
{
    (void)ng; (void)id; (void)user;
    h2x_t *x = src->ptr;
    mr_loop_t *loop = loop_of(x->c);
    size_t n = 0;
    while (n < length && x->out.count) {
        piece_t *e = &x->out.v[x->out.head];
        size_t k = e->len < length - n ? e->len : length - n;
        memcpy(buf + n, e->p, k);
        n += k;
        pieces_take(&x->out, k, loop);
    }
    if (!x->out.count && x->out_eof && x->owner) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (submit_trailers(x)) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM; /* the trailers end it */
        x->out_done = true;
        return (ssize_t)n;
    }
    if (n) return (ssize_t)n;
    x->out_deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

static bool x_full(const mr_upx_t *ux)
{
    const h2x_t *x = (const h2x_t *)ux;
    if (!x->c || !x->ng_open) return false;
    if (x->out.bytes > x->bp_limit) return true;
    if (!x->out.bytes) return false;
    return nghttp2_session_get_stream_remote_window_size(x->c->ng, x->id) <= 0 ||
           nghttp2_session_get_remote_window_size(x->c->ng) <= 0;
}

static void x_resume(mr_upx_t *ux)
{
    h2x_t *x = xof(ux);
    x->hold = false;
    if (x->c) kick(x->c);
}

static void x_skip_body(mr_upx_t *ux) { xof(ux)->nobody = true; }

static void x_release(mr_upx_t *ux, bool request_done)
{
    (void)request_done; /* a stream still open either way is cancelled alone */
    h2x_t *x = xof(ux);
    h2c_t *c = x->c;
    mr_loop_t *loop = c ? loop_of(c) : mr_loop_current();
    if (c && c->s.tls && !c->sess_saved && !mr_tls_session_reused(c->s.tls)) {
        /* The newest session, for the next connection's handshake (taken after a whole exchange,
         * so TLS 1.3 tickets have arrived). */
        mr_tls_session_t *sess = mr_tls_get_session(c->s.tls);
        if (sess) {
            if (c->server->tls_sess) mr_tls_session_free(c->server->tls_sess);
            c->server->tls_sess = sess;
            c->sess_saved = true;
        }
    }
    x_unbind(x, loop);
    x_cancel(x, loop);
    x_reap(x, loop);
}

static void x_close(mr_upx_t *ux)
{
    h2x_t *x = xof(ux);
    mr_loop_t *loop = x->c ? loop_of(x->c) : mr_loop_current();
    x_unbind(x, loop);
    x_cancel(x, loop);
    x_reap(x, loop);
}

static const mr_upx_vt_t vt = { x_bind, x_send_head, x_send_body, x_send_copy, x_end_body, x_full,
                                x_resume, x_skip_body, x_release, x_close };
