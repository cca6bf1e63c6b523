/* libFuzzer target: the config loader (mr_config_load: lua/moonring/config.lua's validation, then
 * the C reader in src/config/config.c).
 *
 * A config file is Lua code, so fuzzing raw bytes would mostly test the Lua parser, and could run
 * anything (os.execute). Instead the input drives a generator of data-only config tables: keys
 * from the schema, values plausible for the key most of the time (addresses, sizes, durations,
 * lists...) and of any type otherwise, nested a few levels. Functions are two fixed literals.
 * Addresses are IP literals or "localhost" only, so resolution never waits on DNS. The "shared"
 * section is left out: it registers process-wide dictionaries that outlive a config.
 * Invariants: no crash, leak or UB; a failure is a one-line message naming the file. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "util/vec.h"

typedef struct {
    const uint8_t *p;
    size_t n, i;
    mr_vec_t out;
} gen_t;

/* Choices read bytes; a spent input reads zeros, and choice 0 is always the plausible one, so
 * short inputs give valid configs and the bytes decide where to deviate. */
static unsigned rd(gen_t *g) { return g->i < g->n ? g->p[g->i++] : 0; }
static unsigned pick(gen_t *g, unsigned n) { return rd(g) % n; }
/* 1..n-1 items usually, none for the last value. */
static unsigned count(gen_t *g, unsigned n) { return (pick(g, n) + 1) % n; }

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define EMIT(...) mr_vec_printf(&g->out, (size_t)1 << 24, __VA_ARGS__)

static const char *const ADDRS[] = {
    "127.0.0.1:8080", "127.0.0.1:0", "127.0.0.1", "[::1]:80", "[::1]", "0.0.0.0:65535", "127.0.0.1:65536",
    "127.0.0.1:-1", ":80", "localhost:80", "127.0.0.1:80x", "", "[::1:80", "1.2.3.4.5:80", "127.0.0.1:080",
    "unix:/nonexistent", "127.0.0.1:99999999999999999999", "256.0.0.1:80", "[fe80::1%lo]:80",
};
static const char *const SIZES[] = { "8k", "1m", "1g", "0", "1", "-1k", "1.5k", "k", "12kb", "1K", "4096",
                                     "99999999999g", "", "1t", " 1k", "0x10" };
static const char *const DURS[] = { "1s", "100ms", "0s", "1h", "1m", "-1s", "1.5s", "s", "10", "1d", "", "1us",
                                    "99999999999h" };
static const char *const STRS[] = {
    "/", "/a", "/a/", "a", "", "*", "*.example.com", "example.com", "GET", "get", "BREW", "round_robin",
    "least_conn", "debug", "info", "warn", "auto", "epoll", "io_uring", "origin", "x y", "%", "^/a$", "[",
    "/\xff", "a\nb", "\\", "\"", "'", "..", "/a?b", "a:1", "*.", "*",
};
static const char *const PATHS[] = { "/", "/a", "/a/", "/a/b", "//", "a", "", "/a?b", "/\xff", "/a b", "/%41" };
static const char *const HOSTS[] = { "example.com", "*.example.com", "a.b:8080", "", "*", "*.", "x y", "[::1]", "\xff" };
static const char *const BALANCES[] = { "round_robin", "least_conn", "random", "" };
static const char *const LEVELS[] = { "info", "debug", "notice", "warn", "error", "trace", "" };
static const char *const LOOPS[] = { "auto", "epoll", "io_uring", "poll", "" };
static const char *const PATTERNS[] = { "^/a", "[", "%", "(", "%b()", "^/(%d+)$", "" };
static const char *const NAMES[] = { "origin", "a", "b", "", "x y", "1" };
static const char *const METHODS[] = { "GET", "POST", "HEAD", "get", "BREW", "", "CONNECT", "PURGE" };
static const char *const FUNCS[] = { "function() end", "function(req) return 200, 'x' end" };

enum { T_ADDR, T_SIZE, T_DUR, T_INT, T_BOOL, T_STR, T_PATH, T_HOST, T_BALANCE, T_LEVEL, T_LOOP, T_PATTERN, T_NAME, T_ANY };

static void gen_any(gen_t *g, int depth);

static void gen_str(gen_t *g, const char *s)
{
    /* %q-style, so the file stays data whatever the bytes. */
    EMIT("\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') EMIT("\\%c", *c);
        else if (*c < 0x20 || *c >= 0x7f) EMIT("\\%03u", *c);
        else EMIT("%c", *c);
    }
    EMIT("\"");
}

static void gen_num(gen_t *g)
{
    static const char *const NUMS[] = { "16", "1", "0", "-1", "2", "100", "65535", "65536", "1e9", "1e300",
                                        "0.5", "-0.0", "2147483648", "9007199254740993", "0/0", "1/0", "-1/0" };
    EMIT("%s", NUMS[pick(g, COUNT(NUMS))]);
}

