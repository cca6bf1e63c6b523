/* An upstream exchange: one request and its response on an upstream, whatever protocol carries
 * it (HTTP/1.1: a pooled connection, upstream/upconn.c; HTTP/2: a stream of a multiplexed
 * connection). The proxy core drives exchanges only through this interface: it opens one for a
 * server (mr_upx_open picks the client by the upstream's protocol), binds the request to it,
 * hands it a described head (http/headers.h mr_http_req_head_t) and the body, and hears back
 * through mr_upx_ops_t. Each client does its own framing.
 *
 * Lifetime: after release or close, or from inside `done` / `failed`, the exchange is the
 * client's again and the owner must not touch it. Callbacks never fire synchronously from a
 * call the owner makes. Thread affinity: the worker. */
#ifndef MR_UPSTREAM_UPX_H
#define MR_UPSTREAM_UPX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/headers.h"
#include "loop/loop.h"
#include "net/sock.h"
#include "upstream/upstream.h"

typedef struct mr_upx mr_upx_t;

/* Whether a failed request may be sent again on another exchange. */
enum {
    MR_UP_RETRY_NO = 0,        /* response bytes arrived, or the request may have been acted on */
    MR_UP_RETRY_ANY,           /* nothing reached the server: connect or TLS handshake failed, or
                                  an HTTP/2 server refused the stream (GOAWAY, REFUSED_STREAM) */
    MR_UP_RETRY_IDEMPOTENT,    /* a reused connection died before any response byte: the server
                                  may have closed it as we sent; safe for idempotent methods only */
};

/* Return values of head and body. */
enum { MR_UP_GO = 0, MR_UP_NOBODY = 1, MR_UP_HOLD = 2 };

typedef struct {
    /* Connected (and TLS established): the owner sends its head now. */
    void (*ready)(void *owner, mr_upx_t *x);
    /* The response head is in (x->status, x->hdrs, ...). MR_UP_GO; MR_UP_NOBODY when the message
     * has no body whatever its fields say (a response to HEAD); MR_UP_HOLD to decide later (then
     * mr_upx_resume, with mr_upx_skip_body first for a bodiless one); or -1 with x->error_status /
     * error_reason set (the exchange then fails). Interim 1xx responses other than 101 are not
     * reported. */
    int (*head)(void *owner, mr_upx_t *x);
    /* Response body bytes (pointing into loop buffer `bid` when >= 0, valid during the call: take
     * a reference to keep them). MR_UP_GO, MR_UP_HOLD (no more until mr_upx_resume), or -1. */
    int (*body)(void *owner, mr_upx_t *x, const char *p, size_t n, int32_t bid);
    /* The response is complete (x->trailers holds its trailer fields, if any); the owner releases
     * (or holds and releases later). */
    void (*done)(void *owner, mr_upx_t *x);
    /* The exchange with server s failed (why: for the log). It is already closed and unbound. */
    void (*failed)(void *owner, mr_server_t *s, int status, const char *why, int retry);
    /* The request side can take more (body backpressure released). */
    void (*sent)(void *owner, mr_upx_t *x);
    /* After a 101 (HTTP/1.1 only): the raw stream changed (bytes, drained, EOF); x->raw is it. */
    void (*tunnel)(void *owner, mr_upx_t *x);
} mr_upx_ops_t;

typedef struct mr_upx_vt {
    void (*bind)(mr_upx_t *x, void *owner, const mr_upx_ops_t *ops, const mr_upstream_conf_t *uc, uint64_t bp_limit);
    /* Returns 0, or -E2BIG (the head does not fit) / -ENOMEM. */
    int (*send_head)(mr_upx_t *x, const mr_http_req_head_t *h);
    /* Body bytes referencing loop buffer bid (MR_NO_BID: the memory stays valid until sent). */
    void (*send_body)(mr_upx_t *x, const char *p, size_t n, int32_t bid);
    void (*send_copy)(mr_upx_t *x, const char *p, size_t n);
    /* The request body ends (trailers: its trailer fields, or NULL). */
    void (*end_body)(mr_upx_t *x, const mr_hdrs_t *trailers);
    bool (*full)(const mr_upx_t *x);
    void (*resume)(mr_upx_t *x);
    void (*skip_body)(mr_upx_t *x);
    void (*release)(mr_upx_t *x, bool request_done);
    void (*close)(mr_upx_t *x);
} mr_upx_vt_t;

