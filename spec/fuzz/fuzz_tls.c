/* libFuzzer target: the TLS engine (src/tls) facing a hostile client.
 *
 * Input byte 0 selects the mode:
 *  - even: the rest is raw bytes from a "client", fed to a server connection in pieces (size from
 *    byte 0). Invariants: no plaintext before a handshake (which garbage cannot complete),
 *    MR_TLS_ERR is sticky, mr_tls_write refuses before the handshake; ASan/UBSan/leaks do the rest.
 *    Seeds are real ClientHellos, so mutations reach the SNI, ALPN and ticket callbacks.
 *  - odd: byte 1 picks the client's ALPN offer, the rest (up to a NUL) is the server name. A real
 *    client connection handshakes with the server in memory. Invariants: it completes; the
 *    certificate served is the one the documented SNI rules pick (exact name, then a one-label
 *    wildcard, case-insensitive, a trailing dot ignored, IP literals never sent; otherwise
 *    certs[1]); ALPN is the server's first preference the client offered, or none; application
 *    data crosses both ways.
 *
 * Certificates (EC P-256) are generated with the openssl CLI at start into a temp dir.
 * MR_FUZZ_TLS_SEEDS=dir writes seed inputs for both modes into dir and continues. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tls/tls.h"

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "\n==== FUZZ INVARIANT BROKEN: %s\n---- %s\n", what, detail ? detail : "");
    abort();
}

static char g_dir[64];
static mr_tls_ctx_t *g_server;
static mr_tls_ctx_t *g_clients[5];
static const char *const g_srv_alpn[] = { "h2", "http/1.1" };
/* Client offers, and what the server must pick from each. */
static const char *const g_off1[] = { "http/1.1" };
static const char *const g_off2[] = { "h2", "http/1.1" };
static const char *const g_off3[] = { "foo", "http/1.1" };
static const char *const g_off4[] = { "foo" };
static const struct { const char *const *alpn; size_t n; const char *expect; } g_offers[5] = {
    { NULL, 0, NULL }, { g_off1, 1, "http/1.1" }, { g_off2, 2, "h2" }, { g_off3, 2, "http/1.1" }, { g_off4, 1, NULL },
};

static void sh(const char *cmd)
{
    char full[1024];
    snprintf(full, sizeof full, "cd %s && %s >/dev/null 2>&1", g_dir, cmd);
    if (system(full) != 0) die("setup command failed", cmd);
}

static void make_cert(const char *name, const char *cn, const char *san)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s.key -out %s.pem "
             "-subj '/CN=%s' -days 30 -addext 'subjectAltName=%s'", name, name, cn, san);
    sh(cmd);
}

static char *path(const char *name, const char *ext)
{
    char *p = malloc(128);
    snprintf(p, 128, "%s/%s.%s", g_dir, name, ext);
    return p;
}

/* Moves everything `from` has to send into `to`. */
static void pass(mr_tls_conn_t *from, mr_tls_conn_t *to)
{
    char buf[16384];
    size_t got;
    while (mr_tls_pending_out(from) && mr_tls_take_out(from, buf, sizeof buf, &got) == MR_TLS_OK && got)
        mr_tls_feed(to, buf, got);
}

/* Client `sni` (may be NULL) against the server; returns the connected pair or NULL. */
static int handshake(mr_tls_conn_t *cli, mr_tls_conn_t *srv)
{
    char buf[4096];
    size_t got;
    mr_tls_handshake(cli);
    for (int round = 0; round < 20; round++) {
        pass(cli, srv);
        while (mr_tls_read(srv, buf, sizeof buf, &got) == MR_TLS_OK && got) {}
        pass(srv, cli);
        while (mr_tls_read(cli, buf, sizeof buf, &got) == MR_TLS_OK && got) {}
        if (mr_tls_handshake_done(cli) && mr_tls_handshake_done(srv)) return 0;
    }
    return -1;
}

