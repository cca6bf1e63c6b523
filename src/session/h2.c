#include "session/h2.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/gen.h"
#include "llhttp.h"
#include "log/log.h"
#include "proxy/proxy.h"

#define OUT_CHUNK (64u * 1024u)      /* bytes of frames gathered into one send */
#define STREAM_CACHE_MAX 256
#define DRAIN_GRACE_MS 1000u

/* A queue of body pieces: received DATA not taken by the core yet (each holding a reference on
 * the loop buffer it arrived in), or response body not pulled by nghttp2 yet. */
typedef struct {
    const char *p;
    uint32_t len;
    int32_t bid;                /* a loop buffer reference, or MR_NO_BID */
    char *owned;                /* malloc'd, freed once taken */
} piece_t;

typedef struct {
    piece_t *v;
    uint32_t head, count, cap;
    uint64_t bytes;
} pieces_t;

typedef struct h2 h2_t;

typedef struct h2s {
    mr_req_t req;               /* first: the core's request (and the response interface's key) */
    h2_t *h;
    int32_t id;
    struct h2s *next, *prev, *next_free;
    pieces_t in, out;
    uint32_t hdr_bytes, nhdrs;
    bool head_too_large;        /* the header list passed its limits: answer 431 */
    bool bad_head;              /* a field the core cannot take (unknown method): answer 400 */
    bool authority;             /* :authority was given (a Host field is then dropped) */
    bool in_eof, in_eof_told;   /* END_STREAM received; mr_proxy_body_end called */
    bool body_wanted, body_blocked;
    bool out_provider, out_deferred, out_eof, out_full;
    bool head_sent, ended;      /* ended: mr_proxy_end / _drop was called */
    bool eof_pulled;            /* nghttp2 took the end of the body */
    uint64_t stalled_ms;        /* since when the client's window keeps its response back (0: not) */
    bool sent_continue;
} h2s_t;

struct h2 {
    mr_conn_t *c;
    nghttp2_session *ng;
    mr_timer_t timer;
    mr_defer_t flush, deliver;
    h2s_t *streams;
    uint32_t nstreams;
    int32_t cur_bid;            /* the receive buffer mem_recv is reading, for DATA references */
    mr_vec_t nv;                /* scratch: lowercase names for a head */
    uint32_t empty_frames;      /* DATA frames that carried nothing (a flood's signature) */
    mr_timer_t stall;           /* send_timeout for a client that does not read (or grant window) */
    uint64_t sent_ms;           /* last time the socket sent something */
    bool goaway, closing, dead, in_recv;
};

static const mr_conn_ops_t conn_ops;
static const mr_sock_ops_t sock_ops;
static const mr_resp_ops_t resp_ops;

static void h2_close(h2_t *h);
static void h2_free(h2_t *h);
static void flush(h2_t *h);
static void schedule_flush(h2_t *h);

static inline h2_t *h2_of_sock(mr_sock_t *s) { return ((mr_conn_t *)s)->session; }
static inline h2s_t *stream_of(mr_req_t *r) { return (h2s_t *)r; }
static inline mr_proxy_t *px_of(const h2_t *h) { return h->c->set->px; }
static inline const mr_config_t *cfg_now(const h2_t *h) { return px_of(h)->gen->cfg; }
static inline uint64_t bp_limit(const mr_req_t *r, const h2_t *h)
{
    return (r->gen ? r->gen->cfg : cfg_now(h))->buffer_size;
}

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

/* Takes n bytes off the front piece (all of it when n == its length). */
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

static void pieces_free(pieces_t *q, mr_loop_t *loop)
{
    while (q->count) pieces_take(q, q->v[q->head].len, loop);
    free(q->v);
    *q = (pieces_t){ 0 };
}

/* ------------------------------------------------------------------------------------------ */
/* Streams: request objects taken when a stream opens, given back when it closes.              */

static _Thread_local h2s_t *stream_cache;
static _Thread_local int stream_cached;

