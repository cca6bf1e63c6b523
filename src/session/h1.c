#include "session/h1.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/gen.h"
#include "http1/http1.h"
#include "http1/write.h"
#include "log/log.h"
#include "net/net.h"
#include "session/h2.h"

#define HEAD_LIMIT (256u * 1024u)
#define DRAIN_IDLE_GRACE_MS 1000u /* see h1_shutdown */
#define LINGER_MS 2000u
#define REQ_CACHE_MAX 256
#define REQ_TRIM (16u * 1024u)    /* buffers above this go back to malloc with the request */

/* Why the request parser is paused: HOLD until the core asks for the body (read_body), DONE
 * after a complete request until its response is complete. */
enum { P_NONE = 0, P_HOLD, P_DONE };
/* Response framing towards the client. */
enum { OUT_LENGTH = 0, OUT_CHUNKED, OUT_CLOSE, OUT_NONE };

typedef struct h1 h1_t;

/* The current exchange; zeroed when a request head arrives. Bit-fields here and in struct h1:
 * every idle connection carries them, and packed they keep struct h1 in a smaller malloc class. */
typedef struct {
    bool active : 1;            /* a request is in progress */
    bool req_done : 1;          /* request fully read */
    bool resp_started : 1, resp_done : 1;
    bool close_after : 1;       /* Connection: close after this response */
    bool client_close : 1;      /* the client said this is its last request (close, or 1.0) */
    bool read_all : 1;          /* the parser saw its end (req_done is also set on a failure) */
    bool sent_continue : 1;
    uint8_t out_mode : 2;       /* OUT_* */
} h1_exchange_t;

/* A request of this session: the protocol-independent request and what HTTP/1 adds to it. The
 * parser lives here, not in the connection: between requests it is at a message boundary, where a
 * fresh one is equivalent, so an idle connection does not carry its 240 bytes. */
typedef struct h1_req {
    mr_req_t req;               /* first */
    h1_t *h;
    mr_http1_msg_t p;           /* request parser; its stores are req's */
    mr_sock_t *up;              /* a tunnel's other end (a tunnel keeps its request) */
    mr_vec_t out_head;          /* the response head: alive until sent */
    struct h1_req *next_free;
} h1_req_t;

struct h1 {
    mr_conn_t c;                /* first */
    mr_timer_t timer;
    mr_defer_t feed_defer;
    h1_req_t *q;                /* current request, NULL while idle */
    uint32_t nrequests;
    uint8_t pause : 2;          /* P_* */
    bool in_feed : 1, feed_again : 1;   /* re-entrancy guard for feed */
    bool failed : 1;            /* a parse error was answered: further input is discarded */
    bool lingering : 1;         /* response sent, write side shut, draining input before close */
    bool close_on_sent : 1;     /* the response broke off midway: send what is queued, then close */
    bool tunnel : 1;
    bool dead : 1;              /* closed: freed once the queued feed_defer has run */
    bool sniffed : 1;           /* the first bytes were checked for the HTTP/2 preface */
    h1_exchange_t x;
};

static const mr_conn_ops_t conn_ops;
static const mr_sock_ops_t sock_ops;
static const mr_http1_cbs_t req_cbs;
static const mr_resp_ops_t resp_ops;

static void feed(h1_t *h);
static void h1_close(h1_t *h);
static void check_finish(h1_t *h);

static inline h1_t *h1_of_sock(mr_sock_t *s) { return (h1_t *)s; }
static inline h1_t *h1_of(mr_req_t *r) { return ((h1_req_t *)r)->h; }
static inline mr_proxy_t *px_of(const h1_t *h) { return h->c.set->px; }
/* Connection-level settings come from the current generation; a request's own from its. */
static inline const mr_config_t *cfg_now(const h1_t *h) { return px_of(h)->gen->cfg; }
static inline uint64_t bp_limit(const h1_t *h)
{
    const mr_req_t *r = h->q ? &h->q->req : NULL;
    return (r && r->gen ? r->gen->cfg : cfg_now(h))->buffer_size;
}

/* ------------------------------------------------------------------------------------------ */
/* Request objects: taken when a request's first byte arrives, given back when it is over.       */

static _Thread_local h1_req_t *req_cache;
static _Thread_local int req_cached;

