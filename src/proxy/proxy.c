/* The proxy core. One request at a time is bound to one upstream connection. Nothing here reads
 * ahead of what the other side can take: the session reads no body byte before read_body (the
 * upstream must be connected first), delivery pauses while the upstream's queue is over its limit
 * (mr_proxy_body returns 1), and the upstream's response is held while the client's queue is
 * (data returns 1, resumed by mr_proxy_sent). So memory per request stays bounded. */
#include "proxy/proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/gen.h"
#include "http/path.h"
#include "http/status.h"
#include "http1/write.h"
#include "log/log.h"
#include "lua/lua.h"
#include "proxy/access_log.h"
#include "proxy/phases.h"
#include "proxy/route.h"
#include "proxy/real_ip.h"
#include "proxy/stats.h"

#define HEAD_LIMIT (256u * 1024u)
#define BODY_LIMIT ((size_t)1 << 30)

static const mr_upx_ops_t up_ops;

static void forward_start(mr_req_t *r);
static void lua_request_outcome(mr_req_t *r, int phase, int rc, const mr_lua_out_t *out);

static inline const mr_config_t *cfg_of(const mr_req_t *r) { return r->gen->cfg; }
static inline uint64_t bp_limit(const mr_req_t *r) { return cfg_of(r)->buffer_size; }

/* Nothing follows the head: HEAD requests, 1xx, 204 and 304 (RFC 9110 6.4.1). */
static bool resp_bodiless(const mr_req_t *r)
{
    int st = r->resp.status;
    return r->method == HTTP_HEAD || st == 204 || st == 304 || st < 200;
}

/* ------------------------------------------------------------------------------------------ */
/* The worker's proxy                                                                           */

void mr_proxy_init(mr_proxy_t *px, mr_loop_t *loop, void (*gone)(void *), void *arg)
{
    px->loop = loop;
    px->up.loop = loop;
    px->up.limits = &px->h1limits;
    px->up.gone = gone;
    px->up.gone_arg = arg;
}

void mr_proxy_set_gen(mr_proxy_t *px, mr_gen_t *gen)
{
    const mr_config_t *cfg = gen->cfg;
    px->gen = gen;
    px->h1limits.max_request_line = cfg->limits.max_request_line;
    px->h1limits.max_header_size = cfg->limits.max_header_size;
    px->h1limits.max_headers = cfg->limits.max_headers;
}

void mr_proxy_drain(mr_proxy_t *px)
{
    px->draining = true;
    px->up.draining = true;
    for (mr_server_t *sv = px->servers.head; sv; sv = sv->next) mr_upx_close_idle(&px->up, sv);
}

void mr_proxy_free(mr_proxy_t *px)
{
    mr_dyn_upstreams_free(&px->dyn);
    mr_server_registry_free(&px->servers);
}

/* ------------------------------------------------------------------------------------------ */
/* The upstream request head                                                                    */

/* The target the upstream sees: the route's prefix taken off (strip_prefix; the writer makes
 * sure what remains starts with "/"), then the query. */
static void build_target(const mr_req_t *r, mr_http_req_head_t *head)
{
    const char *path, *query = NULL;
    size_t plen, qlen = 0;
    if (r->has_target_ov) {
        const char *t = r->target_ov.p;
        const char *q = memchr(t, '?', r->target_ov.len);
        path = t;
        plen = q ? (size_t)(q - t) : r->target_ov.len;
        if (q) { query = q + 1; qlen = r->target_ov.len - plen - 1; }
    } else {
        path = mr_req_view_path(r);
        plen = r->path_len;
        if (r->query_off) { query = mr_req_view_query(r); qlen = r->query_len; }
    }
    const mr_route_conf_t *rt = r->route;
    size_t off;
    if (rt && rt->strip_prefix && rt->path && mr_path_strip_prefix(rt->path, strlen(rt->path), path, plen, &off) >= 0) {
        path += off; /* the writer puts the "/" that starts what remains where it is missing */
        plen -= off;
    }
    head->path = path;
    head->path_len = plen;
    head->query = query;
    head->query_len = qlen;
}

/* Sends the request head to the exchange, described: the upstream's client serialises it (and
 * chooses the body's framing). extra[] holds the forwarded-for/-proto and via fields. */