static h2s_t *stream_new(h2_t *h, int32_t id)
{
    mr_proxy_t *px = px_of(h);
    uint32_t limit = px->h1limits.max_request_line + h->c->h2conf.max_header_list_size + 65536;
    h2s_t *s = stream_cache;
    if (s) {
        stream_cache = s->next_free;
        stream_cached--;
        mr_req_reset(&s->req);
        s->req.px = px;
        s->req.out = &resp_ops;
        s->req.peer = &h->c->peer;
        s->req.hdrs.limit = s->req.trailers.limit = limit;
        pieces_t in = s->in, out = s->out; /* keep the arrays */
        memset((char *)s + sizeof s->req, 0, sizeof *s - sizeof s->req);
        s->in = (pieces_t){ .v = in.v, .cap = in.cap };
        s->out = (pieces_t){ .v = out.v, .cap = out.cap };
    } else {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        mr_req_init(&s->req, px, &resp_ops, &h->c->peer, limit);
    }
    s->h = h;
    s->id = id;
    s->req.version = 20;
    s->next = h->streams;
    if (h->streams) h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    mr_timer_stop(h->c->s.loop, &h->timer);
    return s;
}

static void stream_free(h2_t *h, h2s_t *s)
{
    mr_loop_t *loop = h->c->s.loop;
    if (s->prev) s->prev->next = s->next;
    else h->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    h->nstreams--;
    while (s->in.count) pieces_take(&s->in, s->in.v[s->in.head].len, loop);
    while (s->out.count) pieces_take(&s->out, s->out.v[s->out.head].len, loop);
    if (stream_cached >= STREAM_CACHE_MAX) {
        pieces_free(&s->in, loop);
        pieces_free(&s->out, loop);
        mr_req_free(&s->req);
        free(s);
    } else {
        s->h = NULL;
        s->next_free = stream_cache;
        stream_cache = s;
        stream_cached++;
    }
    if (!h->nstreams && !h->closing) {
        /* Idle: the keep-alive timeout (or, once GOAWAY was sent, the close) applies. */
        uint32_t idle = cfg_now(h)->limits.keepalive_timeout_ms;
        if (h->goaway && idle > DRAIN_GRACE_MS) idle = DRAIN_GRACE_MS;
        mr_timer_set(h->c->s.loop, &h->timer, idle);
    }
}

void mr_h2_thread_free(void)
{
    while (stream_cache) {
        h2s_t *s = stream_cache;
        stream_cache = s->next_free;
        free(s->in.v);
        free(s->out.v);
        mr_req_free(&s->req);
        free(s);
    }
    stream_cached = 0;
}

/* The core is done with the stream's request (or it never reached the core). */
static void stream_end(h2s_t *s, bool complete)
{
    if (s->ended) return;
    s->ended = true;
    if (complete) mr_proxy_end(&s->req);
    else mr_proxy_drop(&s->req);
}

/* ------------------------------------------------------------------------------------------ */
/* Output                                                                                       */

/* A client that reads nothing, or never opens a window again, must not hold its streams (and
 * their upstream connections) forever: what cannot move for limits.send_timeout is reset, and a
 * connection whose socket cannot send for that long is closed. Checked when output waits. */
static void watch_stalls(h2_t *h)
{
    uint64_t now = mr_loop_now(h->c->s.loop);
    bool waiting = mr_sock_sending(&h->c->s);
    bool conn_closed = nghttp2_session_get_remote_window_size(h->ng) <= 0;
    for (h2s_t *s = h->streams; s; s = s->next) {
        bool pending = s->out_provider && !s->eof_pulled && !s->ended && (s->out.count || s->out_eof);
        if (pending && (conn_closed || nghttp2_session_get_stream_remote_window_size(h->ng, s->id) <= 0)) {
            if (!s->stalled_ms) s->stalled_ms = now;
            waiting = true;
        } else {
            s->stalled_ms = 0;
        }
    }
    if (waiting && !mr_timer_armed(&h->stall))
        mr_timer_set(h->c->s.loop, &h->stall, cfg_now(h)->limits.send_timeout_ms);
}