static void gen_typed(gen_t *g, int type, int depth)
{
    if (pick(g, 8) == 7) { gen_any(g, depth); return; }
    switch (type) {
    case T_ADDR: gen_str(g, ADDRS[pick(g, COUNT(ADDRS))]); break;
    case T_SIZE: if (pick(g, 3)) gen_str(g, SIZES[pick(g, COUNT(SIZES))]); else gen_num(g); break;
    case T_DUR: if (pick(g, 3)) gen_str(g, DURS[pick(g, COUNT(DURS))]); else gen_num(g); break;
    case T_INT: gen_num(g); break;
    case T_BOOL: EMIT(pick(g, 2) ? "true" : "false"); break;
    case T_STR: gen_str(g, STRS[pick(g, COUNT(STRS))]); break;
    case T_PATH: gen_str(g, PATHS[pick(g, COUNT(PATHS))]); break;
    case T_HOST: gen_str(g, HOSTS[pick(g, COUNT(HOSTS))]); break;
    case T_BALANCE: gen_str(g, BALANCES[pick(g, COUNT(BALANCES))]); break;
    case T_LEVEL: gen_str(g, LEVELS[pick(g, COUNT(LEVELS))]); break;
    case T_LOOP: gen_str(g, LOOPS[pick(g, COUNT(LOOPS))]); break;
    case T_PATTERN: gen_str(g, PATTERNS[pick(g, COUNT(PATTERNS))]); break;
    case T_NAME: gen_str(g, NAMES[pick(g, COUNT(NAMES))]); break;
    default: gen_any(g, depth); break;
    }
}

static void gen_list(gen_t *g, int type, int depth)
{
    unsigned n = count(g, 4);
    EMIT("{");
    for (unsigned i = 0; i < n; i++) {
        gen_typed(g, type, depth + 1);
        EMIT(",");
    }
    EMIT("}");
}

static void gen_any(gen_t *g, int depth)
{
    switch (pick(g, depth > 2 ? 5 : 7)) {
    case 0: gen_num(g); break;
    case 1: gen_str(g, STRS[pick(g, COUNT(STRS))]); break;
    case 2: EMIT(pick(g, 2) ? "true" : "false"); break;
    case 3: EMIT("%s", FUNCS[pick(g, COUNT(FUNCS))]); break;
    case 4: gen_str(g, ADDRS[pick(g, COUNT(ADDRS))]); break;
    case 5: gen_list(g, T_ANY, depth); break;
    default: {
        unsigned n = count(g, 4);
        EMIT("{");
        for (unsigned i = 0; i < n; i++) {
            EMIT("[");
            gen_str(g, NAMES[pick(g, COUNT(NAMES))]);
            EMIT("]=");
            gen_any(g, depth + 1);
            EMIT(",");
        }
        EMIT("}");
    }
    }
}

typedef struct {
    const char *key;
    int type;
} field_t;

static void gen_record(gen_t *g, const field_t *f, size_t nf, int depth)
{
    EMIT("{");
    unsigned n = count(g, (unsigned)nf + 1);
    for (unsigned i = 0; i < n; i++) {
        const field_t *k = &f[pick(g, (unsigned)nf)];
        EMIT("%s=", k->key);
        gen_typed(g, k->type, depth + 1);
        EMIT(",");
    }
    EMIT("}");
}

static const field_t LIMITS[] = {
    { "max_request_line", T_SIZE }, { "max_header_size", T_SIZE }, { "max_headers", T_INT },
    { "client_max_body_size", T_SIZE }, { "header_timeout", T_DUR }, { "body_timeout", T_DUR },
    { "keepalive_timeout", T_DUR }, { "send_timeout", T_DUR }, { "max_connections", T_INT },
    { "keepalive_requests", T_INT },
};
static const field_t PROXY[] = { { "x_forwarded_for", T_BOOL }, { "x_forwarded_proto", T_BOOL }, { "via", T_BOOL },
                                 { "buffer_size", T_SIZE } };
static const field_t UPSTREAM[] = {
    { "balance", T_BALANCE }, { "keepalive", T_INT }, { "keepalive_requests", T_INT }, { "keepalive_timeout", T_DUR },
    { "connect_timeout", T_DUR }, { "read_timeout", T_DUR }, { "send_timeout", T_DUR }, { "tries", T_INT },
};
static const field_t ROUTE[] = {
    { "path", T_PATH }, { "exact", T_PATH }, { "name", T_NAME }, { "set_host", T_HOST }, { "strip_prefix", T_BOOL },
    { "client_max_body_size", T_SIZE }, { "pattern", T_PATTERN },
};

static void gen_upstream(gen_t *g)
{
    EMIT("{servers=");
    if (pick(g, 8) == 7) {
        gen_any(g, 2);
    } else {
        unsigned n = count(g, 4);
        EMIT("{");
        for (unsigned i = 0; i < n; i++) {
            if (pick(g, 3) == 2) {
                EMIT("{addr=");
                gen_typed(g, T_ADDR, 3);
                EMIT(",weight=");
                gen_typed(g, T_INT, 3);
                EMIT("}");
            } else {
                gen_typed(g, T_ADDR, 3);
            }
            EMIT(",");
        }
        EMIT("}");
    }
    EMIT(",");
    unsigned n = pick(g, 4);
    for (unsigned i = 0; i < n; i++) {
        const field_t *k = &UPSTREAM[pick(g, COUNT(UPSTREAM))];
        EMIT("%s=", k->key);
        gen_typed(g, k->type, 2);
        EMIT(",");
    }
    EMIT("}");
}

