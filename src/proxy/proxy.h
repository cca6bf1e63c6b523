/* The HTTP/1.1 request lifecycle: client connections, forwarding to upstream connections, local
 * (Lua handler / error) responses, WebSocket tunnels. All state here belongs to one worker and is
 * touched only from its loop thread. */
#ifndef MR_PROXY_H
#define MR_PROXY_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "http1/http1.h"
#include "loop/loop.h"
#include "proxy/sock.h"
#include "upstream/upstream.h"
#include "util/vec.h"

typedef struct mr_worker mr_worker_t;
typedef struct mr_client mr_client_t;
typedef struct mr_upconn mr_upconn_t;
typedef struct mr_gen mr_gen_t;

struct mr_upconn {
    mr_sock_t s;
    mr_worker_t *w;
    mr_server_t *server;
    mr_client_t *client;        /* bound request, or NULL while pooled */
    mr_http1_msg_t resp;
    mr_timer_t timer;
    mr_op_t connect_op;
    mr_upconn_t *pool_next, *pool_prev;
    uint32_t requests;
    bool connected, pooled, got_bytes;
};

/* Response framing towards the client. */
enum { MR_OUT_LENGTH = 0, MR_OUT_CHUNKED, MR_OUT_CLOSE, MR_OUT_NONE };
/* req:body() progress. */
enum { MR_BODY_NONE = 0, MR_BODY_READING, MR_BODY_DONE, MR_BODY_TOO_LARGE };

struct mr_client {
    mr_sock_t s;
    mr_worker_t *w;
    mr_client_t *next, *prev;   /* worker's list of clients */
    mr_http1_msg_t req;
    mr_timer_t timer;
    char ip[48];
    bool ip_counted;            /* holds a count in w->iplimit */

    /* The current request. */
    mr_gen_t *gen;              /* generation the request started on (referenced) */
    const mr_route_conf_t *route;
    mr_upstream_t *upstream;
    mr_upconn_t *up;
    mr_vec_t up_head;           /* serialized request head for the upstream */
    mr_vec_t out_head;          /* serialized response head for the client */
    mr_vec_t local_body;        /* body of a local response */
    int64_t body_seen;          /* request body bytes received */
    int64_t max_body;           /* 0 = unlimited */
    int32_t feed_bid;
    uint8_t pause_reason;       /* why the request parser is paused (P_* in proxy.c) */
    bool in_feed, feed_again;   /* re-entrancy guard for client_feed */
    uint64_t resp_bytes;
    uint64_t started_ms;
    int status;                 /* final status sent */
    int tries;
    uint32_t nrequests;
    uint8_t out_mode;
    bool active;                /* a request is in progress */
    bool req_done;              /* request fully read */
    bool resp_started, resp_done;
    bool forwarding_body;       /* client parser resumed into the body */
    bool close_after;           /* Connection: close after this response */
    bool sent_continue;
    bool tunnel;
    bool head_method;
    bool discard_body;          /* local response sent; request body is being dropped */
    bool lingering;             /* response sent, write side shut, draining input before close */
    bool close_on_sent;         /* the response broke off midway: send what is queued, then close */
    bool failed;                /* a parse error was answered: further input is discarded */

    /* Lua chain state for the current request. */
    uint8_t route_flags;        /* MR_RF_* of the matched route */
    uint8_t lua_phase;          /* parked phase (MR_PH_*), 0 = none */
    bool lua_state;             /* the VM holds state for this request (finish it) */
    bool lua_body_eof;          /* the parked body phase was the final one */
    bool head_sent;             /* response head queued to the client */
    mr_timer_t lua_timer;
    mr_upstream_t *dyn_up;      /* chosen by req:set_upstream */
    mr_vec_t target_ov;         /* set by req:set_path / set_query */
    bool has_target_ov;
    /* A local response (req:respond) waits here while on_response/on_body run on it. */
    mr_http1_msg_t local;       /* only its header store is used */
    bool local_pending, local_resp_done, local_body_done;
    /* req:body(): the request body buffered for Lua; a proxied request sends this copy. */
    mr_vec_t lua_body;
    int64_t lua_body_max;
    uint8_t lua_body_state;     /* MR_BODY_* */
    mr_defer_t body_defer;
};

/* tls: the listener's server context (NULL: plain TCP); the connection takes a reference. */
int mr_proxy_accept(mr_worker_t *w, int fd, mr_tls_ctx_t *tls);
/* req:set_upstream: an upstream name from the config or a numeric "ip:port". 0, -1 unknown, -2 bad. */
int mr_proxy_set_upstream(mr_client_t *c, const char *s, size_t n);
/* Answers the current request locally (errors from C). Copies body and headers; sends now. */
int mr_proxy_respond(mr_client_t *c, int status, const char *body, size_t blen,
                     const char *const *hdrs, int nhdrs);
/* Records a local response from Lua (req:respond). It is sent after the current phase returns,
 * once the chain's on_response/on_body ran on it (Lua must not be re-entered from an FFI call). */
int mr_proxy_respond_later(mr_client_t *c, int status, const char *body, size_t blen,
                           const char *const *hdrs, int nhdrs);
/* req:body(max): starts or polls buffering the request body. 1 = reading (the caller parks on
 * I/O; the request's park timer is armed when it ends), 0 = complete (in c->lua_body),
 * -5 = larger than max (what was read stays buffered and is still forwarded), -3 = the body is
 * gone (already streamed or discarded). Never calls back synchronously. */
int mr_proxy_body_read(mr_client_t *c, int64_t max);
void mr_proxy_shutdown(mr_worker_t *w);       /* graceful: close idle, finish active */
void mr_proxy_close_all(mr_worker_t *w);      /* immediate */
/* Drain deadline of a retired generation: closes every client whose request still holds g,
 * except tunnels, which are detached from its VM (no Lua runs for them again) and keep going;
 * *tunnels counts those. Returns the number of clients closed. */
int mr_proxy_close_gen(mr_worker_t *w, mr_gen_t *g, int *tunnels);
/* Frees the worker's upstream registry and run-time upstreams (after the loop stopped). */
void mr_proxy_worker_free(mr_worker_t *w);

#endif
