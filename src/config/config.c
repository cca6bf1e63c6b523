#include "config/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llhttp.h"
#include "log/log.h"
#include "util/path.h"
#include "lua/shdict.h"
#include "metrics/metrics.h"
#include "log/logfmt.h"
#include "net/cidr.h"

/* Where the Lua library is, found once: MOONRING_LUA_DIR; else beside the binary, as installed
 * (<prefix>/bin/moonring and <prefix>/share/moonring/lua, whatever the prefix, so an installed
 * tree can be moved) or as built (build/moonring and lua/ in the source tree); else the install
 * path compiled in; else the source tree compiled in (a library loaded by another program). */
static pthread_once_t lua_dir_once = PTHREAD_ONCE_INIT;
static char lua_dir[4200];

static bool is_lua_dir(const char *d)
{
    char probe[4300];
    snprintf(probe, sizeof probe, "%s/moonring/runtime.lua", d);
    return access(probe, R_OK) == 0;
}

static void find_lua_dir(void)
{
    const char *env = getenv("MOONRING_LUA_DIR");
    if (env && *env) { snprintf(lua_dir, sizeof lua_dir, "%s", env); return; }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash && strncmp(slash + 1, "moonring", 8) == 0) {
            *slash = 0;
            static const char *const rel[] = { "/../share/moonring/lua", "/../lua" };
            for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
                char cand[4200];
                snprintf(cand, sizeof cand, "%s%s", exe, rel[i]);
                char *real = realpath(cand, NULL);
                if (real && is_lua_dir(real)) {
                    snprintf(lua_dir, sizeof lua_dir, "%s", real);
                    free(real);
                    return;
                }
                free(real);
            }
        }
    }
    snprintf(lua_dir, sizeof lua_dir, "%s", is_lua_dir(MR_LUA_INSTALL_DIR) ? MR_LUA_INSTALL_DIR : MR_LUA_DIR);
}

const char *mr_config_lua_dir(void)
{
    pthread_once(&lua_dir_once, find_lua_dir);
    return lua_dir;
}

static char *dupstr(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    char *s = lua_type(L, -1) == LUA_TSTRING ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return s;
}

/* Fields of the validated table. The schema (lua/moonring/config.lua) fills in every default,
 * so C restates none: a key the schema should have filled is a bug there, and the load reports
 * it (need_*: the first missing key is kept in missing_key and read_config fails) instead of
 * hiding it behind a second copy of the default. Keys that are optional in the schema, with no
 * default, are read with opt_int and say there what their absence means. Loads run on one
 * thread each (main or admin), hence thread-local. */
static _Thread_local const char *missing_key;

static bool has(lua_State *L, int idx, const char *key, int type)
{
    lua_getfield(L, idx, key);
    if (lua_type(L, -1) == type) return true;
    if (!missing_key) missing_key = key;
    return false;
}

/* Clamped before converting: a double out of range is undefined behaviour in C, and every field
 * read through here fits in 32 bits (sizes are capped at 2^40 separately). */
static long long to_int(double d)
{
    return d != d ? 0 : d > 1099511627776.0 ? 1099511627776LL : d < -1 ? -1 : (long long)d;
}

static long long need_int(lua_State *L, int idx, const char *key)
{
    long long v = has(L, idx, key, LUA_TNUMBER) ? to_int(lua_tonumber(L, -1)) : 0;
    lua_pop(L, 1);
    return v;
}

static uint32_t need_u32(lua_State *L, int idx, const char *key)
{
    long long v = need_int(L, idx, key);
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static bool need_bool(lua_State *L, int idx, const char *key)
{
    bool v = has(L, idx, key, LUA_TBOOLEAN) && lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *need_str(lua_State *L, int idx, const char *key)
{
    char *s = has(L, idx, key, LUA_TSTRING) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return s;
}

/* A key the schema leaves out when it is not set; `absent` is what that means here. */
static long long opt_int(lua_State *L, int idx, const char *key, long long absent)
{
    lua_getfield(L, idx, key);
    long long v = lua_isnumber(L, -1) ? to_int(lua_tonumber(L, -1)) : absent;
    lua_pop(L, 1);
    return v;
}

static bool is_loopback(const mr_addr_t *a)
{
    if (a->sa.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&a->sa)->sin_addr.s_addr) >> 24) == 127;
    if (a->sa.ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&a->sa)->sin6_addr);
    return false;
}

static int resolve(const char *what, const char *host, int port, mr_addr_t *out, char *err, size_t errlen)
{
    int rc = mr_net_resolve(host, port, out);
    if (rc < 0) snprintf(err, errlen, "%s: cannot resolve '%s'", what, host);
    return rc;
}

static int method_bit(const char *name)
{
    /* Only ids llhttp defines: llhttp_method_name aborts on the others. */
#define MR_METHOD_BIT(num, nm, str) if ((num) < 64 && strcmp(#str, name) == 0) return (num);
    HTTP_ALL_METHOD_MAP(MR_METHOD_BIT)
#undef MR_METHOD_BIT
    return -1;
}

/* An error found outside the schema (by the TLS engine, a resolver, a start check) starts with
 * the key path it is about ("listen[2].tls.certs[1]: ..."): put the file and that key's source
 * line in front, like the Lua validator does. L is a state with moonring.config loadable. */
