#include "upstream/dyn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct mr_dyn_upstream {
    mr_upstream_t u;
    mr_upstream_conf_t conf;
    mr_server_conf_t sconf;
    mr_server_t *srv[1];
    int cw[1];
    char key[64];
    mr_dyn_upstream_t *next;
};

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

mr_upstream_t *mr_dyn_upstream_get(mr_dyn_upstreams_t *d, mr_server_registry_t *reg, const char *s, size_t n,
                                   const mr_upstream_conf_t *defaults, int *err)
{
    mr_addr_t addr;
    if (parse_ip_port(s, n, &addr) < 0) { *err = -EINVAL; return NULL; }
    for (mr_dyn_upstream_t *e = d->head; e; e = e->next)
        if (strlen(e->key) == n && memcmp(e->key, s, n) == 0) return &e->u;
    if (d->count >= MR_DYN_UPSTREAMS_MAX) { *err = -ENOSPC; return NULL; }
    mr_dyn_upstream_t *e = calloc(1, sizeof *e);
    if (!e) { *err = -ENOMEM; return NULL; }
    memcpy(e->key, s, n);
    e->sconf.addr = e->key;
    e->sconf.sa = addr;
    e->sconf.weight = 1;
    /* The settings of an upstream declared without any (the schema's defaults). */
    e->conf = *defaults;
    e->conf.name = e->key;
    e->conf.servers = &e->sconf;
    e->conf.nservers = 1;
    e->conf.tls = NULL;
    e->srv[0] = mr_server_get(reg, e->key, &addr, 0);
    if (!e->srv[0]) { free(e); *err = -ENOMEM; return NULL; }
    e->u.conf = &e->conf;
    e->u.servers = e->srv;
    e->u.current_weight = e->cw;
    e->u.nservers = 1;
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
