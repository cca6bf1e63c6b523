/* Upstream groups and servers, per worker.
 *
 * Servers (and their keep-alive pools) live in a per-worker registry keyed by address, OUTSIDE
 * configuration generations: a reload that keeps a server keeps its pooled connections. Groups
 * (mr_upstream_t) belong to one generation and hold that generation's weights and balancer
 * state. Thread affinity: the owning worker; no locks. */
#ifndef MR_UPSTREAM_H
#define MR_UPSTREAM_H

#include <stdint.h>

#include "config/config.h"
#include "net/net.h"

typedef struct mr_server mr_server_t;
typedef struct mr_upstream mr_upstream_t;
struct mr_pool_link;

struct mr_server {
    char addr[64];              /* as configured, for logs */
    mr_addr_t sa;
    struct mr_pool_link *idle;  /* pooled connections, most recent first (upstream/pool.h) */
    int nidle;
    int active;                 /* connections bound to requests */
    uint64_t down_until;        /* ms; skipped by balancers until then after a connect failure */
    uint64_t tls_id;            /* part of the key, with sa (see mr_server_get) */
    mr_tls_session_t *tls_sess; /* TLS: the last session, offered by the next new connection */
    mr_server_t *next;
};

struct mr_upstream {
    const mr_upstream_conf_t *conf;
    mr_server_t **servers;      /* registry entries, one per conf->servers[i] */
    int *current_weight;        /* smooth weighted round-robin state */
    int nservers;
};

typedef struct {
    mr_server_t *head;
    int count;
} mr_server_registry_t;

/* The registry entry for an address, created on first use. NULL on allocation failure. */
/* tls_id: mr_server_conf_t.tls_id (0 for plain TCP). */
mr_server_t *mr_server_get(mr_server_registry_t *reg, const char *addr, const mr_addr_t *sa, uint64_t tls_id);
void mr_server_registry_free(mr_server_registry_t *reg);

/* Binds a group to registry servers. Returns 0 or -ENOMEM. */
int mr_upstream_init(mr_upstream_t *u, const mr_upstream_conf_t *conf, mr_server_registry_t *reg);
void mr_upstream_free(mr_upstream_t *u);
/* Picks a server: smooth weighted round-robin or least connections; servers marked down are
 * skipped unless all are (trying a maybe-dead server beats a certain 503). */
int mr_upstream_pick(mr_upstream_t *u, uint64_t now_ms);

#endif
