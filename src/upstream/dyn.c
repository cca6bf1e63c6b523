#include "upstream/dyn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"

struct mr_dyn_upstream {
    mr_upstream_t u;
    mr_upstream_conf_t conf;
    mr_server_conf_t sconf;
    mr_server_t *srv[1];
    int cw[1];
    _Atomic int *st[1];
    char key[MR_HOST_MAX + 8];  /* "host:port" as given */
    mr_dyn_upstream_t *next;
};

mr_upstream_t *mr_dyn_upstream_get(mr_dyn_upstreams_t *d, mr_server_registry_t *reg, const char *s, size_t n,
                                   const mr_upstream_conf_t *defaults, int *err)
{
    if (n >= sizeof ((mr_dyn_upstream_t *)0)->key) { *err = -EINVAL; return NULL; }
    for (mr_dyn_upstream_t *e = d->head; e; e = e->next)
        if (strlen(e->key) == n && memcmp(e->key, s, n) == 0) return &e->u;
    if (d->count >= MR_DYN_UPSTREAMS_MAX) { *err = -ENOSPC; return NULL; }
    mr_dyn_upstream_t *e = calloc(1, sizeof *e);
    if (!e) { *err = -ENOMEM; return NULL; }
    memcpy(e->key, s, n);
    e->srv[0] = mr_server_get_dyn(reg, s, n, err);
    if (!e->srv[0]) { free(e); return NULL; }
    e->sconf.addr = e->key;
    e->sconf.sa = e->srv[0]->sa;
    e->sconf.weight = 1;
    /* The settings of an upstream declared without any (the schema's defaults). */
    e->conf = *defaults;
    e->conf.name = e->key;
    e->conf.servers = &e->sconf;
    e->conf.nservers = 1;
    e->conf.tls = NULL;
    e->u.conf = &e->conf;
    e->u.servers = e->srv;
    e->u.current_weight = e->cw;
    e->u.nservers = 1;
    e->u.mid = mr_metrics_name(e->key, n);
    e->st[0] = mr_metrics_srv_state(e->u.mid, e->u.mid);
    e->u.state = e->st;
    e->next = d->head;
    d->head = e;
    d->count++;
    return &e->u;
}

void mr_dyn_upstreams_free(mr_dyn_upstreams_t *d)
{
    while (d->head) {
        mr_dyn_upstream_t *e = d->head;
        d->head = e->next;
        free(e);
    }
    d->count = 0;
}
