/* TLS contexts: certificates and SNI selection, protocol/cipher policy, ALPN, client-certificate
 * verification, process-wide session ticket keys, and upstream (client) contexts. See tls.h. */
#include "tls/tls_int.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* Mozilla "intermediate" TLS 1.2 suites: forward secrecy + AEAD only. */
#define DEFAULT_CIPHERS                                                                         \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"   \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define DEFAULT_SESSION_TIMEOUT 43200L

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The most specific reason OpenSSL queued, then an empty queue. */
static const char *ossl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r) snprintf(buf, len, "%s", r);
    else if (e) snprintf(buf, len, "OpenSSL error %lx", e);
    else snprintf(buf, len, "unknown error");
    ERR_clear_error();
    return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* session ticket keys                                                                       */

typedef struct {
    unsigned char name[16], aes[32], hmac[32];
} tkey_t;

typedef struct {
    tkey_t cur, prev;
    bool has_prev;
} tkeys_t;

/* Static slots used round-robin: a published set is rewritten only SLOTS-1 rotations after it
 * stopped being current (days at any sane interval), so a worker that loaded the pointer inside
 * ticket_cb never sees it change or vanish; nothing is ever freed. */
#define SLOTS 8
static tkeys_t g_slots[SLOTS];
static int g_slot = -1;
static _Atomic(tkeys_t *) g_keys;
static pthread_mutex_t g_keys_mu = PTHREAD_MUTEX_INITIALIZER;

static bool rotate_locked(void)
{
    tkeys_t *old = atomic_load_explicit(&g_keys, memory_order_acquire);
    tkeys_t k = {0};
    if (RAND_bytes(k.cur.name, sizeof k.cur.name) != 1 || RAND_bytes(k.cur.aes, sizeof k.cur.aes) != 1 ||
        RAND_bytes(k.cur.hmac, sizeof k.cur.hmac) != 1)
        return false;
    if (old) {
        k.prev = old->cur;
        k.has_prev = true;
    }
    g_slot = (g_slot + 1) % SLOTS;
    g_slots[g_slot] = k;
    OPENSSL_cleanse(&k, sizeof k);
    atomic_store_explicit(&g_keys, &g_slots[g_slot], memory_order_release);
    return true;
}

void mr_tls_rotate_ticket_keys(void)
{
    pthread_mutex_lock(&g_keys_mu);
    rotate_locked();
    pthread_mutex_unlock(&g_keys_mu);
}

static bool ensure_ticket_keys(void)
{
    pthread_mutex_lock(&g_keys_mu);
    bool ok = atomic_load_explicit(&g_keys, memory_order_acquire) != NULL || rotate_locked();
    pthread_mutex_unlock(&g_keys_mu);
    return ok;
}

/* Runs on worker threads inside SSL_read/SSL_do_handshake. Returns 1 (use the key), 2 (decrypted
 * with the previous key: valid, re-issue under the current one), 0 (unknown key: full handshake),
 * -1 (error). */
static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    const tkeys_t *k = atomic_load_explicit(&g_keys, memory_order_acquire);
    if (!k) return enc ? -1 : 0;
    const tkey_t *use;
    int rc = 1;
    if (enc) {
        use = &k->cur;
        memcpy(key_name, use->name, 16);
        if (RAND_bytes(iv, 16) != 1) return -1;
    } else if (memcmp(key_name, k->cur.name, 16) == 0) {
        use = &k->cur;
    } else if (k->has_prev && memcmp(key_name, k->prev.name, 16) == 0) {
        use = &k->prev;
        rc = 2;
    } else {
        return 0;
    }
    OSSL_PARAM params[3] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)use->hmac, sizeof use->hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_CTX_set_params(hctx, params)) return -1;
    int ok = enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, use->aes, iv)
                 : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, use->aes, iv);
    return ok ? rc : -1;
}

/* ---------------------------------------------------------------------------------------- */
/* files                                                                                     */

static int no_password(char *buf, int size, int rwflag, void *u)
{
    return 0;
}

