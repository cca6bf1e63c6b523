#include "core/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log/log.h"
#include "lua/cosock.h"
#include "lua/udp.h"
#include "lua/lua.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "net/sock.h"
#include "proxy/access_log.h"
#include "session/h1.h"
#include "session/h2.h"
#include "upstream/h2client.h"

static void accept_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags);
static void client_gone(void *arg);

static void arm_accepts(mr_worker_t *w)
{
    for (mr_listener_t *l = w->listeners; l; l = l->next)
        if (!l->closing && !l->op.active) mr_loop_accept(w->loop, &l->op, l->fd);
}

static void stop_accepts(mr_worker_t *w)
{
    for (mr_listener_t *l = w->listeners; l; l = l->next)
        if (l->op.active) mr_loop_cancel(w->loop, &l->op);
}

static mr_listener_t *listener_new(mr_worker_t *w, int fd, const char *addr)
{
    mr_listener_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->op.fn = accept_done;
    l->w = w;
    l->fd = fd;
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    l->next = w->listeners;
    w->listeners = l;
    return l;
}

static void listener_free(mr_worker_t *w, mr_listener_t *l)
{
    for (mr_listener_t **pp = &w->listeners; *pp; pp = &(*pp)->next)
        if (*pp == l) { *pp = l->next; break; }
    if (l->fd >= 0) close(l->fd);
    free(l);
}

static void accept_retry(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_worker_t *w = (mr_worker_t *)((char *)t - offsetof(mr_worker_t, accept_timer));
    if (w->accept_paused && w->accepting && !w->draining && w->conns.count < w->cfg->limits.max_connections) {
        w->accept_paused = false;
        arm_accepts(w);
    }
}

/* The listener's settings in the current generation: a reload may have changed the certificates
 * or the HTTP/2 settings of an address it kept. */
static const mr_listen_conf_t *listener_conf(mr_worker_t *w, mr_listener_t *l)
{
    static const mr_listen_conf_t none = { 0 };
    for (int i = 0; i < w->cfg->nlisten; i++)
        if (strcmp(w->cfg->listen[i].addr, l->addr) == 0) return &w->cfg->listen[i];
    return &none;
}

/* io_uring arms accept with an exclusive wait: a connection's wakeup goes to one waiter only.
 * If it went to our accept just as the cancel took it away, nobody else is woken for that
 * connection, and after a binary upgrade it would sit in the queue of the socket the new
 * process shares until the next one arrives. So a draining worker takes what is queued itself,
 * once its accept is gone, and serves it like any connection accepted while draining. */
static void sweep_backlog(mr_worker_t *w, mr_listener_t *l)
{
    for (int n = 0; n < 1024; n++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        mr_h1_accept(&w->conns, fd, listener_conf(w, l));
    }
}

static void accept_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop;
    mr_listener_t *l = (mr_listener_t *)op;
    mr_worker_t *w = l->w;
    if (res >= 0) {
        /* Even while draining: the kernel already took this connection off the queue, so closing
         * it would reset a client (the proxy answers it with Connection: close). A listener a
         * reload removed is the exception: its settings (TLS or not) went with it. */
        if (l->closing) close(res);
        else mr_h1_accept(&w->conns, res, listener_conf(w, l));
    } else if (res != -ECANCELED) {
        mr_warn("accept on %s: %s", l->addr, strerror(-res));
    }
    if (!(flags & MR_F_MORE) && (w->draining || l->closing)) {
        /* A draining worker, or a listener a reload removed, must not keep its socket: with
         * SO_REUSEPORT the kernel would go on queueing connections nobody accepts. */
        bool sweep = w->draining && !l->closing;
        if (sweep) sweep_backlog(w, l);
        listener_free(w, l);
        if (sweep) client_gone(w); /* the loop may stop once the last listener is gone */
        return;
    }
    if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
        /* Out of descriptors or memory: re-arming now would spin on the same error at full CPU.
         * Leave new connections in the backlog and retry shortly (nginx waits 500 ms too); a
         * client closing frees a descriptor and resumes accepting earlier. */
        if (w->accepting && !w->draining && !w->accept_paused) {
            w->accept_paused = true;
            stop_accepts(w);
        }
        if (!mr_timer_armed(&w->accept_timer)) {
            w->accept_timer.fn = accept_retry;
            mr_timer_set(loop, &w->accept_timer, 500);
        }
        return;
    }
    if (w->accepting && !w->draining && w->conns.count >= w->cfg->limits.max_connections && !w->accept_paused) {
        /* Over the limit: leave further connections in the kernel backlog. */
        w->accept_paused = true;
        stop_accepts(w);
        return;
    }
    if (!(flags & MR_F_MORE) && w->accepting && !w->accept_paused && !w->draining)
        mr_loop_accept(w->loop, op, l->fd);
}