static void stall_fired(mr_loop_t *loop, mr_timer_t *t)
{
    h2_t *h = (h2_t *)((char *)t - offsetof(h2_t, stall));
    if (h->closing) return;
    uint64_t now = mr_loop_now(loop), limit = cfg_now(h)->limits.send_timeout_ms;
    if (mr_sock_sending(&h->c->s) && now - h->sent_ms >= limit) {
        mr_info("client %s: HTTP/2: nothing sent for %llu ms (limits.send_timeout): closing", h->c->peer.ip,
                (unsigned long long)(now - h->sent_ms));
        h2_close(h);
        return;
    }
    for (h2s_t *s = h->streams; s; s = s->next) {
        if (!s->stalled_ms || now - s->stalled_ms < limit) continue;
        mr_info("client %s: HTTP/2 stream %d: no window for %llu ms (limits.send_timeout): reset", h->c->peer.ip,
                s->id, (unsigned long long)(now - s->stalled_ms));
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        stream_end(s, false);
        s->stalled_ms = 0;
    }
    flush(h);
}

static void flush(h2_t *h)
{
    if (h->dead || h->c->s.closing) return;
    mr_sock_t *sock = &h->c->s;
    uint64_t limit = cfg_now(h)->buffer_size;
    char *chunk = NULL;
    size_t len = 0;
    while (!mr_sock_full(sock, limit)) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->ng, &data);
        if (n < 0) {
            mr_info("client %s: HTTP/2: %s", h->c->peer.ip, nghttp2_strerror((int)n));
            free(chunk);
            h2_close(h);
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
            if (!chunk) { h2_close(h); return; }
        }
        memcpy(chunk + len, data, (size_t)n);
        len += (size_t)n;
    }
    if (chunk) mr_sock_send_owned(sock, chunk, len);
    /* Streams whose response queue drained below its limit may take more from their upstream. */
    for (h2s_t *s = h->streams; s; s = s->next) {
        if (s->out_full && s->out.bytes <= bp_limit(&s->req, h) / 2 && !s->ended) {
            s->out_full = false;
            mr_proxy_sent(&s->req);
        }
    }
    if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng) && !mr_sock_sending(sock)) {
        h2_close(h);
        return;
    }
    watch_stalls(h);
}

static void flush_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    h2_t *h = (h2_t *)((char *)d - offsetof(h2_t, flush));
    /* The socket closed while this was queued: the last defer to run frees the session. */
    if (h->dead) { if (!mr_defer_queued(&h->deliver)) h2_free(h); return; }
    flush(h);
}

static void schedule_flush(h2_t *h)
{
    if (!h->dead && !h->in_recv) mr_loop_defer(h->c->s.loop, &h->flush);
}

/* ------------------------------------------------------------------------------------------ */
/* Request bodies                                                                               */

static void deliver_stream(h2_t *h, h2s_t *s)
{
    mr_req_t *r = &s->req;
    mr_loop_t *loop = h->c->s.loop;
    while (s->in.count && !s->body_blocked && !s->ended) {
        piece_t *e = &s->in.v[s->in.head];
        size_t n = e->len;
        int rc = mr_proxy_body(r, e->p, n, e->bid);
        pieces_take(&s->in, n, loop);
        nghttp2_session_consume(h->ng, s->id, n); /* the window reopens for what the core took */
        if (rc == 1) { s->body_blocked = true; break; }
        if (rc < 0) {
            /* 413 (or 500): answered, after which the client is told to stop (on_frame_send). */
            s->body_wanted = false;
            if (!r->head_sent) mr_proxy_fail(r, -rc);
            else nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
            return;
        }
    }
    if (!s->in.count && s->in_eof && !s->in_eof_told && !s->body_blocked && !s->ended) {
        s->in_eof_told = true;
        mr_proxy_body_end(r);
    }
}

static void deliver_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    h2_t *h = (h2_t *)((char *)d - offsetof(h2_t, deliver));
    if (h->dead) { if (!mr_defer_queued(&h->flush)) h2_free(h); return; }
    if (h->closing) return;
    for (h2s_t *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (s->body_wanted) deliver_stream(h, s);
    }
    flush(h);
}

/* ------------------------------------------------------------------------------------------ */
/* The response interface                                                                       */

static void out_read_body(mr_req_t *r)
{
    h2s_t *s = stream_of(r);
    s->body_wanted = true;
    s->body_blocked = false;
    mr_loop_defer(s->h->c->s.loop, &s->h->deliver);
}

