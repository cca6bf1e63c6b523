/* The HTTP/2 server session (RFC 9113) on libnghttp2: framing, HPACK and stream state are
 * nghttp2's; all I/O is ours. Bytes in go from the loop's receive buffers into
 * nghttp2_session_mem_recv; bytes out are pulled with nghttp2_session_mem_send once per loop turn
 * (a deferred flush) and queued on the socket, never more than the socket's backpressure limit.
 * No nghttp2 callback does I/O or blocks.
 *
 * Every stream is a request object (proxy/req.h) handed to the proxy core like an HTTP/1.1 one,
 * with this session implementing the response interface: same routing, Lua chain, upstreams,
 * limits, logs and generations. Request bodies: DATA payloads stay in the receive buffers they
 * arrived in (a buffer reference) until the core takes them, and the stream's receive window
 * is only reopened (nghttp2_session_consume) for what the core took, so a slow upstream holds the
 * client back through flow control and memory per stream stays bounded by the window. Response
 * bodies: queued per stream up to proxy.buffer_size, pulled by nghttp2 as the client's windows
 * allow; above that the core holds the upstream (mr_proxy_sent resumes it).
 *
 * An HTTP/1.1 session hands a connection over when its first bytes are the HTTP/2 connection
 * preface (TLS with ALPN "h2", or prior knowledge on plain TCP), before any request was parsed.
 * Thread affinity: the worker. */
#ifndef MR_SESSION_H2_H
#define MR_SESSION_H2_H

#include "session/conn.h"

/* The 24 bytes every HTTP/2 connection starts with. */
#define MR_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define MR_H2_PREFACE_LEN 24

/* Takes over c (whose held input starts with the preface, not consumed): from now on the socket's
 * callbacks and c->ops are HTTP/2's; c->freed still gives the memory back at the end. Returns 0,
 * or -ENOMEM (the caller closes the connection). */
int mr_h2_takeover(mr_conn_t *c);
void mr_h2_thread_free(void);

#endif