static int send_up_head(mr_req_t *r, mr_upx_t *x)
{
    const mr_config_t *cfg = cfg_of(r);
    const mr_hdrs_t *h = &r->hdrs;
    mr_http_req_head_t head = { .method = r->method_name, .hdrs = h, .scheme = "http",
                                .skip = MR_HDR_HOP | MR_HDR_HOST | MR_HDR_DELETED, .content_length = -1 };
    build_target(r, &head);
    const mr_route_conf_t *rt = r->route;
    if (rt && rt->set_host) {
        head.authority = rt->set_host;
        head.authority_len = strlen(rt->set_host);
    } else if (r->host_idx >= 0) {
        head.authority = mr_hdr_value(h, &h->v[r->host_idx]);
        head.authority_len = h->v[r->host_idx].val_len;
    } else if (r->upstream) {
        /* An HTTP/1.0 request without Host still goes out as HTTP/1.1, which requires one: use
         * the upstream's name, as nginx does with $proxy_host. */
        head.authority = r->upstream->conf->name;
        head.authority_len = strlen(head.authority);
    }
    if (r->upstream && r->upstream->conf->tls) head.scheme = "https";
    mr_field_t extra[3];
    int n = 0;
    if (cfg->xff) {
        head.skip |= MR_HDR_XFF;
        int i = -1;
        for (uint32_t k = 0; k < h->n; k++)
            if ((h->v[k].flags & (MR_HDR_XFF | MR_HDR_DELETED)) == MR_HDR_XFF) i = (int)k;
        mr_field_t *f = &extra[n++];
        *f = (mr_field_t){ .name = "X-Forwarded-For", .nlen = 15, .val = r->peer->ip,
                              .vlen = (uint32_t)strlen(r->peer->ip) };
        if (i >= 0) {
            f->val2 = f->val;
            f->vlen2 = f->vlen;
            f->val = mr_hdr_value(h, &h->v[i]);
            f->vlen = h->v[i].val_len;
        }
    }
    if (cfg->xfp) {
        head.skip |= MR_HDR_XFP;
        const char *proto = r->peer->tls ? "https" : "http";
        extra[n++] = (mr_field_t){ .name = "X-Forwarded-Proto", .nlen = 17, .val = proto,
                                      .vlen = (uint32_t)strlen(proto) };
    }
    if (cfg->via) {
        head.skip |= MR_HDR_VIA;
        int i = -1;
        for (uint32_t k = 0; k < h->n; k++)
            if ((h->v[k].flags & (MR_HDR_VIA | MR_HDR_DELETED)) == MR_HDR_VIA) i = (int)k;
        const char *self = r->version == 10 ? "1.0 moonring" : "1.1 moonring";
        mr_field_t *f = &extra[n++];
        *f = (mr_field_t){ .name = "Via", .nlen = 3, .val = self, .vlen = 12 };
        if (i >= 0) {
            f->val2 = f->val;
            f->vlen2 = f->vlen;
            f->val = mr_hdr_value(h, &h->v[i]);
            f->vlen = h->v[i].val_len;
        }
    }
    head.extra = extra;
    head.nextra = n;
    if (r->upgrade) {
        int u = mr_hdrs_find(h, "upgrade", 7, 0);
        if (u >= 0) {
            head.upgrade = mr_hdr_value(h, &h->v[u]);
            head.upgrade_len = h->v[u].val_len;
        }
    }
    head.body = r->has_body;
    if (r->content_length >= 0 && (r->content_length > 0 || r->method == HTTP_POST || r->method == HTTP_PUT ||
                                   r->method == HTTP_PATCH))
        head.content_length = r->content_length;
    return mr_upx_send_head(x, &head);
}

/* ------------------------------------------------------------------------------------------ */
/* Forwarding                                                                                   */

/* Another try for the current request, if it is safe and allowed. Returns true if started. */
static bool retry(mr_req_t *r)
{
    const mr_upstream_conf_t *uc = r->upstream->conf;
    if (r->tries >= uc->tries || r->tries >= r->upstream->nservers + 1) return false;
    if (r->body_mode == MR_BODY_FORWARD && r->body_seen > 0) return false; /* body bytes are gone */
    forward_start(r);
    return true;
}

static bool method_idempotent(uint8_t m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT || m == HTTP_DELETE ||
           m == HTTP_TRACE;
}

