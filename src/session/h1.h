/* The HTTP/1.1 server session: one client connection speaking HTTP/1.1. It parses requests
 * (http1/http1.h), creates a request object for each (proxy/req.h) and hands it to the proxy
 * core, implements the core's response interface (heads written by http1/write.h, chunked or
 * length-delimited or close-delimited bodies, Connection semantics), and owns everything that is
 * HTTP/1-specific: keep-alive, pipelining (one request at a time, the next parsed only once the
 * previous response is complete), 100-continue, the header/body/keep-alive/send timeouts, the
 * lingering close, and the raw tunnel after an Upgrade.
 *
 * Memory: an idle connection (between requests) holds its socket and timer only; the request
 * object, with the parser and every buffer, is taken when the first byte of a request arrives and
 * given back (to a per-thread cache) when its response is complete.
 * Thread affinity: the worker. */
#ifndef MR_SESSION_H1_H
#define MR_SESSION_H1_H

#include "session/conn.h"
#include "tls/tls.h"

/* Serves an accepted socket (non-blocking) of listener lc: over HTTP/1.1, or HTTP/2 when the
 * listener allows it and the client's first bytes are the HTTP/2 preface (session/h2.h). The
 * listener's TLS context (NULL: plain TCP) gets a reference of the connection's own. Returns 0,
 * or -errno (fd closed). */
int mr_h1_accept(mr_conns_t *cs, int fd, const mr_listen_conf_t *lc);
/* Frees the per-thread cache of request objects (thread exit). */
void mr_h1_thread_free(void);

#endif