static void req_take(h1_t *h)
{
    if (h->q) return;
    h1_req_t *q = req_cache;
    mr_proxy_t *px = px_of(h);
    uint32_t limit = px->h1limits.max_request_line + px->h1limits.max_header_size + 65536;
    if (q) {
        req_cache = q->next_free;
        req_cached--;
        mr_req_reset(&q->req);
        q->req.px = px;
        q->req.out = &resp_ops;
        q->req.peer = &h->c.peer;
        q->req.hdrs.limit = q->req.trailers.limit = limit;
        q->up = NULL;
        mr_vec_reset(&q->out_head);
    } else {
        q = calloc(1, sizeof *q);
        if (!q) return;
        mr_req_init(&q->req, px, &resp_ops, &h->c.peer, limit);
    }
    q->h = h;
    h->q = q;
    mr_http1_init(&q->p, MR_HTTP1_REQUEST, &px->h1limits, &req_cbs, h);
    mr_http1_set_store(&q->p, &q->req.hdrs, &q->req.trailers);
}

static void trim(mr_vec_t *v)
{
    if (v->cap > REQ_TRIM) mr_vec_free(v);
}

/* Gives the request object back. Only once nothing queued points into it (its head, its local
 * body): after the response was sent, or after the socket's last completion. */
static void req_give(h1_t *h)
{
    h1_req_t *q = h->q;
    if (!q) return;
    h->q = NULL;
    if (req_cached >= REQ_CACHE_MAX) {
        mr_req_free(&q->req);
        mr_vec_free(&q->out_head);
        free(q);
        return;
    }
    mr_req_t *r = &q->req;
    trim(&r->hdrs.buf);
    trim(&r->local_body);
    trim(&r->lua_body);
    trim(&r->norm);
    trim(&q->out_head);
    q->h = NULL;
    q->next_free = req_cache;
    req_cache = q;
    req_cached++;
}

