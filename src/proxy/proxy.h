/* The proxy core: what happens to a request between the session that parsed it and the answer.
 * It works only on requests (proxy/req.h): routes them, runs their Lua chains (proxy/phases.h),
 * picks an upstream server and talks to it through the upstream client (upstream/upconn.h), and
 * sends the response back through the request's response interface. It never knows which
 * protocol the client speaks, and never touches a client socket.
 *
 * Calls from sessions (mr_proxy_start, _body, _body_end, _sent, _end, _drop) never call back into
 * the session synchronously except through r->out, whose functions are written for that. Every
 * request is served entirely under the generation it started on (r->gen: routes, upstreams, Lua,
 * and settings alike). Thread affinity: the worker; no locks. */
#ifndef MR_PROXY_H
#define MR_PROXY_H

#include <stdbool.h>
#include <stdint.h>

#include "http1/http1.h"
#include "loop/loop.h"
#include "proxy/req.h"
#include "upstream/dyn.h"
#include "upstream/upx.h"
#include "upstream/upstream.h"

typedef struct mr_access_log mr_access_log_t;

/* The worker's proxy: what the request core needs from the worker, owned here and embedded in
 * the worker, so lower layers never include the worker. */
struct mr_proxy {
    mr_loop_t *loop;
    mr_gen_t *gen;                  /* current generation: new requests start here */
    mr_http1_limits_t h1limits;     /* the current generation's head limits (parsers point here) */
    bool draining;                  /* graceful stop: responses close their connections */
    mr_upx_ctx_t up;                /* upstream clients */
    mr_server_registry_t servers;   /* upstream servers and their pools, across generations */
    mr_dyn_upstreams_t dyn;         /* run-time upstreams (req:set_upstream("ip:port")) */
    mr_access_log_t *alog;
    struct mr_metrics *metrics;     /* the worker's (metrics/metrics.h), or NULL */
    uint64_t nrequests;
};

/* Sets up the worker's proxy on its loop; gone(arg) is called whenever an upstream connection is
 * freed (a draining worker stops once nothing is left). */
void mr_proxy_init(mr_proxy_t *px, mr_loop_t *loop, void (*gone)(void *), void *arg);
/* The current generation changes (start, reload commit): new requests take it. */
void mr_proxy_set_gen(mr_proxy_t *px, mr_gen_t *gen);
/* Graceful stop: idle upstream connections close, released ones are not pooled. */
void mr_proxy_drain(mr_proxy_t *px);
/* After the loop stopped: frees the server registry and run-time upstreams. */
void mr_proxy_free(mr_proxy_t *px);

/* Session → core. The head is complete (r's head fields and hdrs set): route, run the chain,
 * forward or answer. */
void mr_proxy_start(mr_req_t *r);
/* Request body bytes (bid: the loop buffer they are in, for zero-copy forwarding). Returns 0,
 * 1 to pause delivery until r->out->read_body, or -status to fail the request (413, 500). */
int mr_proxy_body(mr_req_t *r, const char *p, size_t n, int32_t bid);
/* The whole request was received. */
void mr_proxy_body_end(mr_req_t *r);
/* The client's send queue drained (a held upstream response may go on). */
void mr_proxy_sent(mr_req_t *r);
/* The exchange is over (response sent, request read): on_log, the access log line, and every
 * reference the request holds are released. The session may reuse r afterwards. */
void mr_proxy_end(mr_req_t *r);
/* The client went away (or the connection is being closed): release everything, log nothing. */
void mr_proxy_drop(mr_req_t *r);
/* A tunnel outliving its generation's drain deadline gives up its Lua state (and on_log). */
void mr_proxy_detach_lua(mr_req_t *r);
/* Answers a session-detected error (a malformed head, a timeout) for r; the connection closes
 * after it. The head fields may be partial (r->line_known). */
void mr_proxy_fail(mr_req_t *r, int status);

/* Lua API (src/lua/api.c). */
/* req:set_upstream: a configured upstream's name or a numeric "ip:port". 0, -1 unknown, -2 bad
 * or too many, -3 too late (already forwarded). */
int mr_proxy_set_upstream(mr_req_t *r, const char *s, size_t n);
/* req:body(max): starts or polls buffering the request body. 1 = reading (the caller parks on
 * I/O; the request's park timer is armed when it ends), 0 = complete (in r->lua_body),
 * -5 = larger than max (what was read stays buffered and is still forwarded), -3 = the body is
 * gone (already streamed or discarded). Never calls back synchronously. */
int mr_proxy_body_read(mr_req_t *r, int64_t max);

#endif
