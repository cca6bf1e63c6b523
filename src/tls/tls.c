/* Per-connection TLS engine over an in-memory BIO. See tls.h.
 *
 * One custom BIO serves as both the read and the write BIO of the SSL object:
 *   - reads take ciphertext from `in` (filled by mr_tls_feed; compacted/grown, never referenced
 *     from outside, so it may move);
 *   - writes append ciphertext to a list of fixed chunks, which never move once written: the
 *     caller may send straight out of them (mr_tls_out_peek/iov) while more output is appended.
 */
#include "tls/tls_int.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define CHUNK_DATA (32 * 1024 - 64)
#define MAX_WRITE (64 * 1024) /* plaintext per SSL_write_ex call */

typedef struct chunk {
    struct chunk *next;
    size_t r, w;
    unsigned char data[CHUNK_DATA];
} chunk_t;

struct mr_tls_conn {
    SSL *ssl;
    mr_tls_ctx_t *ctx;
    bool server, failed, closed;
    bool counted;               /* its handshake is in mr_tls_stats */
    unsigned char *in;
    size_t in_r, in_w, in_cap;
    chunk_t *head, *tail;
    size_t out_bytes;
    char err[256];
    char alpn[256];
    char *peer_subject, *own_subject;
    char peer_fp[65];
    bool peer_done;
};

/* ---------------------------------------------------------------------------------------- */
/* the memory BIO                                                                            */

static int bio_write(BIO *b, const char *data, size_t n, size_t *written)
{
    mr_tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t done = 0;
    while (done < n) {
        chunk_t *c = t->tail;
        if (!c || c->w == CHUNK_DATA) {
            c = malloc(sizeof *c);
            if (!c) break;
            c->next = NULL;
            c->r = c->w = 0;
            if (t->tail) t->tail->next = c;
            else t->head = c;
            t->tail = c;
        }
        size_t k = CHUNK_DATA - c->w;
        if (k > n - done) k = n - done;
        memcpy(c->data + c->w, data + done, k);
        c->w += k;
        done += k;
    }
    t->out_bytes += done;
    *written = done;
    return done > 0 || n == 0;
}

static int bio_read(BIO *b, char *data, size_t n, size_t *readbytes)
{
    mr_tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t avail = t->in_w - t->in_r;
    if (avail == 0) {
        BIO_set_retry_read(b);
        *readbytes = 0;
        return 0;
    }
    if (n > avail) n = avail;
    memcpy(data, t->in + t->in_r, n);
    t->in_r += n;
    if (t->in_r == t->in_w) t->in_r = t->in_w = 0;
    *readbytes = n;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    mr_tls_conn_t *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return t ? (long)(t->in_w - t->in_r) : 0;
    case BIO_CTRL_WPENDING: return t ? (long)t->out_bytes : 0;
    default: return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *g_bio_method;
static pthread_once_t g_bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "moonring-mem");
    if (!m) return;
    BIO_meth_set_write_ex(m, bio_write);
    BIO_meth_set_read_ex(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    BIO_meth_set_destroy(m, bio_destroy);
    g_bio_method = m;
}

/* ---------------------------------------------------------------------------------------- */
/* connections                                                                               */

mr_tls_conn_t *mr_tls_conn_new(mr_tls_ctx_t *ctx, bool server, const char *sni)
{
    if (!ctx || ctx->server != server) return NULL;
    pthread_once(&g_bio_once, bio_method_init);
    if (!g_bio_method) return NULL;
    mr_tls_conn_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->server = server;
    t->ssl = SSL_new(ctx->ssl);
    BIO *b = t->ssl ? BIO_new(g_bio_method) : NULL;
    if (!b) goto fail;
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one reference, owned by the SSL */
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (sni && *sni) {
            unsigned char ip[16];
            bool is_ip = inet_pton(AF_INET, sni, ip) == 1 || inet_pton(AF_INET6, sni, ip) == 1;
            if (is_ip) {
                if (ctx->verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), sni) != 1) goto fail;
            } else {
                if (SSL_set_tlsext_host_name(t->ssl, sni) != 1) goto fail;
                if (ctx->verify) {
                    SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                    if (SSL_set1_host(t->ssl, sni) != 1) goto fail;
                }
            }
        }
    }
    mr_tls_ctx_ref(ctx);
    t->ctx = ctx;
    return t;
fail:
    ERR_clear_error();
    SSL_free(t->ssl);
    free(t);
    return NULL;
}

