#include "core/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log/log.h"
#include "lua/lua.h"
#include "net/net.h"
#include "proxy/access_log.h"

static int access_log_fd = -1; /* shared by all workers, opened once */

static void accept_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags);

static void arm_accepts(mr_worker_t *w)
{
    for (int i = 0; i < w->nlisten; i++)
        if (w->listen_fds[i] >= 0 && !w->acceptors[i].op.active)
            mr_loop_accept(w->loop, &w->acceptors[i].op, w->listen_fds[i]);
}

static void stop_accepts(mr_worker_t *w)
{
    for (int i = 0; i < w->nlisten; i++)
        if (w->acceptors[i].op.active) mr_loop_cancel(w->loop, &w->acceptors[i].op);
}

static void accept_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop;
    mr_worker_t *w = ((struct mr_acceptor *)op)->w;
    if (res >= 0) {
        if (w->draining) close(res);
        else mr_proxy_accept(w, res);
    } else if (res != -ECANCELED) {
        mr_warn("accept: %s", strerror(-res));
    }
    if (w->accepting && !w->draining && w->nclients >= w->cfg->limits.max_connections && !w->accept_paused) {
        /* Over the limit: leave further connections in the kernel backlog. */
        w->accept_paused = true;
        stop_accepts(w);
        return;
    }
    if (!(flags & MR_F_MORE) && w->draining) {
        /* A draining worker must not keep its listener: with SO_REUSEPORT the kernel would go on
         * queueing new connections on it that nobody accepts. Close it once its op is done. */
        for (int i = 0; i < w->nlisten; i++)
            if (&w->acceptors[i].op == op && w->listen_fds[i] >= 0) {
                close(w->listen_fds[i]);
                w->listen_fds[i] = -1;
            }
        return;
    }
    if (!(flags & MR_F_MORE) && w->accepting && !w->accept_paused && !w->draining)
        mr_loop_accept(w->loop, op, op->fd);
}

void mr_worker_client_gone(mr_worker_t *w)
{
    if (w->accept_paused && !w->draining && w->nclients < w->cfg->limits.max_connections) {
        w->accept_paused = false;
        arm_accepts(w);
    }
    if (w->draining && w->nclients == 0 && w->nupconns == 0) mr_loop_stop(w->loop);
}

static void drain_expired(mr_loop_t *loop, mr_timer_t *t)
{
    (void)loop;
    mr_worker_t *w = (mr_worker_t *)((char *)t - offsetof(mr_worker_t, drain_timer));
    mr_warn("shutdown timeout: closing %u connections", w->nclients);
    mr_proxy_close_all(w);
}

static void begin_drain(mr_worker_t *w, bool now)
{
    if (!w->draining) {
        w->draining = true;
        w->accepting = false;
        stop_accepts(w);
        mr_proxy_shutdown(w);
        w->drain_timer.fn = drain_expired;
        mr_timer_set(w->loop, &w->drain_timer, w->cfg->shutdown_timeout_ms);
    }
    if (now) mr_proxy_close_all(w);
    mr_worker_client_gone(w);
}

static void event_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_worker_t *w = (mr_worker_t *)((char *)op - offsetof(mr_worker_t, ev_op));
    int cmd = atomic_exchange(&w->cmd, MR_CMD_NONE);
    if (cmd == MR_CMD_STOP) begin_drain(w, false);
    else if (cmd == MR_CMD_QUIT) begin_drain(w, true);
    if (res >= 0 || res == -EINTR) mr_loop_read(loop, &w->ev_op, w->evfd, &w->ev_val, sizeof w->ev_val);
}

int mr_worker_prepare(mr_worker_t *w, const mr_config_t *cfg, int id, int cpu)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->cpu = cpu;
    w->cfg = cfg;
    snprintf(w->tag, sizeof w->tag, "w%d", id);
    w->h1limits.max_request_line = cfg->limits.max_request_line;
    w->h1limits.max_header_size = cfg->limits.max_header_size;
    w->h1limits.max_headers = cfg->limits.max_headers;
    w->nlisten = cfg->nlisten;
    w->listen_fds = calloc((size_t)w->nlisten, sizeof *w->listen_fds);
    w->acceptors = calloc((size_t)w->nlisten, sizeof *w->acceptors);
    for (int i = 0; i < w->nlisten; i++) w->listen_fds[i] = -1;
    for (int i = 0; i < w->nlisten; i++) {
        int fd = mr_net_listen(&cfg->listen[i].sa, cfg->listen[i].backlog);
        if (fd < 0) {
            mr_error("listen %s: %s", cfg->listen[i].addr, strerror(-fd));
            return fd;
        }
        w->listen_fds[i] = fd;
    }
    w->evfd = eventfd(0, EFD_CLOEXEC);
    if (w->evfd < 0) return -errno;
    if (cfg->access_log && access_log_fd < 0) {
        if (strcmp(cfg->access_log, "stdout") == 0) access_log_fd = 1;
        else if (strcmp(cfg->access_log, "stderr") == 0) access_log_fd = 2;
        else access_log_fd = open(cfg->access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (access_log_fd < 0) {
            int rc = -errno;
            mr_error("access_log %s: %s", cfg->access_log, strerror(-rc));
            return rc;
        }
    }
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
    mr_loop_opts_t lo = { .entries = 1024, .buf_count = 512, .buf_size = 16384 };
    int rc = mr_loop_init(&w->loop, &lo);
    if (rc < 0) {
        mr_error("io_uring setup failed: %s", strerror(-rc));
        w->startup_rc = rc;
        atomic_store(&w->ready, -1);
        return NULL;
    }
    /* VMs are thread-affine: each worker evaluates the config in its own VM, on its own thread. */
    if (mr_gen_new((mr_config_t *)w->cfg, 1, &w->servers, &w->gen, err, sizeof err) < 0) {
        mr_error("%s", err);
        w->startup_rc = -EINVAL;
        atomic_store(&w->ready, -1);
        mr_server_registry_free(&w->servers);
        mr_loop_free(w->loop);
        return NULL;
    }
    if (access_log_fd >= 0) w->alog = mr_access_log_new(w->loop, access_log_fd, w->cfg->access_log_json);
    for (int i = 0; i < w->nlisten; i++) {
        w->acceptors[i].op.fn = accept_done;
        w->acceptors[i].w = w;
    }
    w->accepting = true;
    arm_accepts(w);
    w->ev_op.fn = event_done;
    mr_loop_read(w->loop, &w->ev_op, w->evfd, &w->ev_val, sizeof w->ev_val);
    atomic_store(&w->ready, 1);
    mr_loop_run(w->loop);
    mr_access_log_free(w->alog);
    mr_gen_unref(w->gen);
    mr_proxy_worker_free(w);
    mr_loop_free(w->loop);
    for (int i = 0; i < w->nlisten; i++)
        if (w->listen_fds[i] >= 0) close(w->listen_fds[i]);
    close(w->evfd);
    free(w->listen_fds);
    free(w->acceptors);
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