static void out_send_continue(mr_req_t *r)
{
    h2s_t *s = stream_of(r);
    if (!r->expect_continue || s->sent_continue || s->in_eof) return;
    s->sent_continue = true;
    nghttp2_nv nv = { (uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE };
    nghttp2_submit_headers(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NULL, &nv, 1, NULL);
    schedule_flush(s->h);
}

static bool send_trailers(h2s_t *s);

static ssize_t read_body_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *user)
{
    (void)ng; (void)id; (void)user;
    h2s_t *s = src->ptr;
    mr_loop_t *loop = s->h->c->s.loop;
    size_t n = 0;
    while (n < length && s->out.count) {
        piece_t *e = &s->out.v[s->out.head];
        size_t k = e->len < length - n ? e->len : length - n;
        memcpy(buf + n, e->p, k);
        n += k;
        pieces_take(&s->out, k, loop);
    }
    if (!s->out.count && s->out_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (send_trailers(s)) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM; /* the trailers end it */
        s->eof_pulled = true;
        return (ssize_t)n;
    }
    if (n) return (ssize_t)n;
    s->out_deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

/* Fields that only mean something to one HTTP/1.1 hop (RFC 9113 8.2.2): never sent on HTTP/2. */
static bool connection_specific(const char *name, size_t n)
{
    return (n == 10 && (strncasecmp(name, "connection", 10) == 0 || strncasecmp(name, "keep-alive", 10) == 0)) ||
           (n == 16 && strncasecmp(name, "proxy-connection", 16) == 0) ||
           (n == 17 && strncasecmp(name, "transfer-encoding", 17) == 0) ||
           (n == 7 && strncasecmp(name, "upgrade", 7) == 0) || (n == 2 && strncasecmp(name, "te", 2) == 0);
}

/* nv entries for the fields of hd (lowercase names, copied into h->nv from offset *o on; the
 * caller reserved room), skipping what HTTP/2 must not carry. Returns how many were written. */
static int put_fields(h2_t *h, const mr_hdrs_t *hd, nghttp2_nv *nv, size_t *o)
{
    int k = 0;
    for (uint32_t i = 0; hd && i < hd->n; i++) {
        const mr_hdr_t *e = &hd->v[i];
        if (e->flags & (MR_HDR_HOP | MR_HDR_DELETED)) continue;
        const char *name = mr_hdr_name(hd, e);
        if (connection_specific(name, e->name_len) || (e->name_len == 14 && strncasecmp(name, "content-length", 14) == 0))
            continue;
        char *lc = h->nv.p + *o;
        for (size_t j = 0; j < e->name_len; j++) lc[j] = (char)(name[j] >= 'A' && name[j] <= 'Z' ? name[j] + 32 : name[j]);
        *o += e->name_len;
        nv[k++] = (nghttp2_nv){ (uint8_t *)lc, (uint8_t *)mr_hdr_value(hd, e), e->name_len, e->val_len,
                                NGHTTP2_NV_FLAG_NONE };
    }
    return k;
}

static size_t names_len(const mr_hdrs_t *hd)
{
    size_t n = 0;
    for (uint32_t i = 0; hd && i < hd->n; i++) n += hd->v[i].name_len;
    return n;
}

static int out_head(mr_req_t *r)
{
    h2s_t *s = stream_of(r);
    h2_t *h = s->h;
    int st = r->resp.status;
    const mr_hdrs_t *hd = r->resp.hdrs;
    nghttp2_nv *nv = malloc(((hd ? hd->n : 0) + 2) * sizeof *nv);
    if (!nv) return -ENOMEM;
    /* Names go out in lower case (RFC 9113 8.2): copied into one scratch buffer first. */
    mr_vec_reset(&h->nv);
    if (mr_vec_reserve(&h->nv, names_len(hd) + 40, 1u << 24) < 0) { free(nv); return -E2BIG; }
    char *sb = h->nv.p;
    int sl = snprintf(sb, 16, "%d", st);
    size_t o = (size_t)sl + 1;
    int k = 0;
    nv[k++] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)sb, 7, (size_t)sl, NGHTTP2_NV_FLAG_NONE };
    k += put_fields(h, hd, nv + k, &o);
    /* gRPC's Trailers-Only response is one HEADERS frame ending the stream. */
    bool nobody = r->method == HTTP_HEAD || st == 204 || st == 304 || st < 200 || r->resp.trailers_only;
    char *cl = sb + o;
    if (r->resp.length >= 0 && st != 204 && st >= 200 && !r->resp.trailers_only) {
        int cn = snprintf(cl, 24, "%lld", (long long)r->resp.length);
        nv[k++] = (nghttp2_nv){ (uint8_t *)"content-length", (uint8_t *)cl, 14, (size_t)cn, NGHTTP2_NV_FLAG_NONE };
    }
    nghttp2_data_provider prd = { .source.ptr = s, .read_callback = read_body_cb };
    int rc = nghttp2_submit_response(h->ng, s->id, nv, (size_t)k, nobody ? NULL : &prd);
    free(nv);
    if (rc != 0) return -EINVAL;
    s->out_provider = !nobody;
    s->head_sent = true;
    schedule_flush(h);
    return 0;
}

