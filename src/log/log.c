#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

atomic_int mr_log_min_level = MR_LOG_INFO;
/* stderr until the config names the error log; then a private descriptor (see log.h). */
static atomic_int log_fd = 2;
static atomic_int access_fd = -1;
static _Thread_local const char *thread_tag = "main";
static const char *const level_names[] = { "debug", "info", "notice", "warn", "error" };

int mr_log_level_parse(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

void mr_log_set_level(mr_log_level_t level) { atomic_store(&mr_log_min_level, (int)level); }
void mr_log_set_thread_tag(const char *tag) { thread_tag = tag; }
const char *mr_log_thread_tag(void) { return thread_tag; }

int mr_log_target_open(const char *target)
{
    int fd;
    if (strcmp(target, "stderr") == 0 || strcmp(target, "stdout") == 0)
        /* A copy above the standard descriptors: it may be dup2()ed over later without
         * touching the process's own stderr/stdout. */
        fd = fcntl(strcmp(target, "stderr") == 0 ? 2 : 1, F_DUPFD_CLOEXEC, 3);
    else
        fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

/* Takes fd as the descriptor in *slot: the first time as it is, later by dup2 over the
 * descriptor in use, which keeps its number (see log.h). */
static void use_fd(atomic_int *slot, int fd)
{
    int cur = atomic_load(slot);
    if (cur <= 2) {
        atomic_store(slot, fd);
        return;
    }
    if (fd == cur) return;
    int rc;
    do { rc = dup3(fd, cur, O_CLOEXEC); } while (rc < 0 && errno == EINTR);
    close(fd);
}

void mr_log_use_error(int fd) { use_fd(&log_fd, fd); }
void mr_log_use_access(int fd) { use_fd(&access_fd, fd); }
int mr_log_access_fd(void) { return atomic_load(&access_fd); }

int mr_log_open(const char *target, mr_log_level_t level)
{
    mr_log_set_level(level);
    int fd = mr_log_target_open(target ? target : "stderr");
    if (fd < 0) return fd;
    mr_log_use_error(fd);
    return 0;
}

void mr_log_write(mr_log_level_t level, const char *fmt, ...)
{
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d/%02d/%02d %02d:%02d:%02d.%03ld [%s] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level], thread_tag);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w;
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    do { w = write(fd, line, len); } while (w < 0 && errno == EINTR);
}