void mr_h1_thread_free(void)
{
    while (req_cache) {
        h1_req_t *q = req_cache;
        req_cache = q->next_free;
        mr_req_free(&q->req);
        mr_vec_free(&q->out_head);
        free(q);
    }
    req_cached = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Closing                                                                                      */

static void h1_free(h1_t *h)
{
    mr_conns_t *cs = h->c.set;
    req_give(h);
    free(h);
    mr_conns_freed(cs);
}

/* The connection's memory goes back (also after HTTP/2 took it over: the h2 session calls this). */
static void conn_freed(mr_conn_t *c) { h1_free((h1_t *)c); }

static void on_closed(mr_sock_t *s)
{
    h1_t *h = h1_of_sock(s);
    /* A queued defer points at us: free when it has run. */
    if (mr_defer_queued(&h->feed_defer)) h->dead = true;
    else h1_free(h);
}

static void h1_close(h1_t *h)
{
    if (h->c.s.closing) return;
    mr_timer_stop(h->c.s.loop, &h->timer);
    if (h->q) mr_proxy_drop(&h->q->req);
    mr_conns_remove(&h->c);
    mr_sock_close(&h->c.s);
}

/* Closing with unread input makes the kernel send RST, which can destroy the response we just
 * sent before the client reads it. So shut the write side, drain briefly, then close.
 * Not when the client itself ended the connection with this request (Connection: close, or
 * HTTP/1.0 without keep-alive) and every byte of it was read: nothing more is coming that a RST
 * could answer, so it closes at once, as nginx does. A close the client did not ask for (an error,
 * an unread body, keepalive_requests, a drain) still lingers: a keep-alive client may have sent
 * its next request already. TLS lingers too, so that close_notify goes out first. */
static void linger_close(h1_t *h)
{
    if (h->c.s.closing || h->lingering) return;
    if (h->c.s.eof || h->c.s.err) { h1_close(h); return; }
    if (h->x.client_close && h->x.read_all && !h->failed && !h->c.s.nin && !h->c.s.tls) {
        h1_close(h);
        return;
    }
    h->lingering = true;
    mr_sock_shutdown_write(&h->c.s); /* TLS: close_notify first */
    mr_sock_consume(&h->c.s, (size_t)-1);
    mr_sock_resume(&h->c.s);
    mr_timer_set(h->c.s.loop, &h->timer, LINGER_MS);
}

static void tunnel_pump(h1_t *h)
{
    mr_sock_t *up = h->q ? h->q->up : NULL;
    if (!up) { h1_close(h); return; }
    uint64_t limit = bp_limit(h);
    mr_sock_pump(&h->c.s, up, limit);
    mr_sock_pump(up, &h->c.s, limit);
    if ((h->c.s.eof && !h->c.s.nin) || (up->eof && !up->nin)) h1_close(h);
}

/* The head fields the parser knows, for the access log of a request it rejected. */
static void note_line(h1_t *h, mr_req_t *r)
{
    mr_http1_msg_t *p = &h->q->p;
    if (r->line_known || !mr_http1_line_done(p)) return;
    r->method = (uint8_t)llhttp_get_method(&p->parser);
    r->method_name = llhttp_method_name((llhttp_method_t)r->method);
    r->version = (uint8_t)(llhttp_get_http_major(&p->parser) * 10 + llhttp_get_http_minor(&p->parser));
    r->target_off = p->url_off;
    r->target_len = p->url_len;
    r->line_known = true;
}

/* Answers an error for the current (or a half-read) request and closes after it. */
static void h1_fail(h1_t *h, int status)
{
    req_take(h);
    if (!h->q) { h1_close(h); return; }
    mr_req_t *r = &h->q->req;
    if (!h->x.active) {
        h->x = (h1_exchange_t){ .active = true };
        note_line(h, r);
    }
    h->x.req_done = true; /* nothing more will be read as a request */
    h->x.close_after = true;
    mr_proxy_fail(r, status);
}

static void timed_out(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    h1_t *h = (h1_t *)((char *)t - offsetof(h1_t, timer));
    if (h->tunnel) return;
    if (h->lingering || h->close_on_sent) { h1_close(h); return; }
    if (!h->x.active) {
        if (h->c.s.nin || (h->q && (h->q->p.head_bytes || h->q->p.url_len))) h1_fail(h, 408);
        else h1_close(h);
        return;
    }
    if (!h->x.req_done && !h->x.resp_started) { h1_fail(h, 408); return; }
    h1_close(h);
}

/* ------------------------------------------------------------------------------------------ */
/* The exchange                                                                                 */

static void request_finish(h1_t *h)
{
    mr_proxy_t *px = px_of(h);
    mr_proxy_end(&h->q->req);
    h->nrequests++;
    h->x.active = false;
    if (h->x.close_after) { linger_close(h); return; }
    req_give(h); /* the parser with it: the next request gets a fresh one */
    h->pause = P_NONE;
    const mr_limits_t *lim = &cfg_now(h)->limits;
    uint32_t idle = h->c.s.nin ? lim->header_timeout_ms : lim->keepalive_timeout_ms;
    if (px->draining) {
        /* Draining began after this response's head promised keep-alive: the client may send
         * its next request at any moment, so close only after the idle grace (see h1_shutdown). */
        h->x.close_after = true;
        if (idle > DRAIN_IDLE_GRACE_MS) idle = DRAIN_IDLE_GRACE_MS;
    }
    mr_timer_set(h->c.s.loop, &h->timer, idle);
    feed(h);
}

static void check_finish(h1_t *h)
{
    if (!h->x.active || h->c.s.closing || h->lingering) return;
    if (!h->x.resp_done || mr_sock_sending(&h->c.s)) return;
    if (!h->x.req_done) {
        if (!h->x.close_after) return; /* still reading (discarding) the body */
        /* The rest of the request will not be read: log it, then close. */
        mr_proxy_end(&h->q->req);
        h->nrequests++;
        h->x.active = false;
        linger_close(h);
        return;
    }
    request_finish(h);
}

/* ------------------------------------------------------------------------------------------ */
/* The response interface                                                                       */

static void out_read_body(mr_req_t *r)
{
    h1_t *h = h1_of(r);
    if (h->pause == P_HOLD) h->pause = P_NONE;
    if (h->in_feed) h->feed_again = true;
    else mr_loop_defer(h->c.s.loop, &h->feed_defer);
}

static void out_send_continue(mr_req_t *r)
{
    h1_t *h = h1_of(r);
    if (!r->expect_continue || h->x.sent_continue || h->x.req_done || !r->has_body) return;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    h->x.sent_continue = true;
    mr_sock_send(&h->c.s, cont, sizeof cont - 1, MR_NO_BID);
}

static int out_head(mr_req_t *r)
{
    h1_t *h = h1_of(r);
    int st = r->resp.status;
    bool nobody = r->method == HTTP_HEAD || st == 204 || st == 304 || st < 200;
    mr_h1_resp_head_t hd = { .status = st, .reason = r->resp.reason, .reason_len = r->resp.reason_len,
                             .hdrs = r->resp.hdrs, .skip = MR_HDR_HOP | MR_HDR_DELETED, .length = -1 };
    if (r->tunnel) {
        h->x.out_mode = OUT_NONE;
        hd.connection = "upgrade";
        const mr_hdrs_t *rh = r->resp.hdrs;
        int u = rh ? mr_hdrs_find(rh, "upgrade", 7, 0) : -1;
        if (u >= 0) {
            hd.upgrade = mr_hdr_value(rh, &rh->v[u]);
            hd.upgrade_len = rh->v[u].val_len;
        }
    } else if (nobody) {
        h->x.out_mode = OUT_NONE;
        hd.length = r->resp.length;
    } else if (r->resp.length >= 0) {
        h->x.out_mode = OUT_LENGTH;
        hd.framing = MR_H1_FRAME_LENGTH;
        hd.length = r->resp.length;
    } else if (r->version >= 11) {
        h->x.out_mode = OUT_CHUNKED;
        hd.framing = MR_H1_FRAME_CHUNKED;
    } else {
        h->x.out_mode = OUT_CLOSE;
        h->x.close_after = true;
    }
    if (!r->tunnel) {
        /* Answering before the request body was read: the rest of it would be parsed as the
         * next request (0.CL desync), so the connection ends with this response. */
        if (!h->x.req_done && r->has_body) h->x.close_after = true;
        if (r->close || px_of(h)->draining) h->x.close_after = true;
        if (h->x.close_after) hd.connection = "close";
        else if (r->version == 10) hd.connection = "keep-alive";
    }
    h1_req_t *q = (h1_req_t *)r;
    mr_vec_reset(&q->out_head);
    int rc = mr_http1_write_response(&q->out_head, &hd, HEAD_LIMIT);
    if (rc < 0) return rc;
    h->x.resp_started = true;
    mr_sock_send(&h->c.s, q->out_head.p, q->out_head.len, MR_NO_BID);
    return 0;
}

static int out_data(mr_req_t *r, const char *p, size_t n, int32_t bid, char *owned)
{
    h1_t *h = h1_of(r);
    mr_sock_t *s = &h->c.s;
    if (h->x.out_mode == OUT_NONE) { free(owned); return 0; }
    char line[MR_H1_CHUNK_LINE_MAX];
    if (h->x.out_mode == OUT_CHUNKED) mr_sock_send(s, line, mr_http1_chunk_line(line, n), MR_NO_BID);
    if (owned) mr_sock_send_owned(s, owned, n);
    else mr_sock_send(s, p, n, bid);
    if (h->x.out_mode == OUT_CHUNKED) mr_sock_send(s, MR_H1_CRLF, 2, MR_NO_BID);
    if (!mr_sock_full(s, bp_limit(h))) return 0;
    /* The client reads slower than the response comes: bound the wait. */
    mr_timer_set(s->loop, &h->timer, r->gen ? r->gen->cfg->limits.send_timeout_ms : cfg_now(h)->limits.send_timeout_ms);
    return 1;
}

static void out_finish(mr_req_t *r)
{
    h1_t *h = h1_of(r);
    if (h->x.out_mode == OUT_CHUNKED) {
        mr_vec_t t = { 0 };
        if (r->resp.trailers && mr_http1_write_last_chunk(&t, r->resp.trailers, MR_HDR_DELETED, HEAD_LIMIT) == 0)
            mr_sock_send_owned(&h->c.s, t.p, t.len); /* the queue frees it once sent */
        else {
            mr_vec_free(&t);
            mr_sock_send(&h->c.s, MR_H1_LAST_CHUNK, 5, MR_NO_BID);
        }
    }
    h->x.resp_done = true;
    if (h->x.req_done) mr_timer_stop(h->c.s.loop, &h->timer);
    check_finish(h);
}

/* The response cannot be completed (the upstream failed after its head went out): the client
 * learns it from the close, but only after the bytes already queued, which are valid, reach it;
 * closing at once would cancel those sends and leave it with less than the origin sent. */
static void out_abort(mr_req_t *r)
{
    h1_t *h = h1_of(r);
    if (h->c.s.closing) return;
    h->x.close_after = true;
    if (!mr_sock_queued(&h->c.s) || h->c.s.err) { h1_close(h); return; }
    h->close_on_sent = true;
    mr_sock_pause(&h->c.s);
    mr_timer_set(h->c.s.loop, &h->timer, cfg_now(h)->limits.send_timeout_ms);
}

static void out_tunnel(mr_req_t *r, mr_sock_t *up)
{
    h1_t *h = h1_of(r);
    if (!h->tunnel) {
        h->tunnel = true;
        h->pause = P_NONE;
        mr_timer_stop(h->c.s.loop, &h->timer);
    }
    ((h1_req_t *)r)->up = up;
    tunnel_pump(h);
}

static const mr_resp_ops_t resp_ops = { out_read_body, out_send_continue, out_head, out_data,
                                        out_finish, out_abort, out_tunnel };

/* ------------------------------------------------------------------------------------------ */
/* Request parser callbacks                                                                     */

static int req_on_head(mr_http1_msg_t *m)
{
    h1_t *h = m->owner;
    mr_req_t *r = &h->q->req;
    mr_proxy_t *px = px_of(h);
    const mr_limits_t *lim = &cfg_now(h)->limits;
    h->x = (h1_exchange_t){ .active = true };
    h->pause = P_HOLD;
    r->method = m->method;
    r->method_name = mr_http1_method_str(m);
    r->version = (uint8_t)(m->major * 10 + m->minor);
    r->line_known = true;
    r->target_off = m->url_off;
    r->target_len = m->url_len;
    r->host_idx = m->host_idx;
    r->content_length = m->chunked ? -1 : m->content_length;
    r->has_body = m->has_body;
    r->chunked = m->chunked;
    r->expect_continue = m->expect_continue;
    r->upgrade = m->upgrade;
    r->head_done = true;
    h->x.client_close = !m->keep_alive;
    h->x.close_after = !m->keep_alive || px->draining || h->nrequests + 1 >= lim->keepalive_requests;
    if (m->has_body) mr_timer_set(h->c.s.loop, &h->timer, lim->body_timeout_ms);
    else mr_timer_stop(h->c.s.loop, &h->timer);
    mr_proxy_start(r);
    return 0;
}

static int req_on_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    if (n == 0) return 0; /* llhttp flushes empty spans at buffer ends; a 0 chunk would end the body */
    h1_t *h = m->owner;
    mr_req_t *r = &h->q->req;
    mr_timer_set(h->c.s.loop, &h->timer, (r->gen ? r->gen->cfg : cfg_now(h))->limits.body_timeout_ms);
    int rc = mr_proxy_body(r, p, n, h->c.s.in[0].bid);
    if (rc == 1) {
        h->pause = P_HOLD;
        return HPE_PAUSED;
    }
    if (rc < 0) {
        m->error_status = -rc;
        /* These bytes are consumed and could not be kept: the body cannot be honoured. */
        m->error_reason = rc == -413 ? "request body too large" : "out of memory buffering the request body";
        return -1;
    }
    return 0;
}

