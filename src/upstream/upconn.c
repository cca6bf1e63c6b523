#include "upstream/upconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http1/write.h"
#include "net/net.h"

#define HEAD_LIMIT (256u * 1024u)

static const mr_sock_ops_t sock_ops;
static const mr_http1_cbs_t resp_cbs;

static inline mr_upconn_t *up_of(mr_sock_t *s) { return (mr_upconn_t *)s; }

static void up_free(mr_upconn_t *u)
{
    mr_upx_ctx_t *x = u->ctx;
    mr_hdrs_free(&u->hdrs);
    mr_hdrs_free(&u->trailers);
    mr_vec_free(&u->head);
    free(u);
    x->count--;
    if (x->gone) x->gone(x->gone_arg);
}

static void on_closed(mr_sock_t *s)
{
    mr_upconn_t *u = up_of(s);
    if (u->connect_op.active) return; /* the connect completion frees it */
    up_free(u);
}

static void unbind(mr_upconn_t *u)
{
    if (!u->owner) return;
    u->owner = NULL;
    u->ops = NULL;
    u->x.server->active--;
}

static void up_close(mr_upconn_t *u)
{
    mr_timer_stop(u->ctx->loop, &u->timer);
    mr_pool_remove(u->x.server, &u->link);
    unbind(u);
    if (u->connect_op.active) {
        u->s.closing = true;
        mr_loop_cancel(u->ctx->loop, &u->connect_op);
        return;
    }
    mr_sock_close(&u->s);
}

void mr_upconn_close_idle(mr_server_t *s)
{
    mr_pool_link_t *l;
    while ((l = mr_pool_take(s)))
        up_close((mr_upconn_t *)((char *)l - offsetof(mr_upconn_t, link)));
}

/* Why a socket failed: the TLS engine's reason when TLS failed, else the errno text. Formatted
 * into buf: the engine (and its message) goes away with the connection. */
static const char *sock_why(const mr_sock_t *s, int res, char *buf, size_t len)
{
    if (res == -EPROTO && s->tls && *mr_sock_tls_error(s)) snprintf(buf, len, "TLS: %s", mr_sock_tls_error(s));
    else snprintf(buf, len, "%s", strerror(-res));
    return buf;
}

/* The connection is done for: closed, and the owner (if any) told why. */
static void fail(mr_upconn_t *u, int status, const char *why, int retry)
{
    void *owner = u->owner;
    const mr_upx_ops_t *ops = u->ops;
    mr_server_t *srv = u->x.server;
    up_close(u);
    if (owner) ops->failed(owner, srv, status, why, retry);
}

/* A failed exchange on a connected socket: may the request be sent again? Only where it cannot
 * have been acted on twice. A failed TLS handshake is a failed connect: no request byte left (the
 * engine takes plaintext only once it is done). */
static int retry_kind(mr_upconn_t *u, int status)
{
    bool tls_failed = u->s.tls && !mr_tls_handshake_done(u->s.tls);
    if (tls_failed) u->x.server->down_until = mr_loop_now(u->ctx->loop) + 1000;
    if (u->got_bytes || status != 502) return MR_UP_RETRY_NO;
    if (!u->connected || tls_failed) return MR_UP_RETRY_ANY;
    return u->requests > 1 ? MR_UP_RETRY_IDEMPOTENT : MR_UP_RETRY_NO;
}

/* The request is not all out yet (queued or not yet given). */
static bool sending(const mr_upconn_t *u) { return !u->req_sent || mr_sock_sending(&u->s); }

static void timed_out(mr_loop_t *loop, mr_timer_t *t)
{
    mr_upconn_t *u = (mr_upconn_t *)((char *)t - offsetof(mr_upconn_t, timer));
    if (u->link.pooled) { up_close(u); return; }
    if (!u->connected) {
        u->x.server->down_until = mr_loop_now(loop) + 1000;
        fail(u, 504, "connect timed out", MR_UP_RETRY_ANY);
        return;
    }
    fail(u, 504, sending(u) && !u->head_seen ? "send timeout" : "read timeout", MR_UP_RETRY_NO);
}

