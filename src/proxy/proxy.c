/* The request lifecycle. One request at a time per client connection (pipelined requests wait in
 * the client's input until the previous response is complete), each bound to one upstream
 * connection from the worker's pool. Both parsers pause instead of buffering: at the request head
 * (until the upstream is connected), after each request (ordering), and whenever the other side's
 * send queue is over its limit (backpressure), so memory per connection stays bounded. */
#include "proxy/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/gen.h"
#include "core/worker.h"
#include "log/log.h"
#include "lua/lua.h"
#include "net/net.h"
#include "proxy/access_log.h"

#define HEAD_LIMIT (256u * 1024u)
#define SQ_RESERVE 4 /* entries a body piece may need: size line, data, CRLF, last-chunk */
#define MR_DRAIN_IDLE_GRACE_MS 1000u /* see mr_proxy_shutdown */

enum { P_NONE = 0, P_HEAD, P_DONE, P_BP };

static const mr_sock_ops_t client_ops, up_ops;
static const mr_http1_cbs_t req_cbs, resp_cbs;

static void client_feed(mr_client_t *c);
static void client_close(mr_client_t *c);
static void client_abort_response(mr_client_t *c);
static void client_fail(mr_client_t *c, int status);
static void client_check_finish(mr_client_t *c);
static void up_close(mr_upconn_t *up);
static void up_feed(mr_upconn_t *up);
static void forward_start(mr_client_t *c);
static void tunnel_pump(mr_client_t *c);
static void lua_phase_run(mr_client_t *c, int phase);
static void lua_park(mr_client_t *c, int phase, const mr_lua_out_t *out);
static void respond_error(mr_client_t *c, int status, bool close);
static void after_request_phase(mr_client_t *c);
static void lua_abandon(mr_client_t *c);
static void lua_release(mr_client_t *c);
static int resp_emit_head(mr_upconn_t *up);
static void send_body_chunk(mr_client_t *c, char *owned, size_t n);
static void resp_complete(mr_client_t *c);
static void up_release(mr_upconn_t *up);
static void up_fail(mr_upconn_t *up, int status, const char *why);

/* Upstreams chosen at run time by req:set_upstream("ip:port"). Names are never resolved here
 * (that would block the worker); they are kept per worker so their pools are reused. */
struct mr_dyn_upstream {
    mr_upstream_t u;
    mr_upstream_conf_t conf;
    mr_server_conf_t sconf;
    mr_server_t *srv[1];
    int cw[1];
    char key[64];
    struct mr_dyn_upstream *next;
};
#define MR_MAX_DYN_UPSTREAMS 256

static inline mr_client_t *client_of(mr_sock_t *s) { return (mr_client_t *)s; }
static inline mr_upconn_t *up_of(mr_sock_t *s) { return (mr_upconn_t *)s; }

static uint64_t bp_limit(const mr_worker_t *w) { return w->cfg->buffer_size; }

static bool sq_full(const mr_sock_t *s, uint64_t limit)
{
    return mr_sock_sq_space(s) < SQ_RESERVE || s->sq_bytes > limit;
}

/* ------------------------------------------------------------------------------------------ */
/* Local responses                                                                              */

/* Stores a local response: status, body, and headers in c->local's header store. */
static int local_set(mr_client_t *c, int status, const char *body, size_t blen, const char *const *hdrs, int nhdrs)
{
    mr_http1_msg_t *m = &c->local;
    mr_http1_next(m);
    for (int i = 0; i + 1 < 2 * nhdrs; i += 2) {
        if (strcasecmp(hdrs[i], "content-length") == 0 || strcasecmp(hdrs[i], "transfer-encoding") == 0 ||
            strcasecmp(hdrs[i], "connection") == 0)
            continue;
        if (mr_http1_add_header(m, hdrs[i], strlen(hdrs[i]), hdrs[i + 1], strlen(hdrs[i + 1])) < 0) return -E2BIG;
    }
    mr_vec_reset(&c->local_body);
    if (blen && mr_vec_append(&c->local_body, body, blen, (size_t)1 << 30) < 0) return -ENOMEM;
    c->status = status;
    return 0;
}

/* Serialises and queues the stored local response. */
static int local_emit(mr_client_t *c)
{
    if (c->resp_started) {
        /* Too late for a clean answer: the only honest signal left is closing the connection. */
        c->close_after = true;
        c->resp_done = true;
        client_close(c);
        return -EALREADY;
    }
    mr_http1_msg_t *m = &c->local;
    int status = c->status;
    mr_vec_t *h = &c->out_head;
    mr_vec_reset(h);
    bool nobody = c->head_method || status == 204 || status == 304 || status < 200;
    int rc = mr_vec_printf(h, HEAD_LIMIT, "HTTP/1.1 %d %s\r\nServer: moonring\r\n", status, mr_http1_reason(status));
    bool has_ctype = false;
    for (uint32_t i = 0; i < m->nhdrs && rc == 0; i++) {
        mr_hdr_t *hd = &m->hdrs[i];
        if (hd->flags & MR_HDR_DELETED) continue;
        if (hd->name_len == 12 && strncasecmp(mr_http1_str(m, hd->name_off), "content-type", 12) == 0) has_ctype = true;
        rc = mr_vec_printf(h, HEAD_LIMIT, "%.*s: %.*s\r\n", (int)hd->name_len, mr_http1_str(m, hd->name_off),
                           (int)hd->val_len, mr_http1_str(m, hd->val_off));
    }
    size_t blen = nobody ? 0 : c->local_body.len;
    if (rc == 0 && !has_ctype && c->local_body.len) rc = mr_vec_printf(h, HEAD_LIMIT, "Content-Type: text/plain\r\n");
    if (rc == 0 && status != 204 && status >= 200)
        rc = mr_vec_printf(h, HEAD_LIMIT, "Content-Length: %u\r\n", c->local_body.len);
    /* Answering before the request body was read: the rest of it would be parsed as the next
     * request (0.CL desync), so the connection ends with this response. */
    if (c->active && !c->req_done && c->req.has_body) c->close_after = true;
    if (rc == 0 && (c->close_after || c->w->draining)) {
        c->close_after = true;
        rc = mr_vec_printf(h, HEAD_LIMIT, "Connection: close\r\n");
    }
    if (rc == 0) rc = mr_vec_printf(h, HEAD_LIMIT, "\r\n");
    if (rc < 0) return rc;
    c->local_pending = false;
    c->resp_started = true;
    c->head_sent = true;
    c->resp_done = true;
    c->resp_bytes = blen;
    c->out_mode = MR_OUT_NONE;
    mr_sock_send(&c->s, h->p, h->len, MR_NO_BID);
    if (blen) mr_sock_send(&c->s, c->local_body.p, (uint32_t)blen, MR_NO_BID);
    return 0;
}

int mr_proxy_respond(mr_client_t *c, int status, const char *body, size_t blen,
                     const char *const *hdrs, int nhdrs)
{
    if (c->resp_started) return local_emit(c);
    c->local_pending = false;
    int rc = local_set(c, status, body, blen, hdrs, nhdrs);
    if (rc < 0) return rc;
    return local_emit(c);
}

int mr_proxy_respond_later(mr_client_t *c, int status, const char *body, size_t blen,
                           const char *const *hdrs, int nhdrs)
{
    int rc = local_set(c, status, body, blen, hdrs, nhdrs);
    if (rc < 0) return rc;
    c->local_pending = true;
    c->local_resp_done = c->local_body_done = false;
    return 0;
}

