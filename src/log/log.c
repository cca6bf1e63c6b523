#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int mr_log_min_level = MR_LOG_INFO;
static int log_fd = 2;
static _Thread_local const char *thread_tag = "main";
static const char *const level_names[] = { "debug", "info", "notice", "warn", "error" };

int mr_log_level_parse(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

void mr_log_set_thread_tag(const char *tag) { thread_tag = tag; }
const char *mr_log_thread_tag(void) { return thread_tag; }

int mr_log_open(const char *target, mr_log_level_t level)
{
    mr_log_min_level = (int)level;
    if (!target || strcmp(target, "stderr") == 0) { log_fd = 2; return 0; }
    int fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    if (log_fd > 2) close(log_fd);
    log_fd = fd;
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
    do { w = write(log_fd, line, len); } while (w < 0 && errno == EINTR);
}