/* The response's trailer fields (gRPC's status among them) in a HEADERS frame ending the stream. */
static bool send_trailers(h2s_t *s)
{
    const mr_hdrs_t *t = s->req.resp.trailers;
    h2_t *h = s->h;
    if (!t || !t->n) return false;
    nghttp2_nv *nv = malloc(t->n * sizeof *nv);
    mr_vec_reset(&h->nv);
    if (!nv || mr_vec_reserve(&h->nv, names_len(t) + 1, 1u << 24) < 0) { free(nv); return false; }
    size_t o = 0;
    int k = put_fields(h, t, nv, &o);
    int rc = k ? nghttp2_submit_trailer(h->ng, s->id, nv, (size_t)k) : -1;
    free(nv);
    return rc == 0;
}

static int out_data(mr_req_t *r, const char *p, size_t n, int32_t bid, char *owned)
{
    h2s_t *s = stream_of(r);
    h2_t *h = s->h;
    if (!s->out_provider || s->ended) { free(owned); return 0; }
    if (pieces_push(&s->out, p, n, owned ? MR_NO_BID : bid, owned, h->c->s.loop) < 0) {
        free(owned);
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        schedule_flush(h);
        return 1;
    }
    if (s->out_deferred) {
        s->out_deferred = false;
        nghttp2_session_resume_data(h->ng, s->id);
    }
    schedule_flush(h);
    if (s->out.bytes <= bp_limit(r, h)) return 0;
    s->out_full = true;
    return 1;
}

static void out_finish(mr_req_t *r)
{
    h2s_t *s = stream_of(r);
    h2_t *h = s->h;
    s->out_eof = true;
    if (s->out_deferred) {
        s->out_deferred = false;
        nghttp2_session_resume_data(h->ng, s->id);
    }
    schedule_flush(h);
}

static void out_abort(mr_req_t *r)
{
    h2s_t *s = stream_of(r);
    nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    schedule_flush(s->h);
}

/* HTTP/1.1 upgrades do not exist on HTTP/2 (RFC 9113 8.6): the core never asks for one, since
 * an h2 request cannot carry Upgrade. */
static void out_tunnel(mr_req_t *r, mr_sock_t *up)
{
    (void)up;
    out_abort(r);
}

static const mr_resp_ops_t resp_ops = { out_read_body, out_send_continue, out_head, out_data,
                                        out_finish, out_abort, out_tunnel };

/* ------------------------------------------------------------------------------------------ */
/* nghttp2 callbacks                                                                            */

static int method_number(const uint8_t *m, size_t n)
{
#define MR_H2_METHOD(num, name, string)                                                                  \
    if (n == sizeof #string - 1 && memcmp(m, #string, n) == 0) return num;
    HTTP_METHOD_MAP(MR_H2_METHOD)
#undef MR_H2_METHOD
    return -1;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    h2_t *h = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    h2s_t *s = stream_new(h, f->hd.stream_id);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, s);
    return 0;
}