static void respond_error(mr_client_t *c, int status, bool close)
{
    char body[96];
    int n = snprintf(body, sizeof body, "%d %s\n", status, mr_http1_reason(status));
    if (close) c->close_after = true;
    mr_proxy_respond(c, status, body, (size_t)n, NULL, 0);
    client_check_finish(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Routing                                                                                      */

static bool host_matches(const mr_route_conf_t *r, const char *host, size_t hlen)
{
    const char *colon = memchr(host, ':', hlen);
    if (colon && host[0] != '[') hlen = (size_t)(colon - host);
    for (int i = 0; i < r->nhosts; i++) {
        const char *pat = r->hosts[i];
        size_t plen = strlen(pat);
        if (pat[0] == '*' && pat[1] == '.') {
            size_t sl = plen - 1; /* ".example.com" */
            if (hlen > sl && strncasecmp(host + hlen - sl, pat + 1, sl) == 0) return true;
        } else if (plen == hlen && strncasecmp(host, pat, hlen) == 0) {
            return true;
        }
    }
    return false;
}

static const mr_route_conf_t *route_match(mr_client_t *c)
{
    const mr_config_t *cfg = c->gen->cfg;
    const mr_http1_msg_t *m = &c->req;
    const char *url = mr_http1_str(m, m->url_off);
    size_t plen = m->url_len;
    const char *q = memchr(url, '?', plen);
    if (q) plen = (size_t)(q - url);
    const char *host = "";
    size_t hlen = 0;
    if (m->host_idx >= 0) {
        host = mr_http1_str(m, m->hdrs[m->host_idx].val_off);
        hlen = m->hdrs[m->host_idx].val_len;
    }
    for (int i = 0; i < cfg->nroutes; i++) {
        const mr_route_conf_t *r = &cfg->routes[i];
        if (r->methods && !(r->methods & (1ull << m->method))) continue;
        if (r->exact && (strlen(r->exact) != plen || memcmp(r->exact, url, plen) != 0)) continue;
        if (r->path) {
            size_t l = strlen(r->path);
            if (plen < l || memcmp(r->path, url, l) != 0) continue;
        }
        if (r->nhosts && !host_matches(r, host, hlen)) continue;
        return r;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Upstream selection and pools                                                                 */

void mr_proxy_worker_free(mr_worker_t *w)
{
    while (w->dyn) {
        struct mr_dyn_upstream *d = w->dyn;
        w->dyn = d->next;
        free(d);
    }
    mr_server_registry_free(&w->servers);
}

static int parse_ip_port(const char *s, size_t n, mr_addr_t *out)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *colon = strrchr(buf, ':');
    if (!colon || colon == buf) return -1;
    *colon = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) return -1;
    char *host = buf;
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (host[hl - 1] != ']') return -1;
        host[hl - 1] = 0;
        host++;
    }
    memset(out, 0, sizeof *out);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        out->len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        out->len = sizeof *s6;
        return 0;
    }
    return -1;
}

int mr_proxy_set_upstream(mr_client_t *c, const char *s, size_t n)
{
    mr_worker_t *w = c->w;
    if (c->up) return -3;
    const mr_config_t *cfg = c->gen->cfg;
    for (int i = 0; i < cfg->nupstreams; i++) {
        const char *name = cfg->upstreams[i].name;
        if (strlen(name) == n && memcmp(name, s, n) == 0) { c->dyn_up = &c->gen->ups[i]; return 0; }
    }
    mr_addr_t addr;
    if (parse_ip_port(s, n, &addr) < 0) return -1;
    for (struct mr_dyn_upstream *d = w->dyn; d; d = d->next)
        if (strlen(d->key) == n && memcmp(d->key, s, n) == 0) { c->dyn_up = &d->u; return 0; }
    if (w->ndyn >= MR_MAX_DYN_UPSTREAMS) return -2;
    struct mr_dyn_upstream *d = calloc(1, sizeof *d);
    if (!d) return -2;
    memcpy(d->key, s, n);
    d->sconf.addr = d->key;
    d->sconf.sa = addr;
    d->sconf.weight = 1;
    d->conf.name = d->key;
    d->conf.servers = &d->sconf;
    d->conf.nservers = 1;
    d->conf.keepalive = 32;
    d->conf.keepalive_requests = 1000;
    d->conf.tries = 1;
    d->conf.keepalive_timeout_ms = 60000;
    d->conf.connect_timeout_ms = 5000;
    d->conf.read_timeout_ms = 60000;
    d->conf.send_timeout_ms = 60000;
    d->srv[0] = mr_server_get(&w->servers, d->key, &addr, 0);
    if (!d->srv[0]) { free(d); return -2; }
    d->u.conf = &d->conf;
    d->u.servers = d->srv;
    d->u.current_weight = d->cw;
    d->u.nservers = 1;
    d->next = w->dyn;
    w->dyn = d;
    w->ndyn++;
    c->dyn_up = &d->u;
    return 0;
}

static void pool_remove(mr_upconn_t *up)
{
    mr_server_t *s = up->server;
    if (!up->pooled) return;
    if (up->pool_prev) up->pool_prev->pool_next = up->pool_next;
    else s->idle = up->pool_next;
    if (up->pool_next) up->pool_next->pool_prev = up->pool_prev;
    up->pool_next = up->pool_prev = NULL;
    up->pooled = false;
    s->nidle--;
}

static void up_timeout(mr_loop_t *loop, mr_timer_t *t);

static void pool_put(mr_upconn_t *up, const mr_upstream_conf_t *uc)
{
    mr_server_t *s = up->server;
    s->active--;
    up->client = NULL;
    if (up->s.closing || up->w->draining || s->nidle >= uc->keepalive ||
        up->requests >= (uint32_t)uc->keepalive_requests || up->s.nin) {
        up_close(up);
        return;
    }
    mr_http1_next(&up->resp);
    up->got_bytes = false;
    up->pooled = true;
    /* It may have been paused for backpressure; a pooled connection must keep reading so a
     * close by the upstream (or stray bytes) is noticed. */
    mr_sock_resume(&up->s);
    up->pool_prev = NULL;
    up->pool_next = s->idle;
    if (s->idle) s->idle->pool_prev = up;
    s->idle = up;
    s->nidle++;
    mr_timer_set(up->w->loop, &up->timer, uc->keepalive_timeout_ms);
}

static mr_upconn_t *pool_get(mr_server_t *s)
{
    mr_upconn_t *up = s->idle;
    if (!up) return NULL;
    pool_remove(up);
    return up;
}

/* ------------------------------------------------------------------------------------------ */
/* Request head serialisation                                                                   */

static int build_up_head(mr_client_t *c)
{
    const mr_config_t *cfg = c->w->cfg;
    mr_http1_msg_t *m = &c->req;
    mr_vec_t *v = &c->up_head;
    mr_vec_reset(v);
    const char *url = c->has_target_ov ? c->target_ov.p : mr_http1_str(m, m->url_off);
    size_t ulen = c->has_target_ov ? c->target_ov.len : m->url_len;
    const char *host = NULL;
    size_t hostlen = 0;
    /* absolute-form: forward origin-form and let the target's authority become Host. */
    if (ulen > 7 && (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)) {
        const char *a = url + (url[4] == ':' ? 7 : 8);
        const char *end = url + ulen;
        const char *slash = memchr(a, '/', (size_t)(end - a));
        host = a;
        hostlen = (size_t)((slash ? slash : end) - a);
        url = slash ? slash : "/";
        ulen = slash ? (size_t)(end - slash) : 1;
    }
    const mr_route_conf_t *r = c->route;
    if (r && r->strip_prefix && r->path) {
        size_t l = strlen(r->path);
        if (l > 1 && ulen >= l) {
            url += l;
            ulen -= l;
            if (ulen == 0 || url[0] != '/') { url--; ulen++; } /* keep a leading slash */
        }
    }
    int rc = 0;
    rc |= mr_vec_reserve(v, ulen + 64, HEAD_LIMIT);
    if (rc) return rc;
    mr_vec_str(v, mr_http1_method_str(m), HEAD_LIMIT);
    mr_vec_lit(v, " ", HEAD_LIMIT);
    if (r && r->strip_prefix && url[0] != '/') mr_vec_append(v, "/", 1, HEAD_LIMIT);
    mr_vec_append(v, url, ulen, HEAD_LIMIT);
    mr_vec_append(v, " HTTP/1.1\r\n", 11, HEAD_LIMIT);
    if (r && r->set_host) {
        rc |= mr_vec_printf(v, HEAD_LIMIT, "Host: %s\r\n", r->set_host);
    } else if (host) {
        rc |= mr_vec_printf(v, HEAD_LIMIT, "Host: %.*s\r\n", (int)hostlen, host);
    } else if (m->host_idx >= 0) {
        mr_hdr_t *h = &m->hdrs[m->host_idx];
        rc |= mr_vec_lit(v, "Host: ", HEAD_LIMIT);
        rc |= mr_vec_append(v, mr_http1_str(m, h->val_off), h->val_len, HEAD_LIMIT);
        rc |= mr_vec_lit(v, "\r\n", HEAD_LIMIT);
    } else if (c->upstream) {
        /* An HTTP/1.0 request without Host still goes out as HTTP/1.1, which requires one:
         * use the upstream's name, as nginx does with $proxy_host. */
        rc |= mr_vec_printf(v, HEAD_LIMIT, "Host: %s\r\n", c->upstream->conf->name);
    }
    const char *xff = NULL;
    uint32_t xff_len = 0;
    const char *via = NULL;
    uint32_t via_len = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        mr_hdr_t *h = &m->hdrs[i];
        if (h->flags & (MR_HDR_HOP | MR_HDR_HOST | MR_HDR_DELETED)) continue;
        if ((h->flags & MR_HDR_XFF) && cfg->xff) { xff = mr_http1_str(m, h->val_off); xff_len = h->val_len; continue; }
        if ((h->flags & MR_HDR_VIA) && cfg->via) { via = mr_http1_str(m, h->val_off); via_len = h->val_len; continue; }
        if (cfg->xfp && h->name_len == 17 && strncasecmp(mr_http1_str(m, h->name_off), "x-forwarded-proto", 17) == 0)
            continue;
        rc |= mr_vec_reserve(v, (size_t)h->name_len + h->val_len + 4, HEAD_LIMIT);
        if (rc) return rc;
        mr_vec_put(v, mr_http1_str(m, h->name_off), h->name_len);
        mr_vec_put(v, ": ", 2);
        mr_vec_put(v, mr_http1_str(m, h->val_off), h->val_len);
        mr_vec_put(v, "\r\n", 2);
    }
    if (cfg->xff) {
        rc |= mr_vec_lit(v, "X-Forwarded-For: ", HEAD_LIMIT);
        if (xff) {
            rc |= mr_vec_append(v, xff, xff_len, HEAD_LIMIT);
            rc |= mr_vec_lit(v, ", ", HEAD_LIMIT);
        }
        rc |= mr_vec_str(v, c->ip, HEAD_LIMIT);
        rc |= mr_vec_lit(v, "\r\n", HEAD_LIMIT);
    }
    if (cfg->xfp) rc |= mr_vec_str(v, c->s.tls ? "X-Forwarded-Proto: https\r\n" : "X-Forwarded-Proto: http\r\n", HEAD_LIMIT);
    if (cfg->via) {
        if (via) rc |= mr_vec_printf(v, HEAD_LIMIT, "Via: %.*s, 1.%d moonring\r\n", (int)via_len, via, m->minor);
        else if (m->minor) rc |= mr_vec_lit(v, "Via: 1.1 moonring\r\n", HEAD_LIMIT);
        else rc |= mr_vec_lit(v, "Via: 1.0 moonring\r\n", HEAD_LIMIT);
    }
    if (m->upgrade) {
        int u = mr_http1_find(m, "upgrade", 7, 0);
        if (u >= 0)
            rc |= mr_vec_printf(v, HEAD_LIMIT, "Connection: upgrade\r\nUpgrade: %.*s\r\n", (int)m->hdrs[u].val_len,
                                mr_http1_str(m, m->hdrs[u].val_off));
    }
    if (m->chunked) {
        rc |= mr_vec_lit(v, "Transfer-Encoding: chunked\r\n", HEAD_LIMIT);
    } else if (m->content_length >= 0 && (m->content_length > 0 || m->method == HTTP_POST ||
                                          m->method == HTTP_PUT || m->method == HTTP_PATCH)) {
        rc |= mr_vec_lit(v, "Content-Length: ", HEAD_LIMIT);
        rc |= mr_vec_num(v, (uint64_t)m->content_length, HEAD_LIMIT);
        rc |= mr_vec_lit(v, "\r\n", HEAD_LIMIT);
    }
    rc |= mr_vec_append(v, "\r\n", 2, HEAD_LIMIT);
    return rc ? -E2BIG : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Upstream connections                                                                         */