/* A client or upstream connection went away: accepting may resume, a draining worker may stop. */
static void client_gone(void *arg)
{
    mr_worker_t *w = arg;
    if (w->accept_paused && !w->draining && w->conns.count < w->cfg->limits.max_connections) {
        w->accept_paused = false;
        arm_accepts(w);
    }
    /* Listeners go first: a draining worker sweeps each one's backlog once its accept is gone. */
    if (w->draining && w->conns.count == 0 && w->conns.closing == 0 && w->px.up.count == 0 && !w->listeners &&
        mr_access_log_idle(w->px.alog))
        mr_loop_stop(w->loop);
}

/* Gauges the admin thread cannot read from the worker's own structures (they change on this
 * thread without atomics) are copied into the worker's metrics once a second: client
 * connections, and upstream connections per server address and in total. */
static void metrics_tick(mr_loop_t *loop, mr_timer_t *t)
{
    mr_worker_t *w = (mr_worker_t *)((char *)t - offsetof(mr_worker_t, metrics_timer));
    mr_metrics_t *m = w->px.metrics;
    if (!m) return;
    mr_m_set(&m->w[MR_MW_CONNS_OPEN], w->conns.count);
    uint64_t active = 0, idle = 0;
    for (mr_server_t *s = w->px.servers.head; s; s = s->next) {
        active += (uint64_t)s->active;
        idle += (uint64_t)s->nidle;
        mr_mcell_t *c = mr_metrics_cell(m, MR_MK_ADDR, s->mid, 0, MR_MA_NVALUES);
        if (!c) continue;
        mr_m_set(&c->v[MR_MA_ACTIVE], (uint64_t)s->active);
        mr_m_set(&c->v[MR_MA_IDLE], (uint64_t)s->nidle);
    }
    mr_m_set(&m->w[MR_MW_UP_ACTIVE], active);
    mr_m_set(&m->w[MR_MW_UP_IDLE], idle);
    if (!w->draining) mr_timer_set(loop, t, 1000);
}

static void drain_expired(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_worker_t *w = (mr_worker_t *)((char *)t - offsetof(mr_worker_t, drain_timer));
    mr_warn("shutdown timeout: closing %u connections", w->conns.count);
    mr_conns_close_all(&w->conns);
}

static void begin_drain(mr_worker_t *w, bool now)
{
    if (!w->draining) {
        w->draining = true;
        w->accepting = false;
        stop_accepts(w);
        /* A listener without an accept in flight (paused at a limit) gets no completion to
         * free it on: sweep and free it now. */
        for (mr_listener_t *l = w->listeners, *next; l; l = next) {
            next = l->next;
            if (l->op.active) continue;
            if (!l->closing) sweep_backlog(w, l);
            listener_free(w, l);
        }
        mr_proxy_drain(&w->px);
        mr_timer_stop(w->loop, &w->metrics_timer);
        mr_conns_shutdown(&w->conns);
        mr_lua_vm_retire(w->px.gen->lua);
        mr_cosock_thread_drain();
        w->drain_timer.fn = drain_expired;
        mr_timer_set(w->loop, &w->drain_timer, w->cfg->shutdown_timeout_ms);
    }
    if (now) mr_conns_close_all(&w->conns);
    client_gone(w);
}

