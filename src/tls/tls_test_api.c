/* See tls_test_api.h. Drives two engine connections against each other exactly as the socket
 * layer will: every ciphertext piece is fed, then the receiver reads until MR_TLS_WANT. */
#include "tls/tls_test_api.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_int.h"

typedef struct {
    char *out;
    size_t cap, len;
} rep_t;

static void put(rep_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(rep_t *r, const char *fmt, ...)
{
    if (r->cap == 0 || r->len >= r->cap - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->out + r->len, r->cap - r->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    r->len += (size_t)n;
    if (r->len >= r->cap) r->len = r->cap - 1;
}

typedef struct {
    mr_tls_conn_t *c;
    const unsigned char *expect; /* what the peer sends */
    size_t expect_n, recv, mismatch_at;
    bool mismatch, closed, failed;
} side_t;

static void pattern(unsigned char *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

static void drain_read(side_t *s)
{
    unsigned char buf[16384];
    for (;;) {
        size_t got = 0;
        int rc = mr_tls_read(s->c, buf, sizeof buf, &got);
        if (rc == MR_TLS_OK) {
            if (!s->mismatch) {
                if (s->recv + got > s->expect_n) {
                    s->mismatch = true;
                    s->mismatch_at = s->recv;
                } else if (memcmp(buf, s->expect + s->recv, got) != 0) {
                    s->mismatch = true;
                    for (size_t i = 0; i < got; i++)
                        if (buf[i] != s->expect[s->recv + i]) {
                            s->mismatch_at = s->recv + i;
                            break;
                        }
                }
            }
            s->recv += got;
            continue;
        }
        if (rc == MR_TLS_CLOSED) s->closed = true;
        if (rc == MR_TLS_ERR) s->failed = true;
        return;
    }
}

/* Moves all pending ciphertext from -> to, `step` bytes at a time (0 = whole pieces). */
static size_t shuttle(side_t *from, side_t *to, size_t step)
{
    size_t moved = 0;
    while (mr_tls_pending_out(from->c) > 0) {
        size_t len;
        const void *p = mr_tls_out_peek(from->c, &len);
        if (step && len > step) len = step;
        if (mr_tls_feed(to->c, p, len) != MR_TLS_OK) to->failed = true;
        mr_tls_out_consume(from->c, len);
        moved += len;
        drain_read(to);
    }
    return moved;
}

static size_t write_some(side_t *s, const unsigned char *data, size_t n, size_t *sent)
{
    size_t total = 0;
    while (*sent < n) {
        size_t taken = 0;
        int rc = mr_tls_write(s->c, data + *sent, n - *sent, &taken);
        if (rc == MR_TLS_ERR) s->failed = true;
        if (rc != MR_TLS_OK || taken == 0) break;
        *sent += taken;
        total += taken;
    }
    return total;
}

static void handshake(side_t *srv, side_t *cli, size_t step)
{
    drain_read(cli); /* ClientHello */
    for (int i = 0; i < 1000; i++) {
        size_t moved = shuttle(cli, srv, step);
        moved += shuttle(srv, cli, step);
        if (!moved) break;
    }
}

static void report_errors(rep_t *r, side_t *srv, side_t *cli)
{
    if (srv->failed) put(r, "error server: %s\n", mr_tls_error(srv->c));
    if (cli->failed) put(r, "error client: %s\n", mr_tls_error(cli->c));
}

static const char *key_name(X509 *x)
{
    EVP_PKEY *pk = x ? X509_get0_pubkey(x) : NULL;
    if (!pk) return "-";
    switch (EVP_PKEY_get_base_id(pk)) {
    case EVP_PKEY_RSA: return "RSA";
    case EVP_PKEY_EC: return "EC";
    default: return "other";
    }
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

int mr_tls_test_pair(mr_tls_ctx_t *sctx, mr_tls_ctx_t *cctx, const char *sni, size_t nbytes, size_t step,
                     mr_tls_session_t **session, char *out, size_t outlen)
{
    rep_t r = {out, outlen, 0};
    if (outlen) out[0] = 0;
    side_t srv = {0}, cli = {0};
    unsigned char *c2s = malloc(nbytes ? nbytes : 1), *s2c = malloc(nbytes ? nbytes : 1);
    srv.c = mr_tls_conn_new(sctx, true, NULL);
    cli.c = mr_tls_conn_new(cctx, false, sni);
    int ret = -1;
    if (!c2s || !s2c || !srv.c || !cli.c) {
        put(&r, "error setup\n");
        goto done;
    }
    if (session && *session && mr_tls_set_session(cli.c, *session) != MR_TLS_OK) put(&r, "set_session failed\n");
    pattern(c2s, nbytes, 1);
    pattern(s2c, nbytes, 2);
    srv.expect = c2s;
    cli.expect = s2c;
    srv.expect_n = cli.expect_n = nbytes;

    handshake(&srv, &cli, step);
    if (srv.failed || cli.failed || !mr_tls_handshake_done(srv.c) || !mr_tls_handshake_done(cli.c)) {
        report_errors(&r, &srv, &cli);
        if (!srv.failed && !cli.failed) put(&r, "error handshake incomplete\n");
        goto done;
    }
    put(&r, "handshake ok\n");
    put(&r, "protocol %s\n", mr_tls_protocol(cli.c));
    put(&r, "cipher %s\n", mr_tls_cipher(cli.c));
    put(&r, "alpn %s\n", or_dash(mr_tls_alpn(srv.c)));
    put(&r, "sni %s\n", or_dash(mr_tls_sni(srv.c)));
    put(&r, "cert %s\n", or_dash(mr_tls_own_subject(srv.c)));
    put(&r, "cert_key %s\n", key_name(SSL_get0_peer_certificate(mr_tls_conn_ssl(cli.c))));
    put(&r, "reused %d\n", mr_tls_session_reused(srv.c) ? 1 : 0);
    put(&r, "peer %s\n", or_dash(mr_tls_peer_subject(srv.c)));
    put(&r, "peer_fp %s\n", or_dash(mr_tls_peer_fingerprint(srv.c)));
    put(&r, "upstream_peer %s\n", or_dash(mr_tls_peer_subject(cli.c)));

    size_t cs = 0, ss = 0;
    for (int idle = 0; idle < 3;) {
        size_t progress = write_some(&cli, c2s, nbytes, &cs) + write_some(&srv, s2c, nbytes, &ss);
        progress += shuttle(&cli, &srv, step);
        progress += shuttle(&srv, &cli, step);
        if (srv.failed || cli.failed) break;
        if (cs == nbytes && ss == nbytes && srv.recv >= nbytes && cli.recv >= nbytes) break;
        idle = progress ? 0 : idle + 1;
    }
    if (srv.failed || cli.failed) {
        report_errors(&r, &srv, &cli);
        goto done;
    }
    if (srv.mismatch || cli.mismatch || srv.recv != nbytes || cli.recv != nbytes) {
        put(&r, "data mismatch: server got %zu (bad at %zu: %d), client got %zu (bad at %zu: %d) of %zu\n", srv.recv,
            srv.mismatch_at, srv.mismatch, cli.recv, cli.mismatch_at, cli.mismatch, nbytes);
        goto done;
    }
    put(&r, "data %zu ok\n", nbytes);

    if (mr_tls_shutdown(cli.c) != MR_TLS_OK) cli.failed = true;
    shuttle(&cli, &srv, step);
    put(&r, "closed %d\n", srv.closed ? 1 : 0);
    if (!srv.closed) goto done;
    if (session) {
        drain_read(&cli); /* any TLS 1.3 tickets still unread */
        mr_tls_session_free(*session);
        *session = mr_tls_get_session(cli.c);
    }
    ret = 0;
done:
    mr_tls_conn_free(srv.c);
    mr_tls_conn_free(cli.c);
    free(c2s);
    free(s2c);
    return ret;
}

int mr_tls_test_out_stability(mr_tls_ctx_t *sctx, mr_tls_ctx_t *cctx, char *out, size_t outlen)
{
    rep_t r = {out, outlen, 0};
    if (outlen) out[0] = 0;
    const size_t n = 1 << 20;
    side_t srv = {0}, cli = {0};
    unsigned char *data = malloc(n), snap[256];
    srv.c = mr_tls_conn_new(sctx, true, NULL);
    cli.c = mr_tls_conn_new(cctx, false, "a.test");
    int ret = -1;
    if (!data || !srv.c || !cli.c) {
        put(&r, "error setup\n");
        goto done;
    }
    pattern(data, n, 3);
    srv.expect = data;
    srv.expect_n = n;
    handshake(&srv, &cli, 0);
    if (!mr_tls_handshake_done(cli.c) || !mr_tls_handshake_done(srv.c)) {
        report_errors(&r, &srv, &cli);
        goto done;
    }
    size_t sent = 0, taken = 0;
    if (mr_tls_write(cli.c, data, 100, &taken) != MR_TLS_OK || taken != 100) {
        put(&r, "error first write\n");
        goto done;
    }
    sent = taken;
    size_t len0;
    const void *p0 = mr_tls_out_peek(cli.c, &len0);
    if (!p0 || len0 < 100) {
        put(&r, "error peek %zu\n", len0);
        goto done;
    }
    memcpy(snap, p0, 100);
    write_some(&cli, data, n, &sent); /* until back-pressure */
    size_t pend = mr_tls_pending_out(cli.c);
    int rc = mr_tls_write(cli.c, data + sent, n - sent, &taken);
    put(&r, "pending %zu\n", pend);
    put(&r, "blocked %d\n", rc == MR_TLS_WANT && taken == 0 && sent < n ? 1 : 0);
    size_t len1;
    const void *p1 = mr_tls_out_peek(cli.c, &len1);
    put(&r, "stable %d\n", p1 == p0 && memcmp(p1, snap, 100) == 0 ? 1 : 0);
    struct iovec iov[64], iov2[64];
    int niov = mr_tls_out_iov(cli.c, 0, iov, 64);
    size_t iov_total = 0;
    for (int i = 0; i < niov; i++) iov_total += iov[i].iov_len;
    /* skipping 100 + one full chunk's worth must land at the same byte */
    size_t skip = 100 + iov[0].iov_len;
    int n2 = niov > 1 ? mr_tls_out_iov(cli.c, skip, iov2, 64) : 0;
    bool skip_ok = niov > 1 && n2 == niov - 1 && (char *)iov2[0].iov_base == (char *)iov[1].iov_base + 100 &&
                   iov2[0].iov_len == iov[1].iov_len - 100;
    put(&r, "iov %d %s\n", niov, (iov_total == pend || niov == 64) && skip_ok ? "ok" : "short");
    for (int idle = 0; idle < 3 && srv.recv < n;) {
        size_t progress = write_some(&cli, data, n, &sent);
        /* the copying path this time */
        unsigned char buf[7000];
        size_t got;
        while (mr_tls_pending_out(cli.c) > 0) {
            mr_tls_take_out(cli.c, buf, sizeof buf, &got);
            mr_tls_feed(srv.c, buf, got);
            progress += got;
            drain_read(&srv);
        }
        idle = progress ? 0 : idle + 1;
    }
    put(&r, "data %zu %s\n", srv.recv, srv.recv == n && !srv.mismatch ? "ok" : "bad");
    ret = srv.recv == n && !srv.mismatch ? 0 : -1;
done:
    mr_tls_conn_free(srv.c);
    mr_tls_conn_free(cli.c);
    free(data);
    return ret;
}