static void local_finish(mr_req_t *r);

/* An error the core answers for the upstream (502, 503, 504). On a route whose chain has Lua
 * response phases they run on it as on a local response (custom error pages, headers such as
 * CORS on errors too), unless a Lua response phase is what failed. */
static void upstream_error(mr_req_t *r, int status, bool close)
{
    /* A gRPC call gets its status (mr_req_error's Trailers-Only answer), not an error page. */
    if (r->head_sent || r->local_pending || r->lua_phase || !(r->route_flags & (MR_RF_RESPONSE | MR_RF_BODY)) ||
        mr_req_is_grpc(r)) {
        mr_req_error(r, status, close);
        return;
    }
    char body[96];
    int n = snprintf(body, sizeof body, "%d %s\n", status, mr_http_reason(status));
    if (close) r->close = true;
    if (mr_req_reply_later(r, status, body, (size_t)n, NULL, 0) < 0) { mr_req_error(r, 500, true); return; }
    local_finish(r);
}

/* The upstream side of the request is gone for good (after a failure, or a Lua error on its
 * response): answer what can still be answered. */
static void up_lost(mr_req_t *r, int status)
{
    if (r->head_sent) {
        /* A gRPC call learns why from its status in the trailers, where HTTP/2 can still send
         * them; anything else can only be broken off. */
        if (!mr_req_is_grpc(r) || mr_req_grpc_status(r, mr_req_grpc_code(status), mr_http_reason(status)) < 0)
            r->out->abort(r);
        return;
    }
    if (status == 500) mr_req_error(r, status, true); /* a Lua phase failed: not again */
    else upstream_error(r, status, true);
}

/* grpc-timeout (gRPC over HTTP/2: 1-8 digits and a unit, H M S m u n) as the loop time by which
 * the call must be answered; 0 when absent or malformed. */
static uint64_t grpc_deadline(const mr_req_t *r)
{
    int i = mr_hdrs_find(&r->hdrs, "grpc-timeout", 12, 0);
    if (i < 0) return 0;
    const char *v = mr_hdr_value(&r->hdrs, &r->hdrs.v[i]);
    uint32_t n = r->hdrs.v[i].val_len;
    if (n < 2 || n > 9) return 0;
    uint64_t t = 0;
    for (uint32_t k = 0; k + 1 < n; k++) {
        if (v[k] < '0' || v[k] > '9') return 0;
        t = t * 10 + (uint64_t)(v[k] - '0');
    }
    uint64_t ms;
    switch (v[n - 1]) {
    case 'H': ms = t * 3600000; break;
    case 'M': ms = t * 60000; break;
    case 'S': ms = t * 1000; break;
    case 'm': ms = t; break;
    case 'u': ms = (t + 999) / 1000; break;
    case 'n': ms = (t + 999999) / 1000000; break;
    default: return 0;
    }
    return r->started_ms + (ms ? ms : 1);
}

/* Connects (or takes a pooled connection) to the server picked for r. */
static void forward_connect(mr_req_t *r, mr_server_t *s)
{
    mr_proxy_t *px = r->px;
    r->tries++;
    mr_stats_try(r, s);
    mr_upx_t *u;
    int rc = mr_upx_open(&px->up, s, r->upstream->conf, r->upstream->conf->servers[r->pick].sni, &u);
    if (rc < 0) {
        mr_warn("upstream %s: socket: %s", s->addr, strerror(-rc));
        if (!retry(r)) upstream_error(r, 502, true);
        return;
    }
    mr_upx_bind(u, r, &up_ops, r->upstream->conf, bp_limit(r));
    if (r->upstream->conf->protocol != MR_UP_HTTP1) u->deadline_ms = grpc_deadline(r);
    r->up = u;
    if (u->connected) up_ops.ready(r, u);
}

/* The first address of the server r waits for (a name) is known, or could not be found. */
static void server_ready(mr_server_wait_t *w, int rc)
{
    mr_req_t *r = (mr_req_t *)((char *)w - offsetof(mr_req_t, srv_wait));
    mr_server_t *s = r->waiting;
    r->waiting = NULL;
    if (rc == 0) { forward_connect(r, s); return; }
    mr_warn("upstream %s: %s (%s %.*s)", s->addr, rc == -ENOENT ? "host not found" : strerror(-rc), r->method_name,
            (int)r->target_len, mr_req_target_raw(r));
    r->tries++;
    if (!retry(r)) upstream_error(r, 502, true);
}