static void up_free(mr_upconn_t *up)
{
    up->w->nupconns--;
    mr_worker_client_gone(up->w);
    mr_http1_free(&up->resp);
    free(up);
}

static void up_on_closed(mr_sock_t *s)
{
    mr_upconn_t *up = up_of(s);
    if (up->connect_op.active) return; /* the connect completion frees it */
    up_free(up);
}

/* Detaches the upstream from its client and closes it (never pooled). */
static void up_close(mr_upconn_t *up)
{
    mr_timer_stop(up->w->loop, &up->timer);
    pool_remove(up);
    if (up->client) {
        up->client->up = NULL;
        up->client = NULL;
        up->server->active--;
    }
    if (up->connect_op.active) {
        up->s.closing = true;
        mr_loop_cancel(up->w->loop, &up->connect_op);
        return;
    }
    mr_sock_close(&up->s);
}

static void up_send_head(mr_upconn_t *up)
{
    mr_client_t *c = up->client;
    mr_sock_send(&up->s, c->up_head.p, c->up_head.len, MR_NO_BID);
    up->requests++;
    mr_timer_set(c->w->loop, &up->timer, c->upstream->conf->read_timeout_ms);
    if (c->req.expect_continue && c->req.has_body && !c->sent_continue && !c->req_done) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        c->sent_continue = true;
        mr_sock_send(&c->s, cont, sizeof cont - 1, MR_NO_BID);
    }
    if (c->req.upgrade) return; /* the rest of the client's bytes wait for a 101 */
    if (c->lua_body_state == MR_BODY_DONE || c->lua_body_state == MR_BODY_TOO_LARGE) {
        /* Read by req:body(): send the buffered copy, framed as the request was. */
        if (c->lua_body.len) {
            if (c->req.chunked) {
                char sz[24];
                int l = snprintf(sz, sizeof sz, "%x\r\n", c->lua_body.len);
                mr_sock_send(&up->s, sz, (size_t)l, MR_NO_BID);
            }
            /* A copy: the upstream's queue may outlive this request's buffer. */
            char *copy = malloc(c->lua_body.len);
            if (copy) {
                memcpy(copy, c->lua_body.p, c->lua_body.len);
                mr_sock_send_owned(&up->s, copy, c->lua_body.len);
            }
            if (c->req.chunked) mr_sock_send(&up->s, "\r\n", 2, MR_NO_BID);
        }
        if (c->req.chunked && c->req_done) mr_sock_send(&up->s, "0\r\n\r\n", 5, MR_NO_BID);
    }
    c->forwarding_body = true;
    if (c->pause_reason == P_HEAD) c->pause_reason = P_NONE;
    client_feed(c);
}

/* Another try for the current request, if it is safe and allowed. Returns true if started. */
static bool retry(mr_client_t *c)
{
    const mr_upstream_conf_t *uc = c->upstream->conf;
    if (c->tries >= uc->tries || c->tries >= c->upstream->nservers + 1) return false;
    if (c->forwarding_body && c->body_seen > 0) return false; /* body bytes are gone */
    forward_start(c);
    return true;
}

static bool method_idempotent(uint8_t m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT || m == HTTP_DELETE ||
           m == HTTP_TRACE;
}

/* Why a socket failed: the TLS engine's reason when TLS failed, else the errno text. */
static const char *sock_why(const mr_sock_t *s, int res, char *buf, size_t len)
{
    if (res == -EPROTO && s->tls && *mr_sock_tls_error(s)) {
        snprintf(buf, len, "TLS: %s", mr_sock_tls_error(s));
        return buf;
    }
    return strerror(-res);
}

static void up_fail(mr_upconn_t *up, int status, const char *why)
{
    mr_client_t *c = up->client;
    char addr[64];
    snprintf(addr, sizeof addr, "%s", up->server->addr);
    /* Retry only where the request cannot have been acted on twice: the connect failed, or a
     * reused keep-alive connection turned out stale before any response byte, for an idempotent
     * method (the upstream may have closed it just as we sent). A failed TLS handshake is a
     * failed connect: no request byte left (the engine takes plaintext only once it is done). */
    bool tls_failed = up->s.tls && !mr_tls_handshake_done(up->s.tls);
    if (tls_failed) up->server->down_until = mr_loop_now(up->w->loop) + 1000;
    bool can_retry = c && !up->got_bytes && !c->resp_started && status == 502 &&
                     (!up->connected || tls_failed || (up->requests > 1 && method_idempotent(c->req.method)));
    up_close(up);
    if (!c) return;
    if (c->lua_phase == MR_PH_RESPONSE || c->lua_phase == MR_PH_BODY) lua_abandon(c);
    mr_warn("upstream %s: %s (%s %.*s)", addr, why, mr_http1_method_str(&c->req), (int)c->req.url_len,
            mr_http1_str(&c->req, c->req.url_off));
    if (can_retry && retry(c)) return;
    if (c->resp_started) { client_abort_response(c); return; }
    respond_error(c, status, true);
}

static void up_connected(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_upconn_t *up = (mr_upconn_t *)((char *)op - offsetof(mr_upconn_t, connect_op));
    if (up->s.closing) {
        up->s.closing = false; /* let mr_sock_close run its normal path */
        mr_sock_close(&up->s);
        return;
    }
    if (res < 0) {
        up->server->down_until = mr_loop_now(loop) + 1000;
        char why[96];
        snprintf(why, sizeof why, "connect failed: %s", strerror(-res));
        up_fail(up, 502, why);
        return;
    }
    up->connected = true;
    if (up->s.tls && mr_sock_start_tls(&up->s, up->s.tls, true) < 0) {
        char why[256];
        up_fail(up, 502, sock_why(&up->s, -EPROTO, why, sizeof why));
        return;
    }
    mr_sock_start_recv(&up->s);
    if (up->client) up_send_head(up);
    else up_close(up); /* its request went away while connecting */
}