static int req_on_done(mr_http1_msg_t *m)
{
    h1_t *h = m->owner;
    h->x.req_done = h->x.read_all = true;
    h->pause = P_DONE;
    /* The rest is the upstream's read timeout, the Lua phases' own, or the send timeout. */
    mr_timer_stop(h->c.s.loop, &h->timer);
    mr_proxy_body_end(&h->q->req);
    check_finish(h);
    return 0;
}

static const mr_http1_cbs_t req_cbs = { req_on_head, req_on_body, req_on_done };

/* ------------------------------------------------------------------------------------------ */
/* Input                                                                                        */

/* 1: HTTP/1 (go on), 2: the HTTP/2 connection preface, 0: too few bytes to tell yet. */
static int sniff(h1_t *h)
{
    mr_sock_t *s = &h->c.s;
    if (!h->c.h2conf.enabled) { h->sniffed = true; return 1; }
    size_t got = 0;
    for (uint32_t i = 0; i < s->nin && got < MR_H2_PREFACE_LEN; i++) {
        const char *p = mr_loop_buf_ptr(s->loop, (uint16_t)s->in[i].bid) + s->in[i].off;
        size_t n = s->in[i].len;
        if (n > MR_H2_PREFACE_LEN - got) n = MR_H2_PREFACE_LEN - got;
        if (memcmp(p, &MR_H2_PREFACE[got], n) != 0) { h->sniffed = true; return 1; }
        got += n;
    }
    if (got < MR_H2_PREFACE_LEN) return 0;
    h->sniffed = true;
    return 2;
}