static void gen_route(gen_t *g)
{
    EMIT("{");
    switch (pick(g, 4)) {
    case 0: EMIT("upstream="); gen_str(g, NAMES[pick(g, COUNT(NAMES))]); EMIT(","); break;
    case 1: EMIT("upstream="); gen_typed(g, T_ADDR, 2); EMIT(","); break;
    case 2: EMIT("handler=%s,", FUNCS[pick(g, COUNT(FUNCS))]); break;
    default: break;
    }
    if (pick(g, 3) == 1) { EMIT("host="); gen_list(g, T_HOST, 2); EMIT(","); }
    if (pick(g, 3) == 1) {
        EMIT("method={");
        for (unsigned i = count(g, 3); i > 0; i--) { gen_str(g, METHODS[pick(g, COUNT(METHODS))]); EMIT(","); }
        EMIT("},");
    }
    if (pick(g, 6) == 1) EMIT("filters={{on_request=%s}},", FUNCS[pick(g, COUNT(FUNCS))]);
    if (pick(g, 6) == 1) { EMIT("headers={[\"x-a\"]="); gen_typed(g, T_STR, 2); EMIT("},"); }
    unsigned n = pick(g, 4);
    for (unsigned i = 0; i < n; i++) {
        const field_t *k = &ROUTE[pick(g, COUNT(ROUTE))];
        EMIT("%s=", k->key);
        gen_typed(g, k->type, 2);
        EMIT(",");
    }
    EMIT("}");
}

static void gen_config(gen_t *g)
{
    EMIT("return {\n");
    if (pick(g, 8) != 7) { EMIT("listen="); gen_list(g, T_ADDR, 1); EMIT(",\n"); }
    if (pick(g, 8) != 7) {
        EMIT("upstreams={");
        for (unsigned i = count(g, 4); i > 0; i--) {
            EMIT("[");
            gen_str(g, NAMES[pick(g, COUNT(NAMES))]);
            EMIT("]=");
            gen_upstream(g);
            EMIT(",");
        }
        EMIT("},\n");
    }
    if (pick(g, 8) != 7) {
        EMIT("routes={");
        for (unsigned i = count(g, 5); i > 0; i--) {
            gen_route(g);
            EMIT(",");
        }
        EMIT("},\n");
    }
    if (pick(g, 2)) { EMIT("limits="); gen_record(g, LIMITS, COUNT(LIMITS), 1); EMIT(",\n"); }
    if (pick(g, 3) == 1) { EMIT("proxy="); gen_record(g, PROXY, COUNT(PROXY), 1); EMIT(",\n"); }
    if (pick(g, 3) == 1) { EMIT("workers="); gen_typed(g, T_INT, 1); EMIT(",\n"); }
    if (pick(g, 4) == 1) { EMIT("log_level="); gen_typed(g, T_LEVEL, 1); EMIT(",\n"); }
    if (pick(g, 4) == 1) { EMIT("loop="); gen_typed(g, T_LOOP, 1); EMIT(",\n"); }
    if (pick(g, 4) == 1) { EMIT("shutdown_timeout="); gen_typed(g, T_DUR, 1); EMIT(",\n"); }
    if (pick(g, 16) == 1) { EMIT("%s=", pick(g, 2) ? "unknown_key" : "router"); gen_any(g, 1); EMIT(",\n"); }
    EMIT("}\n");
}

static char path[64];

static unsigned long loaded, refused;

static void cleanup(void)
{
    unlink(path);
    /* How often the generator gets past validation: only then is the C reader exercised. */
    if (getenv("MR_FUZZ_CONFIG_STATS")) fprintf(stderr, "configs loaded %lu, refused %lu\n", loaded, refused);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "/tmp/mr-fuzz-config-%d.lua", (int)getpid());
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gen_t g = { data, size, 0, { 0 } };
    gen_config(&g);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(g.out.p, 1, g.out.len, f);
    fclose(f);
    if (getenv("MR_FUZZ_CONFIG_PRINT")) fprintf(stderr, "%.*s", (int)g.out.len, g.out.p);
    mr_config_t *cfg = NULL;
    char err[512] = "";
    int rc = mr_config_load(path, &cfg, err, sizeof err);
    if (rc == 0) {
        loaded++;
        mr_config_free(cfg);
    } else if (refused++, getenv("MR_FUZZ_CONFIG_PRINT")) {
        fprintf(stderr, "=> %s\n", err);
    }
    if (rc != 0 && (!err[0] || strchr(err, '\n'))) {
        fprintf(stderr, "config:\n%.*s\nerror: [%s]\n", (int)g.out.len, g.out.p, err);
        abort(); /* errors are one line, and never empty */
    }
    mr_vec_free(&g.out);
    return 0;
}