static void drain_deadline(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_gen_t *g = (mr_gen_t *)((char *)t - offsetof(mr_gen_t, drain_timer));
    mr_worker_t *w = g->drain_worker;
    int tunnels = 0;
    mr_gen_ref(g); /* closing clients may drop the last reference; not inside our own timer */
    int closed = mr_conns_close_gen(&w->conns, g, &tunnels);
    int fibers = g->lua ? mr_lua_vm_fibers(g->lua) : 0;
    bool freed = false;
    if (g->refs > 1 && g->lua) {
        /* Only tunnels hold it now, and they were detached from the VM; its timers (if any)
         * keep the VM itself alive until they end. */
        mr_lua_vm_unref(g->lua);
        g->lua = NULL;
        freed = fibers == 0;
    }
    /* Timers (after their premature run) and detached on_log tasks still run in the VM: it goes
     * with the last of them, through the generation's reference count. */
    mr_warn("reload: generation %llu still in use after reload.drain_timeout (%u ms): closed %d requests%s%s",
            (unsigned long long)g->id, w->cfg->drain_timeout_ms, closed,
            tunnels ? " (WebSocket/upgrade tunnels kept)" : "",
            freed ? ", VM freed" : fibers ? ", VM kept for its running timers" : "");
    mr_gen_unref(g);
}

/* Called once per generation a reload replaces, before the worker drops its own reference:
 * arms the drain deadline if requests still hold it. The place for anything else that must
 * happen when a generation stops taking new work (e.g. its timers). */
static void gen_retired(mr_worker_t *w, mr_gen_t *old)
{
    if (old->refs <= 1) return; /* nothing in flight: freed right away */
    old->drain_loop = w->loop;
    old->drain_worker = w;
    old->drain_timer.fn = drain_deadline;
    mr_timer_set(w->loop, &old->drain_timer, w->cfg->drain_timeout_ms);
}

/* Reloads are two-phase so that every worker switches or none does. Phase one (MR_CMD_RELOAD)
 * builds the new generation on this thread (VMs are thread-affine) while the old one serves;
 * phase two (MR_CMD_RELOAD_COMMIT or _ABORT, once every worker has built) switches to it
 * between loop turns, or drops it. Requests in flight keep the generation they hold; the old
 * one is freed when the last of them ends. Listening sockets the new config keeps are never
 * touched. */
static void build_reload(mr_worker_t *w)
{
    w->reload_gen = NULL;
    if (mr_gen_new(w->reload_cfg, w->reload_id, &w->px.servers, &w->reload_gen, w->reload_err, sizeof w->reload_err) < 0) {
        w->reload_gen = NULL;
        mr_error("reload to generation %llu failed: %s", (unsigned long long)w->reload_id, w->reload_err);
        atomic_store(&w->reload_state, -1);
        return;
    }
    atomic_store(&w->reload_state, 1);
}

/* The access log as cfg wants it: on or off, combined or JSON. The file behind it is the main
 * thread's (log/log.h: opened, and switched on reloads, there). */
static void access_log_follow(mr_worker_t *w, const mr_config_t *cfg)
{
    mr_access_log_t *al = w->px.alog;
    if (!al && cfg->access_log && mr_log_access_fd() >= 0) {
        if ((w->px.alog = mr_access_log_new(w->loop, mr_log_access_fd(), cfg->access_log_json))) {
            mr_access_log_on_idle(w->px.alog, client_gone, w); /* a draining worker waits for its log */
            mr_access_log_configure(w->px.alog, true, cfg->access_log_json, cfg->access_format);
        }
    } else if (al) {
        mr_access_log_configure(al, cfg->access_log != NULL, cfg->access_log_json, cfg->access_format);
    }
}

static void abort_reload(mr_worker_t *w)
{
    mr_config_t *cfg = w->reload_cfg;
    if (w->reload_gen) mr_gen_unref(w->reload_gen);
    w->reload_gen = NULL;
    for (int i = 0; i < cfg->nlisten; i++)
        if (w->reload_fds[i] >= 0) close(w->reload_fds[i]);
    atomic_store(&w->reload_state, 2);
}