static void write_seed(const char *dir, const char *name, const unsigned char *p, size_t n)
{
    char fn[512];
    snprintf(fn, sizeof fn, "%s/%s", dir, name);
    FILE *f = fopen(fn, "wb");
    if (!f) return;
    fwrite(p, 1, n, f);
    fclose(f);
}

static void write_seeds(const char *dir)
{
    static const char *const names[] = { "default.test", "WWW.Default.Test.", "x.wild.test", "wild.test",
                                          "a.b.wild.test", "api.example.test", "unknown.test", "127.0.0.1" };
    unsigned char buf[4096];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int o = 0; o < 5; o++) {
            /* mode 0: the ClientHello itself */
            mr_tls_conn_t *cli = mr_tls_conn_new(g_clients[o], false, names[i]);
            if (!cli) continue;
            mr_tls_handshake(cli);
            size_t got = 0;
            buf[0] = (unsigned char)(2 * (i + o));
            if (mr_tls_take_out(cli, buf + 1, sizeof buf - 1, &got) == MR_TLS_OK && got) {
                char fn[64];
                snprintf(fn, sizeof fn, "hello-%zu-%d", i, o);
                write_seed(dir, fn, buf, got + 1);
            }
            mr_tls_conn_free(cli);
            /* mode 1: name + offer */
            size_t n = strlen(names[i]);
            buf[0] = 1;
            buf[1] = (unsigned char)o;
            memcpy(buf + 2, names[i], n);
            char fn[64];
            snprintf(fn, sizeof fn, "name-%zu-%d", i, o);
            write_seed(dir, fn, buf, n + 2);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    snprintf(g_dir, sizeof g_dir, "/tmp/mr-fuzz-tls-XXXXXX");
    if (!mkdtemp(g_dir)) die("mkdtemp", g_dir);
    make_cert("default", "default", "DNS:default.test,DNS:www.default.test");
    make_cert("wild", "wild", "DNS:*.wild.test");
    make_cert("api", "api", "DNS:api.example.test");
    mr_tls_cert_conf_t certs[3] = {
        { path("default", "pem"), path("default", "key") },
        { path("wild", "pem"), path("wild", "key") },
        { path("api", "pem"), path("api", "key") },
    };
    mr_tls_server_conf_t sc = { .where = "fuzz", .certs = certs, .ncerts = 3, .alpn = g_srv_alpn, .nalpn = 2,
                                .session_cache = 64 };
    char err[512];
    if (mr_tls_server_ctx_new(&sc, &g_server, err, sizeof err) < 0) die("server context", err);
    for (int o = 0; o < 5; o++) {
        mr_tls_client_conf_t cc = { .where = "fuzz", .verify = false, .alpn = g_offers[o].alpn, .nalpn = g_offers[o].n };
        if (mr_tls_client_ctx_new(&cc, &g_clients[o], err, sizeof err) < 0) die("client context", err);
    }
    const char *seeds = getenv("MR_FUZZ_TLS_SEEDS");
    if (seeds) write_seeds(seeds);
    /* The files are read; the contexts hold what they need. */
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf %s", g_dir);
    if (system(rm) != 0) {}
    for (int i = 0; i < 3; i++) { free((void *)certs[i].cert_path); free((void *)certs[i].key_path); }
    return 0;
}

static bool is_ip(const char *s)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

/* The documented selection rules, written independently of tls_ctx.c. */
static const char *expected_subject(const char *sni)
{
    if (!sni || !*sni || is_ip(sni)) return "CN=default";
    char name[300];
    size_t n = strlen(sni);
    if (n >= 256) return "CN=default";
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)sni[i]);
    name[n] = 0;
    if (n && name[n - 1] == '.') name[--n] = 0;
    if (!strcmp(name, "default.test") || !strcmp(name, "www.default.test")) return "CN=default";
    if (!strcmp(name, "api.example.test")) return "CN=api";
    const char *dot = strchr(name, '.');
    if (dot && dot != name && !strcmp(dot, ".wild.test")) return "CN=wild";
    return "CN=default";
}