static FILE *open_or_err(const char *label, const char *path, char *err, size_t errlen)
{
    if (!path || !*path) {
        seterr(err, errlen, "%s: missing", label);
        return NULL;
    }
    FILE *f = fopen(path, "r");
    if (!f) seterr(err, errlen, "%s: %s: cannot read (%s)", label, path, strerror(errno));
    return f;
}

typedef struct {
    X509 *x;
    STACK_OF(X509) *chain;
    EVP_PKEY *pk;
} pair_t;

static void pair_free(pair_t *p)
{
    X509_free(p->x);
    sk_X509_pop_free(p->chain, X509_free);
    EVP_PKEY_free(p->pk);
    memset(p, 0, sizeof *p);
}

/* Certificate file (leaf + chain) and key file, checked to match. Labels name the config keys. */
static int load_pair(const char *label, const char *cert_key, const char *key_key, const char *cert_path,
                     const char *key_path, pair_t *p, char *err, size_t errlen)
{
    char lc[256], lk[256], why[160];
    snprintf(lc, sizeof lc, "%s%s", label, cert_key);
    snprintf(lk, sizeof lk, "%s%s", label, key_key);
    memset(p, 0, sizeof *p);
    ERR_clear_error();
    FILE *f = open_or_err(lc, cert_path, err, errlen);
    if (!f) return -1;
    p->x = PEM_read_X509(f, NULL, no_password, NULL);
    if (!p->x) {
        fclose(f);
        seterr(err, errlen, "%s: %s: not a PEM certificate (%s)", lc, cert_path, ossl_reason(why, sizeof why));
        return -1;
    }
    p->chain = sk_X509_new_null();
    X509 *c;
    while (p->chain && (c = PEM_read_X509(f, NULL, no_password, NULL)) != NULL) sk_X509_push(p->chain, c);
    unsigned long e = ERR_peek_last_error();
    bool bad_tail = e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE);
    fclose(f);
    if (!p->chain || bad_tail) {
        seterr(err, errlen, "%s: %s: bad chain certificate after the first (%s)", lc, cert_path,
               ossl_reason(why, sizeof why));
        pair_free(p);
        return -1;
    }
    ERR_clear_error();
    f = open_or_err(lk, key_path, err, errlen);
    if (!f) {
        pair_free(p);
        return -1;
    }
    p->pk = PEM_read_PrivateKey(f, NULL, no_password, NULL);
    fclose(f);
    if (!p->pk) {
        seterr(err, errlen, "%s: %s: not an unencrypted PEM private key (%s)", lk, key_path,
               ossl_reason(why, sizeof why));
        pair_free(p);
        return -1;
    }
    if (X509_check_private_key(p->x, p->pk) != 1) {
        ERR_clear_error();
        seterr(err, errlen, "%s: key %s does not match certificate %s", label, key_path, cert_path);
        pair_free(p);
        return -1;
    }
    return 0;
}

static int key_type_bit(EVP_PKEY *pk)
{
    switch (EVP_PKEY_get_base_id(pk)) {
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS: return 1;
    case EVP_PKEY_EC: return 2;
    default: return 4;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* names and SNI                                                                             */

static char *lower_dup(const unsigned char *s, size_t n)
{
    if (n == 0 || memchr(s, 0, n)) return NULL;
    char *d = malloc(n + 1);
    if (!d) return NULL;
    for (size_t i = 0; i < n; i++) d[i] = (char)tolower(s[i]);
    d[n] = 0;
    if (n > 1 && d[n - 1] == '.') d[n - 1] = 0;
    return d;
}

static int add_name(mr_tls_entry_t *e, char *name)
{
    if (!name) return 0; /* skip malformed */
    char **nn = realloc(e->names, (e->nnames + 1) * sizeof *nn);
    if (!nn) {
        free(name);
        return -1;
    }
    e->names = nn;
    e->names[e->nnames++] = name;
    return 0;
}

/* SAN dNSName entries, or the subject CN when there are none. */
static int cert_names(X509 *x, mr_tls_entry_t *e)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int rc = 0;
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && rc == 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS) continue;
        rc = add_name(e, lower_dup(ASN1_STRING_get0_data(g->d.dNSName), (size_t)ASN1_STRING_length(g->d.dNSName)));
    }
    GENERAL_NAMES_free(gens);
    if (rc == 0 && e->nnames == 0) {
        X509_NAME *subj = X509_get_subject_name(x);
        int idx = subj ? X509_NAME_get_index_by_NID(subj, NID_commonName, -1) : -1;
        if (idx >= 0) {
            unsigned char *utf8 = NULL;
            int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
            if (n > 0) rc = add_name(e, lower_dup(utf8, (size_t)n));
            OPENSSL_free(utf8);
        }
    }
    ERR_clear_error();
    return rc;
}