static void connected(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_upconn_t *u = (mr_upconn_t *)((char *)op - offsetof(mr_upconn_t, connect_op));
    if (u->s.closing) {
        u->s.closing = false; /* let mr_sock_close run its normal path */
        mr_sock_close(&u->s);
        return;
    }
    char why[256];
    if (res < 0) {
        u->x.server->down_until = mr_loop_now(loop) + 1000;
        snprintf(why, sizeof why, "connect failed: %s", strerror(-res));
        fail(u, 502, why, MR_UP_RETRY_ANY);
        return;
    }
    u->connected = u->x.connected = true;
    if (u->s.tls && mr_sock_start_tls(&u->s, u->s.tls, true) < 0) {
        sock_why(&u->s, -EPROTO, why, sizeof why);
        fail(u, 502, why, retry_kind(u, 502));
        return;
    }
    mr_sock_start_recv(&u->s);
    if (u->owner) u->ops->ready(u->owner, &u->x);
    else up_close(u); /* its request went away while connecting */
}

static const mr_upx_vt_t vt;

static inline mr_upconn_t *of_x(mr_upx_t *x) { return (mr_upconn_t *)((char *)x - offsetof(mr_upconn_t, x)); }

int mr_upconn_open(mr_upx_ctx_t *x, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out)
{
    mr_pool_link_t *l = mr_pool_take(s);
    if (l) {
        mr_upconn_t *u = (mr_upconn_t *)((char *)l - offsetof(mr_upconn_t, link));
        mr_timer_stop(x->loop, &u->timer);
        *out = &u->x;
        return 0;
    }
    int fd = mr_net_socket_for(&s->sa);
    if (fd < 0) return fd;
    mr_upconn_t *u = calloc(1, sizeof *u);
    if (!u) { close(fd); return -ENOMEM; }
    mr_sock_init(&u->s, x->loop, fd, &sock_ops);
    u->ctx = x;
    x->count++;
    u->x.vt = &vt;
    u->x.server = s;
    u->x.hdrs = &u->hdrs;
    u->timer.fn = timed_out;
    u->connect_op.fn = connected;
    mr_http1_init(&u->resp, MR_HTTP1_RESPONSE, x->limits, &resp_cbs, u);
    mr_http1_set_store(&u->resp, &u->hdrs, &u->trailers);
    if (uc->tls) {
        /* Made now, while the config that names the SNI is surely alive; the handshake starts
         * once the TCP connect completes. The socket owns it from here. */
        u->s.tls = mr_tls_conn_new(uc->tls, false, sni);
        if (!u->s.tls) { close(fd); up_free(u); return -ENOMEM; }
        if (s->tls_sess) mr_tls_set_session(u->s.tls, s->tls_sess);
    }
    int rc = mr_loop_connect(x->loop, &u->connect_op, fd, (const struct sockaddr *)&s->sa.sa, s->sa.len);
    if (rc < 0) {
        close(fd);
        mr_tls_conn_free(u->s.tls);
        u->s.tls = NULL;
        up_free(u);
        return rc;
    }
    mr_timer_set(x->loop, &u->timer, uc->connect_timeout_ms);
    *out = &u->x;
    return 0;
}

static void x_bind(mr_upx_t *x, void *owner, const mr_upx_ops_t *ops, const mr_upstream_conf_t *uc, uint64_t bp_limit)
{
    mr_upconn_t *u = of_x(x);
    u->owner = owner;
    u->ops = ops;
    u->bp_limit = bp_limit;
    u->read_timeout_ms = uc->read_timeout_ms;
    u->send_timeout_ms = uc->send_timeout_ms;
    u->keepalive_timeout_ms = uc->keepalive_timeout_ms;
    u->keepalive = uc->keepalive;
    u->keepalive_requests = uc->keepalive_requests;
    u->hold = u->msg_done = u->tunnel = u->raw = u->want_upgrade = u->head_seen = u->chunked = u->req_sent = false;
    x->tunnel = false;
    x->raw = NULL;
    x->trailers = NULL;
    x->error_status = 0;
    x->error_reason = NULL;
    x->deadline_ms = 0;
    x->server->active++;
}