static void forward_start(mr_req_t *r)
{
    mr_proxy_t *px = r->px;
    uint64_t now = mr_loop_now(px->loop);
    int pick = mr_upstream_pick(r->upstream, now);
    if (pick < 0) { upstream_error(r, 503, false); return; }
    mr_server_t *s = r->upstream->servers[pick];
    r->pick = pick;
    r->srv_wait.fn = server_ready;
    int rc = mr_server_ready(s, now, &r->srv_wait);
    if (rc == 1) { r->waiting = s; return; } /* its name is being resolved */
    if (rc < 0) {
        mr_warn("upstream %s: cannot resolve: %s", s->addr, strerror(-rc));
        r->tries++;
        if (!retry(r)) upstream_error(r, 502, true);
        return;
    }
    forward_connect(r, s);
}

/* The route's upstream (or the one a filter chose) gets the request. */
static void forward(mr_req_t *r)
{
    const mr_route_conf_t *rt = r->route;
    r->upstream = r->dyn_up ? r->dyn_up : rt->upstream_id >= 0 ? &r->gen->ups[rt->upstream_id] : &r->gen->adhoc[rt->index - 1];
    forward_start(r);
}

static void up_ready(void *owner, mr_upx_t *u)
{
    mr_req_t *r = owner;
    r->t_up_conn_us = mr_loop_now_us(r->px->loop);
    int rc = send_up_head(r, u);
    if (rc < 0) {
        mr_upx_close(u);
        r->up = NULL;
        mr_req_error(r, rc == -E2BIG ? 431 : 500, true);
        return;
    }
    if (r->expect_continue && r->has_body && !r->req_done) r->out->send_continue(r);
    if (r->upgrade) return; /* the rest of the client's bytes wait for a 101 */
    if (r->lua_body_state == MR_LBODY_DONE || r->lua_body_state == MR_LBODY_TOO_LARGE) {
        /* Read by req:body(): send the buffered copy, framed as the request was. */
        mr_upx_send_copy(u, r->lua_body.p, r->lua_body.len);
        if (r->req_done) mr_upx_end_body(u, r->trailers.n ? &r->trailers : NULL);
    }
    r->body_mode = MR_BODY_FORWARD;
    r->body_blocked = false;
    r->out->read_body(r);
}

static void up_failed(void *owner, mr_server_t *s, int status, const char *why, int kind)
{
    mr_req_t *r = owner;
    r->up = NULL;
    mr_stats_try_failed(r);
    if (r->lua_phase == MR_PH_RESPONSE || r->lua_phase == MR_PH_BODY) mr_phase_abandon(r);
    mr_warn("upstream %s: %s (%s %.*s)", s->addr, why, r->method_name, (int)r->target_len, mr_req_target_raw(r));
    bool again = !r->head_sent && (kind == MR_UP_RETRY_ANY || (kind == MR_UP_RETRY_IDEMPOTENT && method_idempotent(r->method)));
    if (again && retry(r)) return;
    up_lost(r, status);
}

/* Emits the response head (the status may have been changed by Lua). Returns MR_UP_NOBODY when
 * the message has no body for the parser to read (HEAD), MR_UP_GO, or -1. */
static int resp_emit_head(mr_req_t *r, mr_upx_t *u)
{
    if (cfg_of(r)->via && mr_hdrs_add(u->hdrs, "Via", 3, "1.1 moonring", 12) < 0) goto too_large;
    r->resp.hdrs = u->hdrs;
    r->resp.reason = r->resp.status == u->status ? u->reason : NULL;
    r->resp.reason_len = r->resp.status == u->status ? u->reason_len : 0;
    if (resp_bodiless(r) || r->tunnel)
        r->resp.length = r->resp.status != 204 ? u->content_length : -1;
    else if (u->length_known && !(r->route_flags & MR_RF_BODY))
        r->resp.length = u->content_length;
    else
        r->resp.length = -1;
    /* A gRPC answer without a body (the upstream ended the stream with its head) stays
     * Trailers-Only for an HTTP/2 client. */
    if (r->resp.length == 0 && mr_hdrs_find(u->hdrs, "grpc-status", 11, 0) >= 0) r->resp.trailers_only = true;
    if (r->out->head(r) < 0) goto too_large;
    r->head_sent = true;
    return r->method == HTTP_HEAD ? MR_UP_NOBODY : MR_UP_GO;
too_large:
    u->error_status = 502;
    u->error_reason = "response head too large";
    return -1;
}

