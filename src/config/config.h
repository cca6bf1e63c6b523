/* The validated, resolved configuration. Built on the main thread by mr_config_load (which runs the
 * Lua validator lua/moonring/config.lua in a scratch VM and resolves host names there, off the
 * workers); then read-only and shared by all workers. Lua functions in routes (handlers) live only
 * in each worker's own VM and are referenced by route index. */
#ifndef MR_CONFIG_H
#define MR_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "http/path.h"
#include "net/net.h"
#include "tls/tls.h"

/* A listener's HTTP/2 settings (listen[i].http2), copied into each connection at accept. */
typedef struct {
    bool enabled;
    uint32_t max_concurrent_streams, initial_window, connection_window, max_frame_size, max_header_list_size;
} mr_http2_conf_t;

typedef struct {
    char *addr;
    mr_addr_t sa;
    int backlog;
    /* TLS server context built at load (one reference, dropped with the config), or NULL.
     * Connections take their own reference, so a reload may replace the certificates while
     * established connections keep the old ones. */
    mr_tls_ctx_t *tls;
    uint32_t ticket_rotation_ms;
    mr_http2_conf_t http2;      /* http2.enabled false: HTTP/1.1 only */
} mr_listen_conf_t;

typedef struct {
    char *addr;                 /* "host:port", or "https://host:port" for a TLS server */
    mr_addr_t sa;
    int weight;
    char *sni;                  /* TLS: name sent as SNI and verified (NULL: none) */
    uint64_t tls_id;            /* TLS: hash of the upstream's TLS settings (0: plain TCP) */
} mr_server_conf_t;

enum { MR_BALANCE_RR = 0, MR_BALANCE_LEAST_CONN = 1 };
/* upstreams.NAME.protocol: what the upstream speaks (grpc is HTTP/2 with every request treated
 * as gRPC). */
enum { MR_UP_HTTP1 = 0, MR_UP_HTTP2 = 1, MR_UP_GRPC = 2 };

typedef struct {
    char *name;
    mr_server_conf_t *servers;
    int nservers;
    int balance;
    int protocol;               /* MR_UP_HTTP1, _HTTP2, _GRPC */
    int keepalive;              /* max idle per server per worker (HTTP/2: idle connections) */
    int keepalive_requests;
    int tries;
    uint32_t keepalive_timeout_ms, connect_timeout_ms, read_timeout_ms, send_timeout_ms;
    mr_tls_ctx_t *tls;          /* TLS client context (one reference, dropped with the config), or NULL */
} mr_upstream_conf_t;

enum { MR_ROUTE_UPSTREAM = 0, MR_ROUTE_HANDLER = 1 };

/* Route tables longer than this are matched by the compiled Lua matcher instead of the C scan:
 * the scan costs about 1-2 ns per route, entering the VM for a request about 1.2 us (measured with
 * 1,000 routes, see docs/config.md), so the crossover is near a thousand routes. */
#ifndef MR_ROUTES_C_SCAN_MAX
#define MR_ROUTES_C_SCAN_MAX 1000
#endif

typedef struct {
    char *name;
    uint32_t mid;               /* name's metrics id (metrics/metrics.h) */
    int index;                  /* 1-based, as in the config (and the worker VM's route table) */
    int kind;
    char *path;                 /* prefix, or NULL */
    char *exact;                /* or NULL */
    char **hosts;               /* exact names or "*.suffix" */
    int nhosts;
    uint64_t methods;           /* bit per llhttp method; 0 = any */
    int upstream_id;            /* index into upstreams, or -1 */
    mr_upstream_conf_t *adhoc;  /* upstream = "host:port" */
    char *set_host;
    bool strip_prefix;
    bool has_filters;
    int64_t client_max_body_size; /* -1 = inherit limits */
} mr_route_conf_t;

typedef struct {
    uint32_t max_request_line, max_header_size, max_headers;
    int64_t client_max_body_size;       /* 0 = unlimited */
    uint32_t header_timeout_ms, body_timeout_ms, keepalive_timeout_ms, send_timeout_ms;
    uint32_t max_connections, keepalive_requests;
    uint32_t max_connections_per_ip;   /* per worker; 0 = no limit */
} mr_limits_t;

/* One file as validation read it: key "m:<module>" (require) or "f:<path>" (loadfile). */
typedef struct {
    char *key, *file, *text;
    size_t len;
} mr_config_src_t;

