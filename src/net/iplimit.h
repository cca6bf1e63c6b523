/* Per-worker count of open client connections by peer IP, for limits.max_connections_per_ip.
 *
 * Each worker owns one table and touches it only from its own thread: no locks. The limit is
 * therefore per worker, like limits.max_connections (SO_REUSEPORT spreads one address's
 * connections over the workers by 4-tuple hash). Memory is bounded by the worker's open
 * connections: an entry exists only while its count is above zero. */
#ifndef MR_IPLIMIT_H
#define MR_IPLIMIT_H

#include <stdint.h>

typedef struct mr_iplimit_ent mr_iplimit_ent_t;

typedef struct {
    mr_iplimit_ent_t **slots;
    uint32_t nslots;    /* power of two, or 0 before the first use */
    uint32_t nents;
} mr_iplimit_t;

/* Counts one more connection from ip unless it already has max (0 = no limit, nothing is
 * counted). Returns 0, -EBUSY over the limit, or -ENOMEM. */
int mr_iplimit_acquire(mr_iplimit_t *t, const char *ip, uint32_t max);
/* Undoes one successful acquire with max > 0. */
void mr_iplimit_release(mr_iplimit_t *t, const char *ip);
void mr_iplimit_free(mr_iplimit_t *t);

#endif