static bool name_eq(const uint8_t *a, size_t n, const char *b)
{
    return n == strlen(b) && memcmp(a, b, n) == 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    (void)flags;
    h2_t *h = user;
    h2s_t *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s || s->ended) return 0;
    mr_req_t *r = &s->req;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailer fields (gRPC client streams end with them): kept for the upstream, bounded
         * like the head. */
        s->hdr_bytes += (uint32_t)(nlen + vlen + 32);
        if (s->hdr_bytes <= h->c->h2conf.max_header_list_size && nlen && name[0] != ':')
            mr_hdrs_add(&r->trailers, (const char *)name, nlen, (const char *)value, vlen);
        return 0;
    }
    /* RFC 9113 6.5.2 counts 32 bytes of overhead per field. */
    s->hdr_bytes += (uint32_t)(nlen + vlen + 32);
    if (s->hdr_bytes > h->c->h2conf.max_header_list_size || ++s->nhdrs > px_of(h)->h1limits.max_headers) {
        s->head_too_large = true;
        return 0;
    }
    if (s->head_too_large) return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (nlen && name[0] == ':') {
        if (name_eq(name, nlen, ":method")) {
            int m = method_number(value, vlen);
            if (m < 0) { s->bad_head = true; return 0; }
            r->method = (uint8_t)m;
            r->method_name = llhttp_method_name((llhttp_method_t)m);
        } else if (name_eq(name, nlen, ":path")) {
            r->target_off = r->hdrs.buf.len;
            r->target_len = (uint32_t)vlen;
            if (mr_vec_append(&r->hdrs.buf, v, vlen, r->hdrs.limit) < 0) s->head_too_large = true;
        } else if (name_eq(name, nlen, ":authority")) {
            int i = mr_hdrs_add(&r->hdrs, "host", 4, v, vlen);
            if (i < 0) { s->head_too_large = true; return 0; }
            if (r->host_idx >= 0) r->hdrs.v[r->host_idx].flags |= MR_HDR_DELETED;
            r->hdrs.v[i].flags |= MR_HDR_HOST;
            r->host_idx = i;
            s->authority = true;
        }
        return 0; /* :scheme, :protocol */
    }
    if (name_eq(name, nlen, "host") && s->authority) return 0; /* :authority wins (RFC 9113 8.3.1) */
    int i = mr_hdrs_add(&r->hdrs, n, nlen, v, vlen);
    if (i < 0) { s->head_too_large = true; return 0; }
    mr_hdr_t *e = &r->hdrs.v[i];
    switch (nlen) {
    case 2: if (name_eq(name, nlen, "te")) e->flags |= MR_HDR_HOP; break;
    case 3: if (name_eq(name, nlen, "via")) e->flags |= MR_HDR_VIA; break;
    case 4:
        if (name_eq(name, nlen, "host")) {
            e->flags |= MR_HDR_HOST;
            r->host_idx = i;
        }
        break;
    case 6:
        if (name_eq(name, nlen, "expect")) {
            e->flags |= MR_HDR_HOP; /* we answer 100-continue ourselves */
            if (vlen == 12 && strncasecmp(v, "100-continue", 12) == 0) r->expect_continue = true;
        }
        break;
    case 14:
        if (name_eq(name, nlen, "content-length")) {
            e->flags |= MR_HDR_HOP; /* the upstream side writes its own framing */
            int64_t cl = 0;
            for (size_t k = 0; k < vlen && k < 16; k++) cl = cl * 10 + (v[k] - '0'); /* nghttp2 checked the digits */
            r->content_length = cl;
        }
        break;
    case 15: if (name_eq(name, nlen, "x-forwarded-for")) e->flags |= MR_HDR_XFF; break;
    case 17: if (name_eq(name, nlen, "x-forwarded-proto")) e->flags |= MR_HDR_XFP; break;
    }
    return 0;
}

/* HTTP/2 splits Cookie into crumbs (RFC 9113 8.2.3); an HTTP/1.1 upstream wants one field. */
static void join_cookies(mr_req_t *r)
{
    mr_hdrs_t *h = &r->hdrs;
    int first = mr_hdrs_find(h, "cookie", 6, 0);
    if (first < 0 || mr_hdrs_find(h, "cookie", 6, first + 1) < 0) return;
    size_t total = 0;
    for (int i = first; i >= 0; i = mr_hdrs_find(h, "cookie", 6, i + 1)) total += h->v[i].val_len + 2;
    char *joined = malloc(total);
    if (!joined) return;
    size_t o = 0;
    for (int i = first; i >= 0; i = mr_hdrs_find(h, "cookie", 6, i + 1)) {
        if (o) { joined[o++] = ';'; joined[o++] = ' '; }
        memcpy(joined + o, mr_hdr_value(h, &h->v[i]), h->v[i].val_len);
        o += h->v[i].val_len;
        h->v[i].flags |= MR_HDR_DELETED;
    }
    mr_hdrs_add(h, "cookie", 6, joined, o);
    free(joined);
}