/* The connection speaks HTTP/2 from here on: the h2 session takes the socket and its input. */
static void takeover(h1_t *h)
{
    mr_timer_stop(h->c.s.loop, &h->timer);
    if (mr_h2_takeover(&h->c) < 0) h1_close(h);
}

static void feed(h1_t *h)
{
    mr_sock_t *s = &h->c.s;
    if (h->failed) {
        /* The rest of a rejected request (e.g. a header flood spanning several reads) must not
         * be parsed again, nor trigger a second answer: drop it until the close. */
        mr_sock_consume(s, (size_t)-1);
        return;
    }
    if (h->in_feed) { h->feed_again = true; return; }
    h->in_feed = true;
    do {
        h->feed_again = false;
        while (!s->closing && !h->tunnel && !h->lingering) {
            bool resumed = false;
            if (h->q && mr_http1_paused(&h->q->p)) {
                if (h->pause == P_HOLD) break;
                if (h->pause == P_DONE && h->x.active) break;
                mr_http1_resume(&h->q->p);
                resumed = true;
            }
            /* After a resume llhttp may have work that needs no input (e.g. completing a
             * bodiless request), so feed it an empty span once. */
            if (!s->nin && !resumed) break;
            if (!h->sniffed) {
                int rc = sniff(h);
                if (rc == 0) break;          /* a prefix of the preface: wait for more */
                if (rc == 2) { h->in_feed = false; takeover(h); return; }
            }
            req_take(h);
            if (!h->q) { h1_close(h); break; }
            mr_in_t *in = s->nin ? &s->in[0] : NULL;
            const char *p = in ? mr_loop_buf_ptr(s->loop, (uint16_t)in->bid) + in->off : "";
            size_t len = in ? in->len : 0;
            size_t used = 0;
            mr_http1_msg_t *m = &h->q->p;
            int rc = mr_http1_feed(m, p, len, &used);
            if (rc < 0) {
                mr_sock_consume(s, len);
                int st = m->error_status ? m->error_status : 400;
                mr_info("client %s: %d: %s", h->c.peer.ip, st, m->error_reason ? m->error_reason : "bad request");
                h->failed = true;
                h1_fail(h, st);
                break;
            }
            mr_sock_consume(s, used);
            if (rc == MR_HTTP1_UPGRADE) break; /* tunnel bytes wait for the upstream's 101 */
            if (!in && rc == MR_HTTP1_OK) break;
        }
    } while (h->feed_again && !s->closing);
    h->in_feed = false;
    if (s->closing || h->tunnel || h->lingering) return;
    /* Read ahead only while it is useful and bounded. Not at all once the client's last request
     * (see linger_close) is read: then the connection closes as soon as the response is sent,
     * with no recv left to cancel first, so the FIN follows the response within the same turn. */
    bool last_read = h->x.active && h->x.client_close && h->x.read_all && !s->tls;
    if (last_read || s->nin >= MR_IN_MAX - 2 || (s->nin && h->x.active && h->pause != P_NONE)) mr_sock_pause(s);
    else mr_sock_resume(s);
}