static void keyed_error(lua_State *L, const char *file, const char *msg, char *err, size_t errlen)
{
    const char *colon = strstr(msg, ": ");
    long line = 0;
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.config");
    if (colon && lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "line_of");
        lua_pushstring(L, file);
        lua_pushlstring(L, msg, (size_t)(colon - msg));
        if (lua_pcall(L, 2, 1, 0) == 0 && lua_isnumber(L, -1)) line = (long)lua_tonumber(L, -1);
    }
    lua_settop(L, top);
    if (line > 0) snprintf(err, errlen, "%s:%ld: %s", file, line, msg);
    else snprintf(err, errlen, "%s: %s", file, msg);
}

/* A scratch VM for validation: the standard libraries, and moonring's own Lua first on the path. */
static void open_scratch(lua_State *L)
{
    luaL_openlibs(L);
    const char *dir = mr_config_lua_dir();
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

void mr_config_error(const char *file, char *err, size_t errlen, const char *fmt, ...)
{
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_State *L = luaL_newstate();
    if (!L) { snprintf(err, errlen, "%s: %s", file, msg); return; }
    open_scratch(L);
    keyed_error(L, file, msg, err, errlen);
    lua_close(L);
}

/* A list of strings at t[key], NULL-terminated (NULL when absent). */
static char **dupstrs(lua_State *L, int t, const char *key, size_t *n)
{
    *n = 0;
    lua_getfield(L, t, key);
    if (!lua_istable(L, -1)) { lua_pop(L, 1); return NULL; }
    size_t cnt = lua_objlen(L, -1);
    char **v = calloc(cnt + 1, sizeof *v);
    for (size_t i = 0; v && i < cnt; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        v[i] = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *n = v ? cnt : 0;
    return v;
}

static void freestrs(char **v)
{
    for (size_t i = 0; v && v[i]; i++) free(v[i]);
    free(v);
}

/* listen[i].tls (normalised by the validator) -> a server context. */
static int read_listen_tls(lua_State *L, int t, const char *file, mr_listen_conf_t *ls, char *err, size_t errlen)
{
    mr_tls_server_conf_t sc = { 0 };
    size_t nalpn = 0;
    char *where = dupstr(L, t, "where"), *minp = dupstr(L, t, "min_protocol"), *maxp = dupstr(L, t, "max_protocol");
    char *ciphers = dupstr(L, t, "ciphers"), *suites = dupstr(L, t, "ciphersuites"), *ca = dupstr(L, t, "client_ca");
    char *verify = dupstr(L, t, "client_verify");
    char **alpn = dupstrs(L, t, "alpn", &nalpn);
    lua_getfield(L, t, "certs");
    size_t ncerts = lua_objlen(L, -1);
    mr_tls_cert_conf_t *certs = calloc(ncerts + 1, sizeof *certs);
    for (size_t i = 0; certs && i < ncerts; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        certs[i].cert_path = dupstr(L, lua_gettop(L), "cert");
        certs[i].key_path = dupstr(L, lua_gettop(L), "key");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    sc.where = where;
    sc.certs = certs;
    sc.ncerts = ncerts;
    sc.min_protocol = minp;
    sc.max_protocol = maxp;
    sc.ciphers = ciphers;
    sc.ciphersuites = suites;
    sc.alpn = (const char *const *)alpn;
    sc.nalpn = nalpn;
    sc.client_verify = !verify || strcmp(verify, "none") == 0 ? MR_TLS_VERIFY_NONE
                       : strcmp(verify, "optional") == 0  ? MR_TLS_VERIFY_OPTIONAL
                                                          : MR_TLS_VERIFY_REQUIRE;
    sc.client_ca = ca;
    sc.verify_depth = (int)opt_int(L, t, "verify_depth", 0); /* 0: OpenSSL's */
    /* About 4000 sessions per MiB, as nginx counts its shared cache. */
    long long cache = need_int(L, t, "session_cache");
    sc.session_cache = cache > 0 ? (long)(cache * 4000 / (1024 * 1024)) + 1 : 0;
    sc.no_tickets = !need_bool(L, t, "session_tickets");
    ls->ticket_rotation_ms = need_u32(L, t, "ticket_rotation_ms");
    /* A session outlives at most one rotation (the previous key still decrypts). */
    sc.session_timeout = (long)(ls->ticket_rotation_ms / 1000);
    char msg[1024];
    int rc = certs ? mr_tls_server_ctx_new(&sc, &ls->tls, msg, sizeof msg) : -1;
    if (rc < 0) keyed_error(L, file, certs ? msg : "out of memory", err, errlen);
    for (size_t i = 0; certs && i < ncerts; i++) {
        free((char *)certs[i].cert_path);
        free((char *)certs[i].key_path);
    }
    free(certs);
    freestrs(alpn);
    free(where); free(minp); free(maxp); free(ciphers); free(suites); free(ca); free(verify);
    return rc;
}

/* upstreams[i].tls -> a client context. */
static int read_upstream_tls(lua_State *L, int t, const char *file, mr_upstream_conf_t *u, char *err, size_t errlen)
{
    mr_tls_client_conf_t cc = { 0 };
    char *where = dupstr(L, t, "where"), *minp = dupstr(L, t, "min_protocol"), *maxp = dupstr(L, t, "max_protocol");
    char *ciphers = dupstr(L, t, "ciphers"), *suites = dupstr(L, t, "ciphersuites"), *ca = dupstr(L, t, "ca");
    char *cert = dupstr(L, t, "cert"), *key = dupstr(L, t, "key");
    cc.where = where;
    cc.verify = need_bool(L, t, "verify");
    cc.ca_file = ca;
    cc.cert_path = cert;
    cc.key_path = key;
    cc.min_protocol = minp;
    cc.max_protocol = maxp;
    cc.ciphers = ciphers;
    cc.ciphersuites = suites;
    /* An HTTP/2 upstream is reached over TLS only by ALPN (RFC 9113 3.2); HTTP/1.1 offers none,
     * as before. */
    static const char *const h2_alpn[] = { "h2" };
    if (u->protocol != MR_UP_HTTP1) {
        cc.alpn = h2_alpn;
        cc.nalpn = 1;
    }
    char msg[1024];
    int rc = mr_tls_client_ctx_new(&cc, &u->tls, msg, sizeof msg);
    if (rc < 0) keyed_error(L, file, msg, err, errlen);
    free(where); free(minp); free(maxp); free(ciphers); free(suites); free(ca); free(cert); free(key);
    return rc;
}

/* Loading the system CA store takes about 17 ms, which every reload paid for a context most
 * configs never use. It is read once per process (per verify depth) and shared by the configs
 * that want it; a changed system store is picked up by a restart or binary upgrade, not a
 * reload. Config loads run on the main or the admin thread, hence the lock. */
static pthread_mutex_t sys_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static mr_tls_ctx_t *sys_ctx;
static int sys_ctx_depth;

static int system_store_ctx(const mr_tls_client_conf_t *cc, mr_tls_ctx_t **out, char *msg, size_t msglen)
{
    int rc = 0;
    pthread_mutex_lock(&sys_ctx_lock);
    if (!sys_ctx || sys_ctx_depth != cc->verify_depth) {
        mr_tls_ctx_t *fresh = NULL;
        rc = mr_tls_client_ctx_new(cc, &fresh, msg, msglen);
        if (rc == 0) {
            if (sys_ctx) mr_tls_ctx_unref(sys_ctx);
            sys_ctx = fresh;
            sys_ctx_depth = cc->verify_depth;
        }
    }
    if (rc == 0) {
        mr_tls_ctx_ref(sys_ctx);
        *out = sys_ctx;
    }
    pthread_mutex_unlock(&sys_ctx_lock);
    return rc;
}

/* lua.ssl_trusted_certificate / ssl_verify_depth -> the two cosocket client contexts. */
static int read_lua_tls(lua_State *L, int top, mr_config_t *cfg, char *err, size_t errlen)
{
    lua_getfield(L, top, "lua");
    int t = lua_gettop(L);
    mr_tls_client_conf_t cc = { .where = "lua.ssl_trusted_certificate" };
    char *ca = dupstr(L, t, "ssl_trusted_certificate");
    cc.verify_depth = (int)opt_int(L, t, "ssl_verify_depth", 0); /* 0: OpenSSL's */
    lua_pop(L, 1);
    char msg[1024];
    int rc = mr_tls_client_ctx_new(&cc, &cfg->lua_tls[0], msg, sizeof msg);
    if (rc == 0) {
        cc.verify = true;
        cc.ca_file = ca;
        rc = ca ? mr_tls_client_ctx_new(&cc, &cfg->lua_tls[1], msg, sizeof msg)
                : system_store_ctx(&cc, &cfg->lua_tls[1], msg, sizeof msg);
    }
    if (rc < 0) {
        /* The engine names the CA file "<where>.ca": the key is where itself. */
        char *dot = strstr(msg, ".ca: ");
        if (dot) memmove(dot, dot + 3, strlen(dot + 3) + 1);
        keyed_error(L, cfg->file, msg, err, errlen);
    }
    free(ca);
    return rc;
}

static int read_servers(lua_State *L, int idx, mr_upstream_conf_t *u, const char *file, char *err, size_t errlen)
{
    lua_getfield(L, idx, "servers");
    int n = (int)lua_objlen(L, -1);
    u->servers = calloc((size_t)n, sizeof *u->servers);
    u->nservers = n;
    for (int j = 0; j < n; j++) {
        lua_rawgeti(L, -1, j + 1);
        int t = lua_gettop(L);
        mr_server_conf_t *s = &u->servers[j];
        s->addr = dupstr(L, t, "addr");
        s->weight = (int)need_int(L, t, "weight");
        lua_getfield(L, t, "tls"); /* true on a TLS upstream's servers, absent otherwise */
        bool tls = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (tls && s->addr) {
            size_t n = strlen(s->addr) + 9;
            char *a = malloc(n);
            if (a) snprintf(a, n, "https://%s", s->addr);
            free(s->addr);
            s->addr = a;
            s->sni = dupstr(L, t, "sni");
            lua_getfield(L, t, "tls_key");
            size_t kl = 0;
            const char *k = lua_tolstring(L, -1, &kl);
            uint64_t h = 14695981039346656037ull; /* FNV-1a */
            for (size_t b = 0; k && b < kl; b++) h = (h ^ (unsigned char)k[b]) * 1099511628211ull;
            s->tls_id = h ? h : 1;
            lua_pop(L, 1);
        }
        char *host = dupstr(L, t, "host");
        char what[256];
        snprintf(what, sizeof what, "%s: upstreams.%s.servers[%d]", file, u->name, j + 1);
        int rc = resolve(what, host, (int)need_int(L, t, "port"), &s->sa, err, errlen);
        free(host);
        lua_pop(L, 1);
        if (rc < 0) { lua_pop(L, 1); return -1; }
    }
    lua_pop(L, 1);
    return 0;
}

static void read_upstream_common(lua_State *L, int t, mr_upstream_conf_t *u)
{
    char *bal = need_str(L, t, "balance");
    u->balance = bal && strcmp(bal, "least_conn") == 0 ? MR_BALANCE_LEAST_CONN : MR_BALANCE_RR;
    free(bal);
    char *proto = need_str(L, t, "protocol");
    u->protocol = !proto || strcmp(proto, "http1") == 0 ? MR_UP_HTTP1 : strcmp(proto, "grpc") == 0 ? MR_UP_GRPC : MR_UP_HTTP2;
    free(proto);
    u->keepalive = (int)need_int(L, t, "keepalive");
    u->keepalive_requests = (int)need_int(L, t, "keepalive_requests");
    u->tries = (int)need_int(L, t, "tries");
    u->keepalive_timeout_ms = need_u32(L, t, "keepalive_timeout_ms");
    u->connect_timeout_ms = need_u32(L, t, "connect_timeout_ms");
    u->read_timeout_ms = need_u32(L, t, "read_timeout_ms");
    u->send_timeout_ms = need_u32(L, t, "send_timeout_ms");
}

static int read_route(lua_State *L, int t, mr_config_t *cfg, mr_route_conf_t *r, char *err, size_t errlen)
{
    r->index = (int)need_int(L, t, "index");
    r->name = need_str(L, t, "name");
    r->mid = mr_metrics_cname(r->name);
    char *kind = need_str(L, t, "kind");
    r->kind = kind && strcmp(kind, "handler") == 0 ? MR_ROUTE_HANDLER : MR_ROUTE_UPSTREAM;
    free(kind);
    r->path = dupstr(L, t, "path");
    r->exact = dupstr(L, t, "exact");
    r->set_host = dupstr(L, t, "set_host");
    r->strip_prefix = need_bool(L, t, "strip_prefix");
    r->client_max_body_size = opt_int(L, t, "client_max_body_size", -1); /* -1: limits' */
    r->upstream_id = (int)opt_int(L, t, "upstream_id", 0) - 1; /* -1: a handler or a literal address */
    lua_getfield(L, t, "filters");
    r->has_filters = lua_istable(L, -1) && lua_objlen(L, -1) > 0;
    lua_pop(L, 1);
    if (!need_bool(L, t, "simple")) cfg->lua_routing = true;
    lua_getfield(L, t, "host");
    if (lua_istable(L, -1)) {
        r->nhosts = (int)lua_objlen(L, -1);
        r->hosts = calloc((size_t)r->nhosts, sizeof *r->hosts);
        for (int i = 0; i < r->nhosts; i++) {
            lua_rawgeti(L, -1, i + 1);
            r->hosts[i] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "method");
    if (lua_istable(L, -1)) {
        int n = (int)lua_objlen(L, -1);
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            int b = method_bit(lua_tostring(L, -1));
            if (b < 0) {
                snprintf(err, errlen, "%s: %s.method: unknown method '%s'", cfg->file, r->name, lua_tostring(L, -1));
                lua_pop(L, 2);
                return -1;
            }
            r->methods |= 1ull << b;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    /* upstream = "host:port": the schema gives it an upstream's settings (route.adhoc, its
     * defaults) and one server. */
    lua_getfield(L, t, "adhoc");
    if (lua_istable(L, -1)) {
        int a = lua_gettop(L);
        mr_upstream_conf_t *u = calloc(1, sizeof *u);
        if (!u) { lua_pop(L, 1); snprintf(err, errlen, "out of memory"); return -1; }
        r->adhoc = u;
        read_upstream_common(L, a, u);
        lua_getfield(L, a, "servers");
        lua_rawgeti(L, -1, 1);
        int sv = lua_gettop(L);
        u->name = need_str(L, sv, "addr");
        u->nservers = 1;
        u->servers = calloc(1, sizeof *u->servers);
        if (!u->servers || !u->name) { lua_pop(L, 3); snprintf(err, errlen, "out of memory"); return -1; }
        u->servers[0].addr = strdup(u->name);
        u->servers[0].weight = (int)need_int(L, sv, "weight");
        char *host = need_str(L, sv, "host");
        char what[256];
        snprintf(what, sizeof what, "%s: %s.upstream", cfg->file, r->name);
        int rc = host ? resolve(what, host, (int)need_int(L, sv, "port"), &u->servers[0].sa, err, errlen) : -1;
        free(host);
        lua_pop(L, 3);
        if (rc < 0) return -1;
    } else {
        lua_pop(L, 1);
    }
    return 0;
}

static int read_config_fields(lua_State *L, mr_config_t *cfg, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    char *s;
    cfg->workers = (int)need_int(L, top, "workers"); /* 0: "auto" */
    if (cfg->workers <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (int)n : 1;
    }
    cfg->pid = dupstr(L, top, "pid");             /* false: none */
    cfg->error_log = need_str(L, top, "error_log");
    s = need_str(L, top, "log_level");
    cfg->log_level = s ? mr_log_level_parse(s) : -1;
    free(s);
    cfg->access_log = dupstr(L, top, "access_log"); /* false: off */
    s = need_str(L, top, "access_log_format");
    cfg->access_log_json = s && strcmp(s, "json") == 0;
    free(s);
    /* A named format: the schema resolved it to its template (and checked its variables). */
    s = dupstr(L, top, "access_log_template");
    if (s) {
        char *esc = dupstr(L, top, "access_log_escape");
        char ferr[256];
        int mode = esc && strcmp(esc, "json") == 0 ? MR_LOGFMT_JSON : esc && strcmp(esc, "none") == 0 ? MR_LOGFMT_NONE
                                                                                                      : MR_LOGFMT_DEFAULT;
        free(esc);
        cfg->access_format = mr_logfmt_compile(s, mode, ferr, sizeof ferr);
        free(s);
        if (!cfg->access_format) {
            snprintf(err, errlen, "%s: access_log.format: %s", cfg->file, ferr);
            return -1;
        }
    }
    cfg->loop = need_str(L, top, "loop");
    s = need_str(L, top, "lua_path");
    const char *lua_dir = mr_config_lua_dir();
    size_t need = (s ? strlen(s) : 0) + 2 * strlen(lua_dir) + 64;
    cfg->lua_path = malloc(need);
    /* moonring's own directory first: it holds only the moonring.* namespace, and a config
     * file named moonring.lua next to the user's modules must not shadow `require "moonring"`. */
    snprintf(cfg->lua_path, need, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir, s ? s : "");
    free(s);
    cfg->shutdown_timeout_ms = need_u32(L, top, "shutdown_timeout_ms");
    lua_getfield(L, top, "router");
    cfg->has_router = lua_isfunction(L, -1);
    lua_pop(L, 1);
    cfg->lua_routing = cfg->has_router;

    lua_getfield(L, top, "limits");
    int t = lua_gettop(L);
    mr_limits_t *l = &cfg->limits;
    l->max_request_line = need_u32(L, t, "max_request_line");
    l->max_header_size = need_u32(L, t, "max_header_size");
    l->max_headers = need_u32(L, t, "max_headers");
    l->client_max_body_size = need_int(L, t, "client_max_body_size");
    l->header_timeout_ms = need_u32(L, t, "header_timeout_ms");
    l->body_timeout_ms = need_u32(L, t, "body_timeout_ms");
    l->keepalive_timeout_ms = need_u32(L, t, "keepalive_timeout_ms");
    l->send_timeout_ms = need_u32(L, t, "send_timeout_ms");
    l->max_connections = need_u32(L, t, "max_connections");
    l->max_connections_per_ip = need_u32(L, t, "max_connections_per_ip");
    l->keepalive_requests = need_u32(L, t, "keepalive_requests");
    lua_pop(L, 1);

    lua_getfield(L, top, "reload");
    cfg->drain_timeout_ms = need_u32(L, lua_gettop(L), "drain_timeout_ms");
    lua_pop(L, 1);

    lua_getfield(L, top, "lua");
    cfg->lua_time_budget_ms = need_u32(L, lua_gettop(L), "time_budget_ms");
    lua_pop(L, 1);

    lua_getfield(L, top, "proxy");
    t = lua_gettop(L);
    cfg->xff = need_bool(L, t, "x_forwarded_for");
    cfg->xfp = need_bool(L, t, "x_forwarded_proto");
    cfg->via = need_bool(L, t, "via");
    cfg->buffer_size = need_u32(L, t, "buffer_size");
    cfg->server_header = dupstr(L, t, "server_header");
    lua_pop(L, 1);

    lua_getfield(L, top, "resolver");
    t = lua_gettop(L);
    cfg->resolver_ttl_ms = need_u32(L, t, "ttl_ms");
    cfg->resolver_negative_ttl_ms = need_u32(L, t, "negative_ttl_ms");
    lua_pop(L, 1);

    lua_getfield(L, top, "http");
    t = lua_gettop(L);
    cfg->path_policy.merge_slashes = need_bool(L, t, "merge_slashes");
    char *es = need_str(L, t, "escaped_slashes"), *pp = need_str(L, t, "path_params");
    cfg->path_policy.escaped_slashes = !es ? MR_PATH_SLASHES_REJECT
                                     : strcmp(es, "keep") == 0 ? MR_PATH_SLASHES_KEEP
                                     : strcmp(es, "decode") == 0 ? MR_PATH_SLASHES_DECODE : MR_PATH_SLASHES_REJECT;
    cfg->path_policy.path_params = !pp ? MR_PATH_PARAMS_LAST
                                 : strcmp(pp, "keep") == 0 ? MR_PATH_PARAMS_KEEP
                                 : strcmp(pp, "reject") == 0 ? MR_PATH_PARAMS_REJECT : MR_PATH_PARAMS_LAST;
    free(es);
    free(pp);
    lua_pop(L, 1);

    lua_getfield(L, top, "listen");
    t = lua_gettop(L);
    cfg->nlisten = (int)lua_objlen(L, t);
    cfg->listen = calloc((size_t)cfg->nlisten, sizeof *cfg->listen);
    for (int i = 0; i < cfg->nlisten; i++) {
        lua_rawgeti(L, t, i + 1);
        int e = lua_gettop(L);
        mr_listen_conf_t *ls = &cfg->listen[i];
        ls->addr = dupstr(L, e, "addr");
        ls->backlog = (int)need_int(L, e, "backlog");
        char *host = dupstr(L, e, "host");
        char what[256];
        snprintf(what, sizeof what, "%s: listen[%d]", cfg->file, i + 1);
        int rc = resolve(what, host, (int)need_int(L, e, "port"), &ls->sa, err, errlen);
        free(host);
        lua_getfield(L, e, "http2");
        if (lua_istable(L, -1)) {
            int h = lua_gettop(L);
            ls->http2 = (mr_http2_conf_t){ .enabled = true,
                                           .max_concurrent_streams = need_u32(L, h, "max_concurrent_streams"),
                                           .initial_window = need_u32(L, h, "initial_window"),
                                           .connection_window = need_u32(L, h, "connection_window"),
                                           .max_frame_size = need_u32(L, h, "max_frame_size"),
                                           .max_header_list_size = need_u32(L, h, "max_header_list_size") };
        }
        lua_pop(L, 1);
        lua_getfield(L, e, "tls");
        if (rc == 0 && lua_istable(L, -1)) rc = read_listen_tls(L, lua_gettop(L), cfg->file, ls, err, errlen);
        lua_pop(L, 2);
        if (rc < 0) return -1;
    }
    lua_pop(L, 1);

    lua_getfield(L, top, "upstreams");
    t = lua_gettop(L);
    cfg->nupstreams = lua_istable(L, t) ? (int)lua_objlen(L, t) : 0;
    cfg->upstreams = calloc((size_t)cfg->nupstreams + 1, sizeof *cfg->upstreams);
    for (int i = 0; i < cfg->nupstreams; i++) {
        lua_rawgeti(L, t, i + 1);
        int e = lua_gettop(L);
        mr_upstream_conf_t *u = &cfg->upstreams[i];
        u->name = dupstr(L, e, "name");
        read_upstream_common(L, e, u);
        int rc = read_servers(L, e, u, cfg->file, err, errlen);
        lua_getfield(L, e, "tls");
        if (rc == 0 && lua_istable(L, -1)) rc = read_upstream_tls(L, lua_gettop(L), cfg->file, u, err, errlen);
        lua_pop(L, 2);
        if (rc < 0) return -1;
    }
    lua_pop(L, 1);

    lua_getfield(L, top, "upstream_defaults");
    read_upstream_common(L, lua_gettop(L), &cfg->upstream_defaults);
    lua_pop(L, 1);

    if (read_lua_tls(L, top, cfg, err, errlen) < 0) return -1;

    lua_getfield(L, top, "shared");
    t = lua_gettop(L);
    cfg->nshared = lua_istable(L, t) ? (int)lua_objlen(L, t) : 0;
    cfg->shared_names = calloc((size_t)cfg->nshared + 1, sizeof *cfg->shared_names);
    cfg->shared_sizes = calloc((size_t)cfg->nshared + 1, sizeof *cfg->shared_sizes);
    for (int i = 0; i < cfg->nshared; i++) {
        lua_rawgeti(L, t, i + 1);
        cfg->shared_names[i] = dupstr(L, lua_gettop(L), "name");
        cfg->shared_sizes[i] = (size_t)need_int(L, lua_gettop(L), "size");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    cfg->user = dupstr(L, top, "user");
    cfg->group = dupstr(L, top, "group");
    lua_getfield(L, top, "real_ip");
    if (lua_istable(L, -1)) {
        t = lua_gettop(L);
        cfg->real_ip_header = dupstr(L, t, "header");
        lua_getfield(L, t, "recursive");
        cfg->real_ip_recursive = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, t, "from");
        int n = (int)lua_objlen(L, -1);
        cfg->real_ip_from = calloc((size_t)n + 1, sizeof *cfg->real_ip_from);
        for (int i = 0; cfg->real_ip_from && i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            const char *c = lua_tostring(L, -1);
            if (c && mr_cidr_parse(c, &cfg->real_ip_from[cfg->real_ip_n]) == 0) cfg->real_ip_n++;
            else {
                snprintf(err, errlen, "%s: real_ip.from[%d]: cannot parse %s", cfg->file, i + 1, c ? c : "?");
                lua_pop(L, 3);
                return -1;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, top, "admin");
    if (lua_istable(L, -1)) {
        t = lua_gettop(L);
        cfg->admin_addr = dupstr(L, t, "addr");
        cfg->admin_token = dupstr(L, t, "token");
        char *host = dupstr(L, t, "host");
        char what[256];
        snprintf(what, sizeof what, "%s: admin.listen", cfg->file);
        int rc = resolve(what, host, (int)need_int(L, t, "port"), &cfg->admin_sa, err, errlen);
        free(host);
        if (rc == 0 && !is_loopback(&cfg->admin_sa) && !cfg->admin_token) {
            /* After resolution, so that a host name counts by what it resolves to. */
            char msg[512];
            snprintf(msg, sizeof msg, "admin.listen: %s is not a loopback address (the admin endpoint listens on "
                     "127.0.0.0/8 or [::1] only unless admin.token is set: it reloads and upgrades)", cfg->admin_addr);
            keyed_error(L, cfg->file, msg, err, errlen);
            rc = -1;
        }
        if (rc < 0) { lua_pop(L, 1); return -1; }
    }
    lua_pop(L, 1);

    lua_getfield(L, top, "routes");
    t = lua_gettop(L);
    cfg->nroutes = lua_istable(L, t) ? (int)lua_objlen(L, t) : 0;
    cfg->routes = calloc((size_t)cfg->nroutes + 1, sizeof *cfg->routes);
    for (int i = 0; i < cfg->nroutes; i++) {
        lua_rawgeti(L, t, i + 1);
        int rc = read_route(L, lua_gettop(L), cfg, &cfg->routes[i], err, errlen);
        lua_pop(L, 1);
        if (rc < 0) return -1;
    }
    lua_pop(L, 1);
    /* The C scan is linear in the routes; past about a thousand, the matcher compiled in each
     * VM (lua/moonring/router.lua: host and path indexes) costs less, call into Lua included. */
    if (cfg->nroutes > MR_ROUTES_C_SCAN_MAX) cfg->lua_routing = true;
    return 0;
}

static int read_config(lua_State *L, mr_config_t *cfg, char *err, size_t errlen)
{
    missing_key = NULL;
    int rc = read_config_fields(L, cfg, err, errlen);
    if (missing_key) {
        snprintf(err, errlen, "%s: internal error: the validated config has no '%s' (a default missing from "
                 "lua/moonring/config.lua)", cfg->file, missing_key);
        rc = -1;
    }
    return rc;
}

/* The validator's hook for `shared` (see shared_defined in lua/moonring/config.lua): dicts live
 * outside every VM and survive reloads, and must exist before filter factories run (a rate
 * limiter checks its dict when it is built). Defining is idempotent: an existing dict keeps
 * its contents and takes the new size. (name, size) -> true | nil, err */
static int define_shared(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Number size = luaL_checknumber(L, 2);
    if (size < 1 || size > 1099511627776.0 || mr_shdict_define(name, (size_t)size) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot create a shared dict of %f bytes", (double)size);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Records every Lua file require() reads from disk (and dofile/loadfile), for two reasons:
 * --watch must know what to watch (a module that fails to compile is recorded too: its fix must
 * trigger a reload), and workers must run exactly what was validated: they get these texts
 * (cfg->srcs) instead of re-reading files that an editor may be changing during the reload. */
static const char trace_lua[] =
    "local files, seen, snap = {}, {}, {}\n"
    "local function rec(f) if type(f) == 'string' and not seen[f] then seen[f] = true; files[#files + 1] = f end end\n"
    "local function readall(f)\n"
    "  local h = io.open(f, 'rb'); if not h then return nil end\n"
    "  local s = h:read('*a'); h:close()\n"
    "  return s and (s:gsub('^#[^\\n]*', ''))\n" /* loadfile skips a #! line too */
    "end\n"
    "local searchpath, orig = package.searchpath, package.loaders[2]\n"
    "package.loaders[2] = function(name)\n"
    "  local f = searchpath(name, package.path)\n"
    "  rec(f)\n"
    "  local src = f and readall(f)\n"
    "  if not src then return orig(name) end\n"
    "  local fn, err = loadstring(src, '@' .. f)\n"
    "  if not fn then error(('error loading module \\'%s\\' from file \\'%s\\':\\n\\t%s'):format(name, f, err), 0) end\n"
    "  snap[#snap + 1] = { 'm:' .. name, f, src }\n"
    "  return fn\n"
    "end\n"
    "local lf = loadfile\n"
    "loadfile = function(f, ...)\n"
    "  if type(f) ~= 'string' then return lf(f, ...) end\n"
    "  rec(f)\n"
    "  local src = readall(f)\n"
    "  if not src then return lf(f, ...) end\n"
    "  local fn, err = loadstring(src, '@' .. f)\n"
    "  if fn then snap[#snap + 1] = { 'f:' .. f, f, src } end\n"
    "  return fn, err\n"
    "end\n"
    "dofile = function(f) return assert(loadfile(f))() end\n"
    "return { files = files, snap = snap }\n";

static char *dup_field(lua_State *L, int t, int i, size_t *len)
{
    lua_rawgeti(L, t, i);
    size_t n = 0;
    const char *s = lua_tolstring(L, -1, &n);
    char *out = s ? malloc(n + 1) : NULL;
    if (out) { memcpy(out, s, n); out[n] = 0; }
    if (len) *len = n;
    lua_pop(L, 1);
    return out;
}

static int collect_snapshot(lua_State *L, int ref, mr_config_t *cfg)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, "snap");
    int n = (int)lua_objlen(L, -1);
    cfg->srcs = calloc((size_t)n + 1, sizeof *cfg->srcs);
    if (!cfg->srcs) { lua_pop(L, 2); return -1; }
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        int e = lua_gettop(L);
        mr_config_src_t *x = &cfg->srcs[cfg->nsrcs++];
        x->key = dup_field(L, e, 1, NULL);
        x->file = dup_field(L, e, 2, NULL);
        x->text = dup_field(L, e, 3, &x->len);
        lua_pop(L, 1);
        if (!x->key || !x->file || !x->text) { lua_pop(L, 2); return -1; }
    }
    lua_pop(L, 2);
    return 0;
}

static void collect_sources(lua_State *L, int ref, const char *file, mr_config_sources_t *src)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, "files");
    lua_remove(L, -2);
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    src->files = calloc((size_t)n + 2, sizeof *src->files);
    src->n = 0;
    if (src->files && (src->files[0] = mr_path_absolute(file))) src->n = 1;
    for (int i = 1; src->files && i <= n; i++) {
        lua_rawgeti(L, -1, i);
        char *p = lua_isstring(L, -1) ? mr_path_absolute(lua_tostring(L, -1)) : NULL;
        lua_pop(L, 1);
        if (!p) continue;
        bool dup = false;
        for (int j = 0; j < src->n && !dup; j++) dup = strcmp(src->files[j], p) == 0;
        if (dup) free(p);
        else src->files[src->n++] = p;
    }
    lua_pop(L, 1);
}

void mr_config_sources_free(mr_config_sources_t *src)
{
    for (int i = 0; src && i < src->n; i++) free(src->files[i]);
    if (src) free(src->files);
    if (src) { src->files = NULL; src->n = 0; }
}

int mr_config_load(const char *file, mr_config_t **out, char *err, size_t errlen)
{
    return mr_config_load_traced(file, out, err, errlen, NULL);
}

int mr_config_load_traced(const char *file, mr_config_t **out, char *err, size_t errlen, mr_config_sources_t *src)
{
    int rc = -1, trace_ref = LUA_NOREF;
    mr_config_t *cfg = calloc(1, sizeof *cfg);
    if (cfg) atomic_init(&cfg->refs, 1);
    lua_State *L = luaL_newstate();
    if (!cfg || !L) { snprintf(err, errlen, "out of memory"); goto done; }
    cfg->file = strdup(file);
    open_scratch(L);
    if (luaL_loadbuffer(L, trace_lua, sizeof trace_lua - 1, "=trace") != 0 || lua_pcall(L, 0, 1, 0) != 0) {
        snprintf(err, errlen, "cannot trace loaded files: %s", lua_tostring(L, -1));
        goto done;
    }
    trace_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.config");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "cannot load the config validator: %s", lua_tostring(L, -1));
        goto done;
    }
    /* The load resolves every filter (modules required, factories called), so a missing
     * module, a misspelt phase or a bad option is refused here (-t, start, reload) rather than
     * in a worker. */
    lua_getfield(L, -1, "load");
    lua_pushstring(L, file);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, define_shared);
    lua_setfield(L, -2, "define_shared");
    if (lua_pcall(L, 2, 2, 0) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto done;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto done;
    }
    lua_pop(L, 1);
    /* The chains the workers will build from it. */
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.runtime");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "cannot load the Lua runtime: %s", lua_tostring(L, -1));
        goto done;
    }
    lua_getfield(L, -1, "check");
    lua_pushvalue(L, -3);
    if (lua_pcall(L, 1, 0, 0) != 0) {
        snprintf(err, errlen, "%s: %s", file, lua_tostring(L, -1));
        goto done;
    }
    lua_pop(L, 1);
    if (read_config(L, cfg, err, errlen) < 0) goto done;
    /* What GET /-/config shows: the normalised table with secrets masked (moonring.admin). */
    int dump_top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.admin");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "config_json");
        lua_pushvalue(L, -3);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1)) cfg->config_json = strdup(lua_tostring(L, -1));
    }
    lua_settop(L, dump_top);
    if (collect_snapshot(L, trace_ref, cfg) < 0) { snprintf(err, errlen, "out of memory"); goto done; }
    *out = cfg;
    cfg = NULL;
    rc = 0;