static int up_head(void *owner, mr_upx_t *u)
{
    mr_req_t *r = owner;
    r->resp.status = u->status;
    r->up_status = u->status;
    r->t_up_head_us = mr_loop_now_us(r->px->loop);
    r->tunnel = u->tunnel;
    if (!r->tunnel && (r->route_flags & MR_RF_RESPONSE)) {
        mr_lua_out_t out = { 0 };
        int rc = mr_phase_run(r, MR_PH_RESPONSE, NULL, 0, false, &out);
        if (rc == MR_LUA_YIELD) { mr_phase_park(r, MR_PH_RESPONSE, &out); return MR_UP_HOLD; }
        if (rc == MR_LUA_ERROR) {
            u->error_status = 500;
            u->error_reason = "on_response failed";
            return -1;
        }
    }
    return resp_emit_head(r, u);
}

/* A body piece from Lua (malloc'd, or NULL to drop). */
static int send_owned(mr_req_t *r, char *owned, size_t n)
{
    if (!owned || n == 0) { free(owned); return 0; } /* an empty chunk would end a chunked body */
    r->resp_bytes += n;
    return r->out->data(r, owned, n, MR_NO_BID, owned);
}

static int up_body(void *owner, mr_upx_t *u, const char *p, size_t n, int32_t bid)
{
    mr_req_t *r = owner;
    if (r->route_flags & MR_RF_BODY) {
        mr_lua_out_t out = { 0 };
        int rc = mr_phase_run(r, MR_PH_BODY, p, n, false, &out);
        if (rc == MR_LUA_YIELD) { mr_phase_park(r, MR_PH_BODY, &out); return MR_UP_HOLD; }
        if (rc == MR_LUA_ERROR) {
            u->error_status = 500;
            u->error_reason = "on_body failed";
            return -1;
        }
        return send_owned(r, out.chunk, out.chunk_len) ? MR_UP_HOLD : MR_UP_GO;
    }
    r->resp_bytes += n;
    return r->out->data(r, p, n, bid, NULL) ? MR_UP_HOLD : MR_UP_GO;
}

/* The response is complete and its upstream connection can go. */
static void resp_complete(mr_req_t *r)
{
    mr_upx_t *u = r->up;
    r->up = NULL;
    r->t_up_end_us = mr_loop_now_us(r->px->loop);
    if (u) mr_upx_release(u, r->req_done);
    if (r->resp_trailers.n) r->resp.trailers = &r->resp_trailers;
    r->resp_done = true;
    r->out->finish(r);
}

static void up_done(void *owner, mr_upx_t *u)
{
    mr_req_t *r = owner;
    /* The exchange's trailer store goes with it: copied, so the last on_body can read and change
     * them (res:trailer) and finish can send them where the client's protocol carries them. */
    const mr_hdrs_t *t = u->trailers;
    for (uint32_t i = 0; t && i < t->n; i++) {
        const mr_hdr_t *e = &t->v[i];
        if (!(e->flags & MR_HDR_DELETED))
            mr_hdrs_add(&r->resp_trailers, mr_hdr_name(t, e), e->name_len, mr_hdr_value(t, e), e->val_len);
    }
    if ((r->route_flags & MR_RF_BODY) && !resp_bodiless(r)) {
        mr_lua_out_t out = { 0 };
        int rc = mr_phase_run(r, MR_PH_BODY, "", 0, true, &out);
        if (rc == MR_LUA_YIELD) {
            r->lua_body_eof = true;
            mr_phase_park(r, MR_PH_BODY, &out);
            return; /* the connection stays bound until the phase ends */
        }
        if (rc == MR_LUA_ERROR) {
            mr_warn("upstream %s: on_body failed (%s %.*s)", mr_upx_addr(u), r->method_name, (int)r->target_len,
                    mr_req_target_raw(r));
            mr_upx_close(u);
            r->up = NULL;
            up_lost(r, 500);
            return;
        }
        send_owned(r, out.chunk, out.chunk_len);
    }
    resp_complete(r);
}