typedef struct {
    atomic_int refs;            /* main thread + every worker generation using it */
    char *file;                 /* path as given */
    char *lua_path;             /* full package.path for worker VMs */
    int workers;                /* resolved: >= 1 */
    char *pid;                  /* or NULL */
    char *error_log;
    int log_level;
    char *access_log;           /* or NULL */
    bool access_log_json;
    struct mr_logfmt *access_format;  /* a named format (log_formats), or NULL: combined / json */
    char *loop;
    mr_listen_conf_t *listen;
    int nlisten;
    mr_upstream_conf_t *upstreams;
    int nupstreams;
    /* The settings of an upstream that sets none (the schema's defaults; no servers, no TLS),
     * for upstreams made at run time by req:set_upstream("host:port"). */
    mr_upstream_conf_t upstream_defaults;
    mr_route_conf_t *routes;
    int nroutes;
    bool has_router;
    bool lua_routing;           /* some route needs Lua to match (headers/pattern/match/router) */
    mr_limits_t limits;
    bool xff, xfp, via;
    uint32_t buffer_size;
    char *server_header;        /* Server field of local responses, or NULL for none */
    mr_path_policy_t path_policy;  /* http.*: how paths are normalised before routing */
    uint32_t resolver_ttl_ms, resolver_negative_ttl_ms;  /* resolver.* */
    uint32_t shutdown_timeout_ms;
    uint32_t drain_timeout_ms;  /* reload.drain_timeout: how long a retired generation may live */
    uint32_t lua_time_budget_ms;    /* lua.time_budget: one uninterrupted run of a Lua phase */
    char **shared_names;        /* shared dicts: name and size in bytes */
    size_t *shared_sizes;
    int nshared;
    /* Every Lua file validation read, as read: worker VMs load these rather than the disk, so
     * each generation runs exactly the code that was validated, whatever an editor does to the
     * files meanwhile. Modules required lazily (at request time) still come from disk. */
    mr_config_src_t *srcs;
    int nsrcs;
    /* Client contexts for Lua cosockets (sock:sslhandshake, https:// in moonring.http): [1]
     * verifies against lua.ssl_trusted_certificate (or the system store), [0] does not. One
     * reference each, dropped with the config; a TLS cosocket holds its own. */
    mr_tls_ctx_t *lua_tls[2];
    struct mr_cidr *real_ip_from;   /* real_ip: trusted networks (proxy/real_ip.h), or NULL */
    int real_ip_n;
    char *real_ip_header;       /* lowercased */
    bool real_ip_recursive;
    char *user, *group;         /* the account to run as after binding, or NULL */
    char *admin_addr;           /* admin listener "host:port", or NULL */
    char *admin_token;          /* admin.token: required as "Authorization: Bearer ..." (NULL: none) */
    char *config_json;          /* the normalised config as JSON, secrets masked (GET /-/config) */
    mr_addr_t admin_sa;
} mr_config_t;

/* Loads, validates and resolves FILE. On error returns -1 and writes one line naming the file,
 * line and key into err. Main thread only (resolution blocks). */
int mr_config_load(const char *file, mr_config_t **out, char *err, size_t errlen);
void mr_config_free(mr_config_t *cfg);

/* The files a load read from disk: the config file first, then every Lua file required (or
 * dofile'd) while validating, as absolute paths (last component not resolved). Owned by the
 * caller; free with mr_config_sources_free. */
typedef struct {
    char **files;
    int n;
} mr_config_sources_t;
/* mr_config_load that also fills *src (when non-NULL), on success and on failure alike: a
 * module that failed to compile is listed, so a watcher sees its fix. */
int mr_config_load_traced(const char *file, mr_config_t **out, char *err, size_t errlen, mr_config_sources_t *src);
void mr_config_sources_free(mr_config_sources_t *src);
/* Shared read-only across threads; the last unref (any thread) frees it. */
void mr_config_ref(mr_config_t *cfg);
void mr_config_unref(mr_config_t *cfg);
/* Formats an error about a key of a loaded config file ("pid: /run/x.pid: cannot open ...", the
 * message starting with the key path) as the validator does: "file:line: key: ...", the line
 * found in the source (left out when it cannot be). Any thread; reads the file. */
void mr_config_error(const char *file, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The project's Lua library directory: MOONRING_LUA_DIR, else found relative to the binary
 * (installed or built), else the compiled-in install path (see config.c). Any thread. */
const char *mr_config_lua_dir(void);

#endif
