/* C functions the Lua runtime reaches through LuaJIT FFI (ffi.C), the lua-resty-core way: plain
 * C ABI, MR_FFI_* codes (util/export.h), no Lua stack, so calls JIT-compile. `r` is the mr_req_t of
 * the request being handled; it is valid only during the phase that received it. DECLINED: not
 * found; BAD_ARG: out of domain; BAD_CONTEXT: the state of the request forbids it now. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "http/headers.h"
#include "llhttp.h"
#include "proxy/proxy.h"
#include "proxy/req.h"
#include "lua/lua.h"

#include "util/export.h"

MR_EXPORT int mr_req_method(void *p, const char **s, size_t *n)
{
    mr_req_t *r = p;
    *s = r->method_name ? r->method_name : "";
    *n = strlen(*s);
    return MR_FFI_OK;
}

/* The target the upstream gets: the normalised path and the query, or what req:set_path /
 * set_query made of it. */
MR_EXPORT int mr_req_target(void *p, const char **s, size_t *n, const char **q, size_t *qn)
{
    mr_req_t *r = p;
    if (r->has_target_ov) { /* the whole target, query included */
        *s = r->target_ov.p;
        *n = r->target_ov.len;
        *q = NULL;
        *qn = 0;
        return MR_FFI_OK;
    }
    *s = mr_req_view_path(r);
    *n = r->path_len;
    *q = r->query_off ? mr_req_view_query(r) : NULL;
    *qn = r->query_len;
    return MR_FFI_OK;
}

/* The protocol version as 10, 11 or 20 (req.version: "1.0", "1.1", "2"). */
MR_EXPORT int mr_req_version(void *p)
{
    mr_req_t *r = p;
    return r->version;
}

