#include "upstream/upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/loop.h"
#include "metrics/metrics.h"

/* The host and port of a configured address ("host:port" or "https://host:port"), when the host
 * is a name; 0 when numeric, -EINVAL when it is not an address at all. */
static int named(const char *addr, mr_hostport_t *hp)
{
    if (strncmp(addr, "https://", 8) == 0) addr += 8;
    else if (strncmp(addr, "http://", 7) == 0) addr += 7;
    int kind = mr_addr_parse(addr, strlen(addr), hp, NULL);
    if (kind < 0) return -EINVAL;
    return kind == MR_ADDR_NAME;
}

static mr_server_t *server_new(mr_server_registry_t *reg, const char *addr, size_t alen, const mr_addr_t *sa,
                               uint64_t tls_id, const mr_hostport_t *hp)
{
    mr_server_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->addr = strndup(addr, alen);
    s->mid = mr_metrics_name(addr, alen);
    if (!s->addr || (hp && !(s->host = strdup(hp->host)))) {
        free(s->addr);
        free(s);
        return NULL;
    }
    if (sa) s->sa = *sa;
    s->resolved = sa != NULL;
    s->port = hp ? hp->port : 0;
    s->reg = reg;
    s->tls_id = tls_id;
    s->next = reg->head;
    reg->head = s;
    reg->count++;
    return s;
}

mr_server_t *mr_server_get(mr_server_registry_t *reg, const char *addr, const mr_addr_t *sa, uint64_t tls_id)
{
    /* The TLS and the plain endpoint of one address, or two TLS setups of it (other CA, SNI,
     * client certificate), are different servers with their own pools and sessions. A named
     * server is the same server whatever its name resolves to now. */
    mr_hostport_t hp;
    bool name = named(addr, &hp) == 1;
    for (mr_server_t *s = reg->head; s; s = s->next) {
        if (s->tls_id != tls_id || !!s->host != name) continue;
        if (name ? strcmp(s->addr, addr) == 0 : s->sa.len == sa->len && memcmp(&s->sa.sa, &sa->sa, sa->len) == 0)
            return s;
    }
    return server_new(reg, addr, strlen(addr), sa, tls_id, name ? &hp : NULL);
}

mr_server_t *mr_server_get_dyn(mr_server_registry_t *reg, const char *str, size_t n, int *err)
{
    mr_hostport_t hp;
    int kind = mr_addr_parse(str, n, &hp, NULL);
    if (kind < 0) { *err = -EINVAL; return NULL; }
    for (mr_server_t *s = reg->head; s; s = s->next) {
        if (s->tls_id) continue;
        if (kind == MR_ADDR_NAME ? s->host && strlen(s->addr) == n && memcmp(s->addr, str, n) == 0
                                 : !s->host && s->sa.len == hp.addr.len && memcmp(&s->sa.sa, &hp.addr.sa, hp.addr.len) == 0)
            return s;
    }
    mr_server_t *s = server_new(reg, str, n, kind == MR_ADDR_NAME ? NULL : &hp.addr, 0, kind == MR_ADDR_NAME ? &hp : NULL);
    if (!s) *err = -ENOMEM;
    return s;
}

static void wake_waiters(mr_server_t *s, int rc)
{
    /* Each waiter is unlinked before its callback, which may queue it (or another) again. */
    while (s->waiters) {
        mr_server_wait_t *w = s->waiters;
        s->waiters = w->next;
        if (s->waiters) s->waiters->prev = NULL;
        w->next = w->prev = NULL;
        w->fn(w, rc);
    }
}

static void resolved(mr_resolve_req_t *rq, int rc, const mr_addr_t *addrs, int naddrs)
{
    mr_server_t *s = (mr_server_t *)((char *)rq - offsetof(mr_server_t, rq));
    (void)naddrs;
    mr_loop_t *loop = mr_loop_current();
    s->resolved_ms = loop ? mr_loop_now(loop) : 1;
    if (rc == 0) {
        s->sa = addrs[0]; /* IPv4 first, as everywhere else */
        s->resolved = true;
    }
    /* A failed refresh keeps the address that worked; a failed first lookup fails its waiters. */
    wake_waiters(s, s->resolved ? 0 : rc);
}

