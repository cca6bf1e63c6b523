/* TLS engine (OpenSSL 3), independent of the socket layer.
 *
 * OpenSSL never touches a socket here. A connection is driven with four calls:
 *
 *   ciphertext received from the socket  -> mr_tls_feed()
 *   plaintext for the HTTP parser        <- mr_tls_read()      (also drives the handshake)
 *   plaintext from the proxy             -> mr_tls_write()
 *   ciphertext for the send queue        <- mr_tls_out_peek()/mr_tls_out_consume() (zero copy)
 *                                           or mr_tls_take_out() (copying)
 *
 * After EVERY call on a connection (feed, read, write, handshake, shutdown), check
 * mr_tls_pending_out(): reading can produce ciphertext too (handshake messages, session tickets,
 * alerts, KeyUpdate replies). Nothing ever blocks and nothing calls back into the caller: the only
 * callbacks are OpenSSL's own (SNI/ALPN selection, ticket keys), which run inside these calls and
 * only touch data owned by this module.
 *
 * Thread affinity
 *   - Contexts (mr_tls_ctx_t) are built on the main thread at config load
 *     (mr_tls_server_ctx_new, mr_tls_client_ctx_new: MAIN THREAD ONLY) and are then immutable and
 *     shared read-only by all worker threads. They are reference counted (atomic): every
 *     connection holds a reference, so a config reload may drop its reference
 *     (mr_tls_ctx_unref, any thread) while old connections finish on the old context.
 *   - Session ticket keys are process-wide (one set shared by every context and every worker, so a
 *     ticket issued by one worker, or by the context of a previous config generation, resumes on
 *     any other). mr_tls_rotate_ticket_keys() is MAIN THREAD ONLY; workers read the key set
 *     through an atomic pointer to an immutable snapshot.
 *   - A connection (mr_tls_conn_t) belongs to one worker thread; none of its functions may be
 *     called concurrently.
 *
 * Ownership
 *   - Strings returned by the accessors (alpn, sni, protocol, cipher, peer subject/fingerprint,
 *     error) are owned by the connection and valid until mr_tls_conn_free (or the next call on the
 *     connection for mr_tls_error).
 *   - mr_tls_feed copies its input: the caller may recycle the receive buffer (e.g. give the
 *     provided buffer back to the io_uring ring) as soon as it returns.
 *   - Bytes returned by mr_tls_out_peek/mr_tls_out_iov stay at the same address and unchanged
 *     until they are consumed or the connection is freed, even if more output is produced
 *     meanwhile: a send SQE may reference them directly while the connection keeps working.
 *     Consume only after the send completed (and only as many bytes as were sent).
 *
 * Errors
 *   MR_TLS_ERR is sticky: the connection is dead, mr_tls_error() says why. There may still be an
 *   alert queued in the output; sending it before closing is polite but optional.
 */
#ifndef MR_TLS_H
#define MR_TLS_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

#include "util/export.h"

typedef struct mr_tls_ctx mr_tls_ctx_t;
typedef struct mr_tls_conn mr_tls_conn_t;
typedef struct mr_tls_session mr_tls_session_t; /* an OpenSSL SSL_SESSION (client side reuse) */

enum {
    MR_TLS_OK = 0,     /* done / some bytes were produced or taken */
    MR_TLS_WANT = 1,   /* needs more ciphertext from the peer (feed), or output space (flush) */
    MR_TLS_CLOSED = 2, /* the peer sent close_notify: no more plaintext will come */
    MR_TLS_ERR = -1,   /* fatal; see mr_tls_error() */
};

typedef enum {
    MR_TLS_VERIFY_NONE = 0,     /* no client certificate requested */
    MR_TLS_VERIFY_OPTIONAL = 1, /* requested; if one is sent it must verify against client_ca */
    MR_TLS_VERIFY_REQUIRE = 2,  /* a client certificate that verifies is mandatory */
} mr_tls_verify_t;

typedef struct {
    const char *cert_path; /* PEM: the leaf first, then its chain (intermediates) */
    const char *key_path;  /* PEM private key (RSA or EC), unencrypted */
} mr_tls_cert_conf_t;

/* Server (listener) context. Zero-initialise, then set what differs from the defaults.
 * Every pointer is only read during mr_tls_server_ctx_new. */