/* The upstream's timeouts as nginx's proxy_send_timeout / proxy_read_timeout: the longest the
 * upstream may go without taking a request byte (send_timeout, while the request is going out) or
 * giving a response byte (read_timeout, after), re-armed on every bit of progress: not a deadline
 * for the whole exchange, so a long upload or download that keeps moving is fine. Off while
 * moonring itself does not read (the client is slow: not the upstream's fault). The exchange's
 * deadline (grpc-timeout) still caps it. */
static void arm_wait(mr_upconn_t *u)
{
    uint64_t wait = sending(u) ? u->send_timeout_ms : u->read_timeout_ms;
    uint64_t now = mr_loop_now(u->ctx->loop), dl = u->x.deadline_ms;
    if (dl) wait = dl > now ? (dl - now < wait ? dl - now : wait) : 0;
    mr_timer_set(u->ctx->loop, &u->timer, wait);
}

static int x_send_head(mr_upx_t *x, const mr_http_req_head_t *h)
{
    mr_upconn_t *u = of_x(x);
    mr_vec_reset(&u->head);
    int rc = mr_http1_write_request(&u->head, h, HEAD_LIMIT);
    if (rc < 0) return rc;
    u->want_upgrade = h->upgrade != NULL;
    u->chunked = h->body && h->content_length < 0;
    mr_sock_send(&u->s, u->head.p, u->head.len, MR_NO_BID);
    u->requests++;
    u->req_sent = !h->body;
    arm_wait(u);
    return 0;
}

static void x_send_body(mr_upx_t *x, const char *p, size_t n, int32_t bid)
{
    mr_upconn_t *u = of_x(x);
    if (!u->chunked) {
        mr_sock_send(&u->s, p, n, bid);
        return;
    }
    char line[MR_H1_CHUNK_LINE_MAX];
    mr_sock_send(&u->s, line, mr_http1_chunk_line(line, n), MR_NO_BID);
    mr_sock_send(&u->s, p, n, bid);
    mr_sock_send(&u->s, MR_H1_CRLF, 2, MR_NO_BID);
}

static void x_send_copy(mr_upx_t *x, const char *p, size_t n)
{
    mr_upconn_t *u = of_x(x);
    if (!n) return;
    char line[MR_H1_CHUNK_LINE_MAX];
    if (u->chunked) mr_sock_send(&u->s, line, mr_http1_chunk_line(line, n), MR_NO_BID);
    /* A copy: the connection's queue may outlive the request's buffer. */
    char *copy = malloc(n);
    if (copy) {
        memcpy(copy, p, n);
        mr_sock_send_owned(&u->s, copy, n);
    }
    if (u->chunked) mr_sock_send(&u->s, MR_H1_CRLF, 2, MR_NO_BID);
}

/* Trailer fields are not forwarded on HTTP/1.1 (the last chunk goes out without any). */
static void x_end_body(mr_upx_t *x, const mr_hdrs_t *trailers)
{
    (void)trailers;
    mr_upconn_t *u = of_x(x);
    if (u->chunked) mr_sock_send(&u->s, MR_H1_LAST_CHUNK, 5, MR_NO_BID);
    u->req_sent = true;
    if (!u->head_seen && !u->hold) arm_wait(u);
}

static bool x_full(const mr_upx_t *x)
{
    const mr_upconn_t *u = (const mr_upconn_t *)((const char *)x - offsetof(mr_upconn_t, x));
    return mr_sock_full(&u->s, u->bp_limit);
}

static void pool_put(mr_upconn_t *u)
{
    mr_server_t *s = u->x.server;
    if (u->s.closing || u->ctx->draining || s->nidle >= u->keepalive ||
        u->requests >= (uint32_t)u->keepalive_requests || u->s.nin) {
        up_close(u);
        return;
    }
    mr_http1_next(&u->resp);
    u->got_bytes = false;
    mr_pool_put(s, &u->link);
    /* It may have been paused for backpressure; a pooled connection must keep reading so a
     * close by the upstream (or stray bytes) is noticed. */
    mr_sock_resume(&u->s);
    mr_timer_set(u->ctx->loop, &u->timer, u->keepalive_timeout_ms);
}

