/* The HTTP/2 upstream client (upstreams.NAME.protocol = "http2" or "grpc"), on libnghttp2: each
 * exchange (upstream/upx.h) is one stream of a connection shared by many requests. h2c with prior
 * knowledge on plain TCP; h2 over TLS, where the server must select "h2" by ALPN.
 *
 * Connections are per worker and per server (mr_server_t.h2, beside the HTTP/1.1 pool), so they
 * outlive configuration generations like pooled HTTP/1.1 connections do. A new exchange takes a
 * stream on the oldest connection with a free slot (the server's SETTINGS_MAX_CONCURRENT_STREAMS,
 * and keepalive_requests streams per connection), else opens another connection. A new
 * connection reports `ready` to its exchanges once the server's SETTINGS arrived, so the limit is
 * known before a stream starts; exchanges beyond it move to another connection.
 *
 * I/O follows the session/h2.c model: moonring owns the socket; bytes go into
 * nghttp2_session_mem_recv straight from the loop's receive buffers, and frames come out of
 * nghttp2_session_mem_send once per loop turn (a deferred callback), never from a call the owner
 * makes. No nghttp2 callback does I/O or calls an owner: they record what happened on the stream
 * and the connection delivers it afterwards, outside nghttp2.
 *
 * Flow control is the backpressure: the stream window reopens only for response bytes the owner
 * took (MR_UP_HOLD holds them, and the window closes behind them); request body bytes wait in the
 * stream's queue until its window lets nghttp2 take them, and `full` says so to the owner.
 *
 * Failures: a stream the server refused (REFUSED_STREAM, or above a GOAWAY's last stream id) or
 * that never left is reported with MR_UP_RETRY_ANY; a dead connection fails each of its streams
 * with the retry kind its progress allows. Idle connections are PINGed for liveness and closed
 * after keepalive_timeout (or at once beyond `keepalive` idle ones per server).
 * Thread affinity: the worker. */
#ifndef MR_UPSTREAM_H2CLIENT_H
#define MR_UPSTREAM_H2CLIENT_H

#include "upstream/upx.h"

/* An HTTP/2 exchange with server s (see mr_upx_open). Returns 0 or -errno. */
int mr_h2client_open(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out);
/* Closes the HTTP/2 connections of s that carry no stream (graceful stop); busy ones close once
 * their last stream ends while ctx->draining. */
void mr_h2client_close_idle(mr_upx_ctx_t *ctx, mr_server_t *s);
/* Frees the calling thread's scratch memory (at worker exit). */
void mr_h2client_thread_free(void);

#endif