typedef struct {
    const char *where; /* prefix of error messages, e.g. "listen[1].tls"; NULL = "tls" */
    const mr_tls_cert_conf_t *certs; /* at least one; certs[0] is the default certificate */
    size_t ncerts;
    const char *min_protocol; /* "TLSv1.2" (default) or "TLSv1.3" */
    const char *max_protocol; /* "TLSv1.2" or "TLSv1.3" (default) */
    const char *ciphers;      /* TLS 1.2 cipher list (OpenSSL syntax); NULL = secure default */
    const char *ciphersuites; /* TLS 1.3 suites; NULL = OpenSSL default */
    const char *const *alpn;  /* server preference order; NULL = { "http/1.1" } */
    size_t nalpn;
    int client_verify;        /* mr_tls_verify_t */
    const char *client_ca;    /* PEM CA bundle; required unless client_verify is NONE */
    int verify_depth;         /* 0 = OpenSSL default */
    long session_cache;       /* stateful server session cache, in sessions; 0 = off */
    bool no_tickets;          /* disable session tickets */
    long session_timeout;     /* seconds a session/ticket is valid; 0 = 43200 (12 h) */
} mr_tls_server_conf_t;

/* Client (upstream) context. */
typedef struct {
    const char *where;        /* NULL = "upstream.tls" */
    bool verify;              /* verify the server chain and name */
    const char *ca_file;      /* PEM CA bundle; NULL = the system store */
    const char *cert_path;    /* optional client certificate (+ chain) ... */
    const char *key_path;     /* ... and its key (both or neither) */
    const char *min_protocol, *max_protocol, *ciphers, *ciphersuites;
    const char *const *alpn;  /* offered protocols; NULL = none */
    size_t nalpn;
    int verify_depth;         /* 0 = OpenSSL default */
} mr_tls_client_conf_t;

/* --- contexts (MAIN THREAD ONLY for *_new) ------------------------------------------------ */

/* Returns 0 and a context holding one reference, or -1 with a message in err that names the
 * offending config key and file, e.g.
 *   "tls.certs[2].key: /etc/k.pem: cannot read (No such file or directory)"
 *   "tls.certs[1]: key /k.pem does not match certificate /c.pem"
 * SNI: each certificate's names are its SAN dNSName entries (or its subject CN when it has none),
 * exact ("a.test") or wildcard ("*.b.test", one label). The servername is matched exactly first,
 * then by wildcard, in config order; no SNI or no match selects certs[0]. Certificates whose name
 * sets are identical and whose key types differ (RSA + ECDSA) are served together, the handshake
 * picking the one the client supports. */
MR_EXPORT int mr_tls_server_ctx_new(const mr_tls_server_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen);
MR_EXPORT int mr_tls_client_ctx_new(const mr_tls_client_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen);
void mr_tls_ctx_ref(mr_tls_ctx_t *ctx);
MR_EXPORT void mr_tls_ctx_unref(mr_tls_ctx_t *ctx); /* any thread; frees on the last reference */

/* Process-wide session ticket keys: a new current key; the previous one still decrypts (tickets
 * it sealed resume and are re-issued under the new key); older ones are dropped. Call every
 * ticket_rotation (12 h by default) from a main-thread timer. MAIN THREAD ONLY. Key sets are
 * immutable snapshots in static slots reused round-robin (8), published by an atomic pointer:
 * readers never see a set change or disappear. */
MR_EXPORT void mr_tls_rotate_ticket_keys(void);

/* kTLS probe: the kernel module is loaded (/sys/module/tls) and this OpenSSL knows
 * SSL_OP_ENABLE_KTLS. Not used yet (see docs/tls.md: kTLS needs OpenSSL to own the socket fd,
 * which the memory-BIO design deliberately avoids; the plan is to hand the keys to the kernel
 * after the handshake). */
MR_EXPORT bool mr_tls_ktls_available(void);

/* --- connections (one worker thread) ----------------------------------------------------- */

/* server: accept side of a listener context. Client: sni_for_client is the upstream host name:
 * sent as SNI and, when the context verifies, checked against the certificate (an IP literal is
 * not sent as SNI and is checked against IP SANs). NULL = no SNI and, if verifying, the chain is
 * checked but not the name. Returns NULL on allocation failure or a context of the wrong kind. */
MR_EXPORT mr_tls_conn_t *mr_tls_conn_new(mr_tls_ctx_t *ctx, bool server, const char *sni_for_client);
MR_EXPORT void mr_tls_conn_free(mr_tls_conn_t *t);

/* Ciphertext from the socket (copied). Returns MR_TLS_OK, or MR_TLS_ERR if the connection failed
 * or memory ran out. Process it with mr_tls_read (or mr_tls_handshake). */
