#include "metrics/expo.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/shdict.h"
#include "metrics/metrics.h"
#include "tls/tls.h"

#define LIMIT ((size_t)256 << 20)

const char *const mr_metrics_builtin_names[] = {
    "moonring_http_", "moonring_upstream_", "moonring_client_", "moonring_requests_", "moonring_lua_",
    "moonring_reloads_", "moonring_config_", "moonring_tls_", "moonring_shared_dict_", "moonring_workers",
    "moonring_build_info", NULL,
};

/* ---- aggregation ----------------------------------------------------------------------------- */

typedef struct {
    uint32_t kind, a, b, n;
    uint64_t *v;                /* summed; user cells hold double bits, summed as doubles */
} agg_t;

typedef struct {
    agg_t *v;
    size_t n, cap;
} aggs_t;

static int cmp_agg(const void *x, const void *y)
{
    const agg_t *p = x, *q = y;
    if (p->kind != q->kind) return p->kind < q->kind ? -1 : 1;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    if (p->b != q->b) return p->b < q->b ? -1 : 1;
    return 0;
}

static double d_of(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t u_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* Every worker's cells, summed by key, sorted by (kind, a, b). */
static int collect(aggs_t *g, uint64_t w[MR_MW_COUNT])
{
    memset(g, 0, sizeof *g);
    memset(w, 0, sizeof(uint64_t) * MR_MW_COUNT);
    for (mr_metrics_t *m = mr_metrics_workers(); m; m = m->next) {
        for (int i = 0; i < MR_MW_COUNT; i++) w[i] += mr_m_get(&m->w[i]);
        for (mr_mcell_t *c = atomic_load_explicit(&m->head, memory_order_acquire); c; c = c->next) {
            if (g->n == g->cap) {
                size_t cap = g->cap ? g->cap * 2 : 64;
                agg_t *t = realloc(g->v, cap * sizeof *t);
                if (!t) return -ENOMEM;
                g->v = t;
                g->cap = cap;
            }
            agg_t *e = &g->v[g->n];
            *e = (agg_t){ .kind = c->kind, .a = c->a, .b = c->b, .n = c->n, .v = malloc(c->n * sizeof(uint64_t)) };
            if (!e->v) return -ENOMEM;
            for (uint32_t k = 0; k < c->n; k++) e->v[k] = mr_m_get(&c->v[k]);
            g->n++;
        }
    }
    if (g->n) qsort(g->v, g->n, sizeof *g->v, cmp_agg);
    size_t o = 0;
    for (size_t i = 0; i < g->n; i++) {
        if (o > 0 && cmp_agg(&g->v[o - 1], &g->v[i]) == 0 && g->v[o - 1].n == g->v[i].n) {
            agg_t *d = &g->v[o - 1];
            for (uint32_t k = 0; k < d->n; k++)
                d->v[k] = d->kind == MR_MK_USER ? u_of(d_of(d->v[k]) + d_of(g->v[i].v[k])) : d->v[k] + g->v[i].v[k];
            free(g->v[i].v);
        } else {
            g->v[o++] = g->v[i];
        }
    }
    g->n = o;
    return 0;
}

static void aggs_free(aggs_t *g)
{
    for (size_t i = 0; i < g->n; i++) free(g->v[i].v);
    free(g->v);
}

/* ---- formatting ------------------------------------------------------------------------------ */

/* A label value: backslash, double quote and newline escaped (the text format's rules). */
static void label(mr_vec_t *o, const char *name, const char *val, bool first)
{
    if (!first) mr_vec_lit(o, ",", LIMIT);
    mr_vec_str(o, name, LIMIT);
    mr_vec_lit(o, "=\"", LIMIT);
    for (const char *p = val; *p; p++) {
        if (*p == '\\') mr_vec_lit(o, "\\\\", LIMIT);
        else if (*p == '"') mr_vec_lit(o, "\\\"", LIMIT);
        else if (*p == '\n') mr_vec_lit(o, "\\n", LIMIT);
        else mr_vec_append(o, p, 1, LIMIT);
    }
    mr_vec_lit(o, "\"", LIMIT);
}

static void family(mr_vec_t *o, const char *name, const char *type, const char *help)
{
    mr_vec_printf(o, LIMIT, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The shortest decimal that reads back as v (0.1, not 0.10000000000000001). */
static void shortest(char *out, size_t cap, double v)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(out, cap, "%.*g", p, v);
        if (strtod(out, NULL) == v) return;
    }
}

static void num(mr_vec_t *o, double v)
{
    if (v == (double)(int64_t)v && v < 9e15 && v > -9e15) mr_vec_printf(o, LIMIT, " %lld\n", (long long)v);
    else {
        char b[40];
        shortest(b, sizeof b, v);
        mr_vec_printf(o, LIMIT, " %s\n", b);
    }
}

/* One histogram series: buckets (non-cumulative, NBUCKETS of them) and a sum in microseconds. */
static void hist(mr_vec_t *o, const char *name, const char *labels, const uint64_t *h)
{
    uint64_t cum = 0;
    for (int b = 0; b < MR_M_NBUCKETS; b++) {
        cum += h[b];
        if (b < MR_M_NBOUNDS)
            mr_vec_printf(o, LIMIT, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, mr_m_bounds_us[b] / 1e6,
                          (unsigned long long)cum);
        else
            mr_vec_printf(o, LIMIT, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    }
    /* The count is the +Inf bucket, so the two agree even while workers write. */
    mr_vec_printf(o, LIMIT, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels, h[MR_M_NBUCKETS] / 1e6, name,
                  labels, (unsigned long long)cum);
}

static const char *const proto_names[MR_MP_COUNT] = { "HTTP/1.0", "HTTP/1.1", "HTTP/2" };
static const char *const class_names[5] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

/* "route=..,upstream=.." for a request cell. */
static void req_labels(mr_vec_t *l, const agg_t *e)
{
    mr_vec_reset(l);
    label(l, "route", mr_metrics_str(e->a), true);
    label(l, "upstream", mr_metrics_str(e->b), false);
    mr_vec_append(l, "", 1, LIMIT);
    l->len--; /* NUL-terminated for %s */
}

static int emit_requests(mr_vec_t *o, const aggs_t *g)
{
    mr_vec_t l = { 0 };
    family(o, "moonring_http_requests_total", "counter",
           "Requests answered, by route, upstream, status class (code) and client protocol.");
    for (size_t i = 0; i < g->n; i++) {
        const agg_t *e = &g->v[i];
        if (e->kind != MR_MK_REQ) continue;
        req_labels(&l, e);
        for (int p = 0; p < MR_MP_COUNT; p++)
            for (int c = 0; c < 5; c++) {
                uint64_t v = e->v[MR_MR_CODES + p * 5 + c];
                if (!v) continue;
                mr_vec_printf(o, LIMIT, "moonring_http_requests_total{%s,code=\"%s\",protocol=\"%s\"} %llu\n", l.p,
                              class_names[c], proto_names[p], (unsigned long long)v);
            }
    }
    static const struct { const char *name, *help; int off; } ctrs[] = {
        { "moonring_http_received_bytes_total", "Request body bytes received from clients.", MR_MR_BYTES_IN },
        { "moonring_http_sent_bytes_total", "Response body bytes sent to clients.", MR_MR_BYTES_OUT },
        { "moonring_http_retries_total", "Upstream tries after the first one.", MR_MR_RETRIES },
    };
    for (size_t k = 0; k < sizeof ctrs / sizeof ctrs[0]; k++) {
        family(o, ctrs[k].name, "counter", ctrs[k].help);
        for (size_t i = 0; i < g->n; i++) {
            const agg_t *e = &g->v[i];
            if (e->kind != MR_MK_REQ) continue;
            req_labels(&l, e);
            mr_vec_printf(o, LIMIT, "%s{%s} %llu\n", ctrs[k].name, l.p, (unsigned long long)e->v[ctrs[k].off]);
        }
    }
    family(o, "moonring_http_request_duration_seconds", "histogram",
           "Time from the request head to the end of the response.");
    for (size_t i = 0; i < g->n; i++) {
        const agg_t *e = &g->v[i];
        if (e->kind != MR_MK_REQ) continue;
        req_labels(&l, e);
        hist(o, "moonring_http_request_duration_seconds", l.p, &e->v[MR_MR_LAT]);
    }
    family(o, "moonring_http_upstream_response_seconds", "histogram",
           "Time from the first upstream try to the end of the upstream's response.");
    for (size_t i = 0; i < g->n; i++) {
        const agg_t *e = &g->v[i];
        if (e->kind != MR_MK_REQ || !e->b) continue;
        req_labels(&l, e);
        hist(o, "moonring_http_upstream_response_seconds", l.p, &e->v[MR_MR_UPLAT]);
    }
    mr_vec_free(&l);
    return 0;
}

/* Sums the address cells (active/idle connections per server address). */
static void addr_conns(const aggs_t *g, uint32_t addr, uint64_t *active, uint64_t *idle)
{
    *active = *idle = 0;
    for (size_t i = 0; i < g->n; i++)
        if (g->v[i].kind == MR_MK_ADDR && g->v[i].a == addr) {
            *active = g->v[i].v[MR_MA_ACTIVE];
            *idle = g->v[i].v[MR_MA_IDLE];
        }
}

static const agg_t *find(const aggs_t *g, uint32_t kind, uint32_t a, uint32_t b)
{
    agg_t key = { .kind = kind, .a = a, .b = b };
    return g->n ? bsearch(&key, g->v, g->n, sizeof *g->v, cmp_agg) : NULL;
}

static void emit_servers(mr_vec_t *o, const aggs_t *g, const mr_config_t *cfg)
{
    static const struct { const char *name, *help; int off; } ctrs[] = {
        { "moonring_upstream_server_tries_total", "Requests sent (or tried) to an upstream server.", MR_MS_TRIES },
        { "moonring_upstream_server_failures_total", "Tries that failed: connect errors, timeouts, resets.",
          MR_MS_FAILURES },
        { "moonring_upstream_server_ejections_total", "Times a server was taken out of its group by health "
          "checks.", MR_MS_EJECTIONS },
    };
    for (size_t k = 0; k < sizeof ctrs / sizeof ctrs[0]; k++) {
        family(o, ctrs[k].name, "counter", ctrs[k].help);
        for (size_t i = 0; i < g->n; i++) {
            const agg_t *e = &g->v[i];
            if (e->kind != MR_MK_SRV) continue;
            mr_vec_str(o, ctrs[k].name, LIMIT);
            mr_vec_lit(o, "{", LIMIT);
            label(o, "upstream", mr_metrics_str(e->a), true);
            label(o, "server", mr_metrics_str(e->b), false);
            mr_vec_printf(o, LIMIT, "} %llu\n", (unsigned long long)e->v[ctrs[k].off]);
        }
    }
    family(o, "moonring_upstream_server_state", "gauge",
           "1 for the state each configured server is in (up, down, draining), else 0.");
    for (int u = 0; cfg && u < cfg->nupstreams; u++) {
        const mr_upstream_conf_t *uc = &cfg->upstreams[u];
        for (int s = 0; s < uc->nservers; s++) {
            _Atomic int *st = mr_metrics_srv_state(mr_metrics_cname(uc->name), mr_metrics_cname(uc->servers[s].addr));
            int cur = st ? atomic_load(st) : MR_SRV_UP;
            for (int k = 0; k <= MR_SRV_DRAINING; k++) {
                mr_vec_lit(o, "moonring_upstream_server_state{", LIMIT);
                label(o, "upstream", uc->name, true);
                label(o, "server", uc->servers[s].addr, false);
                label(o, "state", mr_metrics_srv_state_name(k), false);
                mr_vec_printf(o, LIMIT, "} %d\n", cur == k);
            }
        }
    }
    family(o, "moonring_upstream_server_connections", "gauge",
           "Upstream connections per server address: active (bound to a request) or idle (pooled).");
    for (size_t i = 0; i < g->n; i++) {
        const agg_t *e = &g->v[i];
        if (e->kind != MR_MK_ADDR) continue;
        for (int k = 0; k < 2; k++) {
            mr_vec_lit(o, "moonring_upstream_server_connections{", LIMIT);
            label(o, "server", mr_metrics_str(e->a), true);
            label(o, "state", k ? "idle" : "active", false);
            mr_vec_printf(o, LIMIT, "} %llu\n", (unsigned long long)e->v[k ? MR_MA_IDLE : MR_MA_ACTIVE]);
        }
    }
}

static void emit_lua(mr_vec_t *o, const aggs_t *g)
{
    static const struct { const char *name, *help; int off; } ctrs[] = {
        { "moonring_lua_errors_total", "Lua phases that failed (a 500 or an aborted response), by route and filter.",
          MR_ML_ERRORS },
        { "moonring_lua_time_budget_kills_total", "Lua phases stopped by lua.time_budget, by route and filter.",
          MR_ML_BUDGET },
    };
    for (size_t k = 0; k < 2; k++) {
        family(o, ctrs[k].name, "counter", ctrs[k].help);
        for (size_t i = 0; i < g->n; i++) {
            const agg_t *e = &g->v[i];
            if (e->kind != MR_MK_LUA) continue;
            mr_vec_str(o, ctrs[k].name, LIMIT);
            mr_vec_lit(o, "{", LIMIT);
            label(o, "route", mr_metrics_str(e->a), true);
            label(o, "filter", mr_metrics_str(e->b), false);
            mr_vec_printf(o, LIMIT, "} %llu\n", (unsigned long long)e->v[ctrs[k].off]);
        }
    }
}

/* User metrics (moonring.metrics): each declared family, with every label set any worker used. */
static void emit_user(mr_vec_t *o, const aggs_t *g)
{
    int n = mr_metrics_user_count();
    for (int id = 1; id <= n; id++) {
        char *name, *help, *labels;
        double *bounds;
        int type, nbounds;
        if (mr_metrics_user_get(id, &name, &help, &labels, &type, &bounds, &nbounds) < 0) continue;
        if (!name || !help || !labels) goto next;
        char *names[64];
        int nn = 0;
        for (char *p = labels; *labels && p && nn < 64;) {
            names[nn++] = p;
            p = strchr(p, '\n');
            if (p) *p++ = 0;
        }
        family(o, name, type == MR_MU_COUNTER ? "counter" : type == MR_MU_GAUGE ? "gauge" : "histogram",
               *help ? help : "(no help)");
        mr_vec_t l = { 0 };
        for (size_t i = 0; i < g->n; i++) {
            const agg_t *e = &g->v[i];
            if (e->kind != MR_MK_USER || e->a != (uint32_t)id) continue;
            mr_vec_reset(&l);
            char *vals = strdup(mr_metrics_str(e->b)), *p = vals;
            for (int k = 0; k < nn && p; k++) {
                char *nl = strchr(p, '\n');
                if (nl) *nl = 0;
                label(&l, names[k], p, k == 0);
                p = nl ? nl + 1 : NULL;
            }
            free(vals);
            mr_vec_append(&l, "", 1, LIMIT);
            l.len--;
            if (type != MR_MU_HISTOGRAM) {
                mr_vec_printf(o, LIMIT, "%s%s%s%s", name, nn ? "{" : "", nn ? l.p : "", nn ? "}" : "");
                num(o, d_of(e->v[0]));
                continue;
            }
            double cum = 0;
            for (int b = 0; b <= nbounds && (uint32_t)b < e->n; b++) {
                cum += d_of(e->v[b]);
                char le[32];
                if (b < nbounds) shortest(le, sizeof le, bounds[b]);
                else snprintf(le, sizeof le, "+Inf");
                mr_vec_printf(o, LIMIT, "%s_bucket{%s%sle=\"%s\"}", name, l.p, nn ? "," : "", le);
                num(o, cum);
            }
            mr_vec_printf(o, LIMIT, "%s_sum%s%s%s", name, nn ? "{" : "", nn ? l.p : "", nn ? "}" : "");
            num(o, (uint32_t)nbounds + 1 < e->n ? d_of(e->v[nbounds + 1]) : 0);
            mr_vec_printf(o, LIMIT, "%s_count%s%s%s", name, nn ? "{" : "", nn ? l.p : "", nn ? "}" : "");
            num(o, cum);
        }
        mr_vec_free(&l);
    next:
        free(name);
        free(help);
        free(labels);
        free(bounds);
    }
}

int mr_expo_prometheus(const mr_expo_ctx_t *ctx, mr_vec_t *o)
{
    aggs_t g;
    uint64_t w[MR_MW_COUNT];
    int rc = collect(&g, w);
    if (rc < 0) { aggs_free(&g); return rc; }
    family(o, "moonring_build_info", "gauge", "Always 1; the version is a label.");
    mr_vec_lit(o, "moonring_build_info{version=\"" MR_VERSION "\"} 1\n", LIMIT);
    family(o, "moonring_workers", "gauge", "Worker threads.");
    mr_vec_printf(o, LIMIT, "moonring_workers %d\n", ctx->nworkers);
    emit_requests(o, &g);
    family(o, "moonring_requests_in_flight", "gauge", "Requests started and not ended yet.");
    mr_vec_printf(o, LIMIT, "moonring_requests_in_flight %llu\n", (unsigned long long)w[MR_MW_INFLIGHT]);
    family(o, "moonring_client_connections", "gauge",
           "Client connections: active (a request in progress) or idle (keep-alive; HTTP/2 connections count "
           "active while any stream is open). Sampled every second.");
    uint64_t open = w[MR_MW_CONNS_OPEN], busy = w[MR_MW_INFLIGHT] < open ? w[MR_MW_INFLIGHT] : open;
    mr_vec_printf(o, LIMIT, "moonring_client_connections{state=\"active\"} %llu\n", (unsigned long long)busy);
    mr_vec_printf(o, LIMIT, "moonring_client_connections{state=\"idle\"} %llu\n", (unsigned long long)(open - busy));
    family(o, "moonring_upstream_connections", "gauge",
           "Upstream connections: active (bound to a request) or idle (pooled). Sampled every second.");
    mr_vec_printf(o, LIMIT, "moonring_upstream_connections{state=\"active\"} %llu\n",
                  (unsigned long long)w[MR_MW_UP_ACTIVE]);
    mr_vec_printf(o, LIMIT, "moonring_upstream_connections{state=\"idle\"} %llu\n", (unsigned long long)w[MR_MW_UP_IDLE]);
    emit_servers(o, &g, ctx->cfg);
    emit_lua(o, &g);
    uint64_t ok, refused, gen;
    mr_metrics_get_reloads(&ok, &refused, &gen);
    family(o, "moonring_reloads_total", "counter", "Reloads applied (ok) or refused (the old generation kept serving).");
    mr_vec_printf(o, LIMIT, "moonring_reloads_total{result=\"ok\"} %llu\nmoonring_reloads_total{result=\"refused\"} %llu\n",
                  (unsigned long long)ok, (unsigned long long)refused);
    family(o, "moonring_config_generation", "gauge", "The configuration generation serving new requests.");
    mr_vec_printf(o, LIMIT, "moonring_config_generation %llu\n", (unsigned long long)ctx->generation);
    uint64_t ids[64];
    int counts[64];
    int ng = mr_metrics_gens(ids, counts, 64), draining = 0;
    for (int i = 0; i < ng; i++) draining += ids[i] != ctx->generation;
    family(o, "moonring_config_generations_draining", "gauge",
           "Generations a reload replaced that requests still hold.");
    mr_vec_printf(o, LIMIT, "moonring_config_generations_draining %d\n", draining);
    uint64_t tls[6];
    mr_tls_stats(tls);
    family(o, "moonring_tls_handshakes_total", "counter",
           "TLS handshakes by side (server: listeners; client: upstreams and cosockets) and result.");
    static const char *const res[3] = { "full", "resumed", "failed" };
    for (int i = 0; i < 6; i++)
        mr_vec_printf(o, LIMIT, "moonring_tls_handshakes_total{side=\"%s\",result=\"%s\"} %llu\n",
                      i < 3 ? "server" : "client", res[i % 3], (unsigned long long)tls[i]);
    family(o, "moonring_shared_dict_capacity_bytes", "gauge", "A shared dict's memory budget.");
    for (int i = 0; ctx->cfg && i < ctx->cfg->nshared; i++) {
        mr_shdict_t *d = mr_shdict_find(ctx->cfg->shared_names[i], strlen(ctx->cfg->shared_names[i]));
        if (!d) continue;
        mr_vec_lit(o, "moonring_shared_dict_capacity_bytes{", LIMIT);
        label(o, "dict", ctx->cfg->shared_names[i], true);
        mr_vec_printf(o, LIMIT, "} %zu\n", mr_shdict_capacity(d));
    }
    family(o, "moonring_shared_dict_used_bytes", "gauge", "Bytes a shared dict's entries are charged.");
    for (int i = 0; ctx->cfg && i < ctx->cfg->nshared; i++) {
        mr_shdict_t *d = mr_shdict_find(ctx->cfg->shared_names[i], strlen(ctx->cfg->shared_names[i]));
        if (!d) continue;
        mr_vec_lit(o, "moonring_shared_dict_used_bytes{", LIMIT);
        label(o, "dict", ctx->cfg->shared_names[i], true);
        mr_vec_printf(o, LIMIT, "} %zu\n", mr_shdict_capacity(d) - mr_shdict_free_space(d));
    }
    emit_user(o, &g);
    aggs_free(&g);
    return o->p ? 0 : -ENOMEM;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

void mr_expo_json_str(mr_vec_t *o, const char *s, size_t n)
{
    mr_vec_lit(o, "\"", LIMIT);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { char e[2] = { '\\', (char)c }; mr_vec_append(o, e, 2, LIMIT); }
        else if (c < 0x20) mr_vec_printf(o, LIMIT, "\\u%04x", c);
        else mr_vec_append(o, &s[i], 1, LIMIT);
    }
    mr_vec_lit(o, "\"", LIMIT);
}

static void jstr(mr_vec_t *o, const char *s) { mr_expo_json_str(o, s, strlen(s)); }

/* One upstream's servers as a JSON array. */
static void servers_json(mr_vec_t *o, const aggs_t *g, const mr_upstream_conf_t *uc)
{
    uint32_t uid = mr_metrics_cname(uc->name);
    mr_vec_lit(o, "[", LIMIT);
    for (int s = 0; s < uc->nservers; s++) {
        const mr_server_conf_t *sc = &uc->servers[s];
        uint32_t aid = mr_metrics_cname(sc->addr);
        _Atomic int *st = mr_metrics_srv_state(uid, aid);
        uint64_t active, idle;
        addr_conns(g, aid, &active, &idle);
        const agg_t *e = find(g, MR_MK_SRV, uid, aid);
        mr_vec_str(o, s ? ",{\"addr\":" : "{\"addr\":", LIMIT);
        jstr(o, sc->addr);
        mr_vec_lit(o, ",\"state\":", LIMIT);
        jstr(o, mr_metrics_srv_state_name(st ? atomic_load(st) : MR_SRV_UP));
        mr_vec_printf(o, LIMIT, ",\"weight\":%d,\"active\":%llu,\"idle\":%llu,\"tries\":%llu,\"failures\":%llu,"
                      "\"ejections\":%llu}", sc->weight, (unsigned long long)active, (unsigned long long)idle,
                      (unsigned long long)(e ? e->v[MR_MS_TRIES] : 0), (unsigned long long)(e ? e->v[MR_MS_FAILURES] : 0),
                      (unsigned long long)(e ? e->v[MR_MS_EJECTIONS] : 0));
    }
    mr_vec_lit(o, "]", LIMIT);
}

int mr_expo_upstreams_json(const mr_expo_ctx_t *ctx, mr_vec_t *o)
{
    aggs_t g;
    uint64_t w[MR_MW_COUNT];
    int rc = collect(&g, w);
    if (rc < 0) { aggs_free(&g); return rc; }
    mr_vec_lit(o, "{\"upstreams\":[", LIMIT);
    for (int u = 0; ctx->cfg && u < ctx->cfg->nupstreams; u++) {
        const mr_upstream_conf_t *uc = &ctx->cfg->upstreams[u];
        mr_vec_str(o, u ? ",{\"name\":" : "{\"name\":", LIMIT);
        jstr(o, uc->name);
        mr_vec_printf(o, LIMIT, ",\"balance\":\"%s\",\"tries\":%d,\"servers\":",
                      uc->balance == MR_BALANCE_LEAST_CONN ? "least_conn" : "round_robin", uc->tries);
        servers_json(o, &g, uc);
        mr_vec_lit(o, "}", LIMIT);
    }
    mr_vec_lit(o, "]}\n", LIMIT);
    aggs_free(&g);
    return o->p ? 0 : -ENOMEM;
}

/* Totals of request cells grouped by route (by_upstream false) or upstream: requests per class,
 * duration buckets and sum, for the status page to turn into rates between two polls. */
static void totals_json(mr_vec_t *o, const aggs_t *g, bool by_upstream)
{
    uint32_t *keys = calloc(g->n + 1, sizeof *keys);
    size_t nk = 0;
    for (size_t i = 0; keys && i < g->n; i++) {
        if (g->v[i].kind != MR_MK_REQ) continue;
        uint32_t k = by_upstream ? g->v[i].b : g->v[i].a;
        if (by_upstream && !k) continue;
        size_t j = 0;
        while (j < nk && keys[j] != k) j++;
        if (j == nk) keys[nk++] = k;
    }
    for (size_t j = 0; j < nk; j++) {
        uint64_t cls[5] = { 0 }, lat[MR_M_NBUCKETS + 1] = { 0 }, in = 0, out = 0, retries = 0;
        for (size_t i = 0; i < g->n; i++) {
            const agg_t *e = &g->v[i];
            if (e->kind != MR_MK_REQ || (by_upstream ? e->b : e->a) != keys[j]) continue;
            for (int p = 0; p < MR_MP_COUNT; p++)
                for (int c = 0; c < 5; c++) cls[c] += e->v[MR_MR_CODES + p * 5 + c];
            const uint64_t *h = &e->v[by_upstream ? MR_MR_UPLAT : MR_MR_LAT];
            for (int b = 0; b <= MR_M_NBUCKETS; b++) lat[b] += h[b];
            in += e->v[MR_MR_BYTES_IN];
            out += e->v[MR_MR_BYTES_OUT];
            retries += e->v[MR_MR_RETRIES];
        }
        mr_vec_str(o, j ? ",{\"name\":" : "{\"name\":", LIMIT);
        jstr(o, mr_metrics_str(keys[j]));
        mr_vec_printf(o, LIMIT, ",\"codes\":[%llu,%llu,%llu,%llu,%llu],\"bytes_in\":%llu,\"bytes_out\":%llu,"
                      "\"retries\":%llu,\"latency_sum_us\":%llu,\"latency_buckets\":[",
                      (unsigned long long)cls[0], (unsigned long long)cls[1], (unsigned long long)cls[2],
                      (unsigned long long)cls[3], (unsigned long long)cls[4], (unsigned long long)in,
                      (unsigned long long)out, (unsigned long long)retries, (unsigned long long)lat[MR_M_NBUCKETS]);
        for (int b = 0; b < MR_M_NBUCKETS; b++)
            mr_vec_printf(o, LIMIT, "%s%llu", b ? "," : "", (unsigned long long)lat[b]);
        mr_vec_lit(o, "]}", LIMIT);
    }
    free(keys);
}

int mr_expo_stats_json(const mr_expo_ctx_t *ctx, mr_vec_t *o)
{
    aggs_t g;
    uint64_t w[MR_MW_COUNT];
    int rc = collect(&g, w);
    if (rc < 0) { aggs_free(&g); return rc; }
    uint64_t ok, refused, gen;
    mr_metrics_get_reloads(&ok, &refused, &gen);
    mr_vec_printf(o, LIMIT, "{\"generation\":%llu,\"workers\":%d,\"reloads\":{\"ok\":%llu,\"refused\":%llu},"
                  "\"in_flight\":%llu,\"connections\":%llu,\"bounds_s\":[",
                  (unsigned long long)ctx->generation, ctx->nworkers, (unsigned long long)ok,
                  (unsigned long long)refused, (unsigned long long)w[MR_MW_INFLIGHT],
                  (unsigned long long)w[MR_MW_CONNS_OPEN]);
    for (int b = 0; b < MR_M_NBOUNDS; b++) mr_vec_printf(o, LIMIT, "%s%g", b ? "," : "", mr_m_bounds_us[b] / 1e6);
    mr_vec_lit(o, "],\"routes\":[", LIMIT);
    totals_json(o, &g, false);
    mr_vec_lit(o, "],\"upstreams\":[", LIMIT);
    totals_json(o, &g, true);
    mr_vec_lit(o, "],\"servers\":{", LIMIT);
    for (int u = 0; ctx->cfg && u < ctx->cfg->nupstreams; u++) {
        if (u) mr_vec_lit(o, ",", LIMIT);
        jstr(o, ctx->cfg->upstreams[u].name);
        mr_vec_lit(o, ":", LIMIT);
        servers_json(o, &g, &ctx->cfg->upstreams[u]);
    }
    mr_vec_lit(o, "}}\n", LIMIT);
    aggs_free(&g);
    return o->p ? 0 : -ENOMEM;
}