static void fuzz_raw(const uint8_t *data, size_t size, unsigned mode)
{
    mr_tls_conn_t *srv = mr_tls_conn_new(g_server, true, NULL);
    if (!srv) die("mr_tls_conn_new(server)", NULL);
    size_t step = 1 + (mode >> 1) % 97;
    char plain[4096], out[16384];
    bool failed = false;
    for (size_t off = 0; off < size; off += step) {
        size_t n = size - off < step ? size - off : step;
        int rc = mr_tls_feed(srv, data + off, n);
        if (failed && rc != MR_TLS_ERR) die("feed after MR_TLS_ERR did not fail", NULL);
        for (;;) {
            size_t got = 0;
            rc = mr_tls_read(srv, plain, sizeof plain, &got);
            if (rc == MR_TLS_OK && got) die("plaintext from a client that cannot have finished a handshake", NULL);
            if (rc == MR_TLS_ERR) failed = true;
            else if (failed) die("MR_TLS_ERR was not sticky", mr_tls_error(srv));
            if (rc != MR_TLS_OK) break;
        }
        size_t got;
        while (mr_tls_pending_out(srv) && mr_tls_take_out(srv, out, sizeof out, &got) == MR_TLS_OK && got) {}
        if (failed) break;
    }
    if (!mr_tls_handshake_done(srv)) {
        size_t taken = 1;
        if (mr_tls_write(srv, "x", 1, &taken) == MR_TLS_OK && taken) die("write accepted before the handshake", NULL);
    }
    (void)mr_tls_sni(srv);
    (void)mr_tls_alpn(srv);
    (void)mr_tls_error(srv);
    mr_tls_conn_free(srv);
}

static void fuzz_name(const uint8_t *data, size_t size)
{
    if (size < 2) return;
    int offer = data[1] % 5;
    char sni[300];
    size_t n = 0;
    for (size_t i = 2; i < size && n < sizeof sni - 1 && data[i]; i++) sni[n++] = (char)data[i];
    sni[n] = 0;
    mr_tls_conn_t *cli = mr_tls_conn_new(g_clients[offer], false, n ? sni : NULL);
    if (!cli) return; /* a name OpenSSL will not send (too long, ...) */
    mr_tls_conn_t *srv = mr_tls_conn_new(g_server, true, NULL);
    if (!srv) die("mr_tls_conn_new(server)", NULL);
    if (handshake(cli, srv) < 0) die("handshake did not complete", mr_tls_error(srv)[0] ? mr_tls_error(srv) : mr_tls_error(cli));
    const char *own = mr_tls_own_subject(srv);
    const char *want = expected_subject(n ? sni : NULL);
    if (!own || strcmp(own, want) != 0) {
        char d[512];
        snprintf(d, sizeof d, "sni \"%s\": served %s, rules say %s", sni, own ? own : "(none)", want);
        die("wrong certificate", d);
    }
    const char *alpn = mr_tls_alpn(srv), *expect = g_offers[offer].expect;
    if ((alpn == NULL) != (expect == NULL) || (alpn && strcmp(alpn, expect) != 0)) {
        char d[256];
        snprintf(d, sizeof d, "offer %d: got %s, want %s", offer, alpn ? alpn : "(none)", expect ? expect : "(none)");
        die("wrong ALPN", d);
    }
    size_t taken = 0, got = 0;
    char buf[64];
    if (mr_tls_write(cli, "ping", 4, &taken) != MR_TLS_OK || taken != 4) die("client write", mr_tls_error(cli));
    pass(cli, srv);
    if (mr_tls_read(srv, buf, sizeof buf, &got) != MR_TLS_OK || got != 4 || memcmp(buf, "ping", 4) != 0)
        die("server did not read what the client wrote", mr_tls_error(srv));
    mr_tls_conn_free(cli);
    mr_tls_conn_free(srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] & 1) fuzz_name(data, size);
    else fuzz_raw(data + 1, size - 1, data[0]);
    return 0;
}
