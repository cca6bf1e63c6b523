/* What a request tells the metrics (metrics/metrics.h) and records for the access log: the proxy
 * core calls these at fixed points of a request's life, each a handful of stores into the
 * worker's own cells (no lock, no allocation once a label set's cell exists).
 * Thread affinity: the worker. */
#ifndef MR_PROXY_STATS_H
#define MR_PROXY_STATS_H

#include "proxy/req.h"
#include "upstream/upstream.h"

/* The head is complete (or a session-detected error answers a partial one): counted in flight. */
void mr_stats_begin(mr_req_t *r);
/* A try starts on server s (index pick of r->upstream). */
void mr_stats_try(mr_req_t *r, mr_server_t *s);
/* The try on r->upstream's server r->pick failed (connect error, timeout, reset). */
void mr_stats_try_failed(mr_req_t *r);
/* The request is over: answered (mr_proxy_end) or dropped by the client (status 499). */
void mr_stats_end(mr_req_t *r, bool dropped);

#endif
