/* C functions the Lua runtime reaches through LuaJIT FFI (ffi.C), the lua-resty-core way: plain
 * C ABI, int status codes, no Lua stack, so calls JIT-compile. `r` is the mr_client_t of the
 * request being handled; it is valid only during the phase that received it. Returns: 0 ok,
 * -1 not found (MR_DECLINED), -2 bad argument. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "http1/http1.h"
#include "proxy/proxy.h"

#define MR_EXPORT __attribute__((visibility("default"), used))

MR_EXPORT int mr_req_method(void *r, const char **p, size_t *n)
{
    mr_client_t *c = r;
    *p = mr_http1_method_str(&c->req);
    *n = strlen(*p);
    return 0;
}

MR_EXPORT int mr_req_target(void *r, const char **p, size_t *n)
{
    mr_client_t *c = r;
    if (c->has_target_ov) {
        *p = c->target_ov.p;
        *n = c->target_ov.len;
        return 0;
    }
    *p = mr_http1_str(&c->req, c->req.url_off);
    *n = c->req.url_len;
    return 0;
}

MR_EXPORT int mr_req_remote_addr(void *r, const char **p, size_t *n)
{
    mr_client_t *c = r;
    *p = c->ip;
    *n = strlen(c->ip);
    return 0;
}

MR_EXPORT int mr_req_header(void *r, const char *name, size_t nlen, const char **p, size_t *n)
{
    mr_client_t *c = r;
    int i = mr_http1_find(&c->req, name, nlen, 0);
    if (i < 0) return -1;
    *p = mr_http1_str(&c->req, c->req.hdrs[i].val_off);
    *n = c->req.hdrs[i].val_len;
    return 0;
}

MR_EXPORT int mr_req_header_count(void *r)
{
    mr_client_t *c = r;
    return (int)c->req.nhdrs;
}

/* i-th header (0-based), skipping none: deleted ones return -1. */
MR_EXPORT int mr_req_header_at(void *r, int i, const char **name, size_t *nlen, const char **val, size_t *vlen)
{
    mr_client_t *c = r;
    if (i < 0 || (uint32_t)i >= c->req.nhdrs) return -2;
    mr_hdr_t *h = &c->req.hdrs[i];
    if (h->flags & MR_HDR_DELETED) return -1;
    *name = mr_http1_str(&c->req, h->name_off);
    *nlen = h->name_len;
    *val = mr_http1_str(&c->req, h->val_off);
    *vlen = h->val_len;
    return 0;
}

MR_EXPORT int mr_req_respond(void *r, int status, const char *body, size_t blen, const char **hdrs, int nhdrs)
{
    mr_client_t *c = r;
    if (status < 100 || status > 999) return -2;
    if (c->resp_started || c->local_pending) return -3;
    return mr_proxy_respond_later(c, status, body, blen, hdrs, nhdrs) < 0 ? -4 : 0;
}

/* Header edits. mode 0 = set (replace all), 1 = add, 2 = delete. Framing headers are ours. */
static bool framing_header(const char *name, size_t n)
{
    return (n == 14 && strncasecmp(name, "content-length", 14) == 0) ||
           (n == 17 && strncasecmp(name, "transfer-encoding", 17) == 0);
}

static int edit_headers(mr_http1_msg_t *m, const char *name, size_t nlen, const char *val, size_t vlen, int mode, bool req)
{
    if (framing_header(name, nlen)) return -2;
    if (mode == 0 || mode == 2) {
        for (int i = mr_http1_find(m, name, nlen, 0); i >= 0; i = mr_http1_find(m, name, nlen, i + 1))
            m->hdrs[i].flags |= MR_HDR_DELETED;
        if (req && nlen == 4 && strncasecmp(name, "host", 4) == 0) m->host_idx = -1;
    }
    if (mode == 2) return 0;
    int i = mr_http1_add_header(m, name, nlen, val, vlen);
    if (i < 0) return -4;
    if (req && nlen == 4 && strncasecmp(name, "host", 4) == 0) {
        m->hdrs[i].flags |= MR_HDR_HOST;
        m->host_idx = i;
    }
    return 0;
}

MR_EXPORT int mr_req_set_header(void *r, const char *name, size_t nlen, const char *val, size_t vlen, int mode)
{
    mr_client_t *c = r;
    if (c->up_head.len && c->up) return -3; /* already forwarded */
    return edit_headers(&c->req, name, nlen, val, vlen, mode, true);
}

