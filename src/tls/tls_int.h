/* Internals shared by tls_ctx.c (contexts, SNI, ticket keys) and tls.c (connections). */
#ifndef MR_TLS_INT_H
#define MR_TLS_INT_H

#include <stdatomic.h>

#include <openssl/ssl.h>

#include "tls/tls.h"

/* One SSL_CTX per distinct certificate name set (RSA + ECDSA with the same names share one). */
typedef struct {
    SSL_CTX *ssl;
    char **names; /* lowercase; "*.x.y" for wildcards */
    size_t nnames;
    int key_types; /* bit per EVP_PKEY base id class: 1 RSA, 2 EC, 4 other */
} mr_tls_entry_t;

struct mr_tls_ctx {
    atomic_int refs;
    bool server;
    bool verify; /* server: peer certs requested; client: verification on */
    SSL_CTX *ssl; /* the default (entries[0].ssl for servers) */
    mr_tls_entry_t *entries;
    size_t nentries;
    unsigned char alpn[256]; /* wire format (length-prefixed), server preference */
    size_t alpn_len;
};

/* The OpenSSL object behind a connection (test API and future kTLS hand-off only). */
SSL *mr_tls_conn_ssl(mr_tls_conn_t *t);

#endif