static int up_connect(mr_worker_t *w, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni,
                      mr_upconn_t **out)
{
    int fd = mr_net_socket_for(&s->sa);
    if (fd < 0) return fd;
    mr_upconn_t *up = calloc(1, sizeof *up);
    if (!up) { close(fd); return -ENOMEM; }
    mr_sock_init(&up->s, w->loop, fd, &up_ops);
    up->w = w;
    w->nupconns++;
    up->server = s;
    up->timer.fn = up_timeout;
    up->connect_op.fn = up_connected;
    mr_http1_init(&up->resp, MR_HTTP1_RESPONSE, &w->h1limits, &resp_cbs, up);
    if (uc->tls) {
        /* Made now, while the config that names the SNI is surely alive; the handshake starts
         * once the TCP connect completes. The socket owns it from here. */
        up->s.tls = mr_tls_conn_new(uc->tls, false, sni);
        if (!up->s.tls) { close(fd); up_free(up); return -ENOMEM; }
        if (s->tls_sess) mr_tls_set_session(up->s.tls, s->tls_sess);
    }
    int rc = mr_loop_connect(w->loop, &up->connect_op, fd, (const struct sockaddr *)&s->sa.sa, s->sa.len);
    if (rc < 0) {
        close(fd);
        mr_tls_conn_free(up->s.tls);
        up_free(up);
        return rc;
    }
    mr_timer_set(w->loop, &up->timer, uc->connect_timeout_ms);
    *out = up;
    return 0;
}

static void forward_start(mr_client_t *c)
{
    mr_worker_t *w = c->w;
    int pick = mr_upstream_pick(c->upstream, mr_loop_now(w->loop));
    if (pick < 0) { respond_error(c, 503, false); return; }
    mr_server_t *s = c->upstream->servers[pick];
    c->tries++;
    mr_upconn_t *up = pool_get(s);
    if (!up) {
        int rc = up_connect(w, s, c->upstream->conf, c->upstream->conf->servers[pick].sni, &up);
        if (rc < 0) {
            mr_warn("upstream %s: socket: %s", s->addr, strerror(-rc));
            if (!retry(c)) respond_error(c, 502, true);
            return;
        }
    }
    up->client = c;
    c->up = up;
    s->active++;
    if (up->connected) up_send_head(up);
}

static void up_timeout(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_upconn_t *up = (mr_upconn_t *)((char *)t - offsetof(mr_upconn_t, timer));
    if (up->pooled) { up_close(up); return; }
    if (!up->connected) {
        up->server->down_until = mr_loop_now(loop) + 1000;
        mr_client_t *c = up->client;
        up_close(up);
        if (c && !retry(c)) respond_error(c, 504, true);
        return;
    }
    up_fail(up, 504, "read timeout");
}

static void up_on_recv(mr_sock_t *s, int res)
{
    mr_upconn_t *up = up_of(s);
    if (res > 0) {
        if (up->pooled) { up_close(up); return; } /* bytes on an idle connection: not ours to keep */
        if (!up->client) return;
        up->got_bytes = true;
        if (up->client->tunnel) { tunnel_pump(up->client); return; }
        up_feed(up);
        return;
    }
    if (!up->client) { up_close(up); return; }
    mr_client_t *c = up->client;
    if (c->tunnel) { client_close(c); return; }
    if (res == 0 && up->got_bytes && up->resp.head_done && c->resp_started && !c->resp_done) {
        /* Close-delimited body ends here; anything else is a truncated response. */
        if (mr_http1_finish(&up->resp) == 0 && c->resp_done) return;
    }
    if (c->resp_done) return;
    char why[256];
    up_fail(up, 502, res == 0 ? "closed the connection prematurely" : sock_why(s, res, why, sizeof why));
}

static void up_on_sent(mr_sock_t *s, int res)
{
    mr_upconn_t *up = up_of(s);
    mr_client_t *c = up->client;
    if (!c) return;
    char why[256];
    if (res < 0) { up_fail(up, 502, sock_why(s, res, why, sizeof why)); return; }
    if (c->tunnel) { tunnel_pump(c); return; }
    if (c->pause_reason == P_BP) {
        c->pause_reason = P_NONE;
        client_feed(c);
    }
}

/* Response parser callbacks. */
static int resp_on_head(mr_http1_msg_t *m)
{
    mr_upconn_t *up = m->owner;
    mr_client_t *c = up->client;
    if (!c) return -1;
    int st = m->status;
    if (st >= 100 && st < 200) {
        if (st == 101 && c->req.upgrade) {
            c->tunnel = true;
        } else if (st == 101) {
            m->error_status = 502;
            m->error_reason = "101 without an upgrade request";
            return -1;
        } else {
            return 0; /* interim responses are not forwarded (we answered 100-continue ourselves) */
        }
    }
    c->status = st;
    if (!c->tunnel && (c->route_flags & MR_RF_RESPONSE)) {
        mr_lua_out_t out = { 0 };
        c->lua_state = true;
        int rc = mr_lua_run(c->gen->lua, c, c->route, MR_PH_RESPONSE, NULL, 0, false, &out);
        if (rc == MR_LUA_YIELD) { lua_park(c, MR_PH_RESPONSE, &out); return HPE_PAUSED; }
        if (rc == MR_LUA_ERROR) {
            m->error_status = 500;
            m->error_reason = "on_response failed";
            return -1;
        }
    }
    return resp_emit_head(up);
}

/* Serialises the response head for the client (status may have been changed by Lua). Returns 1
 * when the message has no body for llhttp to read (HEAD), else 0, or -1. */
static int resp_emit_head(mr_upconn_t *up)
{
    mr_client_t *c = up->client;
    mr_http1_msg_t *m = &up->resp;
    int st = c->status;
    const mr_config_t *cfg = c->w->cfg;
    mr_vec_t *v = &c->out_head;
    mr_vec_reset(v);
    int rc = 0;
    if (st == m->status) {
        rc |= mr_vec_lit(v, "HTTP/1.1 ", HEAD_LIMIT);
        rc |= mr_vec_num(v, (uint64_t)st, HEAD_LIMIT);
        rc |= mr_vec_lit(v, " ", HEAD_LIMIT);
        rc |= mr_vec_append(v, mr_http1_str(m, m->reason_off), m->reason_len, HEAD_LIMIT);
        rc |= mr_vec_lit(v, "\r\n", HEAD_LIMIT);
    } else {
        rc |= mr_vec_printf(v, HEAD_LIMIT, "HTTP/1.1 %d %s\r\n", st, mr_http1_reason(st));
    }
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        mr_hdr_t *h = &m->hdrs[i];
        if (h->flags & (MR_HDR_HOP | MR_HDR_DELETED)) continue;
        rc |= mr_vec_reserve(v, (size_t)h->name_len + h->val_len + 4, HEAD_LIMIT);
        if (rc) break;
        mr_vec_put(v, mr_http1_str(m, h->name_off), h->name_len);
        mr_vec_put(v, ": ", 2);
        mr_vec_put(v, mr_http1_str(m, h->val_off), h->val_len);
        mr_vec_put(v, "\r\n", 2);
    }
    bool nobody = c->head_method || st == 204 || st == 304 || st < 200;
    if (c->tunnel) {
        c->out_mode = MR_OUT_NONE;
        int u = mr_http1_find(m, "upgrade", 7, 0);
        rc |= mr_vec_printf(v, HEAD_LIMIT, "Connection: upgrade\r\n");
        if (u >= 0)
            rc |= mr_vec_printf(v, HEAD_LIMIT, "Upgrade: %.*s\r\n", (int)m->hdrs[u].val_len, mr_http1_str(m, m->hdrs[u].val_off));
    } else if (nobody) {
        c->out_mode = MR_OUT_NONE;
        if (m->content_length >= 0 && st != 204)
            rc |= mr_vec_printf(v, HEAD_LIMIT, "Content-Length: %lld\r\n", (long long)m->content_length);
    } else if (m->content_length >= 0 && !m->chunked && !(c->route_flags & MR_RF_BODY)) {
        c->out_mode = MR_OUT_LENGTH;
        rc |= mr_vec_lit(v, "Content-Length: ", HEAD_LIMIT);
        rc |= mr_vec_num(v, (uint64_t)m->content_length, HEAD_LIMIT);
        rc |= mr_vec_lit(v, "\r\n", HEAD_LIMIT);
    } else if (c->req.minor >= 1) {
        c->out_mode = MR_OUT_CHUNKED;
        rc |= mr_vec_lit(v, "Transfer-Encoding: chunked\r\n", HEAD_LIMIT);
    } else {
        c->out_mode = MR_OUT_CLOSE;
        c->close_after = true;
    }
    if (cfg->via) rc |= mr_vec_lit(v, "Via: 1.1 moonring\r\n", HEAD_LIMIT);
    if (!c->req_done && !c->tunnel) c->close_after = true; /* early response: no desync */
    if (c->w->draining) c->close_after = true;
    if (!c->tunnel) {
        if (c->close_after) rc |= mr_vec_lit(v, "Connection: close\r\n", HEAD_LIMIT);
        else if (c->req.minor == 0) rc |= mr_vec_lit(v, "Connection: keep-alive\r\n", HEAD_LIMIT);
    }
    rc |= mr_vec_append(v, "\r\n", 2, HEAD_LIMIT);
    if (rc) {
        m->error_status = 502;
        m->error_reason = "response head too large";
        return -1;
    }
    c->resp_started = true;
    c->head_sent = true;
    mr_sock_send(&c->s, v->p, v->len, MR_NO_BID);
    mr_timer_set(c->w->loop, &up->timer, c->upstream->conf->read_timeout_ms);
    return c->head_method ? 1 : 0;
}

