/* Upstreams chosen at run time by req:set_upstream("host:port"): one single-server group per
 * address or name, kept per worker so their keep-alive pools are reused across requests and
 * reloads. A name is resolved asynchronously by the server (upstream.h: mr_server_ready), never
 * here. Bounded: at most MR_DYN_UPSTREAMS_MAX per worker. Thread affinity: the owning worker. */
#ifndef MR_UPSTREAM_DYN_H
#define MR_UPSTREAM_DYN_H

#include <stddef.h>

#include "upstream/upstream.h"

#define MR_DYN_UPSTREAMS_MAX 256

typedef struct mr_dyn_upstream mr_dyn_upstream_t;

typedef struct {
    mr_dyn_upstream_t *head;
    int count;
} mr_dyn_upstreams_t;

/* The group for "host:port" / "ip:port" / "[ip6]:port", created on first use with `defaults` (the
 * config's upstream defaults, copied). Returns it, or NULL with *err = -EINVAL (not a host:port),
 * -ENOSPC (too many) or -ENOMEM. */
mr_upstream_t *mr_dyn_upstream_get(mr_dyn_upstreams_t *d, mr_server_registry_t *reg, const char *s, size_t n,
                                   const mr_upstream_conf_t *defaults, int *err);
void mr_dyn_upstreams_free(mr_dyn_upstreams_t *d);

#endif
