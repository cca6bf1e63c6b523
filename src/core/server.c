#include "core/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/worker.h"
#include "log/log.h"
#include "net/net.h"
#include "loop/loop.h"

#define MOONRING_VERSION "0.1.0"

static int write_pid(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    return 0;
}

int mr_server_check(const char *path)
{
    char err[2048];
    mr_config_t *cfg = NULL;
    if (mr_config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        return 1;
    }
    fprintf(stderr, "moonring: configuration %s is ok (%d listeners, %d upstreams, %d routes)\n", path,
            cfg->nlisten, cfg->nupstreams, cfg->nroutes);
    mr_config_free(cfg);
    return 0;
}

int mr_server_signal(const char *path, const char *what)
{
    int sig = strcmp(what, "stop") == 0 ? SIGTERM : strcmp(what, "quit") == 0 ? SIGQUIT
            : strcmp(what, "reload") == 0 ? SIGHUP : 0;
    if (!sig) { fprintf(stderr, "moonring: -s takes stop, quit or reload, not '%s'\n", what); return 2; }
    char err[2048];
    mr_config_t *cfg = NULL;
    if (mr_config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        return 1;
    }
    int rc = 1;
    if (sig == SIGHUP && cfg->admin_addr) {
        /* With an admin endpoint, -s reload waits for the outcome and reports it. */
        int fd = socket(cfg->admin_sa.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval tv = { .tv_sec = 30 };
        if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (fd < 0 || connect(fd, (struct sockaddr *)&cfg->admin_sa.sa, cfg->admin_sa.len) < 0) {
            fprintf(stderr, "moonring: cannot reach the admin endpoint %s: %s\n", cfg->admin_addr, strerror(errno));
            if (fd >= 0) close(fd);
            goto done;
        }
        static const char req[] = "POST /-/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        char buf[8192];
        size_t len = 0;
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
            ssize_t r;
            while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
        }
        close(fd);
        buf[len] = 0;
        const char *body = strstr(buf, "\r\n\r\n");
        int status = 0;
        sscanf(buf, "HTTP/1.1 %d", &status);
        printf("%s", body ? body + 4 : buf);
        rc = status == 200 ? 0 : 1;
        goto done;
    }
    if (!cfg->pid) {
        fprintf(stderr, "moonring: %s sets no pid file, so -s cannot find the instance\n", path);
        goto done;
    }
    FILE *f = fopen(cfg->pid, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "moonring: cannot read pid file %s\n", cfg->pid);
        if (f) fclose(f);
        goto done;
    }
    fclose(f);
    if (kill(pid, sig) < 0) {
        fprintf(stderr, "moonring: kill %d: %s\n", pid, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    mr_config_free(cfg);
    return rc;
}

/* The backend asked for: MOONRING_LOOP (tests, one-off overrides) wins over the config's `loop`.
 * Returns 0 or -EINVAL; *source and *value name where the request came from, for messages. */
static int wanted_backend(const char *config_value, mr_loop_backend_t *out, const char **source,
                          const char **value)
{
    const char *env = getenv("MOONRING_LOOP");
    if (env && *env) { *source = "MOONRING_LOOP"; *value = env; }
    else { *source = "config"; *value = config_value ? config_value : "auto"; }
    return mr_loop_backend_parse(*value, out);
}

int mr_server_version(const char *config_path)
{
    mr_loop_features_t f;
    mr_config_t *cfg = NULL;
    char err[2048];
    if (config_path && mr_config_load(config_path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", config_path, err);
        return 1;
    }
    printf("moonring %s\n", MOONRING_VERSION);
    int rc = mr_loop_probe(&f);
    if (rc < 0) {
        printf("io_uring: unavailable (%s)\n", f.kernel_note ? f.kernel_note : strerror(-rc));
    } else {
        printf("io_uring: yes; single_issuer=%s defer_taskrun=%s coop_taskrun=%s ext_arg=%s fast_poll=%s "
               "buf_ring=%s recv_multishot=%s\n",
               f.single_issuer ? "yes" : "no", f.defer_taskrun ? "yes" : "no", f.coop_taskrun ? "yes" : "no",
               f.ext_arg ? "yes" : "no", f.fast_poll ? "yes" : "no", f.buf_ring ? "yes" : "no",
               f.recv_multishot ? "yes" : "no");
    }
    /* With -c, the config's `loop` decides (MOONRING_LOOP still wins); without, the default. */
    mr_loop_backend_t want, got;
    const char *src, *val;
    rc = wanted_backend(cfg ? cfg->loop : NULL, &want, &src, &val);
    if (rc == 0 && cfg && strcmp(src, "config") == 0) val = cfg->loop;
    int bad = rc < 0;
    char valbuf[64];
    snprintf(valbuf, sizeof valbuf, "%s", val);
    mr_config_unref(cfg);
    val = valbuf;
    if (bad) {
        printf("backend: none (%s=%s: expected auto, io_uring or epoll)\n", src, val);
        return 1;
    }
    rc = mr_loop_choose(want, &got, &f);
    if (rc < 0) {
        printf("backend: none (%s=%s, but %s)\n", src, val, f.kernel_note ? f.kernel_note : strerror(-rc));
        return 1;
    }
    if (got == MR_LOOP_IO_URING) printf("backend: io_uring\n");
    else if (want == MR_LOOP_EPOLL) printf("backend: epoll (%s=epoll)\n", src);
    else printf("backend: epoll (%s)\n", f.kernel_note ? f.kernel_note : "io_uring unusable");
    return 0;
}

/* The running instance, for reloads (SIGHUP, the admin endpoint). Main thread and admin
 * thread only; `lock` serialises reloads, which also coalesces a storm of them. */
static struct {
    pthread_mutex_t lock;
    mr_worker_t *workers;
    int nworkers;
    mr_config_t *cfg;
    uint64_t generation;
    const char *path;
    atomic_bool stopping;
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Validates the config file again, then moves every worker to a new generation. Returns the new
 * generation number, or 0 with msg filled (the current generation keeps serving). */
static uint64_t server_reload(char *msg, size_t msglen)
{
    uint64_t gen = 0, t0 = now_us();
    int **fds = NULL;
    mr_config_t *cfg = NULL;
    pthread_mutex_lock(&srv.lock);
    if (atomic_load(&srv.stopping)) { snprintf(msg, msglen, "shutting down"); goto out; }
    if (mr_config_load(srv.path, &cfg, msg, msglen) < 0) goto out;
    if (cfg->workers != srv.cfg->workers)
        mr_warn("reload: workers changed from %d to %d; that takes a restart, keeping %d", srv.cfg->workers,
                cfg->workers, srv.cfg->workers);
    free(cfg->loop);
    cfg->loop = strdup(srv.cfg->loop); /* the backend is chosen once, at start */
    fds = calloc((size_t)srv.nworkers, sizeof *fds);
    for (int w = 0; w < srv.nworkers; w++) {
        fds[w] = malloc(((size_t)cfg->nlisten + 1) * sizeof **fds);
        for (int i = 0; i < cfg->nlisten; i++) fds[w][i] = -1;
    }
    /* New listeners are bound here, before any worker switches, so a bind error refuses the
     * whole reload. Existing ones are never closed or re-bound. */
    for (int i = 0; i < cfg->nlisten; i++) {
        bool known = false;
        for (int j = 0; j < srv.cfg->nlisten && !known; j++) known = strcmp(srv.cfg->listen[j].addr, cfg->listen[i].addr) == 0;
        if (known) continue;
        for (int w = 0; w < srv.nworkers; w++) {
            int fd = mr_net_listen(&cfg->listen[i].sa, cfg->listen[i].backlog);
            if (fd < 0) {
                snprintf(msg, msglen, "%s: listen %s: %s", srv.path, cfg->listen[i].addr, strerror(-fd));
                for (int x = 0; x < srv.nworkers; x++)
                    for (int k = 0; k < cfg->nlisten; k++)
                        if (fds[x][k] >= 0) close(fds[x][k]);
                goto out;
            }
            fds[w][i] = fd;
        }
    }
    uint64_t id = srv.generation + 1;
    for (int w = 0; w < srv.nworkers; w++) mr_worker_reload(&srv.workers[w], cfg, id, fds[w]);
    int failed = 0;
    for (int w = 0; w < srv.nworkers; w++) {
        while (atomic_load(&srv.workers[w].reload_state) == 0) usleep(200);
        if (atomic_load(&srv.workers[w].reload_state) < 0 && !failed++)
            snprintf(msg, msglen, "worker %d: %s", w, srv.workers[w].reload_err);
    }
    srv.generation = id;
    if (failed) {
        mr_error("reload: %d of %d workers failed to switch to generation %llu", failed, srv.nworkers,
                 (unsigned long long)id);
        goto out;
    }
    mr_config_unref(srv.cfg);
    srv.cfg = cfg;
    cfg = NULL;
    gen = id;
    mr_notice("reload: generation %llu serving in every worker after %.1f ms", (unsigned long long)gen,
              (double)(now_us() - t0) / 1000.0);
out:
    if (!gen && msg[0]) mr_error("reload refused, the current generation keeps serving: %s", msg);
    if (fds)
        for (int w = 0; w < srv.nworkers; w++) free(fds[w]);
    free(fds);
    mr_config_unref(cfg);
    pthread_mutex_unlock(&srv.lock);
    return gen;
}

static void json_escape(char *out, size_t cap, const char *in)
{
    size_t o = 0;
    for (; *in && o + 7 < cap; in++) {
        unsigned char ch = (unsigned char)*in;
        if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
        else if (ch < 0x20) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        else out[o++] = (char)ch;
    }
    out[o] = 0;
}

static void admin_reply(int fd, int status, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     status == 200 ? "OK" : status == 404 ? "Not Found" : status == 400 ? "Bad Request"
                     : "Internal Server Error", strlen(body));
    if (write(fd, head, (size_t)n) == n) {
        ssize_t w = write(fd, body, strlen(body));
        (void)w;
    }
}

/* The admin endpoint runs on its own thread with plain blocking sockets: it serves operators,
 * not traffic, and must be able to wait for a reload to finish. */
static void *admin_main(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    mr_log_set_thread_tag("admin");
    while (!atomic_load(&srv.stopping)) {
        struct pollfd p = { .fd = lfd, .events = POLLIN };
        if (poll(&p, 1, 200) <= 0) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        struct timeval tv = { .tv_sec = 2 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[8192];
        size_t len = 0;
        while (len < sizeof req - 1) {
            ssize_t r = read(fd, req + len, sizeof req - 1 - len);
            if (r <= 0) break;
            len += (size_t)r;
            req[len] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        req[len] = 0;
        char method[16] = "", target[256] = "";
        if (sscanf(req, "%15s %255s", method, target) != 2) {
            admin_reply(fd, 400, "{\"error\":\"bad request\"}\n");
        } else if (strcmp(target, "/-/reload") == 0 && strcmp(method, "POST") == 0) {
            char msg[2048] = "", esc[4200], body[4400];
            uint64_t gen = server_reload(msg, sizeof msg);
            if (gen) {
                snprintf(body, sizeof body, "{\"generation\":%llu}\n", (unsigned long long)gen);
                admin_reply(fd, 200, body);
            } else {
                json_escape(esc, sizeof esc, msg);
                snprintf(body, sizeof body, "{\"error\":\"%s\"}\n", esc);
                admin_reply(fd, 500, body);
            }
        } else if (strcmp(target, "/-/status") == 0 && strcmp(method, "GET") == 0) {
            char body[256];
            pthread_mutex_lock(&srv.lock);
            snprintf(body, sizeof body, "{\"generation\":%llu,\"workers\":%d,\"pid\":%d}\n",
                     (unsigned long long)srv.generation, srv.nworkers, (int)getpid());
            pthread_mutex_unlock(&srv.lock);
            admin_reply(fd, 200, body);
        } else {
            admin_reply(fd, 404, "{\"error\":\"not found; try POST /-/reload or GET /-/status\"}\n");
        }
        close(fd);
    }
    close(lfd);
    return NULL;
}

static bool is_loopback(const mr_addr_t *a)
{
    if (a->sa.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&a->sa)->sin_addr.s_addr) >> 24) == 127;
    if (a->sa.ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&a->sa)->sin6_addr);
    return false;
}

/* The shortest ticket_rotation of the config's TLS listeners (0: no TLS listener). */
static void rotate_ticket_keys_if_due(const mr_config_t *cfg, struct timespec *last)
{
    uint32_t every = 0;
    for (int i = 0; i < cfg->nlisten; i++)
        if (cfg->listen[i].tls && (!every || cfg->listen[i].ticket_rotation_ms < every))
            every = cfg->listen[i].ticket_rotation_ms;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t elapsed = (int64_t)(now.tv_sec - last->tv_sec) * 1000 + (now.tv_nsec - last->tv_nsec) / 1000000;
    if (!every || elapsed < (int64_t)every) return;
    mr_tls_rotate_ticket_keys();
    *last = now;
    mr_info("TLS session ticket keys rotated");
}

int mr_server_run(const char *path)
{
    char err[2048];
    mr_config_t *cfg = NULL;
    int exit_code = 1;
    mr_worker_t *workers = NULL;
    int nstarted = 0;
    if (mr_config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        return 1;
    }
    int rc = mr_log_open(cfg->error_log, (mr_log_level_t)cfg->log_level);
    if (rc < 0) {
        fprintf(stderr, "moonring: error_log %s: %s\n", cfg->error_log, strerror(-rc));
        goto done;
    }
    mr_loop_backend_t want, got;
    const char *want_src, *want_val;
    if (wanted_backend(cfg->loop, &want, &want_src, &want_val) < 0) {
        mr_error("%s: loop \"%s\" is not auto, io_uring or epoll", want_src, want_val);
        goto done;
    }
    mr_loop_features_t feat;
    rc = mr_loop_choose(want, &got, &feat);
    if (rc < 0) {
        mr_error("loop = \"io_uring\" (from %s) but io_uring is not usable here: %s", want_src,
                 feat.kernel_note ? feat.kernel_note : strerror(-rc));
        goto done;
    }
    if (got == MR_LOOP_IO_URING)
        mr_info("io_uring: defer_taskrun=%d single_issuer=%d coop_taskrun=%d", feat.defer_taskrun,
                feat.single_issuer, feat.coop_taskrun);
    else if (want == MR_LOOP_AUTO)
        mr_warn("io_uring is not usable here (%s); falling back to the epoll backend",
                feat.kernel_note ? feat.kernel_note : "probe failed");
    /* Workers read the resolved backend from here, so they neither re-probe nor disagree. */
    char *resolved = strdup(mr_loop_backend_name(got));
    if (!resolved) goto done;
    free(cfg->loop);
    cfg->loop = resolved;

    /* Workers inherit this mask: only the main thread takes signals, via sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    workers = calloc((size_t)cfg->workers, sizeof *workers);
    for (int i = 0; i < cfg->workers; i++) {
        rc = mr_worker_prepare(&workers[i], cfg, i, ncpu > 0 ? (int)(i % ncpu) : -1);
        if (rc < 0) goto stop;
    }
    for (int i = 0; i < cfg->workers; i++) {
        rc = mr_worker_start(&workers[i]);
        if (rc < 0) { mr_error("cannot start worker %d: %s", i, strerror(-rc)); goto stop; }
        nstarted++;
    }
    for (int i = 0; i < nstarted; i++) {
        while (atomic_load(&workers[i].ready) == 0) usleep(1000);
        if (atomic_load(&workers[i].ready) < 0) goto stop;
    }
    srv.workers = workers;
    srv.nworkers = nstarted;
    srv.cfg = cfg;
    srv.generation = 1;
    srv.path = path;
    pthread_t admin_thread;
    bool admin_running = false;
    if (cfg->admin_addr) {
        if (!is_loopback(&cfg->admin_sa)) {
            mr_error("admin.listen %s: the admin endpoint only listens on loopback addresses", cfg->admin_addr);
            goto stop;
        }
        int afd = mr_net_listen(&cfg->admin_sa, 16);
        if (afd < 0) {
            mr_error("admin.listen %s: %s", cfg->admin_addr, strerror(-afd));
            goto stop;
        }
        if (pthread_create(&admin_thread, NULL, admin_main, (void *)(intptr_t)afd) != 0) {
            close(afd);
            goto stop;
        }
        admin_running = true;
        mr_notice("admin endpoint on %s (POST /-/reload, GET /-/status)", cfg->admin_addr);
    }
    if (cfg->pid && write_pid(cfg->pid) < 0) mr_warn("cannot write pid file %s: %s", cfg->pid, strerror(errno));
    for (int i = 0; i < cfg->nlisten; i++) mr_notice("listening on %s", cfg->listen[i].addr);
    mr_notice("moonring %s started with %d workers, %s backend", MOONRING_VERSION, cfg->workers, cfg->loop);

    int cmd = MR_CMD_STOP;
    struct timespec last_rotation;
    clock_gettime(CLOCK_MONOTONIC, &last_rotation);
    for (;;) {
        /* Wake up once a minute to rotate the process-wide TLS ticket keys when due. */
        struct timespec tick = { 60, 0 };
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig < 0) {
            pthread_mutex_lock(&srv.lock);
            rotate_ticket_keys_if_due(srv.cfg, &last_rotation);
            pthread_mutex_unlock(&srv.lock);
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT) { mr_notice("signal %d: graceful stop", sig); cmd = MR_CMD_STOP; break; }
        if (sig == SIGQUIT) { mr_notice("SIGQUIT: stopping now"); cmd = MR_CMD_QUIT; break; }
        if (sig == SIGHUP) {
            char msg[2048] = "";
            mr_notice("SIGHUP: reloading %s", path);
            server_reload(msg, sizeof msg);
        }
    }
    atomic_store(&srv.stopping, true);
    if (admin_running) pthread_join(admin_thread, NULL);
    pthread_mutex_lock(&srv.lock); /* no reload may be half-way through while workers stop */
    pthread_mutex_unlock(&srv.lock);
    cfg = srv.cfg;
    exit_code = 0;
    for (int i = 0; i < nstarted; i++) mr_worker_command(&workers[i], cmd);
    for (int i = 0; i < nstarted; i++) mr_worker_join(&workers[i]);
    nstarted = 0;
    if (cfg->pid) unlink(cfg->pid);
    mr_notice("stopped");
    goto done;

stop:
    for (int i = 0; i < nstarted; i++) {
        if (atomic_load(&workers[i].ready) == 1) mr_worker_command(&workers[i], MR_CMD_QUIT);
    }
    for (int i = 0; i < nstarted; i++) mr_worker_join(&workers[i]);
done:
    free(workers);
    mr_config_unref(cfg);
    return exit_code;
}
