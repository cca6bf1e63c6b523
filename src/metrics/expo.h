/* What the admin endpoint shows of the metrics (metrics/metrics.h): the Prometheus text exposition
 * (GET /metrics), the upstreams and their servers as JSON (GET /-/upstreams), and the per-route
 * and per-upstream totals the status page turns into rates (GET /-/stats).
 *
 * Admin thread only: each call walks every worker's published cells (acquire loads, no lock on
 * the workers' side), sums them by label set and formats the result into out. The caller passes
 * the configuration currently served (referenced), for the servers' weights and the shared dicts. */
#ifndef MR_METRICS_EXPO_H
#define MR_METRICS_EXPO_H

#include <stdint.h>

#include "config/config.h"
#include "util/vec.h"

typedef struct {
    const mr_config_t *cfg;     /* the generation serving now */
    int nworkers;
    uint64_t generation;
} mr_expo_ctx_t;

/* Each returns 0, or -ENOMEM with out partially filled. */
int mr_expo_prometheus(const mr_expo_ctx_t *ctx, mr_vec_t *out);
int mr_expo_upstreams_json(const mr_expo_ctx_t *ctx, mr_vec_t *out);
int mr_expo_stats_json(const mr_expo_ctx_t *ctx, mr_vec_t *out);
/* Appends s as a JSON string (quotes included). */
void mr_expo_json_str(mr_vec_t *out, const char *s, size_t n);

#endif