/* The routing host: lowercased, without port. */
MR_EXPORT int mr_req_host(void *p, const char **s, size_t *n)
{
    mr_req_t *r = p;
    *s = mr_req_view_host(r);
    *n = r->host_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_remote_addr(void *p, const char **s, size_t *n)
{
    mr_req_t *r = p;
    *s = mr_req_client_ip(r);
    *n = strlen(*s);
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_header(void *p, const char *name, size_t nlen, const char **s, size_t *n)
{
    mr_req_t *r = p;
    int i = mr_hdrs_find(&r->hdrs, name, nlen, 0);
    if (i < 0) return MR_FFI_DECLINED;
    *s = mr_hdr_value(&r->hdrs, &r->hdrs.v[i]);
    *n = r->hdrs.v[i].val_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_header_count(void *p)
{
    mr_req_t *r = p;
    return (int)r->hdrs.n;
}

/* i-th header (0-based), skipping none: deleted ones are DECLINED. */
MR_EXPORT int mr_req_header_at(void *p, int i, const char **name, size_t *nlen, const char **val, size_t *vlen)
{
    mr_req_t *r = p;
    if (i < 0 || (uint32_t)i >= r->hdrs.n) return MR_FFI_BAD_ARG;
    mr_hdr_t *h = &r->hdrs.v[i];
    if (h->flags & MR_HDR_DELETED) return MR_FFI_DECLINED;
    *name = mr_hdr_name(&r->hdrs, h);
    *nlen = h->name_len;
    *val = mr_hdr_value(&r->hdrs, h);
    *vlen = h->val_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_respond(void *p, int status, const char *body, size_t blen, const char **hdrs, int nhdrs)
{
    mr_req_t *r = p;
    if (status < 100 || status > 999) return MR_FFI_BAD_ARG;
    if (r->head_sent || r->local_pending) return MR_FFI_BAD_CONTEXT;
    return mr_req_reply_later(r, status, body, blen, hdrs, nhdrs) < 0 ? MR_FFI_NOMEM : MR_FFI_OK;
}

/* Header edits. mode 0 = set (replace all), 1 = add, 2 = delete. Framing headers are ours. */
static bool framing_header(const char *name, size_t n)
{
    return (n == 14 && strncasecmp(name, "content-length", 14) == 0) ||
           (n == 17 && strncasecmp(name, "transfer-encoding", 17) == 0);
}

static int edit_headers(mr_hdrs_t *h, int *host_idx, const char *name, size_t nlen, const char *val, size_t vlen,
                        int mode)
{
    if (framing_header(name, nlen)) return MR_FFI_BAD_ARG;
    bool host = host_idx && nlen == 4 && strncasecmp(name, "host", 4) == 0;
    if (mode == 0 || mode == 2) {
        mr_hdrs_del(h, name, nlen);
        if (host) *host_idx = -1;
    }
    if (mode == 2) return MR_FFI_OK;
    int i = mr_hdrs_add(h, name, nlen, val, vlen);
    if (i < 0) return MR_FFI_NOMEM;
    if (host) {
        h->v[i].flags |= MR_HDR_HOST;
        *host_idx = i;
    }
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_set_header(void *p, const char *name, size_t nlen, const char *val, size_t vlen, int mode)
{
    mr_req_t *r = p;
    if (r->up) return MR_FFI_BAD_CONTEXT; /* already forwarded */
    return edit_headers(&r->hdrs, &r->host_idx, name, nlen, val, vlen, mode);
}

MR_EXPORT int mr_req_set_target(void *p, const char *t, size_t n)
{
    mr_req_t *r = p;
    if (r->up) return MR_FFI_BAD_CONTEXT;
    mr_vec_reset(&r->target_ov);
    if (mr_vec_append(&r->target_ov, t, n, 64 * 1024) < 0) return MR_FFI_NOMEM;
    r->has_target_ov = true;
    return MR_FFI_OK;
}

MR_EXPORT int mr_req_set_upstream(void *p, const char *s, size_t n)
{
    switch (mr_proxy_set_upstream(p, s, n)) {
    case 0: return MR_FFI_OK;
    case -1: return MR_FFI_DECLINED;
    case -3: return MR_FFI_BAD_CONTEXT;
    default: return MR_FFI_LIMIT;
    }
}

MR_EXPORT int mr_resp_status(void *p)
{
    mr_req_t *r = p;
    return r->resp.status;
}

MR_EXPORT int mr_resp_set_status(void *p, int status)
{
    mr_req_t *r = p;
    if (status < 200 || status > 999) return MR_FFI_BAD_ARG;
    if (r->head_sent) return MR_FFI_BAD_CONTEXT;
    r->resp.status = status;
    return MR_FFI_OK;
}

/* The response head a response phase works on: a local response's, or the upstream's. */
static mr_hdrs_t *resp_hdrs(mr_req_t *r)
{
    if (r->local_pending) return &r->local_hdrs;
    return r->up ? r->up->hdrs : NULL;
}

MR_EXPORT int mr_resp_header(void *p, const char *name, size_t nlen, const char **s, size_t *n)
{
    mr_hdrs_t *h = resp_hdrs(p);
    if (!h) return MR_FFI_DECLINED;
    int i = mr_hdrs_find(h, name, nlen, 0);
    if (i < 0) return MR_FFI_DECLINED;
    *s = mr_hdr_value(h, &h->v[i]);
    *n = h->v[i].val_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_resp_header_count(void *p)
{
    mr_hdrs_t *h = resp_hdrs(p);
    return h ? (int)h->n : 0;
}

MR_EXPORT int mr_resp_header_at(void *p, int i, const char **name, size_t *nlen, const char **val, size_t *vlen)
{
    mr_hdrs_t *h = resp_hdrs(p);
    if (!h || i < 0 || (uint32_t)i >= h->n) return MR_FFI_BAD_ARG;
    mr_hdr_t *e = &h->v[i];
    if (e->flags & (MR_HDR_DELETED | MR_HDR_HOP)) return MR_FFI_DECLINED;
    *name = mr_hdr_name(h, e);
    *nlen = e->name_len;
    *val = mr_hdr_value(h, e);
    *vlen = e->val_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_resp_set_header(void *p, const char *name, size_t nlen, const char *val, size_t vlen, int mode)
{
    mr_req_t *r = p;
    mr_hdrs_t *h = resp_hdrs(r);
    if (!h || r->head_sent) return MR_FFI_BAD_CONTEXT;
    return edit_headers(h, NULL, name, nlen, val, vlen, mode);
}

/* Response trailer fields (res:trailer / res:set_trailer): the upstream's, once its body ended
 * (readable in the last on_body, eof = true), and whatever filters add; sent where the client's
 * protocol carries them (HTTP/2; HTTP/1.1 chunked responses). */
MR_EXPORT int mr_resp_trailer(void *p, const char *name, size_t nlen, const char **s, size_t *n)
{
    mr_req_t *r = p;
    int i = mr_hdrs_find(&r->resp_trailers, name, nlen, 0);
    if (i < 0) return MR_FFI_DECLINED;
    *s = mr_hdr_value(&r->resp_trailers, &r->resp_trailers.v[i]);
    *n = r->resp_trailers.v[i].val_len;
    return MR_FFI_OK;
}

MR_EXPORT int mr_resp_set_trailer(void *p, const char *name, size_t nlen, const char *val, size_t vlen, int mode)
{
    mr_req_t *r = p;
    if (r->resp_done) return MR_FFI_BAD_CONTEXT;
    return edit_headers(&r->resp_trailers, NULL, name, nlen, val, vlen, mode);
}

/* req:body(): see mr_proxy_body_read. AGAIN: reading (yield on I/O, then ask again); LIMIT: larger
 * than max; BAD_CONTEXT: the body is gone. */
MR_EXPORT int mr_req_body_read(void *p, int64_t max)
{
    switch (mr_proxy_body_read(p, max)) {
    case 1: return MR_FFI_AGAIN;
    case 0: return MR_FFI_OK;
    case -5: return MR_FFI_LIMIT;
    default: return MR_FFI_BAD_CONTEXT;
    }
}

MR_EXPORT int mr_req_body_get(void *p, const char **s, size_t *n)
{
    mr_req_t *r = p;
    *s = r->lua_body.p ? r->lua_body.p : "";
    *n = r->lua_body.len;
    return MR_FFI_OK;
}

/* The request's park timer: arming it resumes the parked phase (cosockets wake requests so). */
MR_EXPORT void *mr_req_waker(void *p)
{
    mr_req_t *r = p;
    return &r->lua_timer;
}

/* TLS state of the request's connection for req.tls: fills v[0..5] with protocol, cipher, SNI,
 * ALPN, client certificate subject and fingerprint (NULL where absent; the client_* fields only
 * for a presented and verified certificate) and *reused. -1 on a plain TCP connection. Strings
 * stay valid for the connection's life; Lua copies them. */
MR_EXPORT int mr_req_tls(void *p, const char **v, int *reused)
{
    mr_req_t *r = p;
    mr_tls_conn_t *t = r->peer->tls;
    if (!t) return MR_FFI_DECLINED;
    v[0] = mr_tls_protocol(t);
    v[1] = mr_tls_cipher(t);
    v[2] = mr_tls_sni(t);
    v[3] = mr_tls_alpn(t);
    v[4] = mr_tls_peer_subject(t);
    v[5] = mr_tls_peer_fingerprint(t);
    *reused = mr_tls_session_reused(t) ? 1 : 0;
    return MR_FFI_OK;
}

/* req:set_method: the method the upstream gets (one of llhttp's names: GET, POST, PURGE...).
 * BAD_ARG: not a method name; BAD_CONTEXT: already forwarded. */
MR_EXPORT int mr_req_set_method(void *p, const char *name, size_t n)
{
    mr_req_t *r = p;
    if (r->up) return MR_FFI_BAD_CONTEXT;
    for (int m = 0; m <= HTTP_SOURCE; m++) { /* the HTTP methods; RTSP ones follow */
        const char *s = llhttp_method_name((llhttp_method_t)m);
        if (s && strlen(s) == n && memcmp(s, name, n) == 0 && strcmp(s, "PRI") != 0) {
            r->method = (uint8_t)m;
            r->method_name = s; /* static storage, as the session sets it */
            return MR_FFI_OK;
        }
    }
    return MR_FFI_BAD_ARG;
}

/* req:set_body: replaces the body the upstream gets, sent with Content-Length. Only once the body
 * was read by req:body() (BAD_CONTEXT otherwise, or once forwarded). */
MR_EXPORT int mr_req_set_body(void *p, const char *s, size_t n)
{
    mr_req_t *r = p;
    if (r->up || r->lua_body_state != MR_LBODY_DONE) return MR_FFI_BAD_CONTEXT;
    mr_vec_reset(&r->lua_body);
    if (n && mr_vec_append(&r->lua_body, s, n, (size_t)1 << 31) < 0) return MR_FFI_NOMEM;
    r->content_length = (int64_t)n;
    r->chunked = false;
    r->has_body = n > 0;
    return MR_FFI_OK;
}

/* Runs the route's response phase for this request even when no filter of its chain defines
 * one: the OpenResty layer applies there the response headers a script set in the access phase
 * (ngx.header before the upstream answered). Only this request pays for it. */
MR_EXPORT int mr_req_want_response_phase(void *p)
{
    mr_req_t *r = p;
    r->route_flags |= MR_RF_RESPONSE;
    return MR_FFI_OK;
}

/* The request target as the client sent it (before normalisation): ngx.var.request_uri. */
MR_EXPORT int mr_req_raw_target(void *p, const char **s, size_t *n)
{
    mr_req_t *r = p;
    *s = mr_req_target_raw(r);
    *n = r->target_len;
    return MR_FFI_OK;
}