static bool same_names(const mr_tls_entry_t *a, const mr_tls_entry_t *b)
{
    if (a->nnames != b->nnames) return false;
    for (size_t i = 0; i < a->nnames; i++) {
        bool found = false;
        for (size_t j = 0; j < b->nnames && !found; j++) found = strcmp(a->names[i], b->names[j]) == 0;
        if (!found) return false;
    }
    return true;
}

/* Exact match first (config order), then a one-label wildcard; NULL = none (use the default). */
static const mr_tls_entry_t *select_entry(const mr_tls_ctx_t *c, const char *servername)
{
    char name[256];
    size_t n = strlen(servername);
    if (n == 0 || n >= sizeof name) return NULL;
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)servername[i]);
    name[n] = 0;
    if (name[n - 1] == '.') name[n - 1] = 0;
    for (size_t i = 0; i < c->nentries; i++)
        for (size_t j = 0; j < c->entries[i].nnames; j++)
            if (strcmp(c->entries[i].names[j], name) == 0) return &c->entries[i];
    const char *dot = strchr(name, '.');
    if (!dot || dot == name || !dot[1]) return NULL;
    for (size_t i = 0; i < c->nentries; i++)
        for (size_t j = 0; j < c->entries[i].nnames; j++) {
            const char *w = c->entries[i].names[j];
            if (w[0] == '*' && w[1] == '.' && strcmp(w + 1, dot) == 0) return &c->entries[i];
        }
    return NULL;
}

static int sni_cb(SSL *ssl, int *al, void *arg)
{
    const mr_tls_ctx_t *c = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || c->nentries < 2) return SSL_TLSEXT_ERR_OK;
    const mr_tls_entry_t *e = select_entry(c, name);
    if (e && e->ssl != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, e->ssl);
    return SSL_TLSEXT_ERR_OK;
}