static void x_release(mr_upx_t *x, bool request_done)
{
    mr_upconn_t *u = of_x(x);
    mr_timer_stop(u->ctx->loop, &u->timer);
    bool reuse = request_done && u->resp.keep_alive && !u->s.nin && !u->s.eof && !u->s.err;
    if (u->s.tls && !mr_tls_session_reused(u->s.tls)) {
        /* Keep the newest session for the next connection's handshake (taken after a whole
         * exchange, so TLS 1.3 tickets, sent after the handshake, have arrived). */
        mr_tls_session_t *sess = mr_tls_get_session(u->s.tls);
        if (sess) {
            if (u->x.server->tls_sess) mr_tls_session_free(u->x.server->tls_sess);
            u->x.server->tls_sess = sess;
        }
    }
    unbind(u);
    if (reuse) {
        mr_http1_resume(&u->resp);
        pool_put(u);
    } else {
        up_close(u);
    }
}

static void start_tunnel(mr_upconn_t *u)
{
    mr_timer_stop(u->ctx->loop, &u->timer);
    u->raw = true;
    u->x.raw = &u->s;
}

static void feed(mr_upconn_t *u)
{
    while (u->owner && !u->s.closing) {
        bool resumed = false;
        if (mr_http1_paused(&u->resp)) {
            if (u->hold || u->msg_done) break;
            mr_http1_resume(&u->resp);
            resumed = true;
        }
        /* After a resume llhttp may finish a message without more input (HEAD, 204). */
        if (!u->s.nin && !resumed) break;
        mr_in_t *in = u->s.nin ? &u->s.in[0] : NULL;
        const char *p = in ? mr_loop_buf_ptr(u->ctx->loop, (uint16_t)in->bid) + in->off : "";
        size_t len = in ? in->len : 0;
        size_t used = 0;
        int rc = mr_http1_feed(&u->resp, p, len, &used);
        if (rc < 0) {
            char why[160];
            int st = u->resp.error_status == 500 ? 500 : 502;
            snprintf(why, sizeof why, "invalid response: %s", u->resp.error_reason ? u->resp.error_reason : "parse error");
            mr_sock_consume(&u->s, len);
            fail(u, st, why, MR_UP_RETRY_NO);
            return;
        }
        mr_sock_consume(&u->s, used);
        if (u->tunnel && (rc == MR_HTTP1_UPGRADE || rc == MR_HTTP1_PAUSED)) {
            start_tunnel(u);
            u->ops->tunnel(u->owner, &u->x);
            return;
        }
        if (u->msg_done) {
            u->ops->done(u->owner, &u->x);
            return;
        }
        if (!in && rc == MR_HTTP1_OK) break;
    }
    if (u->s.closing) return;
    if (u->owner && u->s.nin >= MR_IN_MAX - 2) {
        mr_sock_pause(&u->s);
        mr_timer_stop(u->ctx->loop, &u->timer);
    } else {
        mr_sock_resume(&u->s);
        if (!u->owner || u->raw) return;
        if (u->hold) mr_timer_stop(u->ctx->loop, &u->timer);
        else arm_wait(u);
    }
}

static void x_resume(mr_upx_t *x)
{
    mr_upconn_t *u = of_x(x);
    u->hold = false;
    feed(u);
}

static void x_skip_body(mr_upx_t *x) { mr_http1_skip_body(&of_x(x)->resp); }

static void x_close(mr_upx_t *x) { up_close(of_x(x)); }