static void commit_reload(mr_worker_t *w)
{
    mr_config_t *cfg = w->reload_cfg;
    mr_gen_t *old = w->px.gen;
    mr_proxy_set_gen(&w->px, w->reload_gen);
    w->reload_gen = NULL;
    w->cfg = cfg;
    access_log_follow(w, cfg);
    mr_resolver_opts_t ro = MR_RESOLVER_DEFAULTS;
    ro.ttl_ms = cfg->resolver_ttl_ms;
    ro.negative_ttl_ms = cfg->resolver_negative_ttl_ms;
    mr_resolver_configure(w->resolver, &ro);
    w->px.servers.ttl_ms = ro.ttl_ms;
    mr_lua_vm_retire(old->lua);
    gen_retired(w, old);
    mr_gen_unref(old);
    for (mr_listener_t *l = w->listeners; l; l = l->next) {
        bool kept = false;
        for (int i = 0; i < cfg->nlisten && !kept; i++) kept = strcmp(cfg->listen[i].addr, l->addr) == 0;
        if (!kept && !l->closing) {
            l->closing = true;
            if (l->op.active) mr_loop_cancel(w->loop, &l->op);
        }
    }
    for (int i = 0; i < cfg->nlisten; i++)
        if (w->reload_fds[i] >= 0 && !listener_new(w, w->reload_fds[i], cfg->listen[i].addr))
            close(w->reload_fds[i]);
    /* Closing listeners with no op in flight can go now; the others go on their completion. */
    for (mr_listener_t *l = w->listeners, *next; l; l = next) {
        next = l->next;
        if (l->closing && !l->op.active) listener_free(w, l);
    }
    if (w->accepting && !w->accept_paused) arm_accepts(w);
    atomic_store(&w->reload_state, 2);
}

void mr_worker_reload(mr_worker_t *w, mr_config_t *cfg, uint64_t id, int *fds)
{
    w->reload_cfg = cfg;
    w->reload_id = id;
    w->reload_fds = fds;
    w->reload_err[0] = 0;
    atomic_store(&w->reload_state, 0);
    mr_worker_command(w, MR_CMD_RELOAD);
}

void mr_worker_reload_finish(mr_worker_t *w, bool commit)
{
    mr_worker_command(w, commit ? MR_CMD_RELOAD_COMMIT : MR_CMD_RELOAD_ABORT);
}

static void event_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_worker_t *w = (mr_worker_t *)((char *)op - offsetof(mr_worker_t, ev_op));
    int cmd = atomic_exchange(&w->cmd, MR_CMD_NONE);
    if (cmd == MR_CMD_STOP) begin_drain(w, false);
    else if (cmd == MR_CMD_QUIT) begin_drain(w, true);
    else if (cmd == MR_CMD_RELOAD) build_reload(w);
    else if (cmd == MR_CMD_RELOAD_COMMIT) commit_reload(w);
    else if (cmd == MR_CMD_RELOAD_ABORT) abort_reload(w);
    if (res >= 0 || res == -EINTR) mr_loop_read(loop, &w->ev_op, w->evfd, &w->ev_val, sizeof w->ev_val);
}

int mr_worker_prepare(mr_worker_t *w, const mr_config_t *cfg, int id, int cpu, const int *inherited)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->cpu = cpu;
    w->cfg = cfg;
    snprintf(w->tag, sizeof w->tag, "w%d", id);
    for (int i = cfg->nlisten - 1; i >= 0; i--) {
        int fd = inherited && inherited[i] >= 0 ? inherited[i] : mr_net_listen(&cfg->listen[i].sa, cfg->listen[i].backlog);
        if (fd < 0) {
            mr_error("listen %s: %s", cfg->listen[i].addr, strerror(-fd));
            return fd;
        }
        if (!listener_new(w, fd, cfg->listen[i].addr)) { close(fd); return -ENOMEM; }
    }
    w->evfd = eventfd(0, EFD_CLOEXEC);
    if (w->evfd < 0) return -errno;
    return 0;
}

