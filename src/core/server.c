#include "core/server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/worker.h"
#include "log/log.h"
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

int mr_server_version(void)
{
    mr_loop_features_t f;
    printf("moonring %s\n", MOONRING_VERSION);
    int rc = mr_loop_probe(&f);
    if (rc < 0) {
        printf("io_uring: unavailable (%s)\n", f.kernel_note ? f.kernel_note : strerror(-rc));
        return 0;
    }
    printf("io_uring: yes; single_issuer=%s defer_taskrun=%s coop_taskrun=%s ext_arg=%s fast_poll=%s "
           "buf_ring=%s recv_multishot=%s\n",
           f.single_issuer ? "yes" : "no", f.defer_taskrun ? "yes" : "no", f.coop_taskrun ? "yes" : "no",
           f.ext_arg ? "yes" : "no", f.fast_poll ? "yes" : "no", f.buf_ring ? "yes" : "no",
           f.recv_multishot ? "yes" : "no");
    printf("backend: io_uring\n");
    return 0;
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
    mr_loop_features_t feat;
    rc = mr_loop_probe(&feat);
    if (rc < 0) {
        mr_error("io_uring is not usable here: %s", feat.kernel_note ? feat.kernel_note : strerror(-rc));
        goto done;
    }
    mr_info("io_uring: defer_taskrun=%d single_issuer=%d coop_taskrun=%d", feat.defer_taskrun,
            feat.single_issuer, feat.coop_taskrun);

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
    if (cfg->pid && write_pid(cfg->pid) < 0) mr_warn("cannot write pid file %s: %s", cfg->pid, strerror(errno));
    for (int i = 0; i < cfg->nlisten; i++) mr_notice("listening on %s", cfg->listen[i].addr);
    mr_notice("moonring %s started with %d workers", MOONRING_VERSION, cfg->workers);

    int cmd = MR_CMD_STOP;
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGTERM || sig == SIGINT) { mr_notice("signal %d: graceful stop", sig); cmd = MR_CMD_STOP; break; }
        if (sig == SIGQUIT) { mr_notice("SIGQUIT: stopping now"); cmd = MR_CMD_QUIT; break; }
        if (sig == SIGHUP) mr_warn("SIGHUP: reload is not implemented yet; configuration unchanged");
    }
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
    mr_config_free(cfg);
    return exit_code;
}
