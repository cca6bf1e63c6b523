/* The request: one request's whole life, whatever protocol carried it. A protocol session
 * (HTTP/1.1 today, HTTP/2 next) creates it, fills in the head, hands it to the proxy core
 * (proxy/proxy.h) and implements the response interface below; the core routes it, runs its Lua
 * chain, binds it to an upstream connection and talks back to the client only through that
 * interface. So the core never knows which protocol it serves.
 *
 * One reset boundary: everything that belongs to one request sits before `hdrs` and is zeroed by
 * mr_req_reset in one memset; the members from `hdrs` on are storage kept across the requests of
 * a connection (buffers keep their capacity, timers their callbacks) and are reset by the same
 * function, so nothing leaks from one pipelined request into the next.
 *
 * Ownership: the session owns the memory (it may embed the request in its own per-stream state,
 * or reuse one object for a connection's successive requests). Thread affinity: the worker. */
#ifndef MR_PROXY_REQ_H
#define MR_PROXY_REQ_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "http/headers.h"
#include "upstream/upstream.h"
#include "loop/loop.h"
#include "net/sock.h"
#include "util/vec.h"

typedef struct mr_req mr_req_t;
typedef struct mr_proxy mr_proxy_t;
typedef struct mr_gen mr_gen_t;
typedef struct mr_upx mr_upx_t;

/* What a protocol session implements for its requests. The core calls these from its own
 * callbacks on the worker's loop; none re-enters the core synchronously (read_body defers). */
typedef struct mr_resp_ops {
    /* The request body is wanted now (r->body_mode says where it goes): deliver it with
     * mr_proxy_body / mr_proxy_body_end. Also resumes delivery after mr_proxy_body returned 1.
     * Delivery starts at the end of the loop turn, never inside this call. */
    void (*read_body)(mr_req_t *r);
    /* "100 Continue" when the client expects it and none was sent yet. */
    void (*send_continue)(mr_req_t *r);
    /* The response head: r->resp (status, fields, length or -1 when unknown). Returns 0, or
     * -E2BIG when it cannot be written (nothing was sent). */
    int (*head)(mr_req_t *r);
    /* Body bytes: a reference on loop buffer bid is taken (bid >= 0), or `owned` (malloc'd) is
     * freed after the send, or the bytes are copied. Returns 1 when the client's queue is over
     * its limit: send no more until mr_proxy_sent. */
    int (*data)(mr_req_t *r, const char *p, size_t n, int32_t bid, char *owned);
    /* The response is complete. */
    void (*finish)(mr_req_t *r);
    /* The response cannot be completed after its head went out: the client must learn it from
     * the stream ending early (HTTP/1.1: close once what is queued is sent). */
    void (*abort)(mr_req_t *r);
    /* After a 101: the stream carries raw bytes to and from `up`; the session pumps on every call
     * (and once `up` has nothing left and ended, closes). */
    void (*tunnel)(mr_req_t *r, mr_sock_t *up);
} mr_resp_ops_t;

/* Where request body bytes go (r->body_mode). HOLD: nowhere yet, the session reads none. */
enum { MR_BODY_HOLD = 0, MR_BODY_FORWARD, MR_BODY_DISCARD, MR_BODY_LUA };
/* req:body() progress (r->lua_body_state). */
enum { MR_LBODY_NONE = 0, MR_LBODY_READING, MR_LBODY_DONE, MR_LBODY_TOO_LARGE };

/* The client connection a request came on, as the core and the Lua API see it. */
typedef struct mr_peer {
    char ip[46];
    mr_tls_conn_t *tls;         /* NULL on plain TCP */
} mr_peer_t;

struct mr_req {
    /* ---------------- per request: zeroed by mr_req_reset ---------------- */
    /* The head, filled by the session before mr_proxy_start. */
    const char *method_name;    /* "GET"; static storage */
    uint8_t method;             /* llhttp method number (HTTP_GET, ...) */
    uint8_t version;            /* 10, 11 (HTTP/1.x), 20 */
    bool line_known;            /* method, target and version were parsed (access log) */
    uint32_t target_off, target_len;  /* the target as received, in hdrs.buf (origin-form) */
    int host_idx;               /* the Host (or :authority) field in hdrs, or -1 */
    int64_t content_length;     /* -1: unknown (chunked, or none) */
    bool has_body, chunked, expect_continue, upgrade, head_done;

    /* Routing view: the normalised path and host (in `norm`), what routing, filters and the
     * upstream all see. */
    uint32_t path_len, query_off, query_len, host_off, host_len;

    mr_gen_t *gen;              /* generation the request runs on (referenced) */
    const mr_route_conf_t *route;
    uint8_t route_flags;        /* MR_RF_* of the route's chain */
    mr_upstream_t *upstream;
    mr_upstream_t *dyn_up;      /* chosen by req:set_upstream */
    mr_upx_t *up;               /* the upstream exchange, while bound */
    mr_server_t *waiting;       /* a server whose name is being resolved for this request */
    mr_server_wait_t srv_wait;
    int tries, pick;
    uint64_t started_ms;

    /* What the metrics and the access log report (proxy/stats.h), loop times in us. */
    bool stats_begun;           /* counted in flight */
    uint64_t t_start_us;        /* the head was complete */
    uint64_t t_up_start_us;     /* the first upstream try began */
    uint64_t t_try_us;          /* the last try began */
    uint64_t t_up_conn_us;      /* the last try's connection was ready */
    uint64_t t_up_head_us;      /* the last try's response head arrived */
    uint64_t t_up_end_us;       /* the upstream's response was complete */
    const char *up_addr;        /* the last try's server (registry storage: lives with the worker) */
    int up_status;              /* its response status, 0 if none */
    bool log_written;           /* a Lua filter wrote this request's access-log line */
    char real_ip[46];           /* the client's address from real_ip (proxy/real_ip.h), or "" */