static int resp_on_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    if (n == 0) return 0; /* llhttp flushes empty spans at buffer ends; a 0 chunk would end the body */
    mr_upconn_t *up = m->owner;
    mr_client_t *c = up->client;
    if (!c) return -1;
    if (c->route_flags & MR_RF_BODY) {
        mr_lua_out_t out = { 0 };
        int rc = mr_lua_run(c->gen->lua, c, c->route, MR_PH_BODY, p, n, false, &out);
        if (rc == MR_LUA_YIELD) { lua_park(c, MR_PH_BODY, &out); return HPE_PAUSED; }
        if (rc == MR_LUA_ERROR) {
            m->error_status = 500;
            m->error_reason = "on_body failed";
            return -1;
        }
        send_body_chunk(c, out.chunk, out.chunk_len);
        return sq_full(&c->s, bp_limit(c->w)) ? HPE_PAUSED : 0;
    }
    int32_t bid = up->s.in[0].bid;
    if (c->out_mode == MR_OUT_CHUNKED) {
        char sz[24];
        int l = snprintf(sz, sizeof sz, "%zx\r\n", n);
        mr_sock_send(&c->s, sz, (size_t)l, MR_NO_BID);
        mr_sock_send(&c->s, p, n, bid);
        mr_sock_send(&c->s, "\r\n", 2, MR_NO_BID);
    } else {
        mr_sock_send(&c->s, p, n, bid);
    }
    c->resp_bytes += n;
    if (sq_full(&c->s, bp_limit(c->w))) return HPE_PAUSED;
    return 0;
}

static int resp_on_done(mr_http1_msg_t *m)
{
    mr_upconn_t *up = m->owner;
    mr_client_t *c = up->client;
    if (!c) return -1;
    if (!c->resp_started) return 0; /* an interim (1xx) response ended */
    if (c->tunnel) return HPE_PAUSED;
    if ((c->route_flags & MR_RF_BODY) && !c->head_method && c->out_mode != MR_OUT_NONE) {
        mr_lua_out_t out = { 0 };
        int rc = mr_lua_run(c->gen->lua, c, c->route, MR_PH_BODY, "", 0, true, &out);
        if (rc == MR_LUA_YIELD) {
            c->lua_body_eof = true;
            lua_park(c, MR_PH_BODY, &out);
            return HPE_PAUSED;
        }
        if (rc == MR_LUA_ERROR) {
            m->error_status = 500;
            m->error_reason = "on_body failed";
            return -1;
        }
        send_body_chunk(c, out.chunk, out.chunk_len);
    }
    resp_complete(c);
    return HPE_PAUSED; /* stop here: the connection goes back to the pool after this feed */
}

static const mr_http1_cbs_t resp_cbs = { resp_on_head, resp_on_body, resp_on_done };

static void up_release(mr_upconn_t *up)
{
    mr_client_t *c = up->client;
    mr_timer_stop(up->w->loop, &up->timer);
    bool reuse = c->req_done && up->resp.keep_alive && c->out_mode != MR_OUT_CLOSE && !up->s.nin &&
                 !up->s.eof && !up->s.err;
    if (up->s.tls && !mr_tls_session_reused(up->s.tls)) {
        /* Keep the newest session for the next connection's handshake (taken after a whole
         * exchange, so TLS 1.3 tickets, sent after the handshake, have arrived). */
        mr_tls_session_t *sess = mr_tls_get_session(up->s.tls);
        if (sess) {
            if (up->server->tls_sess) mr_tls_session_free(up->server->tls_sess);
            up->server->tls_sess = sess;
        }
    }
    c->up = NULL;
    if (reuse) {
        mr_http1_resume(&up->resp);
        pool_put(up, c->upstream->conf);
    } else {
        up_close(up);
    }
}

static void up_feed(mr_upconn_t *up)
{
    while (up->client && !up->s.closing) {
        mr_client_t *c = up->client;
        bool resumed = false;
        if (mr_http1_paused(&up->resp)) {
            if (c->resp_done || c->lua_phase) break;
            if (sq_full(&c->s, bp_limit(c->w))) {
                /* The client reads slower than the upstream sends: bound the wait. */
                mr_timer_set(c->w->loop, &c->timer, c->w->cfg->limits.send_timeout_ms);
                break;
            }
            mr_http1_resume(&up->resp);
            resumed = true;
        }
        /* After a resume llhttp may finish a message without more input (HEAD, 204). */
        if (!up->s.nin && !resumed) break;
        mr_in_t *in = up->s.nin ? &up->s.in[0] : NULL;
        const char *p = in ? mr_loop_buf_ptr(up->w->loop, (uint16_t)in->bid) + in->off : "";
        size_t len = in ? in->len : 0;
        size_t used = 0;
        int rc = mr_http1_feed(&up->resp, p, len, &used);
        if (rc < 0) {
            char why[160];
            int st = up->resp.error_status == 500 ? 500 : 502;
            snprintf(why, sizeof why, "invalid response: %s", up->resp.error_reason ? up->resp.error_reason : "parse error");
            mr_sock_consume(&up->s, len);
            up_fail(up, st, why);
            return;
        }
        mr_sock_consume(&up->s, used);
        if (c->tunnel && (rc == MR_HTTP1_UPGRADE || rc == MR_HTTP1_PAUSED)) {
            mr_timer_stop(up->w->loop, &up->timer);
            c->forwarding_body = true;
            c->pause_reason = P_NONE;
            tunnel_pump(c);
            return;
        }
        if (c->resp_done) {
            up_release(up);
            client_check_finish(c);
            return;
        }
        if (!in && rc == MR_HTTP1_OK) break;
    }
    if (up->s.closing) return;
    if (up->client && up->s.nin >= MR_IN_MAX - 2) mr_sock_pause(&up->s);
    else mr_sock_resume(&up->s);
}

static const mr_sock_ops_t up_ops = { up_on_recv, up_on_sent, up_on_closed };

/* ------------------------------------------------------------------------------------------ */
/* WebSocket / Upgrade tunnel: raw bytes both ways, zero-copy from receive buffers.            */

static void pump(mr_sock_t *from, mr_sock_t *to, uint64_t limit)
{
    while (from->nin && !sq_full(to, limit)) {
        mr_in_t *in = &from->in[0];
        mr_sock_send(to, mr_loop_buf_ptr(from->loop, (uint16_t)in->bid) + in->off, in->len, in->bid);
        mr_sock_consume(from, in->len);
    }
    if (from->nin >= MR_IN_MAX - 2 || sq_full(to, limit)) mr_sock_pause(from);
    else mr_sock_resume(from);
}