static void on_recv(mr_sock_t *s, int res)
{
    mr_upconn_t *u = up_of(s);
    if (res > 0) {
        if (u->link.pooled) { up_close(u); return; } /* bytes on an idle connection: not ours to keep */
        if (!u->owner) return;
        u->got_bytes = true;
        if (u->raw) u->ops->tunnel(u->owner, &u->x);
        else feed(u);
        return;
    }
    if (!u->owner) { up_close(u); return; }
    if (u->raw) { u->ops->tunnel(u->owner, &u->x); return; }
    if (res == 0 && u->got_bytes && u->resp.head_done && u->head_seen && !u->msg_done) {
        /* A close-delimited body ends here; anything else is a truncated response. */
        if (mr_http1_finish(&u->resp) == 0 && u->msg_done) {
            u->ops->done(u->owner, &u->x);
            return;
        }
    }
    if (u->msg_done) return; /* the owner holds a complete response (a Lua phase is parked) */
    char why[256];
    if (res == 0) snprintf(why, sizeof why, "closed the connection prematurely");
    else sock_why(s, res, why, sizeof why);
    fail(u, 502, why, retry_kind(u, 502));
}

static void on_sent(mr_sock_t *s, int res)
{
    mr_upconn_t *u = up_of(s);
    if (!u->owner) return;
    if (res < 0) {
        char why[256];
        fail(u, 502, sock_why(s, res, why, sizeof why), retry_kind(u, 502));
        return;
    }
    if (u->raw) { u->ops->tunnel(u->owner, &u->x); return; }
    if (!u->head_seen && !u->hold) arm_wait(u); /* the request is still going out: progress */
    u->ops->sent(u->owner, &u->x);
}

static const mr_sock_ops_t sock_ops = { on_recv, on_sent, on_closed };

/* Response parser callbacks. */
static int on_head(mr_http1_msg_t *m)
{
    mr_upconn_t *u = m->owner;
    if (!u->owner) return -1;
    int st = m->status;
    if (st >= 100 && st < 200) {
        if (st == 101 && u->want_upgrade) {
            u->tunnel = true;
        } else if (st == 101) {
            m->error_status = 502;
            m->error_reason = "101 without an upgrade request";
            return -1;
        } else {
            return 0; /* interim responses are not forwarded (the core answered 100-continue) */
        }
    }
    u->head_seen = true;
    u->x.tunnel = u->tunnel;
    u->x.status = st;
    u->x.reason = mr_http1_str(m, m->reason_off);
    u->x.reason_len = m->reason_len;
    u->x.content_length = m->content_length;
    u->x.length_known = m->content_length >= 0 && !m->chunked;
    int rc = u->ops->head(u->owner, &u->x);
    if (rc == MR_UP_HOLD) {
        u->hold = true;
        return HPE_PAUSED;
    }
    if (rc < 0) {
        m->error_status = u->x.error_status;
        m->error_reason = u->x.error_reason;
    }
    return rc;
}

static int on_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    if (n == 0) return 0; /* llhttp flushes empty spans at buffer ends; a 0 chunk would end the body */
    mr_upconn_t *u = m->owner;
    if (!u->owner) return -1;
    int rc = u->ops->body(u->owner, &u->x, p, n, u->s.in[0].bid);
    if (rc == MR_UP_HOLD) {
        u->hold = true;
        return HPE_PAUSED;
    }
    if (rc < 0) {
        m->error_status = u->x.error_status;
        m->error_reason = u->x.error_reason;
    }
    return rc;
}

static int on_done(mr_http1_msg_t *m)
{
    mr_upconn_t *u = m->owner;
    if (!u->owner) return -1;
    if (!u->head_seen) return 0; /* an interim (1xx) response ended */
    if (u->tunnel) return HPE_PAUSED;
    /* Stop here: the owner hears of it once the parser returned (feed), outside llhttp. */
    u->msg_done = true;
    u->x.trailers = u->trailers.n ? &u->trailers : NULL;
    return HPE_PAUSED;
}

static const mr_http1_cbs_t resp_cbs = { on_head, on_body, on_done };

static const mr_upx_vt_t vt = { x_bind, x_send_head, x_send_body, x_send_copy, x_end_body, x_full,
                                x_resume, x_skip_body, x_release, x_close };