/* Server preference order. No overlap: continue without ALPN (the connection is HTTP/1.1). */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    const mr_tls_ctx_t *c = arg;
    for (size_t i = 0; i < c->alpn_len; i += 1u + c->alpn[i]) {
        unsigned sl = c->alpn[i];
        for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
            unsigned cl = in[j];
            if (j + 1 + cl > inlen) break;
            if (cl == sl && memcmp(in + j + 1, c->alpn + i + 1, sl) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)cl;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* ---------------------------------------------------------------------------------------- */
/* policy shared by server and client contexts                                               */

static int parse_proto(const char *where, const char *which, const char *s, int dflt, int *out, char *err,
                       size_t errlen)
{
    if (!s) {
        *out = dflt;
        return 0;
    }
    if (strcmp(s, "TLSv1.2") == 0) *out = TLS1_2_VERSION;
    else if (strcmp(s, "TLSv1.3") == 0) *out = TLS1_3_VERSION;
    else {
        seterr(err, errlen, "%s.protocols: unsupported %s protocol \"%s\" (use \"TLSv1.2\" or \"TLSv1.3\")", where,
               which, s);
        return -1;
    }
    return 0;
}

static int build_alpn(const char *where, const char *const *alpn, size_t nalpn, unsigned char *wire,
                      size_t *len, char *err, size_t errlen)
{
    size_t n = 0;
    for (size_t i = 0; i < nalpn; i++) {
        size_t l = alpn[i] ? strlen(alpn[i]) : 0;
        if (l == 0 || l > 255 || n + 1 + l > 255) {
            seterr(err, errlen, "%s.alpn[%zu]: invalid protocol name", where, i + 1);
            return -1;
        }
        wire[n++] = (unsigned char)l;
        memcpy(wire + n, alpn[i], l);
        n += l;
    }
    *len = n;
    return 0;
}

static int apply_policy(SSL_CTX *s, const char *where, const char *minp, const char *maxp, const char *ciphers,
                        const char *suites, char *err, size_t errlen)
{
    int lo, hi;
    if (parse_proto(where, "minimum", minp, TLS1_2_VERSION, &lo, err, errlen) ||
        parse_proto(where, "maximum", maxp, TLS1_3_VERSION, &hi, err, errlen))
        return -1;
    if (lo > hi) {
        seterr(err, errlen, "%s.protocols: minimum %s is above maximum %s", where, minp ? minp : "TLSv1.2",
               maxp ? maxp : "TLSv1.3");
        return -1;
    }
    SSL_CTX_set_min_proto_version(s, lo);
    SSL_CTX_set_max_proto_version(s, hi);
    if (SSL_CTX_set_cipher_list(s, ciphers ? ciphers : DEFAULT_CIPHERS) != 1) {
        ERR_clear_error();
        seterr(err, errlen, "%s.ciphers: no usable cipher in \"%s\"", where, ciphers ? ciphers : DEFAULT_CIPHERS);
        return -1;
    }
    if (suites && SSL_CTX_set_ciphersuites(s, suites) != 1) {
        ERR_clear_error();
        seterr(err, errlen, "%s.ciphersuites: invalid TLS 1.3 ciphersuites \"%s\"", where, suites);
        return -1;
    }
    SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
    /* Idle connections drop their record buffers; writes may be retried from another address. */
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return 0;
}

static int load_ca(SSL_CTX *s, const char *label, const char *path, bool client_list, char *err, size_t errlen)
{
    char why[160];
    FILE *f = open_or_err(label, path, err, errlen);
    if (!f) return -1;
    fclose(f);
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(s, path, NULL) != 1) {
        seterr(err, errlen, "%s: %s: cannot load CA certificates (%s)", label, path, ossl_reason(why, sizeof why));
        return -1;
    }
    if (client_list) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(path);
        if (!names) {
            seterr(err, errlen, "%s: %s: no CA certificate found (%s)", label, path, ossl_reason(why, sizeof why));
            return -1;
        }
        SSL_CTX_set_client_CA_list(s, names);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* contexts                                                                                  */

static void ctx_free(mr_tls_ctx_t *c)
{
    for (size_t i = 0; i < c->nentries; i++) {
        SSL_CTX_free(c->entries[i].ssl);
        for (size_t j = 0; j < c->entries[i].nnames; j++) free(c->entries[i].names[j]);
        free(c->entries[i].names);
    }
    free(c->entries);
    if (!c->server) SSL_CTX_free(c->ssl);
    free(c);
}

void mr_tls_ctx_ref(mr_tls_ctx_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void mr_tls_ctx_unref(mr_tls_ctx_t *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) ctx_free(c);
}

/* A session is only resumed by a context with the same certificates and verification settings,
 * whichever worker or config generation built it. */
static void session_id_ctx(const mr_tls_server_conf_t *conf, unsigned char md[32])
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned int len = 0;
    memset(md, 0, 32);
    if (!m) return;
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    EVP_DigestUpdate(m, "moonring", 9);
    for (size_t i = 0; i < conf->ncerts; i++) {
        const char *c = conf->certs[i].cert_path ? conf->certs[i].cert_path : "";
        const char *k = conf->certs[i].key_path ? conf->certs[i].key_path : "";
        EVP_DigestUpdate(m, c, strlen(c) + 1);
        EVP_DigestUpdate(m, k, strlen(k) + 1);
    }
    unsigned char v = (unsigned char)conf->client_verify;
    EVP_DigestUpdate(m, &v, 1);
    if (conf->client_ca) EVP_DigestUpdate(m, conf->client_ca, strlen(conf->client_ca) + 1);
    EVP_DigestFinal_ex(m, md, &len);
    EVP_MD_CTX_free(m);
}

