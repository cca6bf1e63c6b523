/* libFuzzer target: the HTTP/2 server session (src/session/h2.c) facing a hostile client, with
 * the real core behind it.
 *
 * Each input is what a client sends after the connection preface (which the harness puts first,
 * so mutations explore frames rather than the preface): it goes into one end of a socketpair
 * whose other end is an HTTP/2 connection of the session, taken over as the HTTP/1.1 session
 * does. The worker's pieces are real: an epoll loop, a generation built from a small config (a
 * Lua handler route, a route whose Lua filter answers, and a route to an upstream that refuses
 * connections, so requests reach routing, Lua, the upstream client's failure path and the local
 * response writer), the proxy core. The loop runs until the session has nothing left to do, then
 * the client side closes and the loop runs until the connection is freed.
 * Invariants: no crash, UB or leak (ASan/UBSan/LSan); the connection is always freed. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/config.h"
#include "core/gen.h"
#include "log/log.h"
#include "loop/loop.h"
#include "proxy/proxy.h"
#include "session/conn.h"
#include "session/h2.h"

static mr_loop_t *g_loop;
static mr_proxy_t g_px;
static mr_conns_t g_conns;
static mr_gen_t *g_gen;
static int g_freed;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "\n==== FUZZ INVARIANT BROKEN: %s\n---- %s\n", what, detail ? detail : "");
    abort();
}

static void stop_cb(mr_loop_t *loop, mr_timer_t *t)
{
    (void)t;
    mr_loop_stop(loop);
}

/* One or more loop turns (a timer due now stops the run after the turn it fires in). */
static void turn(void)
{
    static mr_timer_t t = { .fn = stop_cb };
    mr_timer_set(g_loop, &t, 0);
    if (mr_loop_run(g_loop) < 0) die("loop failed", NULL);
}

static void on_freed(mr_conn_t *c)
{
    mr_conns_freed(c->set);
    free(c);
    g_freed = 1;
}

static void nop_recv(mr_sock_t *s, int res) { (void)s; (void)res; }
static void nop_sent(mr_sock_t *s, int res) { (void)s; (void)res; }
static void nop_closed(mr_sock_t *s) { (void)s; }
static const mr_sock_ops_t nop_ops = { nop_recv, nop_sent, nop_closed };

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    mr_log_open("stderr", MR_LOG_ERROR);
    char path[] = "/tmp/mr-fuzz-h2-XXXXXX.lua";
    int fd = mkstemps(path, 4);
    if (fd < 0) die("mkstemps", strerror(errno));
    const char *conf =
        "return { workers = 1, listen = { \"127.0.0.1:1\" }, error_log = \"stderr\", log_level = \"error\",\n"
        "  limits = { client_max_body_size = \"64k\", send_timeout = \"1s\" },\n"
        "  upstreams = { gone = { servers = { \"127.0.0.1:1\" }, protocol = \"grpc\", tries = 1 } },\n"
        "  routes = {\n"
        "    { path = \"/lua\", handler = function(req) return 200, req.method .. \" \" .. req.path end },\n"
        "    { path = \"/deny\", upstream = \"gone\", filters = { { on_request = function(req)\n"
        "        return req:grpc_error(16, \"no\") end } } },\n"
        "    { path = \"/\", upstream = \"gone\" },\n"
        "  } }\n";
    if (write(fd, conf, strlen(conf)) != (ssize_t)strlen(conf)) die("write", strerror(errno));
    close(fd);
    mr_config_t *cfg;
    char err[512];
    if (mr_config_load(path, &cfg, err, sizeof err) < 0) die("config", err);
    unlink(path);
    mr_loop_opts_t lo = { .entries = 256, .buf_count = 64, .buf_size = 16384, .backend = MR_LOOP_EPOLL };
    if (mr_loop_init(&g_loop, &lo) < 0) die("loop", NULL);
    mr_proxy_init(&g_px, g_loop, NULL, NULL);
    if (mr_gen_new(cfg, 1, &g_px.servers, &g_gen, err, sizeof err) < 0) die("generation", err);
    mr_config_unref(cfg); /* the generation holds its own reference */
    mr_proxy_set_gen(&g_px, g_gen);
    g_conns.px = &g_px;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (size > 100000) return 0; /* what the socketpair holds without a reader on our side */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair", strerror(errno));
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    mr_conn_t *c = calloc(1, sizeof *c);
    if (!c) return 0;
    mr_sock_init(&c->s, g_loop, sv[0], &nop_ops);
    c->set = &g_conns;
    c->freed = on_freed;
    snprintf(c->peer.ip, sizeof c->peer.ip, "127.0.0.1");
    c->h2conf = (mr_http2_conf_t){ .enabled = true, .max_concurrent_streams = 16, .initial_window = 65535,
                                   .connection_window = 1 << 20, .max_frame_size = 16384,
                                   .max_header_list_size = 16384 };
    mr_conns_add(&g_conns, c);
    g_freed = 0;
    /* The client's bytes first (preface and input), then the session: its receive starts once
     * it took over, as after the HTTP/1.1 session saw the preface. */
    if (write(sv[1], preface, sizeof preface - 1) < 0 || (size && write(sv[1], data, size) < 0)) die("write", strerror(errno));
    mr_sock_start_recv(&c->s);
    if (mr_h2_takeover(c) < 0) die("takeover", NULL);
    char sink[65536];
    for (int i = 0; i < 40 && !g_freed; i++) {
        turn();
        while (read(sv[1], sink, sizeof sink) > 0) {}
    }
    close(sv[1]); /* the client goes away */
    for (int i = 0; i < 200 && !g_freed; i++) {
        turn();
        if (i == 100 && !g_freed) c->ops->close(c);
    }
    if (!g_freed) die("the connection was never freed", NULL);
    return 0;
}
