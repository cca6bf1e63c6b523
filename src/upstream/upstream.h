/* Upstream groups and servers, per worker.
 *
 * Servers (and their keep-alive pools) live in a per-worker registry keyed by address (a numeric
 * one) or by the configured "host:port" (a named one), OUTSIDE configuration generations: a
 * reload that keeps a server keeps its pooled connections. Groups (mr_upstream_t) belong to one
 * generation and hold that generation's weights and balancer state.
 *
 * A server named by host is resolved through the worker's resolver (net/resolver.h): one whose
 * address is known (a config's, resolved at load) is used at once and resolved again in the
 * background once the address is older than the TTL, so a changed DNS record is followed without
 * a reload; one not resolved yet (req:set_upstream("name:port")) makes its first request wait
 * (mr_server_ready), with every other request for it queued behind the same lookup.
 * Thread affinity: the owning worker; no locks. Waiter callbacks never fire synchronously. */
#ifndef MR_UPSTREAM_H
#define MR_UPSTREAM_H

#include <stdatomic.h>
#include <stdint.h>

#include "config/config.h"
#include "net/net.h"
#include "net/resolver.h"

typedef struct mr_server mr_server_t;
typedef struct mr_upstream mr_upstream_t;
struct mr_pool_link;

/* A request waiting for a server's first address (embedded in the waiter). */
typedef struct mr_server_wait {
    struct mr_server_wait *next, *prev;
    void (*fn)(struct mr_server_wait *w, int rc); /* rc 0: the address is known; else -errno */
} mr_server_wait_t;

typedef struct mr_server_registry mr_server_registry_t;

struct mr_server {
    char *addr;                 /* as configured, for logs (and the key of a named server) */
    uint32_t mid;               /* addr's metrics name id (metrics/metrics.h) */
    mr_addr_t sa;
    struct mr_pool_link *idle;  /* pooled connections, most recent first (upstream/pool.h) */
    int nidle;
    struct mr_h2conn *h2;       /* HTTP/2 connections, busy and idle, oldest first (upstream/h2client.c) */
    int active;                 /* connections bound to requests */
    uint64_t down_until;        /* ms; skipped by balancers until then after a connect failure */
    uint64_t tls_id;            /* part of the key, with sa (see mr_server_get) */
    mr_tls_session_t *tls_sess; /* TLS: the last session, offered by the next new connection */
    mr_server_t *next;
    /* Named servers only. */
    mr_server_registry_t *reg;
    char *host;                 /* NULL for a numeric address */
    uint16_t port;
    bool resolved;              /* sa is usable */
    uint64_t resolved_ms;       /* when sa was last confirmed (0: not yet stamped) */
    mr_resolve_req_t rq;
    mr_server_wait_t *waiters;
};

struct mr_upstream {
    const mr_upstream_conf_t *conf;
    mr_server_t **servers;      /* registry entries, one per conf->servers[i] */
    int *current_weight;        /* smooth weighted round-robin state */
    int nservers;
    uint32_t mid;               /* the group's metrics name id */
    /* Per server: the process-wide state the admin API sets (MR_SRV_UP, _DOWN, _DRAINING of
     * metrics/metrics.h), or NULL entries (always up). Read with one relaxed load per pick. */
    _Atomic int **state;
};

struct mr_server_registry {
    mr_server_t *head;
    int count;
    mr_resolver_t *res;         /* the worker's resolver (NULL: named servers keep their load-time address) */
    uint32_t ttl_ms;            /* how long a resolved address is used before it is resolved again */
};

/* The registry entry for an address, created on first use. NULL on allocation failure. */
/* tls_id: mr_server_conf_t.tls_id (0 for plain TCP). */
mr_server_t *mr_server_get(mr_server_registry_t *reg, const char *addr, const mr_addr_t *sa, uint64_t tls_id);
void mr_server_registry_free(mr_server_registry_t *reg);
/* A server for a run-time "host:port" (req:set_upstream): numeric, or a name resolved on first
 * use. NULL with *err -EINVAL (not a host:port) or -ENOMEM. */
mr_server_t *mr_server_get_dyn(mr_server_registry_t *reg, const char *s, size_t n, int *err);
/* Makes sure s has an address to connect to: 0 now (a stale one is refreshed in the background),
 * 1 when w must wait (w->fn runs once, later, from the loop), or -errno (no resolver, too many
 * lookups). */
int mr_server_ready(mr_server_t *s, uint64_t now_ms, mr_server_wait_t *w);
/* A waiter gives up (its request went away): its callback will not run. */
void mr_server_unwait(mr_server_t *s, mr_server_wait_t *w);

/* Binds a group to registry servers. Returns 0 or -ENOMEM. */
int mr_upstream_init(mr_upstream_t *u, const mr_upstream_conf_t *conf, mr_server_registry_t *reg);
void mr_upstream_free(mr_upstream_t *u);
/* Picks a server: smooth weighted round-robin or least connections. A server an operator set
 * down or draining (u->state) is never picked; one that failed to connect lately (down_until) is
 * skipped unless all the others are too (trying a maybe-dead server beats a certain 503).
 * Returns -1 when no server may be picked. */
int mr_upstream_pick(mr_upstream_t *u, uint64_t now_ms);

#endif
