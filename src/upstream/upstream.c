#include "upstream/upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mr_server_t *mr_server_get(mr_server_registry_t *reg, const char *addr, const mr_addr_t *sa, uint64_t tls_id)
{
    /* The TLS and the plain endpoint of one address, or two TLS setups of it (other CA, SNI,
     * client certificate), are different servers with their own pools and sessions. */
    for (mr_server_t *s = reg->head; s; s = s->next)
        if (s->sa.len == sa->len && memcmp(&s->sa.sa, &sa->sa, sa->len) == 0 && s->tls_id == tls_id)
            return s;
    mr_server_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    s->sa = *sa;
    s->tls_id = tls_id;
    s->next = reg->head;
    reg->head = s;
    reg->count++;
    return s;
}

void mr_server_registry_free(mr_server_registry_t *reg)
{
    while (reg->head) {
        mr_server_t *s = reg->head;
        reg->head = s->next;
        if (s->tls_sess) mr_tls_session_free(s->tls_sess);
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
    if (!u->servers || !u->current_weight) goto fail;
    for (int i = 0; i < u->nservers; i++) {
        u->servers[i] = mr_server_get(reg, conf->servers[i].addr, &conf->servers[i].sa, conf->servers[i].tls_id);
        if (!u->servers[i]) goto fail;
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
    u->servers = NULL;
    u->current_weight = NULL;
}

int mr_upstream_pick(mr_upstream_t *u, uint64_t now)
{
    int best = -1;
    for (int pass = 0; pass < 2 && best < 0; pass++) {
        if (u->conf->balance == MR_BALANCE_LEAST_CONN) {
            for (int i = 0; i < u->nservers; i++) {
                mr_server_t *s = u->servers[i];
                if (pass == 0 && s->down_until > now) continue;
                if (best < 0 || (int64_t)s->active * u->conf->servers[best].weight <
                                    (int64_t)u->servers[best]->active * u->conf->servers[i].weight)
                    best = i;
            }
        } else {
            /* nginx's smooth weighted round-robin: even spread, weights honoured. */
            int total = 0;
            for (int i = 0; i < u->nservers; i++) {
                if (pass == 0 && u->servers[i]->down_until > now) continue;
                u->current_weight[i] += u->conf->servers[i].weight;
                total += u->conf->servers[i].weight;
                if (best < 0 || u->current_weight[i] > u->current_weight[best]) best = i;
            }
            if (best >= 0) u->current_weight[best] -= total;
        }
    }
    return best;
}
