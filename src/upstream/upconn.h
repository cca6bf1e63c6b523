/* An HTTP/1.1 client connection to one upstream server: connect (plain or TLS), send a request
 * head and body, parse the response, and go back to the server's keep-alive pool. The proxy core
 * binds one request to it at a time and hears from it only through mr_upconn_ops_t, so an HTTP/2
 * upstream client can later slot in beside it behind the same calls.
 *
 * Lifetime: created by mr_upconn_open (or taken from the pool), bound with mr_upconn_bind, then
 * either released (mr_upconn_release: back to the pool or closed) or closed (mr_upconn_close).
 * Once released, closed or failed, the connection is no longer the owner's to touch; it frees
 * itself after its last completion (the io_uring buffer rule: its head buffer and queued bytes
 * stay alive until the kernel is done with them).
 *
 * Callbacks: never synchronous from a call the owner makes (they come from the loop: socket
 * completions, timers), except that the owner's own calls never re-enter it. `done` and `failed`
 * are the last the upconn does before returning to the loop, so the owner may release or drop it
 * from inside them. Thread affinity: the owning worker. */
#ifndef MR_UPSTREAM_UPCONN_H
#define MR_UPSTREAM_UPCONN_H

#include <stdbool.h>
#include <stdint.h>

#include "http1/http1.h"
#include "loop/loop.h"
#include "net/sock.h"
#include "upstream/pool.h"
#include "upstream/upstream.h"

typedef struct mr_upconn mr_upconn_t;

/* Whether a failed request may be sent again on another connection. */
enum {
    MR_UP_RETRY_NO = 0,        /* response bytes arrived, or the request may have been acted on */
    MR_UP_RETRY_ANY,           /* nothing reached the server: connect or TLS handshake failed */
    MR_UP_RETRY_IDEMPOTENT,    /* a reused keep-alive connection died before any response byte:
                                  the server may have closed it as we sent; safe for idempotent
                                  methods only */
};

/* Return values of head and body. */
enum { MR_UP_GO = 0, MR_UP_NOBODY = 1, MR_UP_HOLD = 2 };

typedef struct {
    /* Connected (and TLS established): the owner sends its head now. */
    void (*ready)(void *owner, mr_upconn_t *u);
    /* The response head is parsed (u->resp, u->hdrs). MR_UP_GO; MR_UP_NOBODY when the message
     * has no body whatever its headers say (a response to HEAD); MR_UP_HOLD to decide later (the
     * parser waits for mr_upconn_resume, with mr_upconn_skip_body first for a bodiless one); or
     * -1 with u->resp.error_status / error_reason set (the connection then fails). 1xx interim
     * responses other than 101 are not reported. */
    int (*head)(void *owner, mr_upconn_t *u);
    /* Response body bytes (pointing into a loop buffer `bid`, valid during the call: take a
     * reference to keep them). MR_UP_GO, MR_UP_HOLD (no more until mr_upconn_resume), or -1. */
    int (*body)(void *owner, mr_upconn_t *u, const char *p, size_t n, int32_t bid);
    /* The response is complete; the owner releases (or holds and releases later). */
    void (*done)(void *owner, mr_upconn_t *u);
    /* The connection to server s failed or sent an invalid response (why: for the log). It is
     * already closed and unbound. */
    void (*failed)(void *owner, mr_server_t *s, int status, const char *why, int retry);
    /* The send queue drained (request body backpressure), or after the upgrade (101) the raw
     * stream changed: bytes arrived, the queue drained, or EOF. */
    void (*sent)(void *owner, mr_upconn_t *u);
    void (*tunnel)(void *owner, mr_upconn_t *u);
} mr_upconn_ops_t;