void mr_tls_conn_free(mr_tls_conn_t *t)
{
    if (!t) return;
    /* OpenSSL drops the session from the server cache when an SSL is freed without having sent
     * close_notify; most peers just close the socket, so only a failed connection counts as bad. */
    if (!t->failed) SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(t->ssl); /* frees the BIO, which only clears its pointer to t */
    for (chunk_t *c = t->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(t->in);
    free(t->peer_subject);
    free(t->own_subject);
    mr_tls_ctx_unref(t->ctx);
    free(t);
}

int mr_tls_feed(mr_tls_conn_t *t, const void *cipher, size_t n)
{
    if (t->failed) return MR_TLS_ERR;
    if (n == 0) return MR_TLS_OK;
    if (t->in_r > 0 && t->in_cap - t->in_w < n) {
        memmove(t->in, t->in + t->in_r, t->in_w - t->in_r);
        t->in_w -= t->in_r;
        t->in_r = 0;
    }
    if (t->in_cap - t->in_w < n) {
        size_t cap = t->in_cap ? t->in_cap : 16 * 1024;
        while (cap - t->in_w < n) cap *= 2;
        unsigned char *p = realloc(t->in, cap);
        if (!p) {
            snprintf(t->err, sizeof t->err, "out of memory");
            t->failed = true;
            return MR_TLS_ERR;
        }
        t->in = p;
        t->in_cap = cap;
    }
    memcpy(t->in + t->in_w, cipher, n);
    t->in_w += n;
    return MR_TLS_OK;
}

/* Handshakes, process-wide: [server, client] x [full, resumed, failed]. One relaxed atomic add
 * per handshake, which costs nothing beside the handshake itself. */
static _Atomic uint64_t hs_stats[6];

void mr_tls_stats(uint64_t out[6])
{
    for (int i = 0; i < 6; i++) out[i] = atomic_load_explicit(&hs_stats[i], memory_order_relaxed);
}

static void count_done(mr_tls_conn_t *t)
{
    if (t->counted || !SSL_is_init_finished(t->ssl)) return;
    t->counted = true;
    atomic_fetch_add_explicit(&hs_stats[(t->server ? 0 : 3) + (SSL_session_reused(t->ssl) ? 1 : 0)], 1,
                              memory_order_relaxed);
}

/* Maps an SSL_* failure; fatal ones record why and make the connection dead. */
static int fail_from(mr_tls_conn_t *t, int rc)
{
    int e = SSL_get_error(t->ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: ERR_clear_error(); return MR_TLS_WANT;
    case SSL_ERROR_ZERO_RETURN: ERR_clear_error(); t->closed = true; return MR_TLS_CLOSED;
    default: break;
    }
    unsigned long code = ERR_peek_error(); /* the first queued: the root cause */
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK && code && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED)
        snprintf(t->err, sizeof t->err, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (reason) snprintf(t->err, sizeof t->err, "%s", reason);
    else if (code) snprintf(t->err, sizeof t->err, "OpenSSL error %lx", code);
    else snprintf(t->err, sizeof t->err, "TLS failure (SSL_get_error %d)", e);
    ERR_clear_error();
    t->failed = true;
    if (!t->counted) {
        t->counted = true;
        atomic_fetch_add_explicit(&hs_stats[t->server ? 2 : 5], 1, memory_order_relaxed);
    }
    return MR_TLS_ERR;
}

int mr_tls_handshake(mr_tls_conn_t *t)
{
    if (t->failed) return MR_TLS_ERR;
    if (SSL_is_init_finished(t->ssl)) return MR_TLS_OK;
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) { count_done(t); return MR_TLS_OK; }
    return fail_from(t, rc);
}

int mr_tls_read(mr_tls_conn_t *t, void *plain, size_t cap, size_t *got)
{
    *got = 0;
    if (t->failed) return MR_TLS_ERR;
    if (t->closed) return MR_TLS_CLOSED;
    if (cap == 0) {
        int rc = mr_tls_handshake(t);
        return rc == MR_TLS_OK ? MR_TLS_WANT : rc;
    }
    ERR_clear_error();
    size_t n = 0;
    int rc = SSL_read_ex(t->ssl, plain, cap, &n);
    if (!t->counted) count_done(t);
    if (rc == 1) {
        *got = n;
        return MR_TLS_OK;
    }
    return fail_from(t, rc);
}

bool mr_tls_read_pending(const mr_tls_conn_t *t)
{
    return !t->failed && (t->in_w > t->in_r || SSL_has_pending(t->ssl));
}

int mr_tls_write(mr_tls_conn_t *t, const void *plain, size_t n, size_t *taken)
{
    *taken = 0;
    if (t->failed) return MR_TLS_ERR;
    int rc = mr_tls_handshake(t);
    if (rc != MR_TLS_OK) return rc;
    if (n == 0) return MR_TLS_OK;
    if (t->out_bytes >= MR_TLS_OUT_HIGH) return MR_TLS_WANT;
    if (n > MAX_WRITE) n = MAX_WRITE;
    ERR_clear_error();
    size_t w = 0;
    rc = SSL_write_ex(t->ssl, plain, n, &w);
    if (rc == 1) {
        *taken = w;
        return MR_TLS_OK;
    }
    return fail_from(t, rc);
}

