#include "core/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <sys/signalfd.h>
#include <sys/un.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/admin.h"
#include "core/watch.h"
#include "core/worker.h"
#include "log/log.h"
#include "net/net.h"
#include "loop/loop.h"
#include "metrics/metrics.h"

#define MOONRING_VERSION MR_VERSION

/* Writes this process's pid to path. Through a temporary file renamed over it, so a reader
 * (moonring -s, a test, an init system) never sees it empty or half written; where the directory
 * takes no new file, in place. Returns 0 or -errno. */
static int write_pid(const char *path)
{
    char tmp[4200], buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        bool ok = write(fd, buf, (size_t)n) == n;
        close(fd);
        if (ok && rename(tmp, path) == 0) return 0;
        unlink(tmp);
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    int rc = write(fd, buf, (size_t)n) == n ? 0 : -EIO;
    close(fd);
    return rc;
}

/* systemd's readiness protocol (Type=notify): one datagram to $NOTIFY_SOCKET. Without the
 * variable (not under systemd) nothing happens. */
static void sd_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof ((struct sockaddr_un *)0)->sun_path)
        return;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path));
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    ssize_t n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path)));
    (void)n;
    close(fd);
}

/* The uid and gid of the config's user / group (names or numbers). Returns 0 or -1 with err. A
 * user without a group runs with the user's primary group. */
static int lookup_account(const mr_config_t *cfg, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
    *uid = getuid();
    *gid = getgid();
    if (cfg->user) {
        struct passwd *pw = getpwnam(cfg->user);
        char *end;
        unsigned long n = strtoul(cfg->user, &end, 10);
        if (!pw && *end == 0) pw = getpwuid((uid_t)n);
        if (!pw) { mr_config_error(cfg->file, err, errlen, "user: no such user \"%s\"", cfg->user); return -1; }
        *uid = pw->pw_uid;
        *gid = pw->pw_gid;
    }
    if (cfg->group) {
        struct group *gr = getgrnam(cfg->group);
        char *end;
        unsigned long n = strtoul(cfg->group, &end, 10);
        if (!gr && *end == 0) gr = getgrgid((gid_t)n);
        if (!gr) { mr_config_error(cfg->file, err, errlen, "group: no such group \"%s\"", cfg->group); return -1; }
        *gid = gr->gr_gid;
    }
    return 0;
}

/* Drops root for the config's user/group once the listeners are bound and the logs open (as
 * nginx's workers do). The pid file is created first and given to the user, so it can still be
 * written (and removed at exit where the directory allows). Running as that user already (an
 * upgrade, or systemd's User=) is fine; another non-root user cannot switch. Returns 0 or -1. */
static int drop_privileges(const mr_config_t *cfg)
{
    if (!cfg->user && !cfg->group) return 0;
    char err[1024];
    uid_t uid;
    gid_t gid;
    if (lookup_account(cfg, &uid, &gid, err, sizeof err) < 0) { mr_error("%s", err); return -1; }
    if (getuid() == uid && geteuid() == uid && getgid() == gid) return 0;
    if (geteuid() != 0) {
        mr_error("user/group: running as uid %d, which cannot switch to uid %d gid %d (start as root, or as that "
                 "user)", (int)geteuid(), (int)uid, (int)gid);
        return -1;
    }
    if (cfg->pid) {
        int fd = open(cfg->pid, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (fchown(fd, uid, gid) < 0) mr_warn("pid: %s: chown: %s", cfg->pid, strerror(errno));
            close(fd);
        }
    }
    const char *name = cfg->user ? cfg->user : NULL;
    struct passwd *pw = name ? getpwnam(name) : NULL;
    if ((pw ? initgroups(pw->pw_name, gid) : setgroups(1, &gid)) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
        mr_error("user/group: cannot switch to uid %d gid %d: %s", (int)uid, (int)gid, strerror(errno));
        return -1;
    }
    mr_notice("running as uid %d gid %d", (int)uid, (int)gid);
    return 0;
}

/* 0 when path can be opened for writing as a start would open it, else -errno. A file that does
 * not exist yet is created and removed again, so the answer covers the directory's permissions,
 * a read-only file system and the like exactly, and -t leaves nothing behind. */
static int check_writable(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) { close(fd); return 0; }
    if (errno == ENXIO) return 0; /* a FIFO nobody reads yet: a start waits for its reader */
    if (errno != ENOENT) return -errno;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    close(fd);
    unlink(path);
    return 0;
}

/* 0 when addr can be bound the way a worker binds its listener (SO_REUSEADDR and SO_REUSEPORT),
 * else -errno: so a running moonring's own listeners (same options, same user) do not count as
 * taken, while a port held by another program, or one this user may not bind, does. The socket
 * never listens, so it takes no connection from anyone. */
static int check_bindable(const mr_addr_t *addr)
{
    int one = 1, rc = 0;
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)&addr->sa, addr->len) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* What -t checks beyond the file itself: what would make a start fail. Returns 0, or -1 with
 * err naming the key (file:line: key: ...). */