int mr_server_ready(mr_server_t *s, uint64_t now, mr_server_wait_t *w)
{
    if (!s->host) return 0;
    mr_server_registry_t *reg = s->reg;
    if (s->resolved) {
        if (!s->resolved_ms) s->resolved_ms = now; /* resolved at load */
        if (reg->res && now - s->resolved_ms >= reg->ttl_ms && !mr_resolve_pending(&s->rq) &&
            mr_resolver_lookup(reg->res, s->host, strlen(s->host), s->port, &s->rq, resolved) < 0)
            s->resolved_ms = now; /* try again after another TTL */
        return 0;
    }
    if (!reg->res) return -ENOTSUP;
    if (!mr_resolve_pending(&s->rq)) {
        int rc = mr_resolver_lookup(reg->res, s->host, strlen(s->host), s->port, &s->rq, resolved);
        if (rc < 0) return rc;
    }
    w->prev = NULL;
    w->next = s->waiters;
    if (s->waiters) s->waiters->prev = w;
    s->waiters = w;
    return 1;
}

void mr_server_unwait(mr_server_t *s, mr_server_wait_t *w)
{
    if (w->prev) w->prev->next = w->next;
    else if (s->waiters == w) s->waiters = w->next;
    else return; /* not waiting */
    if (w->next) w->next->prev = w->prev;
    w->next = w->prev = NULL;
}

void mr_server_registry_free(mr_server_registry_t *reg)
{
    while (reg->head) {
        mr_server_t *s = reg->head;
        reg->head = s->next;
        mr_resolver_cancel(&s->rq);
        if (s->tls_sess) mr_tls_session_free(s->tls_sess);
        free(s->host);
        free(s->addr);
        free(s);
    }
    reg->count = 0;
}

int mr_upstream_init(mr_upstream_t *u, const mr_upstream_conf_t *conf, mr_server_registry_t *reg)
{
    memset(u, 0, sizeof *u);
    u->conf = conf;
    u->nservers = conf->nservers;
    u->servers = calloc((size_t)u->nservers, sizeof *u->servers);
    u->current_weight = calloc((size_t)u->nservers, sizeof *u->current_weight);
    u->state = calloc((size_t)u->nservers, sizeof *u->state);
    if (!u->servers || !u->current_weight || !u->state) goto fail;
    u->mid = mr_metrics_cname(conf->name);
    for (int i = 0; i < u->nservers; i++) {
        u->servers[i] = mr_server_get(reg, conf->servers[i].addr, &conf->servers[i].sa, conf->servers[i].tls_id);
        if (!u->servers[i]) goto fail;
        u->state[i] = mr_metrics_srv_state(u->mid, mr_metrics_cname(conf->servers[i].addr));
    }
    return 0;
fail:
    mr_upstream_free(u);
    return -ENOMEM;
}

void mr_upstream_free(mr_upstream_t *u)
{
    free(u->servers);
    free(u->current_weight);
    free(u->state);
    u->servers = NULL;
    u->current_weight = NULL;
    u->state = NULL;
}

/* The operator took server i out (admin API: down or draining). */
static inline bool out(const mr_upstream_t *u, int i)
{
    return u->state && u->state[i] && atomic_load_explicit(u->state[i], memory_order_relaxed) != MR_SRV_UP;
}

int mr_upstream_pick(mr_upstream_t *u, uint64_t now)
{
    int best = -1;
    for (int pass = 0; pass < 2 && best < 0; pass++) {
        if (u->conf->balance == MR_BALANCE_LEAST_CONN) {
            for (int i = 0; i < u->nservers; i++) {
                mr_server_t *s = u->servers[i];
                if ((pass == 0 && s->down_until > now) || out(u, i)) continue;
                if (best < 0 || (int64_t)s->active * u->conf->servers[best].weight <
                                    (int64_t)u->servers[best]->active * u->conf->servers[i].weight)
                    best = i;
            }
        } else {
            /* nginx's smooth weighted round-robin: even spread, weights honoured. */
            int total = 0;
            for (int i = 0; i < u->nservers; i++) {
                if ((pass == 0 && u->servers[i]->down_until > now) || out(u, i)) continue;
                u->current_weight[i] += u->conf->servers[i].weight;
                total += u->conf->servers[i].weight;
                if (best < 0 || u->current_weight[i] > u->current_weight[best]) best = i;
            }
            if (best >= 0) u->current_weight[best] -= total;
        }
    }
    return best;
}
