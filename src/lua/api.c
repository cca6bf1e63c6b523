/* C functions the Lua runtime reaches through LuaJIT FFI (ffi.C), the lua-resty-core way: plain
 * C ABI, int status codes, no Lua stack, so calls JIT-compile. `r` is the mr_client_t of the
 * request being handled; it is valid only during the phase that received it. Returns: 0 ok,
 * -1 not found (MR_DECLINED), -2 bad argument. */
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
    if (c->resp_started) return -3;
    return mr_proxy_respond(c, status, body, blen, hdrs, nhdrs) < 0 ? -4 : 0;
}
