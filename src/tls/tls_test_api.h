/* In-memory TLS between a server and a client connection of this engine, for unit specs (LuaJIT
 * FFI on libmoonring_ffi.so): no sockets, ciphertext is shuttled take_out -> feed.
 *
 * mr_tls_test_pair runs the handshake (moving ciphertext `step` bytes at a time, 0 = all at once,
 * and letting the receiver process every piece), then sends `nbytes` of a pattern client->server
 * and server->client at the same time, checks both arrive intact, and closes with close_notify
 * from the client. If *session is set, the client offers it; on return *session holds the
 * client's new session (the caller frees it with mr_tls_session_free). The report is text, one
 * fact per line:
 *   handshake ok | error server: <why> | error client: <why>   (every side that failed)
 *   protocol TLSv1.3
 *   cipher TLS_AES_256_GCM_SHA384
 *   alpn http/1.1 | alpn -
 *   sni a.test | sni -                (what the server saw)
 *   cert CN=a.test                    (subject of the certificate the server presented)
 *   cert_key RSA | EC
 *   reused 0|1
 *   peer CN=client | peer -           (server side: verified client subject)
 *   peer_fp <sha256 hex> | peer_fp -
 *   upstream_peer CN=a.test | -       (client side: verified server subject)
 *   data <n> ok | data mismatch ...
 *   closed 1
 * Returns 0 on success, -1 on any failure. */
#ifndef MR_TLS_TEST_API_H
#define MR_TLS_TEST_API_H

#include <stddef.h>

#include "tls/tls.h"
#include "util/export.h"

MR_EXPORT int mr_tls_test_pair(mr_tls_ctx_t *server_ctx, mr_tls_ctx_t *client_ctx, const char *sni, size_t nbytes,
                               size_t step, mr_tls_session_t **session, char *out, size_t outlen);

/* Checks the output buffer's address stability and back-pressure: writes `nbytes` on an
 * established pair without draining, peeking the first piece before and comparing after; returns
 * 0 if the peeked bytes did not move, writes stopped at MR_TLS_OUT_HIGH with MR_TLS_WANT, and
 * everything arrived once drained. */
MR_EXPORT int mr_tls_test_out_stability(mr_tls_ctx_t *server_ctx, mr_tls_ctx_t *client_ctx, char *out, size_t outlen);

#endif