static void up_sent(void *owner, mr_upx_t *u)
{
    (void)u;
    mr_req_t *r = owner;
    if (r->body_blocked) {
        r->body_blocked = false;
        r->out->read_body(r);
    }
}

static void up_tunnel(void *owner, mr_upx_t *u)
{
    mr_req_t *r = owner;
    r->body_mode = MR_BODY_FORWARD;
    r->out->tunnel(r, u->raw);
}

static const mr_upx_ops_t up_ops = { up_ready, up_head, up_body, up_done, up_failed, up_sent, up_tunnel };

/* ------------------------------------------------------------------------------------------ */
/* Lua phases. A phase that yields parks the request (mr_phase_park): the session reads no body
 * meanwhile and a held upstream response waits; lua_timer resumes it. */

/* Runs the chain's on_response and on_body on a local response from Lua, then sends it. Each
 * step may park (yield); lua_timer_fired comes back here. */
static void local_finish(mr_req_t *r)
{
    mr_lua_out_t out = { 0 };
    if ((r->route_flags & MR_RF_RESPONSE) && !r->local_resp_done) {
        r->local_resp_done = true;
        int rc = mr_phase_run(r, MR_PH_RESPONSE, NULL, 0, false, &out);
        if (rc == MR_LUA_YIELD) { mr_phase_park(r, MR_PH_RESPONSE, &out); return; }
        if (rc == MR_LUA_ERROR) { r->local_pending = false; mr_req_error(r, 500, false); return; }
    }
    if ((r->route_flags & MR_RF_BODY) && !r->local_body_done && r->method != HTTP_HEAD) {
        r->local_body_done = true;
        int rc = mr_phase_run(r, MR_PH_BODY, r->local_body.p, r->local_body.len, true, &out);
        if (rc == MR_LUA_YIELD) { mr_phase_park(r, MR_PH_BODY, &out); return; }
        if (rc == MR_LUA_ERROR) { r->local_pending = false; mr_req_error(r, 500, false); return; }
        mr_vec_reset(&r->local_body);
        if (out.chunk) mr_vec_append(&r->local_body, out.chunk, out.chunk_len, BODY_LIMIT);
        free(out.chunk);
    }
    if (mr_req_local_emit(r) == -E2BIG) r->out->abort(r);
}

static void after_request_phase(mr_req_t *r)
{
    if (r->route->kind == MR_ROUTE_HANDLER) {
        /* The body stays unread while the handler runs (req:body() may want it); it is
         * drained once the handler is done. */
        mr_lua_out_t out = { 0 };
        int rc = mr_phase_run(r, MR_PH_HANDLER, NULL, 0, false, &out);
        lua_request_outcome(r, MR_PH_HANDLER, rc, &out);
        return;
    }
    forward(r);
}

/* Outcome of a request-side phase (on_request or the handler), run or resumed. */
static void lua_request_outcome(mr_req_t *r, int phase, int rc, const mr_lua_out_t *out)
{
    if (rc == MR_LUA_YIELD) { mr_phase_park(r, phase, out); return; }
    r->lua_phase = 0;
    if (rc == MR_LUA_ERROR) {
        r->body_mode = MR_BODY_DISCARD;
        r->local_pending = false;
        if (!r->head_sent) mr_req_error(r, 500, false);
    } else if (rc == MR_LUA_RESPONDED || phase == MR_PH_HANDLER) {
        r->body_mode = MR_BODY_DISCARD;
        if (r->local_pending) local_finish(r);
    } else {
        after_request_phase(r);
        return;
    }
    r->out->read_body(r); /* drain the body now that it goes nowhere */
}