static void *worker_main(void *arg)
{
    mr_worker_t *w = arg;
    char err[1024];
    mr_log_set_thread_tag(w->tag);
    if (w->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->cpu, &set);
        if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) mr_warn("cannot pin to CPU %d", w->cpu);
    }
    /* cfg->loop holds the backend the main thread already resolved (see mr_server_run). */
    mr_loop_opts_t lo = { .entries = 1024, .buf_count = 512, .buf_size = 16384, .backend = MR_LOOP_AUTO };
    if (mr_loop_backend_parse(w->cfg->loop, &lo.backend) < 0) lo.backend = MR_LOOP_AUTO;
    int rc = mr_loop_init(&w->loop, &lo);
    if (rc < 0) {
        mr_error("%s loop setup failed: %s", mr_loop_backend_name(lo.backend), strerror(-rc));
        w->startup_rc = rc;
        atomic_store(&w->ready, -1);
        return NULL;
    }
    mr_resolver_opts_t ro = MR_RESOLVER_DEFAULTS;
    ro.ttl_ms = w->cfg->resolver_ttl_ms;
    ro.negative_ttl_ms = w->cfg->resolver_negative_ttl_ms;
    w->resolver = mr_resolver_new(w->loop, &ro);
    if (w->resolver) mr_udp_thread_init(w->loop, w->resolver);
    if (!w->resolver || mr_cosock_thread_init(w->loop, w->resolver) < 0) {
        w->startup_rc = -ENOMEM;
        atomic_store(&w->ready, -1);
        mr_loop_free(w->loop);
        mr_resolver_free(w->resolver);
        return NULL;
    }
    mr_proxy_init(&w->px, w->loop, client_gone, w);
    w->px.metrics = mr_metrics_worker(w->id);
    /* Upstream servers named by host follow DNS through the same resolver as cosockets. */
    w->px.servers.res = w->resolver;
    w->px.servers.ttl_ms = ro.ttl_ms;
    w->conns.px = &w->px;
    w->conns.gone = client_gone;
    w->conns.gone_arg = w;
    /* VMs are thread-affine: each worker evaluates the config in its own VM, on its own thread. */
    mr_gen_t *gen;
    if (mr_gen_new((mr_config_t *)w->cfg, 1, &w->px.servers, &gen, err, sizeof err) < 0) {
        mr_error("%s", err);
        w->startup_rc = -EINVAL;
        atomic_store(&w->ready, -1);
        mr_proxy_free(&w->px);
        mr_loop_free(w->loop);
        mr_cosock_thread_free();
        mr_udp_thread_free();
        mr_resolver_free(w->resolver);
        return NULL;
    }
    mr_proxy_set_gen(&w->px, gen);
    access_log_follow(w, w->cfg);
    w->accepting = true;
    arm_accepts(w);
    w->ev_op.fn = event_done;
    mr_loop_read(w->loop, &w->ev_op, w->evfd, &w->ev_val, sizeof w->ev_val);
    w->metrics_timer.fn = metrics_tick;
    mr_timer_set(w->loop, &w->metrics_timer, 1000);
    atomic_store(&w->ready, 1);
    mr_loop_run(w->loop);
    mr_access_log_free(w->px.alog);
    mr_lua_thread_abort(); /* timers still pending when the loop stopped never run */
    mr_gen_unref(w->px.gen);
    mr_proxy_free(&w->px);
    mr_conns_free(&w->conns);
    mr_loop_free(w->loop);
    mr_cosock_thread_free();
    mr_udp_thread_free();
    mr_h1_thread_free();
    mr_h2_thread_free();
    mr_h2client_thread_free();
    mr_sock_thread_free();
    mr_resolver_free(w->resolver); /* a helper thread stuck in getaddrinfo is not waited for */
    while (w->listeners) listener_free(w, w->listeners);
    close(w->evfd);
    return NULL;
}

int mr_worker_start(mr_worker_t *w)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    return rc ? -rc : 0;
}

void mr_worker_command(mr_worker_t *w, int cmd)
{
    atomic_store(&w->cmd, cmd);
    uint64_t one = 1;
    ssize_t n = write(w->evfd, &one, sizeof one);
    (void)n;
}

void mr_worker_join(mr_worker_t *w) { pthread_join(w->thread, NULL); }