int mr_tls_shutdown(mr_tls_conn_t *t)
{
    if (t->failed) return MR_TLS_ERR;
    if (!SSL_is_init_finished(t->ssl)) return MR_TLS_OK;
    if (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN) return MR_TLS_OK;
    ERR_clear_error();
    int rc = SSL_shutdown(t->ssl); /* 0: close_notify queued, the peer's not seen yet: fine */
    if (rc < 0) return fail_from(t, rc);
    return MR_TLS_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* output                                                                                    */

size_t mr_tls_pending_out(const mr_tls_conn_t *t)
{
    return t->out_bytes;
}

const void *mr_tls_out_peek(const mr_tls_conn_t *t, size_t *len)
{
    const chunk_t *c = t->head;
    while (c && c->r == c->w) c = c->next;
    *len = c ? c->w - c->r : 0;
    return c ? c->data + c->r : NULL;
}

int mr_tls_out_iov(const mr_tls_conn_t *t, size_t skip, struct iovec *iov, int max)
{
    int n = 0;
    for (const chunk_t *c = t->head; c && n < max; c = c->next) {
        size_t len = c->w - c->r;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        iov[n].iov_base = (void *)(c->data + c->r + skip);
        iov[n].iov_len = len - skip;
        skip = 0;
        n++;
    }
    return n;
}

void mr_tls_out_consume(mr_tls_conn_t *t, size_t n)
{
    if (n > t->out_bytes) n = t->out_bytes;
    t->out_bytes -= n;
    while (t->head) {
        chunk_t *c = t->head;
        size_t k = c->w - c->r;
        if (k > n) k = n;
        c->r += k;
        n -= k;
        if (c->r < c->w) break;
        /* Fully sent: nothing can reference it any more. */
        t->head = c->next;
        if (!t->head) t->tail = NULL;
        free(c);
        if (n == 0) break;
    }
}

int mr_tls_take_out(mr_tls_conn_t *t, void *buf, size_t cap, size_t *got)
{
    size_t done = 0;
    while (done < cap) {
        size_t len;
        const void *p = mr_tls_out_peek(t, &len);
        if (!p) break;
        if (len > cap - done) len = cap - done;
        memcpy((char *)buf + done, p, len);
        mr_tls_out_consume(t, len);
        done += len;
    }
    *got = done;
    return MR_TLS_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* state                                                                                     */

SSL *mr_tls_conn_ssl(mr_tls_conn_t *t)
{
    return t->ssl;
}

bool mr_tls_handshake_done(const mr_tls_conn_t *t)
{
    return !t->failed && SSL_is_init_finished(t->ssl);
}

const char *mr_tls_error(const mr_tls_conn_t *t)
{
    return t->err;
}

const char *mr_tls_alpn(mr_tls_conn_t *t)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    if (!p || len == 0) return NULL;
    memcpy(t->alpn, p, len); /* len <= 255 */
    t->alpn[len] = 0;
    return t->alpn;
}

const char *mr_tls_sni(const mr_tls_conn_t *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

const char *mr_tls_protocol(const mr_tls_conn_t *t)
{
    return SSL_get_version(t->ssl);
}

const char *mr_tls_cipher(const mr_tls_conn_t *t)
{
    return SSL_get_cipher_name(t->ssl);
}

bool mr_tls_session_reused(const mr_tls_conn_t *t)
{
    return SSL_session_reused(t->ssl) == 1;
}

static char *name_str(const X509_NAME *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return NULL;
    char *s = NULL;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        s = malloc((size_t)len + 1);
        if (s) {
            memcpy(s, p, (size_t)len);
            s[len] = 0;
        }
    }
    BIO_free(b);
    return s;
}

static void peer_info(mr_tls_conn_t *t)
{
    if (t->peer_done || !SSL_is_init_finished(t->ssl)) return;
    t->peer_done = true;
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (!x || !t->ctx->verify || SSL_get_verify_result(t->ssl) != X509_V_OK) return;
    t->peer_subject = name_str(X509_get_subject_name(x));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (X509_digest(x, EVP_sha256(), md, &len) == 1 && len == 32)
        for (unsigned i = 0; i < len; i++) snprintf(t->peer_fp + 2 * i, 3, "%02x", md[i]);
}

const char *mr_tls_peer_subject(mr_tls_conn_t *t)
{
    peer_info(t);
    return t->peer_subject;
}

const char *mr_tls_peer_fingerprint(mr_tls_conn_t *t)
{
    peer_info(t);
    return t->peer_fp[0] ? t->peer_fp : NULL;
}

const char *mr_tls_own_subject(mr_tls_conn_t *t)
{
    if (!t->own_subject) {
        X509 *x = SSL_get_certificate(t->ssl);
        if (x) t->own_subject = name_str(X509_get_subject_name(x));
    }
    return t->own_subject;
}

mr_tls_session_t *mr_tls_get_session(mr_tls_conn_t *t)
{
    SSL_SESSION *s = SSL_get1_session(t->ssl);
    if (s && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        s = NULL;
    }
    return (mr_tls_session_t *)s;
}

int mr_tls_set_session(mr_tls_conn_t *t, mr_tls_session_t *s)
{
    return s && SSL_set_session(t->ssl, (SSL_SESSION *)s) == 1 ? MR_TLS_OK : MR_TLS_ERR;
}

void mr_tls_session_free(mr_tls_session_t *s)
{
    SSL_SESSION_free((SSL_SESSION *)s);
}