static void feed_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    h1_t *h = (h1_t *)((char *)d - offsetof(h1_t, feed_defer));
    if (h->dead) h1_free(h);
    else if (!h->c.s.closing) feed(h);
}

static void on_recv(mr_sock_t *s, int res)
{
    h1_t *h = h1_of_sock(s);
    if (h->close_on_sent) {
        if (res <= 0) h1_close(h);
        return;
    }
    if (h->lingering) {
        if (res <= 0) h1_close(h);
        else mr_sock_consume(s, (size_t)-1);
        return;
    }
    if (res <= 0) {
        if (h->tunnel) { tunnel_pump(h); return; }
        if (h->x.active && h->x.req_done && !h->x.resp_done) {
            h->x.close_after = true; /* half-close after a full request: still answer it */
            return;
        }
        h1_close(h);
        return;
    }
    if (h->tunnel) { tunnel_pump(h); return; }
    const mr_limits_t *lim = &cfg_now(h)->limits;
    if (!h->x.active && (!mr_timer_armed(&h->timer) || !h->q || h->q->p.head_bytes == 0))
        mr_timer_set(s->loop, &h->timer, lim->header_timeout_ms);
    feed(h);
}

static void on_sent(mr_sock_t *s, int res)
{
    h1_t *h = h1_of_sock(s);
    if (res < 0 || h->close_on_sent) { h1_close(h); return; }
    if (h->tunnel) { tunnel_pump(h); return; }
    if (h->x.active && h->x.req_done && h->x.resp_started && !h->x.resp_done) mr_timer_stop(s->loop, &h->timer);
    if (h->q && h->x.active) mr_proxy_sent(&h->q->req);
    check_finish(h);
}