static int check_startable(const mr_config_t *cfg, char *err, size_t errlen)
{
    int rc;
    if (strcmp(cfg->error_log, "stderr") != 0 && (rc = check_writable(cfg->error_log)) < 0) {
        mr_config_error(cfg->file, err, errlen, "error_log: %s: cannot open for writing (%s)", cfg->error_log,
                        strerror(-rc));
        return -1;
    }
    if (cfg->access_log && strcmp(cfg->access_log, "stdout") != 0 && strcmp(cfg->access_log, "stderr") != 0 &&
        (rc = check_writable(cfg->access_log)) < 0) {
        mr_config_error(cfg->file, err, errlen, "access_log: %s: cannot open for writing (%s)", cfg->access_log,
                        strerror(-rc));
        return -1;
    }
    if (cfg->pid && (rc = check_writable(cfg->pid)) < 0) {
        mr_config_error(cfg->file, err, errlen, "pid: %s: cannot open for writing (%s)", cfg->pid, strerror(-rc));
        return -1;
    }
    for (int i = 0; i < cfg->nlisten; i++) {
        if ((rc = check_bindable(&cfg->listen[i].sa)) < 0) {
            mr_config_error(cfg->file, err, errlen, "listen[%d]: cannot bind %s (%s)", i + 1, cfg->listen[i].addr,
                            strerror(-rc));
            return -1;
        }
    }
    uid_t uid;
    gid_t gid;
    if (lookup_account(cfg, &uid, &gid, err, errlen) < 0) return -1;
    if (cfg->admin_addr && (rc = check_bindable(&cfg->admin_sa)) < 0) {
        mr_config_error(cfg->file, err, errlen, "admin.listen: cannot bind %s (%s)", cfg->admin_addr, strerror(-rc));
        return -1;
    }
    return 0;
}