/* The request head is complete: it becomes a request of the core. */
static void head_complete(h2_t *h, h2s_t *s, bool end_stream)
{
    mr_req_t *r = &s->req;
    r->head_done = true;
    r->line_known = true;
    r->has_body = !end_stream;
    s->in_eof = end_stream;
    join_cookies(r);
    if (s->head_too_large) { mr_proxy_fail(r, 431); return; }
    if (s->bad_head || !r->method_name) { mr_proxy_fail(r, 501); return; }
    if (r->method == HTTP_CONNECT) { mr_proxy_fail(r, 405); return; }
    (void)h;
    mr_proxy_start(r);
}

/* More empty DATA frames than any client needs: a flood (CVE-2019-9518) costing CPU for nothing. */
#define MAX_EMPTY_FRAMES 1000

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    h2_t *h = user;
    if (f->hd.type == NGHTTP2_DATA && f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        ++h->empty_frames > MAX_EMPTY_FRAMES) {
        nghttp2_session_terminate_session(ng, NGHTTP2_ENHANCE_YOUR_CALM);
        return 0;
    }
    h2s_t *s = f->hd.stream_id ? nghttp2_session_get_stream_user_data(ng, f->hd.stream_id) : NULL;
    if (!s || s->ended) return 0;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        head_complete(h, s, end);
    } else if (end && (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS)) {
        s->in_eof = true;
        if (s->body_wanted) mr_loop_defer(h->c->s.loop, &h->deliver);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    (void)flags;
    h2_t *h = user;
    h2s_t *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s || s->ended || s->req.body_mode == MR_BODY_DISCARD) {
        nghttp2_session_consume(ng, id, len); /* nobody wants it: keep the windows open */
        return 0;
    }
    /* Kept in the receive buffer it arrived in (a reference), not copied. */
    if (pieces_push(&s->in, (const char *)data, len, h->cur_bid, NULL, h->c->s.loop) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (s->body_wanted && !s->body_blocked) mr_loop_defer(h->c->s.loop, &h->deliver);
    return 0;
}

/* The response ended (END_STREAM sent) while the client is still sending: tell it to stop
 * (RFC 9113 8.1); whatever it sends meanwhile is consumed. */
static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    (void)user;
    if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM) || (f->hd.type != NGHTTP2_DATA && f->hd.type != NGHTTP2_HEADERS))
        return 0;
    h2s_t *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (s && !s->in_eof) nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user)
{
    h2_t *h = user;
    h2s_t *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s) return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    /* Closed with both sides done: the exchange is complete; reset by either side: dropped. */
    stream_end(s, error_code == NGHTTP2_NO_ERROR && s->req.resp_done);
    stream_free(h, s);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Socket                                                                                       */

static void h2_free(h2_t *h)
{
    mr_conn_t *c = h->c;
    mr_vec_free(&h->nv);
    free(h);
    c->session = NULL;
    c->freed(c);
}

static void on_closed(mr_sock_t *sock)
{
    h2_t *h = h2_of_sock(sock);
    h->dead = true;
    if (!mr_defer_queued(&h->flush) && !mr_defer_queued(&h->deliver)) h2_free(h);
}

static void h2_close(h2_t *h)
{
    if (h->closing) return;
    h->closing = true;
    mr_timer_stop(h->c->s.loop, &h->timer);
    mr_timer_stop(h->c->s.loop, &h->stall);
    while (h->streams) {
        h2s_t *s = h->streams;
        nghttp2_session_set_stream_user_data(h->ng, s->id, NULL);
        stream_end(s, false);
        stream_free(h, s);
    }
    nghttp2_session_del(h->ng);
    h->ng = NULL;
    mr_conns_remove(h->c);
    mr_sock_close(&h->c->s);
}