static const mr_sock_ops_t sock_ops = { on_recv, on_sent, on_closed };

/* ------------------------------------------------------------------------------------------ */
/* Connection                                                                                   */

static void h1_shutdown(mr_conn_t *c)
{
    h1_t *h = (h1_t *)c;
    /* A response already started without Connection: close keeps its promise: request_finish
     * gives the connection the idle grace below instead of closing it under the client. */
    if (!h->x.resp_started || h->tunnel) h->x.close_after = true;
    /* An idle keep-alive connection is not closed at once: its client may have sent the next
     * request already (a pipelining or busy client has no idle time on its side), and that
     * request would be reset. It gets a short grace instead; a request arriving in it is
     * answered with Connection: close. */
    if (!h->x.active && !c->s.nin && !h->tunnel) {
        uint32_t ka = cfg_now(h)->limits.keepalive_timeout_ms;
        mr_timer_set(c->s.loop, &h->timer, ka < DRAIN_IDLE_GRACE_MS ? ka : DRAIN_IDLE_GRACE_MS);
    }
}

static void h1_close_conn(mr_conn_t *c) { h1_close((h1_t *)c); }

static int h1_close_gen(mr_conn_t *c, mr_gen_t *g)
{
    h1_t *h = (h1_t *)c;
    if (!h->q || h->q->req.gen != g || c->s.closing) return 0;
    if (h->tunnel) {
        /* A tunnel only relays bytes: it gives up its Lua state (and its on_log, which would
         * need the VM) and keeps running. */
        mr_proxy_detach_lua(&h->q->req);
        return 2;
    }
    h1_close(h);
    return 1;
}

static const mr_conn_ops_t conn_ops = { h1_shutdown, h1_close_conn, h1_close_gen };

int mr_h1_accept(mr_conns_t *cs, int fd, const mr_listen_conf_t *lc)
{
    mr_tls_ctx_t *tls = lc->tls;
    mr_peer_t peer = { 0 };
    bool counted = false;
    if (mr_conns_admit(cs, fd, &peer, &counted) < 0) {
        close(fd);
        return -EBUSY;
    }
    h1_t *h = calloc(1, sizeof *h);
    mr_tls_conn_t *t = NULL;
    if (h && tls && !(t = mr_tls_conn_new(tls, true, NULL))) {
        free(h);
        h = NULL;
    }
    if (!h) {
        if (counted) mr_iplimit_release(&cs->iplimit, peer.ip);
        close(fd);
        return -ENOMEM;
    }
    h->c.peer = peer;
    h->c.ip_counted = counted;
    h->c.ops = &conn_ops;
    h->c.freed = conn_freed;
    h->c.h2conf = lc->http2;
    mr_sock_init(&h->c.s, cs->px->loop, fd, &sock_ops);
    mr_sock_nodelay_later(&h->c.s);
    /* A client that never finishes the handshake sends no request: the header timeout armed
     * below closes it. */
    if (t) {
        mr_sock_start_tls(&h->c.s, t, false);
        h->c.peer.tls = t;
    }
    h->timer.fn = timed_out;
    h->feed_defer.fn = feed_deferred;
    mr_conns_add(cs, &h->c);
    mr_timer_set(cs->px->loop, &h->timer, cfg_now(h)->limits.header_timeout_ms);
    int rc = mr_sock_start_recv(&h->c.s);
    if (rc < 0) h1_close(h);
    return rc;
}