static void lua_timer_fired(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_req_t *r = (mr_req_t *)((char *)t - offsetof(mr_req_t, lua_timer));
    int phase = r->lua_phase;
    if (!phase) return;
    mr_lua_out_t out = { 0 };
    int rc = mr_phase_resume(r, &out);
    if (phase == MR_PH_REQUEST || phase == MR_PH_HANDLER) { lua_request_outcome(r, phase, rc, &out); return; }
    if (rc == MR_LUA_YIELD) { mr_phase_park(r, phase, &out); return; }
    r->lua_phase = 0;
    if (r->local_pending) {
        if (rc == MR_LUA_ERROR) { free(out.chunk); r->local_pending = false; mr_req_error(r, 500, false); return; }
        if (phase == MR_PH_BODY) {
            mr_vec_reset(&r->local_body);
            if (out.chunk) mr_vec_append(&r->local_body, out.chunk, out.chunk_len, BODY_LIMIT);
            free(out.chunk);
        }
        local_finish(r);
        return;
    }
    mr_upx_t *u = r->up;
    if (!u) { free(out.chunk); return; }
    if (rc == MR_LUA_ERROR) {
        free(out.chunk);
        mr_warn("upstream %s: a Lua response phase failed (%s %.*s)", mr_upx_addr(u), r->method_name,
                (int)r->target_len, mr_req_target_raw(r));
        mr_upx_close(u);
        r->up = NULL;
        up_lost(r, 500);
        return;
    }
    if (phase == MR_PH_RESPONSE) {
        int st = resp_emit_head(r, u);
        if (st < 0) {
            mr_upx_close(u);
            r->up = NULL;
            up_lost(r, 502);
            return;
        }
        if (st == MR_UP_NOBODY) mr_upx_skip_body(u);
    } else if (phase == MR_PH_BODY) {
        send_owned(r, out.chunk, out.chunk_len);
        if (r->lua_body_eof) {
            r->lua_body_eof = false;
            resp_complete(r);
            return;
        }
    }
    mr_upx_resume(u);
}

/* ------------------------------------------------------------------------------------------ */
/* Session entry points                                                                         */

void mr_proxy_start(mr_req_t *r)
{
    mr_proxy_t *px = r->px;
    r->started_ms = mr_loop_now(px->loop);
    mr_stats_begin(r);
    r->lua_timer.fn = lua_timer_fired;
    /* The request runs to its end on the generation current now, whatever reloads happen. */
    if (!r->gen) {
        r->gen = px->gen;
        mr_gen_ref(r->gen);
    }
    const mr_config_t *cfg = cfg_of(r);
    if (px->draining) r->close = true;
    if (cfg->real_ip_n) mr_real_ip_apply(r);
    const char *why = NULL;
    int st = mr_route_view(r, &why);
    if (st) {
        mr_info("client %s: %d: %s", r->peer->ip, st, why);
        mr_proxy_fail(r, st);
        return;
    }
    const mr_route_conf_t *rt;
    if (cfg->lua_routing) {
        int i = mr_phase_route(r);
        if (i < 0) {
            mr_req_error(r, 500, false);
            return;
        }
        rt = i > 0 ? &cfg->routes[i - 1] : NULL;
    } else {
        rt = mr_route_match(cfg, r);
    }
    r->route = rt;
    r->max_body = rt && rt->client_max_body_size >= 0 ? rt->client_max_body_size : cfg->limits.client_max_body_size;
    if (r->max_body > 0 && r->content_length > r->max_body) {
        mr_proxy_fail(r, 413);
        return;
    }
    if (!rt) {
        mr_req_error(r, 404, false);
        return;
    }
    r->route_flags = (uint8_t)mr_lua_route_flags(r->gen->lua, rt->index);
    if (r->route_flags & MR_RF_REQUEST) {
        mr_lua_out_t out = { 0 };
        int rc = mr_phase_run(r, MR_PH_REQUEST, NULL, 0, false, &out);
        lua_request_outcome(r, MR_PH_REQUEST, rc, &out);
    } else {
        after_request_phase(r);
    }
}

int mr_proxy_body(mr_req_t *r, const char *p, size_t n, int32_t bid)
{
    r->body_seen += (int64_t)n;
    if (r->max_body > 0 && r->body_seen > r->max_body) return -413;
    if (r->lua_body_state == MR_LBODY_READING) {
        /* A span is kept whole (it cannot be pushed back), so the copy may pass max by less
         * than one read; the rest of the body stays unparsed. */
        if (mr_vec_append(&r->lua_body, p, n, (size_t)1 << 31) < 0) return -500;
        if ((int64_t)r->lua_body.len > r->lua_body_max) {
            r->lua_body_state = MR_LBODY_TOO_LARGE;
            r->body_mode = MR_BODY_HOLD;
            if (r->lua_phase) mr_timer_set(r->px->loop, &r->lua_timer, 0);
            return 1;
        }
        return 0;
    }
    if (r->body_mode != MR_BODY_FORWARD || !r->up) return 0;
    mr_upx_send_body(r->up, p, n, bid);
    if (mr_upx_full(r->up)) {
        r->body_blocked = true;
        return 1;
    }
    return 0;
}

