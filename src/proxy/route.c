#include "proxy/route.h"

#include <string.h>
#include <strings.h>

#include "core/gen.h"
#include "http/path.h"

#define VIEW_LIMIT (1u << 20)

int mr_route_view(mr_req_t *r, const char **why)
{
    const char *t = mr_req_target_raw(r);
    size_t n = r->target_len;
    const char *q = memchr(t, '?', n);
    size_t plen = q ? (size_t)(q - t) : n;
    const mr_hdrs_t *h = &r->hdrs;
    const char *hv = NULL;
    size_t hl = 0;
    if (r->host_idx >= 0) {
        hv = mr_hdr_value(h, &h->v[r->host_idx]);
        hl = h->v[r->host_idx].val_len;
    }
    mr_vec_t *v = &r->norm;
    mr_vec_reset(v);
    if (mr_vec_reserve(v, plen + hl + 1, VIEW_LIMIT) < 0) { *why = "request target too long"; return 414; }
    size_t out = plen;
    if (plen == 1 && t[0] == '*') {
        v->p[0] = '*'; /* asterisk-form (OPTIONS *): no path to normalise, and no route matches it */
    } else {
        const mr_path_policy_t *pol = r->gen ? &r->gen->cfg->path_policy : NULL;
        int rc = mr_path_normalize(pol, t, plen, v->p, plen, &out, why);
        if (rc == MR_PATH_REFUSED) return 400;
        if (rc == MR_PATH_SAME) memcpy(v->p, t, plen);
    }
    v->len = (uint32_t)out;
    r->path_len = (uint32_t)out;
    r->query_off = q ? r->target_off + (uint32_t)plen + 1 : 0;
    r->query_len = q ? (uint32_t)(n - plen - 1) : 0;
    r->host_off = v->len;
    r->host_len = 0;
    if (hl) {
        /* The name routing matches on: "Example.COM.:8080" is "example.com". */
        size_t hout = 0;
        if (mr_host_normalize(hv, hl, v->p + v->len, hl, &hout, NULL, why) < 0) return 400;
        v->len += (uint32_t)hout;
        r->host_len = (uint32_t)hout;
    }
    return 0;
}

static bool host_matches(const mr_route_conf_t *rt, const char *host, size_t hlen)
{
    for (int i = 0; i < rt->nhosts; i++) {
        const char *pat = rt->hosts[i];
        size_t plen = strlen(pat);
        if (plen && pat[plen - 1] == '.') plen--; /* "example.com." names example.com */
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
        if (rt->exact && !mr_path_exact_match(rt->exact, strlen(rt->exact), path, plen)) continue;
        if (rt->path && !mr_path_prefix_match(rt->path, strlen(rt->path), path, plen)) continue;
        if (rt->nhosts && !host_matches(rt, host, hlen)) continue;
        return rt;
    }
    return NULL;
}