    /* Request body. */
    uint8_t body_mode;
    bool req_done;              /* the whole request was received */
    bool body_blocked;          /* delivery paused: the upstream's queue is full */
    int64_t body_seen, max_body;

    /* Lua chain state. */
    uint8_t lua_phase;          /* parked phase (MR_PH_*), 0 = none */
    bool lua_state;             /* the VM holds state for this request (finish it) */
    bool lua_body_eof;          /* the parked body phase was the final one */
    bool has_target_ov;         /* req:set_path / set_query replaced the target */
    uint8_t lua_body_state;
    int64_t lua_body_max;

    /* The response. */
    struct {
        int status;
        const mr_hdrs_t *hdrs;  /* the upstream's, or local_hdrs */
        const char *reason;     /* the upstream's phrase, or NULL for the registered one */
        uint32_t reason_len;
        int64_t length;         /* body length, -1 unknown */
        const mr_hdrs_t *trailers;  /* trailer fields to send after the body, or NULL */
        bool trailers_only;     /* gRPC's Trailers-Only: HTTP/2 ends the stream with the head
                                   (no content-length, no DATA) */
    } resp;
    bool head_sent;             /* the head went to the session */
    bool resp_done;             /* finish was called */
    bool local_pending;         /* a local response waits for on_response / on_body */
    bool local_resp_done, local_body_done;
    bool tunnel;
    bool close;                 /* the connection must close after this response */
    uint64_t resp_bytes;        /* body bytes sent */

    /* ---------------- kept across requests (reset, not freed) ---------------- */
    mr_hdrs_t hdrs;             /* the request head's fields (and target bytes) */
    mr_hdrs_t trailers;         /* the request's trailer fields (chunked HTTP/1.1, HTTP/2) */
    mr_hdrs_t local_hdrs;       /* a local response's fields */
    mr_hdrs_t resp_trailers;    /* the upstream response's trailer fields, copied */
    mr_vec_t local_body;
    mr_vec_t norm;              /* normalised path, then host */
    mr_vec_t target_ov;         /* set by req:set_path / set_query */
    mr_vec_t lua_body;          /* req:body(): the request body buffered for Lua */
    mr_timer_t lua_timer;       /* resumes a parked Lua phase */
    /* Set by the session once. */
    mr_proxy_t *px;
    const mr_resp_ops_t *out;
    const mr_peer_t *peer;
};

/* Sets up a new request object (all zero, storage empty). */
void mr_req_init(mr_req_t *r, mr_proxy_t *px, const mr_resp_ops_t *out, const mr_peer_t *peer,
                 uint32_t head_limit);
/* Forgets the previous request (the one reset boundary). Timers must not be armed. */
void mr_req_reset(mr_req_t *r);
void mr_req_free(mr_req_t *r);

/* The client's address: the one real_ip found behind trusted proxies, else the peer's. */
static inline const char *mr_req_client_ip(const mr_req_t *r)
{
    return r->real_ip[0] ? r->real_ip : r->peer ? r->peer->ip : "-";
}

/* The request target as received, and the path/query/host views. */
static inline const char *mr_req_target_raw(const mr_req_t *r) { return mr_hdrs_str(&r->hdrs, r->target_off); }
static inline const char *mr_req_view_path(const mr_req_t *r) { return r->norm.p ? r->norm.p : ""; }
static inline const char *mr_req_view_host(const mr_req_t *r) { return r->norm.p ? r->norm.p + r->host_off : ""; }
static inline const char *mr_req_view_query(const mr_req_t *r) { return mr_hdrs_str(&r->hdrs, r->query_off); }

/* Local responses. mr_req_reply answers now (errors from C); mr_req_reply_later records one
 * from Lua (req:respond), sent once the chain's on_response / on_body ran on it (Lua must not be
 * re-entered from an FFI call). Both copy body and headers. Return 0 or -errno. */
int mr_req_reply(mr_req_t *r, int status, const char *body, size_t blen, const char *const *hdrs, int nhdrs);
int mr_req_reply_later(mr_req_t *r, int status, const char *body, size_t blen, const char *const *hdrs,
                         int nhdrs);
/* Sends the recorded local response (head, body, finish). */
int mr_req_local_emit(mr_req_t *r);
/* Answers "<status> <reason>" as a local response; close: the connection ends after it. A gRPC
 * request (mr_req_is_grpc) gets the gRPC status for it instead (mr_req_grpc_code). */
void mr_req_error(mr_req_t *r, int status, bool close);

/* gRPC. A request is gRPC when its upstream has protocol "grpc" or its content-type is
 * application/grpc (or application/grpc+...). Its errors are answered as gRPC clients expect: a
 * Trailers-Only response (HTTP 200, grpc-status, grpc-message) before the head went out, the
 * status in the trailers after. */
bool mr_req_is_grpc(const mr_req_t *r);
/* The gRPC status for an HTTP error status (no server 502/503: UNAVAILABLE, timeout 504:
 * DEADLINE_EXCEEDED, ...). */
int mr_req_grpc_code(int http_status);
/* Ends r with gRPC status code and message (percent-encoded here): a Trailers-Only response, or,
 * once the head was sent to an HTTP/2 client, trailers after what was sent. Returns 0, or
 * -EALREADY when the response can no longer carry a status (the caller aborts). */
int mr_req_grpc_status(mr_req_t *r, int code, const char *msg);

#endif