/* Per-worker state every upstream connection of that worker shares. */
typedef struct {
    mr_loop_t *loop;
    const mr_http1_limits_t *limits;   /* response head limits */
    uint32_t count;                    /* alive, closing ones included */
    bool draining;                     /* released connections close instead of pooling */
    void (*gone)(void *arg);           /* a connection was freed (drain completion) */
    void *gone_arg;
} mr_upconn_ctx_t;

struct mr_upconn {
    mr_sock_t s;                 /* first member */
    mr_upconn_ctx_t *x;
    mr_server_t *server;
    void *owner;                 /* bound request, or NULL while pooled */
    const mr_upconn_ops_t *ops;
    mr_http1_msg_t resp;
    mr_hdrs_t hdrs, trailers;    /* the response head, reused for each response */
    mr_vec_t head;               /* the request head in flight: alive until the socket closes */
    mr_timer_t timer;
    mr_op_t connect_op;
    mr_pool_link_t link;
    uint64_t bp_limit;           /* send-queue backpressure threshold of the bound request */
    uint32_t read_timeout_ms, keepalive_timeout_ms;
    int keepalive, keepalive_requests;
    uint32_t requests;
    bool connected, got_bytes;
    bool hold;                   /* the owner holds the response (MR_UP_HOLD) */
    bool msg_done;               /* the response is complete (reported by `done`) */
    bool want_upgrade, head_seen;
    bool tunnel, raw;            /* a 101 answered the upgrade; its head is parsed: raw bytes now */
};

/* A connection to server s: a pooled one (u->connected) or a new one connecting (ready fires
 * once it is up). uc gives the timeouts and TLS context; sni the TLS server name. Returns 0 or
 * -errno (nothing was created). */
int mr_upconn_open(mr_upconn_ctx_t *x, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni,
                   mr_upconn_t **out);
/* Binds the connection to a request, under the request's upstream settings (read timeout, pool
 * limits) and send-queue backpressure threshold. */
void mr_upconn_bind(mr_upconn_t *u, void *owner, const mr_upconn_ops_t *ops, const mr_upstream_conf_t *uc,
                    uint64_t bp_limit);
/* Queues the request head (copied) and arms the read timeout. upgrade: the request asks for a
 * protocol upgrade, so a 101 answer turns the connection into a tunnel. */
int mr_upconn_send_head(mr_upconn_t *u, const char *p, size_t n, bool upgrade);
/* Request body: bytes referencing loop buffer bid (or MR_NO_BID: copied, or owned: malloc'd,
 * freed after the send), re-framed as chunked when `chunked`. */
void mr_upconn_send_body(mr_upconn_t *u, const char *p, size_t n, int32_t bid, bool chunked);
void mr_upconn_send_copy(mr_upconn_t *u, const char *p, size_t n, bool chunked);
void mr_upconn_end_body(mr_upconn_t *u, bool chunked);
static inline bool mr_upconn_full(const mr_upconn_t *u) { return mr_sock_full(&u->s, u->bp_limit); }
/* Resumes a response held by MR_UP_HOLD (parses what is buffered, reads on). */
void mr_upconn_resume(mr_upconn_t *u);
void mr_upconn_skip_body(mr_upconn_t *u);
/* Releases the connection after `done`: back to the pool when reusable (the whole request was
 * sent: request_done, the response allows it, nothing unread), else closed. */
void mr_upconn_release(mr_upconn_t *u, bool request_done);
/* Closes the connection (never pooled); the owner is forgotten, no callback fires. */
void mr_upconn_close(mr_upconn_t *u);
/* Closes every pooled connection of s (graceful stop). */
void mr_upconn_close_idle(mr_server_t *s);
/* Raw mode once a 101's head is parsed (the connection calls it itself before `tunnel`): bytes
 * both ways without parsing (see mr_sock_pump); the owner pumps on each `tunnel` event. */
void mr_upconn_start_tunnel(mr_upconn_t *u);
/* The server's address as configured, for logs. */
static inline const char *mr_upconn_addr(const mr_upconn_t *u) { return u->server->addr; }

#endif