static SSL_CTX *new_server_ssl(const mr_tls_server_conf_t *conf, const char *where, mr_tls_ctx_t *c,
                               const unsigned char sid[32], char *err, size_t errlen)
{
    SSL_CTX *s = SSL_CTX_new(TLS_server_method());
    if (!s) {
        seterr(err, errlen, "%s: cannot create an OpenSSL context", where);
        return NULL;
    }
    if (apply_policy(s, where, conf->min_protocol, conf->max_protocol, conf->ciphers, conf->ciphersuites, err,
                     errlen))
        goto fail;
    SSL_CTX_set_session_id_context(s, sid, 32);
    SSL_CTX_set_timeout(s, conf->session_timeout > 0 ? conf->session_timeout : DEFAULT_SESSION_TIMEOUT);
    if (conf->session_cache > 0) {
        SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(s, conf->session_cache);
    } else {
        SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    }
    if (conf->no_tickets) SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
    else SSL_CTX_set_tlsext_ticket_key_evp_cb(s, ticket_cb);
    SSL_CTX_set_tlsext_servername_callback(s, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(s, c);
    SSL_CTX_set_alpn_select_cb(s, alpn_cb, c);
    if (conf->client_verify != MR_TLS_VERIFY_NONE) {
        char label[200];
        snprintf(label, sizeof label, "%s.client_ca", where);
        if (load_ca(s, label, conf->client_ca, true, err, errlen)) goto fail;
        int mode = SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE;
        if (conf->client_verify == MR_TLS_VERIFY_REQUIRE) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(s, mode, NULL);
        if (conf->verify_depth > 0) SSL_CTX_set_verify_depth(s, conf->verify_depth);
    }
    return s;
fail:
    SSL_CTX_free(s);
    return NULL;
}

int mr_tls_server_ctx_new(const mr_tls_server_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen)
{
    const char *where = conf->where ? conf->where : "tls";
    *out = NULL;
    if (!conf->certs || conf->ncerts == 0) {
        seterr(err, errlen, "%s.certs: at least one { cert = ..., key = ... } is required", where);
        return -1;
    }
    if (conf->client_verify < MR_TLS_VERIFY_NONE || conf->client_verify > MR_TLS_VERIFY_REQUIRE) {
        seterr(err, errlen, "%s.client_verify: must be none, optional or require", where);
        return -1;
    }
    if (!conf->no_tickets && !ensure_ticket_keys()) {
        seterr(err, errlen, "%s: cannot generate session ticket keys", where);
        return -1;
    }
    mr_tls_ctx_t *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    atomic_init(&c->refs, 1);
    c->server = true;
    c->verify = conf->client_verify != MR_TLS_VERIFY_NONE;
    static const char *const dflt_alpn[] = {"http/1.1"};
    if (build_alpn(where, conf->alpn ? conf->alpn : dflt_alpn, conf->alpn ? conf->nalpn : 1, c->alpn, &c->alpn_len,
                   err, errlen))
        goto fail;
    c->entries = calloc(conf->ncerts, sizeof *c->entries);
    if (!c->entries) goto oom;
    unsigned char sid[32];
    session_id_ctx(conf, sid);

    for (size_t i = 0; i < conf->ncerts; i++) {
        char label[200];
        snprintf(label, sizeof label, "%s.certs[%zu]", where, i + 1);
        pair_t p;
        if (load_pair(label, ".cert", ".key", conf->certs[i].cert_path, conf->certs[i].key_path, &p, err, errlen))
            goto fail;
        mr_tls_entry_t e = {0};
        e.key_types = key_type_bit(p.pk);
        if (cert_names(p.x, &e)) {
            pair_free(&p);
            goto oom;
        }
        mr_tls_entry_t *into = NULL;
        for (size_t j = 0; j < c->nentries && !into; j++)
            if (same_names(&c->entries[j], &e)) into = &c->entries[j];
        if (into && (into->key_types & e.key_types)) {
            seterr(err, errlen, "%s: %s has the same names and key type as an earlier certificate", label,
                   conf->certs[i].cert_path);
            goto entry_fail;
        }
        if (into) {
            for (size_t j = 0; j < e.nnames; j++) free(e.names[j]);
            free(e.names);
            e = (mr_tls_entry_t){0};
            into->key_types |= key_type_bit(p.pk);
        } else {
            e.ssl = new_server_ssl(conf, where, c, sid, err, errlen);
            if (!e.ssl) goto entry_fail;
            c->entries[c->nentries++] = e;
            into = &c->entries[c->nentries - 1];
            e = (mr_tls_entry_t){0};
        }
        if (SSL_CTX_use_cert_and_key(into->ssl, p.x, p.pk, p.chain, 1) != 1) {
            char why[160];
            seterr(err, errlen, "%s: %s: certificate rejected (%s)", label, conf->certs[i].cert_path,
                   ossl_reason(why, sizeof why));
            pair_free(&p);
            goto fail;
        }
        pair_free(&p);
        continue;
    entry_fail:
        for (size_t j = 0; j < e.nnames; j++) free(e.names[j]);
        free(e.names);
        pair_free(&p);
        goto fail;
    }
    c->ssl = c->entries[0].ssl;
    *out = c;
    return 0;
oom:
    seterr(err, errlen, "%s: out of memory", where);
fail:
    if (c) ctx_free(c);
    ERR_clear_error();
    return -1;
}

int mr_tls_client_ctx_new(const mr_tls_client_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen)
{
    const char *where = conf->where ? conf->where : "upstream.tls";
    *out = NULL;
    mr_tls_ctx_t *c = calloc(1, sizeof *c);
    if (!c) {
        seterr(err, errlen, "%s: out of memory", where);
        return -1;
    }
    atomic_init(&c->refs, 1);
    c->server = false;
    c->verify = conf->verify;
    SSL_CTX *s = c->ssl = SSL_CTX_new(TLS_client_method());
    if (!s) {
        seterr(err, errlen, "%s: cannot create an OpenSSL context", where);
        goto fail;
    }
    if (apply_policy(s, where, conf->min_protocol, conf->max_protocol, conf->ciphers, conf->ciphersuites, err,
                     errlen))
        goto fail;
    if (conf->verify) {
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
        if (conf->verify_depth > 0) SSL_CTX_set_verify_depth(s, conf->verify_depth);
        if (conf->ca_file) {
            char label[200];
            snprintf(label, sizeof label, "%s.ca", where);
            if (load_ca(s, label, conf->ca_file, false, err, errlen)) goto fail;
        } else if (SSL_CTX_set_default_verify_paths(s) != 1) {
            ERR_clear_error();
            seterr(err, errlen, "%s: cannot load the system CA store", where);
            goto fail;
        }
    }
    if (conf->cert_path || conf->key_path) {
        pair_t p;
        if (load_pair(where, ".cert", ".key", conf->cert_path, conf->key_path, &p, err, errlen)) goto fail;
        int ok = SSL_CTX_use_cert_and_key(s, p.x, p.pk, p.chain, 1);
        pair_free(&p);
        if (ok != 1) {
            char why[160];
            seterr(err, errlen, "%s.cert: %s: certificate rejected (%s)", where, conf->cert_path,
                   ossl_reason(why, sizeof why));
            goto fail;
        }
    }
    if (conf->alpn && conf->nalpn) {
        if (build_alpn(where, conf->alpn, conf->nalpn, c->alpn, &c->alpn_len, err, errlen)) goto fail;
        if (SSL_CTX_set_alpn_protos(s, c->alpn, (unsigned)c->alpn_len) != 0) {
            seterr(err, errlen, "%s.alpn: rejected", where);
            goto fail;
        }
    }
    *out = c;
    return 0;
fail:
    ctx_free(c);
    ERR_clear_error();
    return -1;
}

bool mr_tls_ktls_available(void)
{
#if defined(SSL_OP_ENABLE_KTLS) && !defined(OPENSSL_NO_KTLS)
    return access("/sys/module/tls", F_OK) == 0;
#else
    return false;
#endif
}