done:
    if (src && L && trace_ref != LUA_NOREF) collect_sources(L, trace_ref, file, src);
    if (L) lua_close(L);
    if (cfg) mr_config_free(cfg);
    return rc;
}

void mr_config_free(mr_config_t *cfg)
{
    if (!cfg) return;
    for (int i = 0; i < cfg->nlisten; i++) {
        free(cfg->listen[i].addr);
        if (cfg->listen[i].tls) mr_tls_ctx_unref(cfg->listen[i].tls);
    }
    for (int i = 0; i < 2; i++)
        if (cfg->lua_tls[i]) mr_tls_ctx_unref(cfg->lua_tls[i]);
    for (int i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].tls) mr_tls_ctx_unref(cfg->upstreams[i].tls);
        for (int j = 0; j < cfg->upstreams[i].nservers; j++) {
            free(cfg->upstreams[i].servers[j].addr);
            free(cfg->upstreams[i].servers[j].sni);
        }
        free(cfg->upstreams[i].servers);
        free(cfg->upstreams[i].name);
    }
    for (int i = 0; i < cfg->nroutes; i++) {
        mr_route_conf_t *r = &cfg->routes[i];
        free(r->name); free(r->path); free(r->exact); free(r->set_host);
        for (int j = 0; j < r->nhosts; j++) free(r->hosts[j]);
        free(r->hosts);
        if (r->adhoc) {
            free(r->adhoc->servers[0].addr);
            free(r->adhoc->servers);
            free(r->adhoc->name);
            free(r->adhoc);
        }
    }
    free(cfg->listen); free(cfg->upstreams); free(cfg->routes);
    free(cfg->file); free(cfg->lua_path); free(cfg->pid); free(cfg->error_log);
    free(cfg->access_log); free(cfg->server_header); free(cfg->loop); free(cfg->admin_addr);
    free(cfg->admin_token); free(cfg->config_json);
    mr_logfmt_free(cfg->access_format);
    free(cfg->real_ip_from); free(cfg->real_ip_header); free(cfg->user); free(cfg->group);
    for (int i = 0; i < cfg->nsrcs; i++) { free(cfg->srcs[i].key); free(cfg->srcs[i].file); free(cfg->srcs[i].text); }
    free(cfg->srcs);
    for (int i = 0; i < cfg->nshared; i++) free(cfg->shared_names[i]);
    free(cfg->shared_names); free(cfg->shared_sizes);
    free(cfg);
}

void mr_config_ref(mr_config_t *cfg) { atomic_fetch_add(&cfg->refs, 1); }

void mr_config_unref(mr_config_t *cfg)
{
    if (cfg && atomic_fetch_sub(&cfg->refs, 1) == 1) mr_config_free(cfg);
}
