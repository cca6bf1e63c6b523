#include "proxy/route.h"

#include <string.h>
#include <strings.h>

#define VIEW_LIMIT (1u << 20)

int mr_route_view(mr_req_t *r, const char **why)
{
    const char *t = mr_req_target_raw(r);
    size_t n = r->target_len;
    const char *q = memchr(t, '?', n);
    size_t plen = q ? (size_t)(q - t) : n;
    mr_vec_t *v = &r->norm;
    mr_vec_reset(v);
    if (mr_vec_append(v, t, plen, VIEW_LIMIT) < 0) { *why = "request target too long"; return 414; }
    r->path_len = (uint32_t)plen;
    r->query_off = q ? r->target_off + (uint32_t)plen + 1 : 0;
    r->query_len = q ? (uint32_t)(n - plen - 1) : 0;
    r->host_off = v->len;
    r->host_len = 0;
    if (r->host_idx >= 0) {
        const mr_hdr_t *h = &r->hdrs.v[r->host_idx];
        const char *hv = mr_hdr_value(&r->hdrs, h);
        size_t hl = h->val_len;
        if (hl && hv[0] != '[') {
            const char *colon = memchr(hv, ':', hl);
            if (colon) hl = (size_t)(colon - hv);
        } else if (hl) {
            const char *end = memchr(hv, ']', hl);
            if (end) hl = (size_t)(end - hv) + 1;
        }
        if (mr_vec_reserve(v, hl, VIEW_LIMIT) < 0) { *why = "host too long"; return 400; }
        for (size_t i = 0; i < hl; i++) {
            char c = hv[i];
            v->p[v->len++] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
        }
        r->host_len = (uint32_t)hl;
    }
    return 0;
}

static bool host_matches(const mr_route_conf_t *rt, const char *host, size_t hlen)
{
    for (int i = 0; i < rt->nhosts; i++) {
        const char *pat = rt->hosts[i];
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

const mr_route_conf_t *mr_route_match(const mr_config_t *cfg, const mr_req_t *r)
{
    const char *path = mr_req_view_path(r);
    size_t plen = r->path_len;
    const char *host = mr_req_view_host(r);
    size_t hlen = r->host_len;
    for (int i = 0; i < cfg->nroutes; i++) {
        const mr_route_conf_t *rt = &cfg->routes[i];
        if (rt->methods && !(rt->methods & (1ull << r->method))) continue;
        if (rt->exact && (strlen(rt->exact) != plen || memcmp(rt->exact, path, plen) != 0)) continue;
        if (rt->path) {
            size_t l = strlen(rt->path);
            if (plen < l || memcmp(rt->path, path, l) != 0) continue;
        }
        if (rt->nhosts && !host_matches(rt, host, hlen)) continue;
        return rt;
    }
    return NULL;
}