void mr_proxy_body_end(mr_req_t *r)
{
    r->req_done = true;
    if (r->lua_body_state == MR_LBODY_READING) {
        r->lua_body_state = MR_LBODY_DONE;
        if (r->lua_phase) mr_timer_set(r->px->loop, &r->lua_timer, 0);
    }
    if (r->body_mode == MR_BODY_FORWARD && r->up && !r->tunnel) mr_upx_end_body(r->up, r->trailers.n ? &r->trailers : NULL);
}

void mr_proxy_sent(mr_req_t *r)
{
    if (r->up && !r->lua_phase && !r->tunnel && r->head_sent && !r->resp_done) mr_upx_resume(r->up);
}

/* The request lets go of the upstream side: a name lookup it waits for, its connection. */
static void unbind_upstream(mr_req_t *r)
{
    if (r->waiting) {
        mr_server_unwait(r->waiting, &r->srv_wait);
        r->waiting = NULL;
    }
    if (r->up) {
        mr_upx_close(r->up);
        r->up = NULL;
    }
}

static void release(mr_req_t *r)
{
    unbind_upstream(r);
    if (r->gen) {
        mr_phase_release(r);
        mr_gen_unref(r->gen);
        r->gen = NULL;
    }
}

void mr_proxy_end(mr_req_t *r)
{
    mr_proxy_t *px = r->px;
    if (r->gen && (r->route_flags & MR_RF_LOG)) mr_phase_log(r);
    if (r->gen) mr_phase_release(r);
    if (px->alog) mr_access_log_request(px->alog, r);
    mr_stats_end(r, false);
    release(r);
    px->nrequests++;
}

void mr_proxy_drop(mr_req_t *r)
{
    mr_stats_end(r, true);
    release(r);
}

void mr_proxy_detach_lua(mr_req_t *r)
{
    if (r->gen) mr_phase_release(r);
    r->route_flags &= (uint8_t)~MR_RF_LOG;
}

void mr_proxy_fail(mr_req_t *r, int status)
{
    unbind_upstream(r);
    r->req_done = true; /* nothing more will be read as a request */
    if (!r->started_ms) r->started_ms = mr_loop_now(r->px->loop);
    mr_stats_begin(r);
    if (r->head_sent) { r->out->abort(r); return; }
    mr_req_error(r, status, true);
}

/* ------------------------------------------------------------------------------------------ */
/* Lua API                                                                                      */

int mr_proxy_set_upstream(mr_req_t *r, const char *s, size_t n)
{
    if (r->up) return -3;
    const mr_config_t *cfg = cfg_of(r);
    for (int i = 0; i < cfg->nupstreams; i++) {
        const char *name = cfg->upstreams[i].name;
        if (strlen(name) == n && memcmp(name, s, n) == 0) { r->dyn_up = &r->gen->ups[i]; return 0; }
    }
    int err = 0;
    mr_upstream_t *u = mr_dyn_upstream_get(&r->px->dyn, &r->px->servers, s, n, &cfg->upstream_defaults, &err);
    if (!u) return err == -EINVAL ? -1 : -2;
    r->dyn_up = u;
    return 0;
}

int mr_proxy_body_read(mr_req_t *r, int64_t max)
{
    switch (r->lua_body_state) {
    case MR_LBODY_READING: return 1;
    case MR_LBODY_DONE: return 0;
    case MR_LBODY_TOO_LARGE: return -5;
    default: break;
    }
    if (!r->has_body) { r->lua_body_state = MR_LBODY_DONE; return 0; }
    if (r->req_done || r->body_mode != MR_BODY_HOLD || r->up || r->body_seen > 0) return -3;
    if (r->content_length > max) return -5;
    r->lua_body_max = max;
    r->lua_body_state = MR_LBODY_READING;
    r->out->send_continue(r);
    /* read_body defers: parsing now would run proxy callbacks inside this FFI call. */
    r->body_mode = MR_BODY_LUA;
    r->out->read_body(r);
    return 1;
}