static void tunnel_pump(mr_client_t *c)
{
    mr_upconn_t *up = c->up;
    if (!up) { client_close(c); return; }
    uint64_t limit = bp_limit(c->w);
    pump(&c->s, &up->s, limit);
    pump(&up->s, &c->s, limit);
    if ((c->s.eof && !c->s.nin) || (up->s.eof && !up->s.nin)) client_close(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Client connections                                                                           */

static void client_timeout(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_client_t *c = (mr_client_t *)((char *)t - offsetof(mr_client_t, timer));
    if (c->tunnel) return;
    if (c->lingering || c->close_on_sent) { client_close(c); return; }
    if (!c->active) {
        if (c->s.nin || c->req.head_bytes || c->req.url_len) client_fail(c, 408);
        else client_close(c);
        return;
    }
    if (!c->req_done && !c->resp_started) { client_fail(c, 408); return; }
    client_close(c);
}

static void client_on_closed(mr_sock_t *s)
{
    mr_client_t *c = client_of(s);
    mr_worker_t *w = c->w;
    mr_http1_free(&c->req);
    mr_vec_free(&c->up_head);
    mr_vec_free(&c->out_head);
    mr_vec_free(&c->local_body);
    mr_vec_free(&c->target_ov);
    mr_vec_free(&c->lua_body);
    mr_http1_free(&c->local);
    free(c);
    w->nclosing--;
    mr_worker_client_gone(w);
}

static void client_close(mr_client_t *c)
{
    if (c->s.closing) return;
    mr_worker_t *w = c->w;
    mr_timer_stop(w->loop, &c->timer);
    lua_release(c);
    if (c->gen) {
        mr_gen_unref(c->gen);
        c->gen = NULL;
    }
    if (c->up) up_close(c->up);
    if (c->ip_counted) {
        mr_iplimit_release(&w->iplimit, c->ip);
        c->ip_counted = false;
    }
    if (c->prev) c->prev->next = c->next;
    else w->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    w->nclients--;
    w->nclosing++; /* until its last completion frees it; the loop must not stop before */
    mr_sock_close(&c->s);
}

/* Closing with unread input makes the kernel send RST, which can destroy the response we just
 * sent before the client reads it. So shut the write side, drain briefly, then close. */
static void client_linger_close(mr_client_t *c)
{
    if (c->s.closing || c->lingering) return;
    if (c->up) up_close(c->up);
    if (c->s.eof || c->s.err) { client_close(c); return; }
    c->lingering = true;
    mr_sock_shutdown_write(&c->s); /* TLS: close_notify first */
    mr_sock_consume(&c->s, (size_t)-1);
    mr_sock_resume(&c->s);
    mr_timer_set(c->w->loop, &c->timer, 2000);
}

/* The response cannot be completed (the upstream failed after its head went out): the client
 * learns it from the close, but only after the bytes already queued, which are valid, reach it;
 * closing at once would cancel those sends and leave it with less than the origin sent. */
static void client_abort_response(mr_client_t *c)
{
    if (c->s.closing) return;
    if (c->up) up_close(c->up);
    if (!c->s.sq_count || c->s.err) { client_close(c); return; }
    c->close_on_sent = true;
    mr_sock_pause(&c->s);
    mr_timer_set(c->w->loop, &c->timer, c->w->cfg->limits.send_timeout_ms);
}

/* Answers an error for the current (or a half-read) request and closes after it. */
static void client_fail(mr_client_t *c, int status)
{
    if (c->up) up_close(c->up);
    if (!c->active) {
        c->active = true;
        c->resp_started = c->resp_done = c->head_method = false;
        c->route_flags = 0;
        c->route = NULL;
        c->started_ms = mr_loop_now(c->w->loop);
    }
    c->req_done = true; /* nothing more will be read as a request */
    if (c->resp_started) { client_abort_response(c); return; }
    respond_error(c, status, true);
}

static void request_finish(mr_client_t *c)
{
    mr_worker_t *w = c->w;
    if (c->gen && (c->route_flags & MR_RF_LOG)) {
        mr_lua_out_t out = { 0 };
        c->lua_state = true;
        /* A yield in on_log continues detached from the request, which ends now. */
        if (mr_lua_run(c->gen->lua, c, c->route, MR_PH_LOG, NULL, 0, false, &out) == MR_LUA_YIELD &&
            mr_lua_detach(c->gen->lua, c, &out) < 0)
            mr_warn("route %s: on_log yielded and could not continue detached; the rest of it was dropped",
                    c->route->name);
    }
    lua_release(c);
    if (w->alog) mr_access_log_request(w->alog, c);
    if (c->gen) {
        mr_gen_unref(c->gen);
        c->gen = NULL;
    }
    w->nrequests++;
    c->nrequests++;
    c->active = false;
    c->route = NULL;
    c->upstream = NULL;
    if (c->close_after) { client_linger_close(c); return; }
    mr_http1_next(&c->req);
    c->pause_reason = P_NONE;
    mr_http1_resume(&c->req);
    uint32_t idle = c->s.nin ? w->cfg->limits.header_timeout_ms : w->cfg->limits.keepalive_timeout_ms;
    if (w->draining) {
        /* Draining began after this response's head promised keep-alive: the client may send
         * its next request at any moment, so close only after the idle grace (see below). */
        c->close_after = true;
        if (idle > MR_DRAIN_IDLE_GRACE_MS) idle = MR_DRAIN_IDLE_GRACE_MS;
    }
    mr_timer_set(w->loop, &c->timer, idle);
    client_feed(c);
}

static void client_check_finish(mr_client_t *c)
{
    if (!c->active || c->s.closing) return;
    if (!c->resp_done || mr_sock_sending(&c->s)) return;
    if (!c->req_done && !c->close_after && !c->discard_body) return;
    if (!c->req_done && c->discard_body && !c->close_after) return; /* still draining the body */
    if (!c->req_done) { client_linger_close(c); return; }
    request_finish(c);
}

static void client_on_sent(mr_sock_t *s, int res)
{
    mr_client_t *c = client_of(s);
    if (res < 0 || c->close_on_sent) { client_close(c); return; }
    if (c->tunnel) { tunnel_pump(c); return; }
    if (c->active && c->req_done && c->resp_started && !c->resp_done) mr_timer_stop(c->w->loop, &c->timer);
    /* A parser paused for backpressure may have nothing left to read but its own completion
     * (the last body span ended the input), so resume it even with no input. */
    if (c->up && (c->up->s.nin || mr_http1_paused(&c->up->resp))) up_feed(c->up);
    else if (c->up) mr_sock_resume(&c->up->s);
    client_check_finish(c);
}

static void client_on_recv(mr_sock_t *s, int res)
{
    mr_client_t *c = client_of(s);
    if (c->close_on_sent) {
        if (res <= 0) client_close(c);
        return;
    }
    if (c->lingering) {
        if (res <= 0) client_close(c);
        else mr_sock_consume(&c->s, (size_t)-1);
        return;
    }
    if (res <= 0) {
        if (c->tunnel) { tunnel_pump(c); return; }
        if (c->active && c->req_done && !c->resp_done) {
            c->close_after = true; /* half-close after a full request: still answer it */
            return;
        }
        client_close(c);
        return;
    }
    if (c->tunnel) { tunnel_pump(c); return; }
    if (!c->active && !mr_timer_armed(&c->timer)) mr_timer_set(c->w->loop, &c->timer, c->w->cfg->limits.header_timeout_ms);
    else if (!c->active && c->req.head_bytes == 0)
        mr_timer_set(c->w->loop, &c->timer, c->w->cfg->limits.header_timeout_ms);
    client_feed(c);
}

static void client_feed(mr_client_t *c)
{
    if (c->failed) {
        /* The rest of a rejected request (e.g. a header flood spanning several reads) must not
         * be parsed again, nor trigger a second answer: drop it until the close. */
        mr_sock_consume(&c->s, (size_t)-1);
        return;
    }
    if (c->in_feed) { c->feed_again = true; return; }
    c->in_feed = true;
    do {
        c->feed_again = false;
        while (!c->s.closing && !c->tunnel) {
            bool resumed = false;
            if (mr_http1_paused(&c->req)) {
                if (c->pause_reason == P_HEAD && !c->forwarding_body && !c->discard_body &&
                    c->lua_body_state != MR_BODY_READING)
                    break;
                if (c->pause_reason == P_DONE && c->active) break;
                if (c->pause_reason == P_BP) {
                    if (c->up && sq_full(&c->up->s, bp_limit(c->w))) break;
                    c->pause_reason = P_NONE;
                }
                mr_http1_resume(&c->req);
                resumed = true;
            }
            /* After a resume llhttp may have work that needs no input (e.g. completing a
             * bodiless request), so feed it an empty span once. */
            if (!c->s.nin && !resumed) break;
            mr_in_t *in = c->s.nin ? &c->s.in[0] : NULL;
            const char *p = in ? mr_loop_buf_ptr(c->w->loop, (uint16_t)in->bid) + in->off : "";
            size_t len = in ? in->len : 0;
            size_t used = 0;
            int rc = mr_http1_feed(&c->req, p, len, &used);
            if (rc < 0) {
                mr_sock_consume(&c->s, len);
                int st = c->req.error_status ? c->req.error_status : 400;
                mr_info("client %s: %d: %s", c->ip, st, c->req.error_reason ? c->req.error_reason : "bad request");
                c->failed = true;
                client_fail(c, st);
                break;
            }
            mr_sock_consume(&c->s, used);
            if (rc == MR_HTTP1_UPGRADE) break; /* tunnel bytes wait for the upstream's 101 */
            if (!in && rc == MR_HTTP1_OK) break;
        }
    } while (c->feed_again && !c->s.closing);
    c->in_feed = false;
    if (c->s.closing || c->tunnel) return;
    /* Read ahead only while it is useful and bounded. */
    if (c->s.nin >= MR_IN_MAX - 2 || (c->s.nin && c->active && c->pause_reason != P_NONE)) mr_sock_pause(&c->s);
    else mr_sock_resume(&c->s);
}

/* ------------------------------------------------------------------------------------------ */
/* Lua phases. A phase that yields parks the request: the parser stays paused (request phases
 * pause at the head already; response phases return HPE_PAUSED), and lua_timer resumes it. */

static void lua_park(mr_client_t *c, int phase, const mr_lua_out_t *out)
{
    c->lua_phase = (uint8_t)phase;
    if (out->wait_io) mr_timer_stop(c->w->loop, &c->lua_timer); /* the I/O wakes it */
    else mr_timer_set(c->w->loop, &c->lua_timer, out->sleep_ms);
}

/* A parked phase whose request is being abandoned (upstream failed, client gone). */
static void lua_abandon(mr_client_t *c)
{
    if (!c->lua_phase) return;
    mr_timer_stop(c->w->loop, &c->lua_timer);
    c->lua_phase = 0;
}

static void lua_release(mr_client_t *c)
{
    lua_abandon(c);
    if (c->lua_state) {
        mr_lua_finish(c->gen->lua, c);
        c->lua_state = false;
    }
}

static void after_request_phase(mr_client_t *c)
{
    mr_worker_t *w = c->w;
    const mr_route_conf_t *r = c->route;
    if (r->kind == MR_ROUTE_HANDLER) {
        /* The body stays unread while the handler runs (req:body() may want it); it is
         * drained once the handler is done. */
        lua_phase_run(c, MR_PH_HANDLER);
        return;
    }
    c->upstream = c->dyn_up ? c->dyn_up : r->upstream_id >= 0 ? &c->gen->ups[r->upstream_id] : &c->gen->adhoc[r->index - 1];
    (void)w;
    if (build_up_head(c) < 0) { client_fail(c, 431); return; }
    forward_start(c);
}

/* Runs the chain's on_response and on_body on a local response from Lua, then sends it. Each
 * step may park (yield); lua_timer_fired comes back here. */
static void local_finish(mr_client_t *c)
{
    mr_lua_out_t out = { 0 };
    if ((c->route_flags & MR_RF_RESPONSE) && !c->local_resp_done) {
        c->local_resp_done = true;
        int rc = mr_lua_run(c->gen->lua, c, c->route, MR_PH_RESPONSE, NULL, 0, false, &out);
        if (rc == MR_LUA_YIELD) { lua_park(c, MR_PH_RESPONSE, &out); return; }
        if (rc == MR_LUA_ERROR) { c->local_pending = false; respond_error(c, 500, false); return; }
    }
    if ((c->route_flags & MR_RF_BODY) && !c->local_body_done && !c->head_method) {
        c->local_body_done = true;
        int rc = mr_lua_run(c->gen->lua, c, c->route, MR_PH_BODY, c->local_body.p, c->local_body.len, true, &out);
        if (rc == MR_LUA_YIELD) { lua_park(c, MR_PH_BODY, &out); return; }
        if (rc == MR_LUA_ERROR) { c->local_pending = false; respond_error(c, 500, false); return; }
        mr_vec_reset(&c->local_body);
        if (out.chunk) mr_vec_append(&c->local_body, out.chunk, out.chunk_len, (size_t)1 << 30);
        free(out.chunk);
    }
    local_emit(c);
    client_check_finish(c);
}

/* Outcome of a request-side phase (on_request or the handler), run or resumed. */
static void lua_request_outcome(mr_client_t *c, int phase, int rc, const mr_lua_out_t *out)
{
    if (rc == MR_LUA_YIELD) { lua_park(c, phase, out); return; }
    c->lua_phase = 0;
    if (rc == MR_LUA_ERROR) {
        c->discard_body = true;
        c->local_pending = false;
        if (!c->resp_started) respond_error(c, 500, false);
    } else if (rc == MR_LUA_RESPONDED || phase == MR_PH_HANDLER) {
        c->discard_body = true;
        if (c->local_pending) local_finish(c);
        else client_check_finish(c);
    } else {
        after_request_phase(c);
    }
    if (!c->s.closing) client_feed(c); /* drain or forward the body now that we know where it goes */
}

static void lua_phase_run(mr_client_t *c, int phase)
{
    mr_lua_out_t out = { 0 };
    c->lua_state = true;
    int rc = mr_lua_run(c->gen->lua, c, c->route, phase, NULL, 0, false, &out);
    lua_request_outcome(c, phase, rc, &out);
}

static void send_body_chunk(mr_client_t *c, char *owned, size_t n)
{
    if (!owned || n == 0) { free(owned); return; } /* an empty chunk would end a chunked body */
    if (c->out_mode == MR_OUT_CHUNKED) {
        char sz[24];
        int l = snprintf(sz, sizeof sz, "%zx\r\n", n);
        mr_sock_send(&c->s, sz, (size_t)l, MR_NO_BID);
        mr_sock_send_owned(&c->s, owned, n);
        mr_sock_send(&c->s, "\r\n", 2, MR_NO_BID);
    } else {
        mr_sock_send_owned(&c->s, owned, n);
    }
    c->resp_bytes += n;
}

static void resp_complete(mr_client_t *c)
{
    if (c->out_mode == MR_OUT_CHUNKED) mr_sock_send(&c->s, "0\r\n\r\n", 5, MR_NO_BID);
    c->resp_done = true;
}

static void body_feed(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    mr_client_t *c = (mr_client_t *)((char *)d - offsetof(mr_client_t, body_defer));
    if (!c->s.closing && c->lua_body_state == MR_BODY_READING) client_feed(c);
}

int mr_proxy_body_read(mr_client_t *c, int64_t max)
{
    switch (c->lua_body_state) {
    case MR_BODY_READING: return 1;
    case MR_BODY_DONE: return 0;
    case MR_BODY_TOO_LARGE: return -5;
    default: break;
    }
    if (!c->req.has_body) { c->lua_body_state = MR_BODY_DONE; return 0; }
    if (c->req_done || c->forwarding_body || c->discard_body || c->up || c->body_seen > 0) return -3;
    if (c->req.content_length > max) return -5;
    c->lua_body_max = max;
    c->lua_body_state = MR_BODY_READING;
    if (c->pause_reason == P_HEAD) c->pause_reason = P_NONE;
    if (c->req.expect_continue && !c->sent_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        c->sent_continue = true;
        mr_sock_send(&c->s, cont, sizeof cont - 1, MR_NO_BID);
    }
    /* Parsing now would run proxy callbacks inside the FFI call: do it after the phase parks. */
    c->body_defer.fn = body_feed;
    mr_loop_defer(c->w->loop, &c->body_defer);
    return 1;
}

static void lua_timer_fired(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_client_t *c = (mr_client_t *)((char *)t - offsetof(mr_client_t, lua_timer));
    int phase = c->lua_phase;
    if (!phase) return;
    mr_lua_out_t out = { 0 };
    int rc = mr_lua_resume(c->gen->lua, c, c->route, &out);
    if (phase == MR_PH_REQUEST || phase == MR_PH_HANDLER) { lua_request_outcome(c, phase, rc, &out); return; }
    mr_upconn_t *up = c->up;
    if (rc == MR_LUA_YIELD) { lua_park(c, phase, &out); return; }
    c->lua_phase = 0;
    if (c->local_pending) {
        if (rc == MR_LUA_ERROR) { free(out.chunk); c->local_pending = false; respond_error(c, 500, false); return; }
        if (phase == MR_PH_BODY) {
            mr_vec_reset(&c->local_body);
            if (out.chunk) mr_vec_append(&c->local_body, out.chunk, out.chunk_len, (size_t)1 << 30);
            free(out.chunk);
        }
        local_finish(c);
        return;
    }
    if (!up) { free(out.chunk); return; }
    if (rc == MR_LUA_ERROR) { free(out.chunk); up_fail(up, 500, "a Lua response phase failed"); return; }
    if (phase == MR_PH_RESPONSE) {
        if (resp_emit_head(up) == 1) mr_http1_skip_body(&up->resp);
    } else if (phase == MR_PH_BODY) {
        send_body_chunk(c, out.chunk, out.chunk_len);
        if (c->lua_body_eof) {
            c->lua_body_eof = false;
            resp_complete(c);
            up_release(up);
            client_check_finish(c);
            return;
        }
    }
    up_feed(up);
}

/* Request parser callbacks. */
static int req_on_head(mr_http1_msg_t *m)
{
    mr_client_t *c = m->owner;
    mr_worker_t *w = c->w;
    const mr_config_t *cfg = w->cfg;
    c->active = true;
    c->pause_reason = P_HEAD;
    c->req_done = c->resp_started = c->resp_done = c->forwarding_body = false;
    c->sent_continue = c->tunnel = c->discard_body = false;
    c->body_seen = 0;
    c->resp_bytes = 0;
    c->status = 0;
    c->tries = 0;
    c->started_ms = mr_loop_now(w->loop);
    c->head_method = m->method == HTTP_HEAD;
    c->dyn_up = NULL;
    c->has_target_ov = false;
    c->local_pending = false;
    c->head_sent = false;
    c->lua_phase = 0;
    c->route_flags = 0;
    c->lua_body_state = MR_BODY_NONE;
    mr_vec_reset(&c->lua_body);
    c->close_after = !m->keep_alive || w->draining || c->nrequests + 1 >= cfg->limits.keepalive_requests;
    if (m->has_body) mr_timer_set(w->loop, &c->timer, cfg->limits.body_timeout_ms);
    else mr_timer_stop(w->loop, &c->timer);

    /* The request runs to its end on the generation current now, whatever reloads happen. */
    if (!c->gen) {
        c->gen = w->gen;
        mr_gen_ref(c->gen);
    }
    const mr_route_conf_t *r;
    if (c->gen->cfg->lua_routing) {
        c->lua_state = true;
        int i = mr_lua_route(c->gen->lua, c);
        if (i < 0) {
            c->discard_body = true;
            respond_error(c, 500, false);
            return 0;
        }
        r = i > 0 ? &c->gen->cfg->routes[i - 1] : NULL;
    } else {
        r = route_match(c);
    }
    c->route = r;
    int64_t max_body = r && r->client_max_body_size >= 0 ? r->client_max_body_size : cfg->limits.client_max_body_size;
    c->max_body = max_body;
    if (max_body > 0 && m->content_length > max_body) {
        client_fail(c, 413);
        return 0;
    }
    if (!r) {
        c->discard_body = true;
        respond_error(c, 404, false);
        return 0;
    }
    c->route_flags = (uint8_t)mr_lua_route_flags(c->gen->lua, r->index);
    if (c->route_flags & MR_RF_REQUEST) lua_phase_run(c, MR_PH_REQUEST);
    else after_request_phase(c);
    return 0;
}

static int req_on_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    if (n == 0) return 0; /* llhttp flushes empty spans at buffer ends; a 0 chunk would end the body */
    mr_client_t *c = m->owner;
    c->body_seen += (int64_t)n;
    if (c->max_body > 0 && c->body_seen > c->max_body) {
        m->error_status = 413;
        m->error_reason = "request body too large";
        return -1;
    }
    mr_timer_set(c->w->loop, &c->timer, c->w->cfg->limits.body_timeout_ms);
    if (c->lua_body_state == MR_BODY_READING) {
        /* A span is kept whole (it cannot be pushed back), so the copy may pass max by less
         * than one read; the rest of the body stays unparsed. */
        if (mr_vec_append(&c->lua_body, p, n, (size_t)1 << 31) < 0) {
            /* These bytes are consumed and could not be kept: the body cannot be honoured. */
            m->error_status = 500;
            m->error_reason = "out of memory buffering the request body";
            return -1;
        }
        if ((int64_t)c->lua_body.len > c->lua_body_max) {
            c->lua_body_state = MR_BODY_TOO_LARGE;
            c->pause_reason = P_HEAD;
            if (c->lua_phase) mr_timer_set(c->w->loop, &c->lua_timer, 0);
            return HPE_PAUSED;
        }
        return 0;
    }
    if (c->discard_body || !c->up) return 0;
    mr_sock_t *us = &c->up->s;
    int32_t bid = c->s.in[0].bid;
    if (m->chunked) {
        char sz[24];
        int l = snprintf(sz, sizeof sz, "%zx\r\n", n);
        mr_sock_send(us, sz, (size_t)l, MR_NO_BID);
        mr_sock_send(us, p, n, bid);
        mr_sock_send(us, "\r\n", 2, MR_NO_BID);
    } else {
        mr_sock_send(us, p, n, bid);
    }
    if (sq_full(us, bp_limit(c->w))) {
        c->pause_reason = P_BP;
        return HPE_PAUSED;
    }
    return 0;
}

static int req_on_done(mr_http1_msg_t *m)
{
    mr_client_t *c = m->owner;
    c->req_done = true;
    c->pause_reason = P_DONE;
    if (c->lua_body_state == MR_BODY_READING) {
        c->lua_body_state = MR_BODY_DONE;
        mr_timer_stop(c->w->loop, &c->timer);
        if (c->lua_phase) mr_timer_set(c->w->loop, &c->lua_timer, 0);
    }
    if (m->chunked && c->up && !c->discard_body) mr_sock_send(&c->up->s, "0\r\n\r\n", 5, MR_NO_BID);
    if (c->resp_done) mr_timer_stop(c->w->loop, &c->timer);
    else if (c->up) mr_timer_stop(c->w->loop, &c->timer); /* the upstream's read timeout rules now */
    client_check_finish(c);
    return 0;
}

static const mr_http1_cbs_t req_cbs = { req_on_head, req_on_body, req_on_done };
static const mr_sock_ops_t client_ops = { client_on_recv, client_on_sent, client_on_closed };

int mr_proxy_accept(mr_worker_t *w, int fd, mr_tls_ctx_t *tls)
{
    char ip[sizeof ((mr_client_t *)0)->ip];
    mr_net_peer_ip(fd, ip, sizeof ip);
    uint32_t per_ip = w->cfg->limits.max_connections_per_ip;
    if (per_ip && mr_iplimit_acquire(&w->iplimit, ip, per_ip) < 0) {
        /* Refused at accept, before any memory, handshake or timer is spent on it; one log line
         * per second at most, since this is what a flood looks like. */
        uint64_t now = mr_loop_now(w->loop);
        if (now - w->ip_refused_ms >= 1000) {
            w->ip_refused_ms = now;
            mr_warn("connection from %s refused: it has %u open already (limits.max_connections_per_ip)", ip,
                    per_ip);
        }
        close(fd);
        return -EBUSY;
    }
    mr_client_t *c = calloc(1, sizeof *c);
    if (!c) {
        if (per_ip) mr_iplimit_release(&w->iplimit, ip);
        close(fd);
        return -ENOMEM;
    }
    memcpy(c->ip, ip, sizeof ip);
    c->ip_counted = per_ip != 0;
    mr_net_set_nodelay(fd);
    mr_sock_init(&c->s, w->loop, fd, &client_ops);
    if (tls) {
        mr_tls_conn_t *t = mr_tls_conn_new(tls, true, NULL);
        if (!t) {
            if (per_ip) mr_iplimit_release(&w->iplimit, ip);
            close(fd);
            free(c);
            return -ENOMEM;
        }
        /* A client that never finishes the handshake sends no request: the header timeout
         * armed below closes it. */
        mr_sock_start_tls(&c->s, t, false);
    }
    c->w = w;
    c->timer.fn = client_timeout;
    c->lua_timer.fn = lua_timer_fired;
    mr_http1_init(&c->req, MR_HTTP1_REQUEST, &w->h1limits, &req_cbs, c);
    mr_http1_init(&c->local, MR_HTTP1_RESPONSE, &w->h1limits, &req_cbs, c);
    c->next = w->clients;
    if (w->clients) w->clients->prev = c;
    w->clients = c;
    w->nclients++;
    mr_timer_set(w->loop, &c->timer, w->cfg->limits.header_timeout_ms);
    int rc = mr_sock_start_recv(&c->s);
    if (rc < 0) client_close(c);
    return rc;
}

void mr_proxy_shutdown(mr_worker_t *w)
{
    mr_client_t *c = w->clients;
    while (c) {
        mr_client_t *next = c->next;
        /* A response already started without Connection: close keeps its promise: request_finish
         * gives the connection the idle grace below instead of closing it under the client. */
        if (!c->resp_started || c->tunnel) c->close_after = true;
        /* An idle keep-alive connection is not closed at once: its client may have sent the next
         * request already (a pipelining or busy client has no idle time on its side), and that
         * request would be reset. It gets a short grace instead; a request arriving in it is
         * answered with Connection: close. */
        if (!c->active && !c->s.nin && !c->tunnel)
            mr_timer_set(w->loop, &c->timer, w->cfg->limits.keepalive_timeout_ms < MR_DRAIN_IDLE_GRACE_MS
                         ? w->cfg->limits.keepalive_timeout_ms : MR_DRAIN_IDLE_GRACE_MS);
        c = next;
    }
    for (mr_server_t *sv = w->servers.head; sv; sv = sv->next)
        while (sv->idle) up_close(sv->idle);
}

int mr_proxy_close_gen(mr_worker_t *w, mr_gen_t *g, int *tunnels)
{
    int closed = 0;
    *tunnels = 0;
    for (mr_client_t *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (c->gen != g || c->s.closing) continue;
        if (c->tunnel) {
            /* A tunnel only relays bytes: it gives up its Lua state (and its on_log, which would
             * need the VM) and keeps running. */
            lua_release(c);
            c->route_flags &= (uint8_t)~MR_RF_LOG;
            (*tunnels)++;
            continue;
        }
        client_close(c);
        closed++;
    }
    return closed;
}

void mr_proxy_close_all(mr_worker_t *w)
{
    while (w->clients) client_close(w->clients);
    mr_proxy_shutdown(w);
}
