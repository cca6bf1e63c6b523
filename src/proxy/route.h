/* The one path into routing: the request's normalised view (path and host, the same the
 * upstream will see) and the C route scan over it. Routes that need Lua to match (predicates, a
 * router, more than MR_ROUTES_C_SCAN_MAX routes) are matched by the VM on the same view (the Lua
 * API returns it). Thread affinity: the worker; pure functions over the request. */
#ifndef MR_PROXY_ROUTE_H
#define MR_PROXY_ROUTE_H

#include "config/config.h"
#include "proxy/req.h"

/* Builds r's routing view from its head: the normalised path, the raw query, the host without
 * port, lowercased. Returns 0, or an HTTP status (400) with *why set when the target cannot be
 * normalised safely. */
int mr_route_view(mr_req_t *r, const char **why);
/* The first route of cfg matching r's view (method, exact/prefix path, host), or NULL. */
const mr_route_conf_t *mr_route_match(const mr_config_t *cfg, const mr_req_t *r);

#endif