static void on_recv(mr_sock_t *sock, int res)
{
    h2_t *h = h2_of_sock(sock);
    if (h->closing) { mr_sock_consume(sock, (size_t)-1); return; }
    if (res <= 0) { h2_close(h); return; }
    h->in_recv = true;
    while (sock->nin && !h->closing) {
        mr_in_t *in = &sock->in[0];
        h->cur_bid = in->bid;
        ssize_t n = nghttp2_session_mem_recv(h->ng, (const uint8_t *)mr_loop_buf_ptr(sock->loop, (uint16_t)in->bid) + in->off,
                                             in->len);
        if (n < 0) {
            mr_info("client %s: HTTP/2: %s", h->c->peer.ip, nghttp2_strerror((int)n));
            h->in_recv = false;
            flush(h); /* the GOAWAY nghttp2 queued, if it could */
            h2_close(h);
            return;
        }
        mr_sock_consume(sock, in->len);
    }
    h->in_recv = false;
    if (!h->closing) flush(h);
}

static void on_sent(mr_sock_t *sock, int res)
{
    h2_t *h = h2_of_sock(sock);
    h->sent_ms = mr_loop_now(sock->loop);
    if (h->closing) return;
    if (res < 0) { h2_close(h); return; }
    flush(h);
}

static const mr_sock_ops_t sock_ops = { on_recv, on_sent, on_closed };

static void timed_out(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    h2_t *h = (h2_t *)((char *)t - offsetof(h2_t, timer));
    if (h->nstreams) return;
    if (!h->goaway) {
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h->goaway = true;
        flush(h);
    }
    h2_close(h);
}

/* ------------------------------------------------------------------------------------------ */
/* Connection                                                                                   */

static void h2_shutdown(mr_conn_t *c)
{
    h2_t *h = c->session;
    if (h->closing || h->goaway) return;
    /* Graceful: streams in flight finish; no new one is accepted; then the connection closes. */
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    h->goaway = true;
    flush(h);
    if (!h->nstreams) mr_timer_set(c->s.loop, &h->timer, DRAIN_GRACE_MS);
}

static void h2_close_conn(mr_conn_t *c) { h2_close(c->session); }

static int h2_close_gen(mr_conn_t *c, mr_gen_t *g)
{
    h2_t *h = c->session;
    int closed = 0;
    for (h2s_t *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (s->req.gen != g || s->ended) continue;
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        stream_end(s, false);
        closed = 1;
    }
    if (closed) flush(h);
    return closed;
}

static const mr_conn_ops_t conn_ops = { h2_shutdown, h2_close_conn, h2_close_gen };

int mr_h2_takeover(mr_conn_t *c)
{
    h2_t *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    h->c = c;
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) { free(h); return -ENOMEM; }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) { nghttp2_session_callbacks_del(cb); free(h); return -ENOMEM; }
    /* Windows reopen only for what the core took (flow control is our backpressure). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    /* Floods: bounded acknowledgements, SETTINGS entries, CONTINUATION frames and stream resets
     * (Rapid Reset, CVE-2023-44487), each answered with GOAWAY by nghttp2. */
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    int rc = nghttp2_session_server_new2(&h->ng, cb, h, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) { free(h); return -ENOMEM; }
    const mr_http2_conf_t *hc = &c->h2conf;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, hc->max_concurrent_streams },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, hc->initial_window },
        { NGHTTP2_SETTINGS_MAX_FRAME_SIZE, hc->max_frame_size },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, hc->max_header_list_size },
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)hc->connection_window) != 0) {
        nghttp2_session_del(h->ng);
        free(h);
        return -ENOMEM;
    }
    h->timer.fn = timed_out;
    h->stall.fn = stall_fired;
    h->sent_ms = mr_loop_now(c->s.loop);
    h->flush.fn = flush_deferred;
    h->deliver.fn = deliver_deferred;
    c->session = h;
    c->ops = &conn_ops;
    c->s.ops = &sock_ops;
    /* The preface and whatever followed it are held input already. */
    mr_timer_set(c->s.loop, &h->timer, cfg_now(h)->limits.header_timeout_ms);
    on_recv(&c->s, 1);
    return 0;
}