struct mr_upx {
    const mr_upx_vt_t *vt;
    mr_server_t *server;
    bool connected;             /* the owner may send its head at once (no `ready` to wait for) */
    bool tunnel;                /* a 101 answered an upgrade */
    mr_sock_t *raw;             /* the raw stream of a tunnel */
    /* The response, set before `head`. */
    int status;
    const char *reason;         /* HTTP/1.1's phrase (NULL for HTTP/2) */
    uint32_t reason_len;
    int64_t content_length;     /* -1 unknown */
    bool length_known;          /* the body is delimited by content_length */
    mr_hdrs_t *hdrs;
    mr_hdrs_t *trailers;        /* set before `done` when the response had trailer fields */
    /* What went wrong, when an owner callback returns -1. */
    int error_status;
    const char *error_reason;
    /* Set by the owner after bind, before send_head (0: none): the loop time (ms) by which the
     * response must be complete, whatever the read timeout says (gRPC's grpc-timeout). Past it
     * the exchange fails with 504. */
    uint64_t deadline_ms;
};

/* Per-worker state of the upstream clients (HTTP/1.1 and HTTP/2 alike). */
typedef struct {
    mr_loop_t *loop;
    const void *limits;                /* HTTP/1.1 response head limits (mr_http1_limits_t) */
    uint32_t count;                    /* connections alive, closing ones included */
    bool draining;                     /* released connections close instead of pooling */
    void (*gone)(void *arg);           /* a connection was freed (drain completion) */
    void *gone_arg;
} mr_upx_ctx_t;

/* An exchange with server s under upstream settings uc (protocol, TLS, timeouts): on a pooled
 * connection (x->connected) or a new one (`ready` fires once it is up). uc->protocol picks the
 * client: HTTP/1.1 (upstream/upconn.h) or HTTP/2 (upstream/h2client.h, a stream of a multiplexed
 * connection). Returns 0 or -errno. */
int mr_upx_open(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out);
/* Closes the idle connections of s, of every protocol (graceful stop). */
void mr_upx_close_idle(mr_upx_ctx_t *ctx, mr_server_t *s);

static inline void mr_upx_bind(mr_upx_t *x, void *owner, const mr_upx_ops_t *ops, const mr_upstream_conf_t *uc,
                               uint64_t bp_limit)
{
    x->vt->bind(x, owner, ops, uc, bp_limit);
}
static inline int mr_upx_send_head(mr_upx_t *x, const mr_http_req_head_t *h) { return x->vt->send_head(x, h); }
static inline void mr_upx_send_body(mr_upx_t *x, const char *p, size_t n, int32_t bid) { x->vt->send_body(x, p, n, bid); }
static inline void mr_upx_send_copy(mr_upx_t *x, const char *p, size_t n) { x->vt->send_copy(x, p, n); }
static inline void mr_upx_end_body(mr_upx_t *x, const mr_hdrs_t *t) { x->vt->end_body(x, t); }
static inline bool mr_upx_full(const mr_upx_t *x) { return x->vt->full(x); }
static inline void mr_upx_resume(mr_upx_t *x) { x->vt->resume(x); }
static inline void mr_upx_skip_body(mr_upx_t *x) { x->vt->skip_body(x); }
static inline void mr_upx_release(mr_upx_t *x, bool request_done) { x->vt->release(x, request_done); }
static inline void mr_upx_close(mr_upx_t *x) { x->vt->close(x); }
static inline const char *mr_upx_addr(const mr_upx_t *x) { return x->server->addr; }

#endif
