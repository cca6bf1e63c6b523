/* The client's real address behind trusted proxies (nginx's realip module): when the peer is in
 * real_ip.from, the address comes from real_ip.header (X-Forwarded-For by default: walking from
 * the right, trusted addresses are skipped when recursive, and the first untrusted one is the
 * client). It is what req.remote_addr, the access log and everything keyed by the client's
 * address (rate limits, ip_restriction) see; X-Forwarded-For sent upstream still appends the peer.
 *
 * A PROXY protocol listener (another issue) will set the peer's address itself, before this runs,
 * so both compose: PROXY gives the load balancer's view, real_ip the headers behind it.
 * Thread affinity: the worker; the network list belongs to the request's config. */
#ifndef MR_PROXY_REAL_IP_H
#define MR_PROXY_REAL_IP_H

#include <stdbool.h>
#include <stdint.h>

#include "net/cidr.h"
#include "proxy/req.h"

/* Sets r->real_ip when r's peer is trusted and the header names a client (config of r->gen). */
void mr_real_ip_apply(mr_req_t *r);

#endif