int mr_server_check(const char *path)
{
    char err[2048];
    mr_config_t *cfg = NULL;
    if (mr_config_load(path, &cfg, err, sizeof err) < 0 || check_startable(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        mr_config_free(cfg);
        return 1;
    }
    fprintf(stderr, "moonring: configuration %s is ok (%d listeners, %d upstreams, %d routes)\n", path,
            cfg->nlisten, cfg->nupstreams, cfg->nroutes);
    mr_config_free(cfg);
    return 0;
}

/* POST /-/<what> to the admin endpoint cfg names; prints the answer's body. Returns the exit
 * code (0: the instance answered 200), or -errno when the endpoint cannot be reached. */
static int admin_request(const mr_config_t *cfg, const char *what)
{
    int fd = socket(cfg->admin_sa.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct timeval tv = { .tv_sec = 90 }; /* an upgrade waits up to 60 s for the new process */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)&cfg->admin_sa.sa, cfg->admin_sa.len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    char req[128];
    int reqlen = snprintf(req, sizeof req, "POST /-/%s HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n", what);
    char buf[8192];
    size_t len = 0;
    if (write(fd, req, (size_t)reqlen) == reqlen) {
        ssize_t r;
        while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    const char *body = strstr(buf, "\r\n\r\n");
    int status = 0;
    sscanf(buf, "HTTP/1.1 %d", &status);
    printf("%s", body ? body + 4 : buf);
    return status == 200 ? 0 : 1;
}

int mr_server_signal(const char *path, const char *what)
{
    int sig = strcmp(what, "stop") == 0 ? SIGTERM : strcmp(what, "quit") == 0 ? SIGQUIT
            : strcmp(what, "reload") == 0 ? SIGHUP : strcmp(what, "upgrade") == 0 ? SIGUSR2
            : strcmp(what, "reopen") == 0 ? SIGUSR1 : 0;
    if (!sig) {
        fprintf(stderr, "moonring: -s takes stop, quit, reload, reopen or upgrade, not '%s'\n", what);
        return 2;
    }
    char err[2048];
    mr_config_t *cfg = NULL;
    if (mr_config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        return 1;
    }
    int rc = 1;
    if ((sig == SIGHUP || sig == SIGUSR2) && cfg->admin_addr) {
        /* With an admin endpoint, -s reload|upgrade waits for the outcome and reports it. */
        int e = admin_request(cfg, what);
        if (e >= 0) { rc = e; goto done; }
        /* The file may add or move the endpoint in this very reload: the instance still listens
         * where its current config says. Signal it through the pid file instead. */
        if (!cfg->pid) {
            fprintf(stderr, "moonring: cannot reach the admin endpoint %s: %s\n", cfg->admin_addr, strerror(-e));
            goto done;
        }
        fprintf(stderr, "moonring: cannot reach the admin endpoint %s (%s); signalling through the pid file %s "
                "instead (the outcome is in the error log)\n", cfg->admin_addr, strerror(-e), cfg->pid);
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
    printf("lua: %s\n", mr_config_lua_dir());
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
    /* [worker][index in cfg->listen]: each worker's listening socket, kept here so an upgrade
     * can hand them over without asking the workers (their lists change on their threads). */
    int **lfds;
    mr_watch_t *watch;            /* --watch, or NULL */
    mr_config_sources_t watched;  /* the files behind watch */
    mr_config_sources_t lazy;     /* modules workers required at request time: always watched */
    char exe[4096];               /* this binary, resolved at start, for upgrades */
    char **argv;
    atomic_bool upgraded;         /* a new process took over: leave the pid file alone */
    char loop_conf[16];           /* `loop` as the config at start set it (cfg->loop is resolved) */
    mr_admin_t *admin;            /* the admin endpoint's accept thread, or NULL */
    atomic_uint_fast64_t reloads_started; /* see server_reload */
    uint64_t last_reload_gen;     /* outcome of the last reload (under lock) */
    char last_reload_err[2048];
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Upgrade hand-over, between an old process and the new one it execs (see docs/reload.md):
 * MOONRING_INHERIT="fd,worker,addr;..." names each listening socket left open across exec,
 * MOONRING_READY_FD the pipe on which the new process writes one byte once it serves. */
#define ENV_INHERIT "MOONRING_INHERIT"
#define ENV_READY "MOONRING_READY_FD"

static void free_lfds(int **t, int nworkers)
{
    if (!t) return;
    for (int w = 0; w < nworkers; w++) free(t[w]);
    free(t);
}

/* --watch: after a load, watch what it read. A failed load adds its files to the set instead
 * of replacing it, so both the broken file and everything the serving generation uses stay
 * watched. Called with srv.lock held. */
static void watch_update(mr_config_sources_t *src, bool replace)
{
    if (!srv.watch || !src->files) return;
    if (replace) {
        mr_config_sources_free(&srv.watched);
        srv.watched = *src;
        src->files = NULL;
        src->n = 0;
        if (srv.lazy.n) {
            mr_config_sources_t lazy = { .files = calloc((size_t)srv.lazy.n + 1, sizeof (char *)), .n = 0 };
            for (int i = 0; lazy.files && i < srv.lazy.n; i++)
                if ((lazy.files[lazy.n] = strdup(srv.lazy.files[i]))) lazy.n++;
            watch_update(&lazy, false);
            mr_config_sources_free(&lazy);
            return;
        }
    } else {
        char **files = realloc(srv.watched.files, ((size_t)srv.watched.n + (size_t)src->n + 1) * sizeof *files);
        if (!files) return;
        srv.watched.files = files;
        for (int i = 0; i < src->n; i++) {
            bool dup = false;
            for (int j = 0; j < srv.watched.n && !dup; j++) dup = strcmp(files[j], src->files[i]) == 0;
            if (dup) continue;
            files[srv.watched.n++] = src->files[i];
            src->files[i] = NULL;
        }
    }
    mr_watch_set(srv.watch, srv.watched.files, srv.watched.n);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static const mr_admin_hooks_t admin_hooks;

/* What a reload changes outside the generations, at the process level. Every key of the config
 * is either applied by a reload or refused naming the key; none is ignored:
 *   - generation keys (routes, upstreams, limits, proxy, lua, TLS, ...) come with the new
 *     generation; listen addresses are bound, kept or closed (server_reload), and a kept
 *     address takes a new backlog; shared dicts are created or resized by the load;
 *   - log_level, error_log, access_log, access_log_format, pid and admin are applied here:
 *     files and the admin listener are opened before any worker switches, so a failure refuses
 *     the reload, and switched (proc_commit) once every worker has built its generation;
 *   - workers and loop take a restart or a binary upgrade, user and group a restart: the
 *     reload is refused.
 * Called with srv.lock held. */
typedef struct {
    int error_fd, access_fd;   /* (re)opened logs, or -1: switched to by dup2 (log/log.h) */
    bool pid_change;
    int pid_fd;                /* the new pid file, or -1 */
    bool pid_created;          /* ... which this reload created: removed again on abort */
    bool admin_change;         /* the admin endpoint is added, moved or removed */
    int admin_fd;              /* its new listener, or -1 */
} proc_change_t;

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* A path rather than a standard stream (or no log at all). */
static bool file_target(const char *t)
{
    return t && strcmp(t, "stderr") != 0 && strcmp(t, "stdout") != 0;
}

static void proc_abort(proc_change_t *pc, const mr_config_t *cfg)
{
    if (pc->error_fd >= 0) close(pc->error_fd);
    if (pc->access_fd >= 0) close(pc->access_fd);
    if (pc->admin_fd >= 0) close(pc->admin_fd);
    if (pc->pid_fd >= 0) {
        close(pc->pid_fd);
        if (pc->pid_created) unlink(cfg->pid);
    }
    pc->error_fd = pc->access_fd = pc->admin_fd = pc->pid_fd = -1;
}

static int proc_prepare(const mr_config_t *old, const mr_config_t *cfg, proc_change_t *pc, char *msg, size_t msglen)
{
    *pc = (proc_change_t){ .error_fd = -1, .access_fd = -1, .pid_fd = -1, .admin_fd = -1 };
    if (cfg->workers != old->workers) {
        mr_config_error(cfg->file, msg, msglen, "workers: changing it (%d to %d) takes a restart or a binary upgrade "
                        "(moonring -s upgrade): a reload keeps the worker threads", old->workers, cfg->workers);
        return -1;
    }
    if (!same_str(cfg->user, old->user) || !same_str(cfg->group, old->group)) {
        mr_config_error(cfg->file, msg, msglen, "%s: changing it takes a restart: the process switched accounts at "
                        "start", !same_str(cfg->user, old->user) ? "user" : "group");
        return -1;
    }
    const char *env = getenv("MOONRING_LOOP"); /* when set, `loop` decides nothing */
    if (!(env && *env) && strcmp(cfg->loop, srv.loop_conf) != 0) {
        mr_config_error(cfg->file, msg, msglen, "loop: changing it (\"%s\" to \"%s\") takes a restart or a binary "
                        "upgrade (moonring -s upgrade): the event loop is chosen at start", srv.loop_conf, cfg->loop);
        return -1;
    }
    int rc;
    /* A file is reopened at every reload, so a rotated log moves to its new file; a standard
     * stream only when it changes. */
    if (file_target(cfg->error_log) || !same_str(cfg->error_log, old->error_log)) {
        if ((rc = mr_log_target_open(cfg->error_log)) < 0) {
            mr_config_error(cfg->file, msg, msglen, "error_log: %s: cannot open for writing (%s)", cfg->error_log,
                            strerror(-rc));
            goto fail;
        }
        pc->error_fd = rc;
    }
    if (cfg->access_log && (file_target(cfg->access_log) || !same_str(cfg->access_log, old->access_log))) {
        if ((rc = mr_log_target_open(cfg->access_log)) < 0) {
            mr_config_error(cfg->file, msg, msglen, "access_log: %s: cannot open for writing (%s)", cfg->access_log,
                            strerror(-rc));
            goto fail;
        }
        pc->access_fd = rc;
    }
    pc->pid_change = !same_str(cfg->pid, old->pid);
    if (pc->pid_change && cfg->pid) {
        int fd = open(cfg->pid, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        pc->pid_created = fd >= 0;
        if (fd < 0 && errno == EEXIST) fd = open(cfg->pid, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            mr_config_error(cfg->file, msg, msglen, "pid: %s: cannot write the pid file (%s)", cfg->pid, strerror(errno));
            goto fail;
        }
        pc->pid_fd = fd;
    }
    pc->admin_change = !same_str(cfg->admin_addr, old->admin_addr);
    if (pc->admin_change && cfg->admin_addr) {
        if ((rc = mr_net_listen(&cfg->admin_sa, 16)) < 0) {
            mr_config_error(cfg->file, msg, msglen, "admin.listen: cannot bind %s (%s)", cfg->admin_addr, strerror(-rc));
            goto fail;
        }
        pc->admin_fd = rc;
    }
    return 0;
fail:
    proc_abort(pc, cfg);
    return -1;
}

static void proc_commit(proc_change_t *pc, const mr_config_t *old, const mr_config_t *cfg)
{
    if (pc->error_fd >= 0) mr_log_use_error(pc->error_fd);
    mr_log_set_level((mr_log_level_t)cfg->log_level);
    if (pc->access_fd >= 0) mr_log_use_access(pc->access_fd);
    if (pc->pid_change) {
        if (pc->pid_fd >= 0) {
            /* prepare proved the file writable; write_pid replaces it whole */
            int rc = write_pid(cfg->pid);
            if (rc < 0) mr_error("pid: %s: cannot write the pid file (%s)", cfg->pid, strerror(-rc));
            close(pc->pid_fd);
        }
        if (old->pid) unlink(old->pid);
        if (cfg->pid) mr_notice("pid file is now %s", cfg->pid);
    }
    if (pc->admin_change) {
        mr_admin_stop(srv.admin);
        srv.admin = pc->admin_fd >= 0 ? mr_admin_start(pc->admin_fd, &admin_hooks) : NULL;
        if (pc->admin_fd >= 0 && !srv.admin) mr_error("admin.listen %s: cannot start its thread", cfg->admin_addr);
        else if (srv.admin) mr_notice("admin endpoint on %s", cfg->admin_addr);
        else mr_notice("admin endpoint closed");
    }
    pc->error_fd = pc->access_fd = pc->admin_fd = pc->pid_fd = -1;
}

/* Validates the config file again, then moves every worker to a new generation. Returns the new
 * generation number, or 0 with msg filled (the current generation keeps serving). */
static uint64_t server_reload(char *msg, size_t msglen)
{
    uint64_t gen = 0, t0 = now_us();
    int **fds = NULL;
    mr_config_t *cfg = NULL;
    proc_change_t pc = { .error_fd = -1, .access_fd = -1, .pid_fd = -1, .admin_fd = -1 };
    mr_config_sources_t src = { 0 };
    /* A reload that starts after this request reads the files as they are now or newer, so
     * its outcome answers this request too: a storm of N requests runs at most two reloads. */
    uint64_t want = atomic_load(&srv.reloads_started) + 1;
    pthread_mutex_lock(&srv.lock);
    if (atomic_load(&srv.stopping)) { snprintf(msg, msglen, "shutting down"); goto out; }
    if (atomic_load(&srv.reloads_started) >= want) {
        snprintf(msg, msglen, "%s", srv.last_reload_err);
        gen = srv.last_reload_gen;
        pthread_mutex_unlock(&srv.lock);
        if (gen) mr_info("reload: coalesced into generation %llu", (unsigned long long)gen);
        return gen;
    }
    atomic_fetch_add(&srv.reloads_started, 1);
    if (mr_config_load_traced(srv.path, &cfg, msg, msglen, srv.watch ? &src : NULL) < 0) goto out;
    if (proc_prepare(srv.cfg, cfg, &pc, msg, msglen) < 0) goto out;
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
    /* Process-level keys switch first: a worker that turns its access log on finds the file. */
    if (!failed) proc_commit(&pc, srv.cfg, cfg);
    /* All or none: a worker that could not build keeps every worker on the old generation. */
    for (int w = 0; w < srv.nworkers; w++) mr_worker_reload_finish(&srv.workers[w], !failed);
    for (int w = 0; w < srv.nworkers; w++)
        while (atomic_load(&srv.workers[w].reload_state) != 2) usleep(200);
    if (failed) {
        mr_error("reload: %d of %d workers failed to build generation %llu; none switched", failed,
                 srv.nworkers, (unsigned long long)id);
        goto out;
    }
    srv.generation = id;
    int **lfds = calloc((size_t)(unsigned)srv.nworkers, sizeof *lfds);
    for (int w = 0; lfds && w < srv.nworkers; w++) {
        lfds[w] = malloc(((size_t)cfg->nlisten + 1) * sizeof **lfds);
        for (int i = 0; lfds[w] && i < cfg->nlisten; i++) {
            lfds[w][i] = fds[w][i];
            for (int j = 0; j < srv.cfg->nlisten && lfds[w][i] < 0; j++) {
                if (strcmp(srv.cfg->listen[j].addr, cfg->listen[i].addr) != 0) continue;
                lfds[w][i] = srv.lfds[w][j];
                /* A kept socket takes a new backlog: listen() again only resizes its queue. */
                if (cfg->listen[i].backlog != srv.cfg->listen[j].backlog && lfds[w][i] >= 0 &&
                    listen(lfds[w][i], cfg->listen[i].backlog) < 0)
                    mr_warn("listen[%d] %s: backlog %d: %s", i + 1, cfg->listen[i].addr, cfg->listen[i].backlog,
                            strerror(errno));
            }
        }
    }
    free_lfds(srv.lfds, srv.nworkers);
    srv.lfds = lfds;
    mr_config_unref(srv.cfg);
    srv.cfg = cfg;
    cfg = NULL;
    gen = id;
    mr_notice("reload: generation %llu serving in every worker after %.1f ms", (unsigned long long)gen,
              (double)(now_us() - t0) / 1000.0);
out:
    if (cfg) proc_abort(&pc, cfg); /* nothing left to abort after a commit */
    watch_update(&src, gen != 0);
    mr_config_sources_free(&src);
    if (!gen && msg[0]) mr_error("reload refused, the current generation keeps serving: %s", msg);
    srv.last_reload_gen = gen;
    mr_metrics_reload(gen != 0, gen);
    snprintf(srv.last_reload_err, sizeof srv.last_reload_err, "%s", gen ? "" : msg);
    if (fds)
        for (int w = 0; w < srv.nworkers; w++) free(fds[w]);
    free(fds);
    mr_config_unref(cfg);
    pthread_mutex_unlock(&srv.lock);
    return gen;
}

/* Binary upgrade: execs srv.exe with the same arguments and every listening socket inherited,
 * and waits until the new process serves. Returns its pid, or 0 with msg filled (this process
 * keeps serving; the new one, if it started, is gone). On success the caller stops this
 * process: it stops accepting and drains, while the new one accepts on the same sockets. */
static pid_t server_upgrade(char *msg, size_t msglen)
{
    pid_t pid = 0, child = -1;
    int ready[2] = { -1, -1 };
    char **envp = NULL, *inherit = NULL;
    char readyenv[64];
    pthread_mutex_lock(&srv.lock);
    if (atomic_load(&srv.stopping) || atomic_load(&srv.upgraded)) { snprintf(msg, msglen, "shutting down"); goto out; }
    const mr_config_t *cfg = srv.cfg;
    size_t cap = (size_t)srv.nworkers * (size_t)cfg->nlisten * 96 + sizeof ENV_INHERIT + 2, len = 0;
    if (!(inherit = malloc(cap))) { snprintf(msg, msglen, "out of memory"); goto out; }
    len = (size_t)snprintf(inherit, cap, ENV_INHERIT "=");
    for (int w = 0; w < srv.nworkers; w++)
        for (int i = 0; i < cfg->nlisten; i++)
            if (srv.lfds[w] && srv.lfds[w][i] >= 0)
                len += (size_t)snprintf(inherit + len, cap - len, "%s%d,%d,%s", len > sizeof ENV_INHERIT ? ";" : "",
                                        srv.lfds[w][i], w, cfg->listen[i].addr);
    if (pipe2(ready, O_CLOEXEC) < 0) { snprintf(msg, msglen, "pipe: %s", strerror(errno)); goto out; }
    snprintf(readyenv, sizeof readyenv, ENV_READY "=%d", ready[1]);
    extern char **environ;
    size_t nenv = 0;
    while (environ[nenv]) nenv++;
    if (!(envp = calloc(nenv + 3, sizeof *envp))) { snprintf(msg, msglen, "out of memory"); goto out; }
    size_t e = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], ENV_INHERIT "=", sizeof ENV_INHERIT) != 0 &&
            strncmp(environ[i], ENV_READY "=", sizeof ENV_READY) != 0)
            envp[e++] = environ[i];
    envp[e++] = inherit;
    envp[e++] = readyenv;
    mr_notice("upgrade: starting %s", srv.exe);
    child = fork();
    if (child < 0) { snprintf(msg, msglen, "fork: %s", strerror(errno)); goto out; }
    if (child == 0) {
        /* Only async-signal-safe calls between fork and exec: this process has threads. */
        for (int w = 0; w < srv.nworkers; w++)
            for (int i = 0; i < cfg->nlisten; i++)
                if (srv.lfds[w] && srv.lfds[w][i] >= 0) fcntl(srv.lfds[w][i], F_SETFD, 0);
        fcntl(ready[1], F_SETFD, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(srv.exe, srv.argv, envp);
        _exit(127);
    }
    close(ready[1]);
    ready[1] = -1;
    /* The new process loads its config, starts its workers, then writes one byte; EOF means it
     * died first (its own log lines say why). */
    struct pollfd p = { .fd = ready[0], .events = POLLIN };
    char byte = 0;
    int r = poll(&p, 1, 60000);
    ssize_t n = r > 0 ? read(ready[0], &byte, 1) : 0;
    if (n == 1 && byte == 'R') {
        pid = child;
        atomic_store(&srv.upgraded, true);
        mr_notice("upgrade: new process %d is serving; this one stops accepting and drains", (int)pid);
        goto out;
    }
    int st = 0;
    if (r == 0) {
        kill(child, SIGKILL);
        snprintf(msg, msglen, "new process %d was not ready within 60 s; killed it", (int)child);
        waitpid(child, &st, 0);
    } else if (waitpid(child, &st, 0) == child && WIFEXITED(st)) {
        snprintf(msg, msglen, "new process %d exited with code %d before it was ready%s", (int)child,
                 WEXITSTATUS(st), WEXITSTATUS(st) == 127 ? " (exec failed)" : "");
    } else {
        snprintf(msg, msglen, "new process %d died (signal %d) before it was ready", (int)child,
                 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
out:
    if (!pid && msg[0]) mr_error("upgrade failed, this process keeps serving: %s", msg);
    if (ready[0] >= 0) close(ready[0]);
    if (ready[1] >= 0) close(ready[1]);
    free(envp);
    free(inherit);
    pthread_mutex_unlock(&srv.lock);
    return pid;
}

/* Reopens the log files where they are named now (logrotate moved them away): each is opened
 * again and switched by dup2 (log/log.h), so no line is lost or written to a closed descriptor.
 * Returns 0, or -1 with msg (the old files stay in use). */
static int server_reopen(char *msg, size_t msglen)
{
    int rc = 0;
    pthread_mutex_lock(&srv.lock);
    const mr_config_t *cfg = srv.cfg;
    if (cfg && file_target(cfg->error_log)) {
        int fd = mr_log_target_open(cfg->error_log);
        if (fd < 0) {
            snprintf(msg, msglen, "error_log: %s: %s", cfg->error_log, strerror(-fd));
            rc = -1;
        } else {
            mr_log_use_error(fd);
        }
    }
    if (cfg && file_target(cfg->access_log) && mr_log_access_fd() >= 0) {
        int fd = mr_log_target_open(cfg->access_log);
        if (fd < 0) {
            snprintf(msg, msglen, "access_log: %s: %s", cfg->access_log, strerror(-fd));
            rc = -1;
        } else {
            mr_log_use_access(fd);
        }
    }
    pthread_mutex_unlock(&srv.lock);
    if (rc == 0) mr_notice("log files reopened");
    else mr_error("reopening the logs failed: %s", msg);
    return rc;
}

static mr_config_t *server_snapshot(uint64_t *generation, int *nworkers)
{
    pthread_mutex_lock(&srv.lock);
    mr_config_t *cfg = atomic_load(&srv.stopping) ? NULL : srv.cfg;
    if (cfg) mr_config_ref(cfg);
    *generation = srv.generation;
    *nworkers = srv.nworkers;
    pthread_mutex_unlock(&srv.lock);
    return cfg;
}

static const mr_admin_hooks_t admin_hooks = { server_reload, server_upgrade, server_reopen, server_snapshot };

/* A proxy holds two descriptors per proxied request (client and upstream); the usual soft
 * limit of 1024 would cap it far below max_connections. Raise the soft limit to the hard one,
 * as HAProxy does, and say so when even that is short. */
static void raise_nofile(const mr_config_t *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) rl.rlim_cur = old;
    }
    uint64_t want = (uint64_t)cfg->workers * cfg->limits.max_connections * 2 + 64;
    if (rl.rlim_cur != RLIM_INFINITY && (uint64_t)rl.rlim_cur < want)
        mr_notice("open-file limit %llu is below workers x limits.max_connections x 2 (%llu): accepting pauses "
                "when descriptors run out (raise it with ulimit -n or LimitNOFILE=)",
                (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

/* An upgrade's inherited listening sockets (see ENV_INHERIT). */
typedef struct {
    int fd, worker;
    char addr[64];
    bool used;
} inherited_t;

static int parse_inherited(inherited_t **out, int *ready_fd)
{
    const char *env = getenv(ENV_INHERIT), *rfd = getenv(ENV_READY);
    int n = 0;
    *out = NULL;
    *ready_fd = rfd ? atoi(rfd) : -1;
    if (*ready_fd >= 0) fcntl(*ready_fd, F_SETFD, FD_CLOEXEC);
    if (env && *env) {
        for (const char *p = env; *p; p++) n += *p == ';';
        inherited_t *t = calloc((size_t)n + 1, sizeof *t);
        n = 0;
        for (const char *p = env; t && p && *p;) {
            int fd, worker, used = 0;
            if (sscanf(p, "%d,%d,%n", &fd, &worker, &used) == 2 && used > 0) {
                const char *a = p + used, *end = strchr(a, ';');
                size_t alen = end ? (size_t)(end - a) : strlen(a);
                int listening = 0;
                socklen_t optlen = sizeof listening;
                /* Only a listening socket is adopted: anything else under that number is a bug
                 * on the other side, and accepting on it would be worse. */
                if (alen < sizeof t[n].addr && fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 &&
                    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &optlen) == 0 && listening) {
                    t[n].fd = fd;
                    t[n].worker = worker;
                    memcpy(t[n].addr, a, alen);
                    n++;
                }
            }
            p = strchr(p, ';');
            if (p) p++;
        }
        *out = t;
    }
    /* Not for our own children (a later upgrade builds its own). */
    unsetenv(ENV_INHERIT);
    unsetenv(ENV_READY);
    return n;
}

/* Fills srv.lfds from each worker's list; before the workers start, so nothing races. */
static int record_listeners(mr_worker_t *workers, int nworkers, const mr_config_t *cfg)
{
    srv.lfds = calloc((size_t)nworkers, sizeof *srv.lfds);
    if (!srv.lfds) return -ENOMEM;
    for (int w = 0; w < nworkers; w++) {
        srv.lfds[w] = malloc(((size_t)cfg->nlisten + 1) * sizeof **srv.lfds);
        if (!srv.lfds[w]) return -ENOMEM;
        for (int i = 0; i < cfg->nlisten; i++) {
            srv.lfds[w][i] = -1;
            for (mr_listener_t *l = workers[w].listeners; l; l = l->next)
                if (strcmp(l->addr, cfg->listen[i].addr) == 0) srv.lfds[w][i] = l->fd;
        }
    }
    return 0;
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

int mr_server_run(const char *path, const mr_server_opts_t *opts)
{
    char err[2048];
    mr_config_t *cfg = NULL;
    int exit_code = 1;
    mr_worker_t *workers = NULL;
    int nstarted = 0, sfd = -1, ready_fd = -1;
    inherited_t *inh = NULL;
    int ninh = parse_inherited(&inh, &ready_fd);
    mr_config_sources_t src = { 0 };
    srv.argv = opts ? opts->argv : NULL;
    ssize_t elen = readlink("/proc/self/exe", srv.exe, sizeof srv.exe - 1);
    srv.exe[elen > 0 ? elen : 0] = 0;
    if (mr_config_load_traced(path, &cfg, err, sizeof err, opts && opts->watch ? &src : NULL) < 0) {
        fprintf(stderr, "moonring: configuration %s is invalid: %s\n", path, err);
        mr_config_sources_free(&src);
        free(inh);
        return 1;
    }
    int rc = mr_log_open(cfg->error_log, (mr_log_level_t)cfg->log_level);
    if (rc < 0) {
        fprintf(stderr, "moonring: error_log: %s: cannot open for writing (%s)\n", cfg->error_log, strerror(-rc));
        goto done;
    }
    if (cfg->access_log) {
        /* One descriptor for every worker; reloads switch the file behind it (log/log.h). */
        rc = mr_log_target_open(cfg->access_log);
        if (rc < 0) {
            mr_error("access_log: %s: cannot open for writing (%s)", cfg->access_log, strerror(-rc));
            goto done;
        }
        mr_log_use_access(rc);
    }
    if (opts && opts->watch) {
        /* Before the listeners open: whoever waits for the port may edit a file right away. */
        rc = mr_watch_new(&srv.watch);
        if (rc < 0) { mr_error("--watch: inotify: %s", strerror(-rc)); goto done; }
        watch_update(&src, true);
        mr_notice("watching %d files for changes", srv.watched.n);
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
    snprintf(srv.loop_conf, sizeof srv.loop_conf, "%s", cfg->loop);
    char *resolved = strdup(mr_loop_backend_name(got));
    if (!resolved) goto done;
    free(cfg->loop);
    cfg->loop = resolved;

    raise_nofile(cfg);

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

    sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) { mr_error("signalfd: %s", strerror(errno)); goto done; }

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    workers = calloc((size_t)cfg->workers, sizeof *workers);
    int *adopt = calloc((size_t)cfg->nlisten + 1, sizeof *adopt);
    if (!workers || !adopt) { free(adopt); goto done; }
    for (int i = 0; i < cfg->workers; i++) {
        for (int j = 0; j < cfg->nlisten; j++) {
            adopt[j] = -1;
            for (int k = 0; k < ninh && adopt[j] < 0; k++)
                if (!inh[k].used && inh[k].worker == i && strcmp(inh[k].addr, cfg->listen[j].addr) == 0) {
                    inh[k].used = true;
                    adopt[j] = inh[k].fd;
                }
        }
        rc = mr_worker_prepare(&workers[i], cfg, i, ncpu > 0 ? (int)(i % ncpu) : -1, adopt);
        if (rc < 0) { free(adopt); goto stop; }
    }
    free(adopt);
    if (record_listeners(workers, cfg->workers, cfg) < 0) goto stop;
    if (drop_privileges(cfg) < 0) goto stop;
    for (int i = 0; i < cfg->workers; i++) {
        rc = mr_worker_start(&workers[i]);
        if (rc < 0) { mr_error("cannot start worker %d: %s", i, strerror(-rc)); goto stop; }
        nstarted++;
    }
    for (int i = 0; i < nstarted; i++) {
        while (atomic_load(&workers[i].ready) == 0) usleep(1000);
        if (atomic_load(&workers[i].ready) < 0) goto stop;
    }
    /* A start that cannot write its pid file fails: `moonring -s` would not find it. */
    if (cfg->pid && (rc = write_pid(cfg->pid)) < 0) {
        mr_error("pid: %s: cannot write the pid file (%s)", cfg->pid, strerror(-rc));
        goto stop;
    }
    srv.workers = workers;
    srv.nworkers = nstarted;
    srv.cfg = cfg;
    srv.generation = 1;
    srv.path = path;
    if (cfg->admin_addr) {
        int afd = mr_net_listen(&cfg->admin_sa, 16);
        if (afd < 0) {
            mr_error("admin.listen: cannot bind %s (%s)", cfg->admin_addr, strerror(-afd));
            goto stop;
        }
        if (!(srv.admin = mr_admin_start(afd, &admin_hooks))) goto stop;
        mr_notice("admin endpoint on %s (GET /-/ status page, GET /metrics, GET /-/upstreams, POST /-/reload)",
                  cfg->admin_addr);
    }
    /* Inherited sockets no worker adopted (fewer workers or listeners now) close only once
     * this process serves: until then the old process may still need them. */
    for (int k = 0; k < ninh; k++)
        if (!inh[k].used) { close(inh[k].fd); inh[k].used = true; }
    if (ninh) mr_notice("upgrade: adopted %d inherited listening sockets", ninh);
    for (int i = 0; i < cfg->nlisten; i++) mr_notice("listening on %s", cfg->listen[i].addr);
    mr_notice("moonring %s started with %d workers, %s backend", MOONRING_VERSION, cfg->workers, cfg->loop);
    {
        char ready[64];
        snprintf(ready, sizeof ready, "READY=1\nMAINPID=%d", (int)getpid());
        sd_notify(ready);
    }
    if (ready_fd >= 0) {
        ssize_t wr = write(ready_fd, "R", 1);
        (void)wr;
        close(ready_fd);
        ready_fd = -1;
    }
    int cmd = MR_CMD_STOP;

    struct timespec last_rotation;
    clock_gettime(CLOCK_MONOTONIC, &last_rotation);
    bool pending = false;
    uint64_t due = 0;
    for (;;) {
        struct pollfd p[3] = { { .fd = sfd, .events = POLLIN },
                               { .fd = srv.watch ? mr_watch_fd(srv.watch) : -1, .events = POLLIN },
                               { .fd = mr_watch_note_fd(srv.watch), .events = POLLIN } };
        /* At least once a minute: the process-wide TLS ticket keys rotate from here. */
        int timeout = 60000;
        if (pending) {
            uint64_t t = now_us();
            int left = t >= due ? 0 : (int)((due - t + 999) / 1000);
            if (left < timeout) timeout = left;
        }
        if (poll(p, 3, timeout) < 0 && errno != EINTR) { mr_error("poll: %s", strerror(errno)); usleep(100000); continue; }
        pthread_mutex_lock(&srv.lock);
        rotate_ticket_keys_if_due(srv.cfg, &last_rotation);
        pthread_mutex_unlock(&srv.lock);
        if (p[2].revents & POLLIN) {
            mr_config_sources_t lazy = { 0 };
            mr_watch_take_notes(srv.watch, &lazy.files, &lazy.n);
            pthread_mutex_lock(&srv.lock);
            for (int i = 0; i < lazy.n; i++) {
                bool dup = false;
                for (int j = 0; j < srv.lazy.n && !dup; j++) dup = strcmp(srv.lazy.files[j], lazy.files[i]) == 0;
                char **grown = dup ? NULL : realloc(srv.lazy.files, ((size_t)srv.lazy.n + 1) * sizeof *grown);
                if (!grown) continue;
                srv.lazy.files = grown;
                srv.lazy.files[srv.lazy.n++] = strdup(lazy.files[i]);
                mr_notice("watch: also watching %s (required at request time)", lazy.files[i]);
            }
            watch_update(&lazy, false);
            pthread_mutex_unlock(&srv.lock);
            mr_config_sources_free(&lazy);
        }
        if (p[1].revents & POLLIN) {
            char changed[4200] = "";
            pthread_mutex_lock(&srv.lock);
            int hit = mr_watch_read(srv.watch, changed, sizeof changed);
            pthread_mutex_unlock(&srv.lock);
            if (hit > 0) {
                /* Debounced: an editor's save is several events (truncate, write, rename). */
                if (!pending) mr_notice("watch: %s changed", changed);
                pending = true;
                due = now_us() + 150000;
            }
        }
        if (pending && now_us() >= due) {
            char msg[2048] = "";
            pending = false;
            server_reload(msg, sizeof msg);
        }
        if (!(p[0].revents & POLLIN)) continue;
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) continue;
        int sig = (int)si.ssi_signo;
        if (sig == SIGTERM || sig == SIGINT) { mr_notice("signal %d: graceful stop", sig); cmd = MR_CMD_STOP; break; }
        if (sig == SIGQUIT) { mr_notice("SIGQUIT: stopping now"); cmd = MR_CMD_QUIT; break; }
        if (sig == SIGHUP) {
            char msg[2048] = "";
            mr_notice("SIGHUP: reloading %s", path);
            sd_notify("RELOADING=1");
            server_reload(msg, sizeof msg);
            sd_notify("READY=1");
        }
        if (sig == SIGUSR1) {
            char msg[2048] = "";
            server_reopen(msg, sizeof msg);
        }
        if (sig == SIGUSR2) {
            char msg[2048] = "";
            mr_notice("SIGUSR2: upgrading the binary");
            if (server_upgrade(msg, sizeof msg)) { cmd = MR_CMD_STOP; break; }
        }
    }
    atomic_store(&srv.stopping, true);
    sd_notify("STOPPING=1");
    /* Every accept thread sees the stop, waits for its connections and ends. */
    mr_admin_set_stopping();
    mr_admin_wait();
    pthread_mutex_lock(&srv.lock); /* no reload may be half-way through while workers stop */
    srv.admin = NULL;
    pthread_mutex_unlock(&srv.lock);
    cfg = srv.cfg;
    exit_code = 0;
    for (int i = 0; i < nstarted; i++) mr_worker_command(&workers[i], cmd);
    for (int i = 0; i < nstarted; i++) mr_worker_join(&workers[i]);
    nstarted = 0;
    if (cfg->pid && !atomic_load(&srv.upgraded)) unlink(cfg->pid);
    mr_notice("stopped");
    goto done;

stop:
    for (int i = 0; i < nstarted; i++) {
        if (atomic_load(&workers[i].ready) == 1) mr_worker_command(&workers[i], MR_CMD_QUIT);
    }
    for (int i = 0; i < nstarted; i++) mr_worker_join(&workers[i]);
done:
    /* Inherited sockets never adopted are the old process's to keep serving on; ours to close. */
    for (int k = 0; k < ninh; k++)
        if (!inh[k].used) close(inh[k].fd);
    free(inh);
    if (ready_fd >= 0) close(ready_fd);
    if (sfd >= 0) close(sfd);
    mr_config_sources_free(&src);
    mr_config_sources_free(&srv.watched);
    mr_config_sources_free(&srv.lazy);
    mr_watch_free(srv.watch);
    srv.watch = NULL;
    free_lfds(srv.lfds, srv.nworkers ? srv.nworkers : (cfg ? cfg->workers : 0));
    srv.lfds = NULL;
    free(workers);
    mr_config_unref(cfg);
    return exit_code;
}