MR_EXPORT int mr_req_set_target(void *r, const char *t, size_t n)
{
    mr_client_t *c = r;
    if (c->up_head.len && c->up) return -3;
    mr_vec_reset(&c->target_ov);
    if (mr_vec_append(&c->target_ov, t, n, 64 * 1024) < 0) return -4;
    c->has_target_ov = true;
    return 0;
}

MR_EXPORT int mr_req_set_upstream(void *r, const char *s, size_t n)
{
    return mr_proxy_set_upstream(r, s, n);
}

MR_EXPORT int mr_resp_status(void *r)
{
    mr_client_t *c = r;
    return c->status;
}

MR_EXPORT int mr_resp_set_status(void *r, int status)
{
    mr_client_t *c = r;
    if (c->head_sent || status < 200 || status > 999) return -3;
    c->status = status;
    return 0;
}

static mr_http1_msg_t *resp_msg(mr_client_t *c)
{
    if (c->local_pending) return &c->local;
    return c->up ? &c->up->resp : NULL;
}

MR_EXPORT int mr_resp_header(void *r, const char *name, size_t nlen, const char **p, size_t *n)
{
    mr_http1_msg_t *m = resp_msg(r);
    if (!m) return -1;
    int i = mr_http1_find(m, name, nlen, 0);
    if (i < 0) return -1;
    *p = mr_http1_str(m, m->hdrs[i].val_off);
    *n = m->hdrs[i].val_len;
    return 0;
}

MR_EXPORT int mr_resp_header_count(void *r)
{
    mr_http1_msg_t *m = resp_msg(r);
    return m ? (int)m->nhdrs : 0;
}

MR_EXPORT int mr_resp_header_at(void *r, int i, const char **name, size_t *nlen, const char **val, size_t *vlen)
{
    mr_http1_msg_t *m = resp_msg(r);
    if (!m || i < 0 || (uint32_t)i >= m->nhdrs) return -2;
    mr_hdr_t *h = &m->hdrs[i];
    if (h->flags & (MR_HDR_DELETED | MR_HDR_HOP)) return -1;
    *name = mr_http1_str(m, h->name_off);
    *nlen = h->name_len;
    *val = mr_http1_str(m, h->val_off);
    *vlen = h->val_len;
    return 0;
}

MR_EXPORT int mr_resp_set_header(void *r, const char *name, size_t nlen, const char *val, size_t vlen, int mode)
{
    mr_client_t *c = r;
    mr_http1_msg_t *m = resp_msg(c);
    if (!m || c->head_sent) return -3;
    return edit_headers(m, name, nlen, val, vlen, mode, false);
}

/* req:body(): see mr_proxy_body_read. */
MR_EXPORT int mr_req_body_read(void *r, int64_t max) { return mr_proxy_body_read(r, max); }

MR_EXPORT int mr_req_body_get(void *r, const char **p, size_t *n)
{
    mr_client_t *c = r;
    *p = c->lua_body.p ? c->lua_body.p : "";
    *n = c->lua_body.len;
    return 0;
}

/* The request's park timer: arming it resumes the parked phase (cosockets wake requests so). */
MR_EXPORT void *mr_req_waker(void *r)
{
    mr_client_t *c = r;
    return &c->lua_timer;
}

/* TLS state of the request's connection for req.tls: fills v[0..5] with protocol, cipher, SNI,
 * ALPN, client certificate subject and fingerprint (NULL where absent; the client_* fields only
 * for a presented and verified certificate) and *reused. -1 on a plain TCP connection. Strings
 * stay valid for the connection's life; Lua copies them. */
MR_EXPORT int mr_req_tls(void *r, const char **v, int *reused)
{
    mr_client_t *c = r;
    mr_tls_conn_t *t = c->s.tls;
    if (!t) return -1;
    v[0] = mr_tls_protocol(t);
    v[1] = mr_tls_cipher(t);
    v[2] = mr_tls_sni(t);
    v[3] = mr_tls_alpn(t);
    v[4] = mr_tls_peer_subject(t);
    v[5] = mr_tls_peer_fingerprint(t);
    *reused = mr_tls_session_reused(t) ? 1 : 0;
    return 0;
}
