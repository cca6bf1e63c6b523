/* The keep-alive pool of one upstream server: an intrusive most-recent-first list of idle
 * connections. It knows nothing of what a connection is (the link is embedded in it), so the
 * connection module uses the pool and never the other way round. Thread affinity: the owning
 * worker (servers are per worker, see upstream.h). */
#ifndef MR_UPSTREAM_POOL_H
#define MR_UPSTREAM_POOL_H

#include <stdbool.h>

#include "upstream/upstream.h"

typedef struct mr_pool_link {
    struct mr_pool_link *next, *prev;
    bool pooled;
} mr_pool_link_t;

void mr_pool_put(mr_server_t *s, mr_pool_link_t *l);
/* The most recently pooled link, unlinked, or NULL. */
mr_pool_link_t *mr_pool_take(mr_server_t *s);
/* Unlinks l if pooled (no-op otherwise). */
void mr_pool_remove(mr_server_t *s, mr_pool_link_t *l);

#endif
