/* The HTTP/1.1 upstream client: a connection to one upstream server that connects (plain or TLS),
 * writes a request head and body, parses the response, and goes back to the server's keep-alive
 * pool. One exchange (upstream/upx.h) at a time: the proxy core binds one request to it and hears
 * from it only through mr_upx_ops_t.
 *
 * Lifetime: created by mr_upconn_open (or taken from the pool), bound, then either released
 * (back to the pool or closed) or closed. Once released, closed or failed, the connection is no
 * longer the owner's to touch; it frees itself after its last completion (the io_uring buffer
 * rule: its head buffer and queued bytes stay alive until the kernel is done with them).
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
#include "upstream/upx.h"

typedef struct mr_upconn mr_upconn_t;

struct mr_upconn {
    mr_sock_t s;                 /* first member */
    mr_upx_t x;                  /* what the core sees (its vt is this client's) */
    mr_upx_ctx_t *ctx;
    void *owner;                 /* bound request, or NULL while pooled */
    const mr_upx_ops_t *ops;
    mr_http1_msg_t resp;
    mr_hdrs_t hdrs, trailers;    /* the response head, reused for each response */
    mr_vec_t head;               /* the request head in flight: alive until the socket closes */
    mr_timer_t timer;
    mr_op_t connect_op;
    mr_pool_link_t link;
    uint64_t bp_limit;           /* send-queue backpressure threshold of the bound request */
    bool chunked;                /* the request body goes out chunked (its length is unknown) */
    uint32_t read_timeout_ms, send_timeout_ms, keepalive_timeout_ms;
    int keepalive, keepalive_requests;
    uint32_t requests;
    bool connected, got_bytes;
    bool hold;                   /* the owner holds the response (MR_UP_HOLD) */
    bool msg_done;               /* the response is complete (reported by `done`) */
    bool want_upgrade, head_seen;
    bool req_sent;               /* the whole request is queued (head, and body if any) */
    bool tunnel, raw;            /* a 101 answered the upgrade; its head is parsed: raw bytes now */
};

/* An HTTP/1.1 exchange with server s: on a pooled connection (x->connected) or a new one
 * connecting (`ready` fires once it is up). Returns 0 or -errno (nothing was created). Everything
 * else goes through the exchange's vt (upstream/upx.h). */
int mr_upconn_open(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out);
/* Closes every pooled connection of s (graceful stop). */
void mr_upconn_close_idle(mr_server_t *s);

#endif