MR_EXPORT int mr_tls_feed(mr_tls_conn_t *t, const void *cipher, size_t n);

/* Advances the handshake without reading application data: MR_TLS_OK once complete, MR_TLS_WANT
 * while it needs peer bytes, MR_TLS_ERR. A client calls it first to produce its ClientHello. */
int mr_tls_handshake(mr_tls_conn_t *t);

/* Decrypted bytes (drives the handshake first). MR_TLS_OK with *got > 0; call again until it
 * returns MR_TLS_WANT (more plaintext may already be buffered). MR_TLS_CLOSED after the peer's
 * close_notify. */
MR_EXPORT int mr_tls_read(mr_tls_conn_t *t, void *plain, size_t cap, size_t *got);
/* True if mr_tls_read may return bytes without new input (fed ciphertext not yet processed, or
 * a decrypted record partly read): after pausing reads for backpressure, resume by calling
 * mr_tls_read before waiting on the socket. */
MR_EXPORT bool mr_tls_read_pending(const mr_tls_conn_t *t);

/* Encrypts up to n bytes: MR_TLS_OK with *taken (possibly < n: the output buffer is bounded, so
 * send what is pending and call again), or MR_TLS_WANT with *taken = 0 when the handshake is not
 * complete yet or the output is full (MR_TLS_OUT_HIGH bytes pending). */
MR_EXPORT int mr_tls_write(mr_tls_conn_t *t, const void *plain, size_t n, size_t *taken);
#define MR_TLS_OUT_HIGH (256 * 1024)

/* Queues close_notify (MR_TLS_OK), after which no more writes. Before the handshake completed
 * there is nothing to say: returns MR_TLS_OK with nothing queued. */
MR_EXPORT int mr_tls_shutdown(mr_tls_conn_t *t);

/* Ciphertext to send. */
MR_EXPORT size_t mr_tls_pending_out(const mr_tls_conn_t *t);
const void *mr_tls_out_peek(const mr_tls_conn_t *t, size_t *len); /* first contiguous piece */
/* Pieces for sendmsg, skipping the first `skip` pending bytes (those already queued on the
 * socket and not yet consumed); returns the number of iovecs filled. */
int mr_tls_out_iov(const mr_tls_conn_t *t, size_t skip, struct iovec *iov, int max);
void mr_tls_out_consume(mr_tls_conn_t *t, size_t n);                   /* n <= pending */
MR_EXPORT int mr_tls_take_out(mr_tls_conn_t *t, void *buf, size_t cap, size_t *got); /* copy + consume */

/* --- state ---------------------------------------------------------------------------- */
MR_EXPORT bool mr_tls_handshake_done(const mr_tls_conn_t *t);
MR_EXPORT const char *mr_tls_error(const mr_tls_conn_t *t);    /* "" when none */
const char *mr_tls_alpn(mr_tls_conn_t *t);           /* negotiated protocol or NULL */
const char *mr_tls_sni(const mr_tls_conn_t *t);      /* server: name the client asked for, or NULL */
MR_EXPORT const char *mr_tls_protocol(const mr_tls_conn_t *t); /* "TLSv1.3", ... */
const char *mr_tls_cipher(const mr_tls_conn_t *t);
bool mr_tls_session_reused(const mr_tls_conn_t *t);
/* Handshakes since start, process-wide (any thread): [0..2] as a server (listeners): full,
 * resumed, failed; [3..5] the same as a client (upstreams, cosockets). A connection that closes
 * before its handshake ends without an error counts in neither. */
void mr_tls_stats(uint64_t out[6]);
/* The peer certificate, only when it was presented AND verified (server: mTLS; client: verify
 * on). Subject in RFC 2253 form ("CN=client,O=Example"); SHA-256 of the DER, lowercase hex. */
const char *mr_tls_peer_subject(mr_tls_conn_t *t);
const char *mr_tls_peer_fingerprint(mr_tls_conn_t *t);
/* Subject of the certificate this side presented (server: the one SNI selected), or NULL. */
const char *mr_tls_own_subject(mr_tls_conn_t *t);

/* Client session reuse (upstream keep-alive pools): take the session after the handshake (and
 * after a read, for TLS 1.3 tickets); set it on the next connection to the same upstream before
 * its handshake. Sessions are reference counted and thread-safe. */
mr_tls_session_t *mr_tls_get_session(mr_tls_conn_t *t); /* new reference or NULL */
int mr_tls_set_session(mr_tls_conn_t *t, mr_tls_session_t *s);
MR_EXPORT void mr_tls_session_free(mr_tls_session_t *s);

#endif
