/* Error log, and the file behind the access log. Thread-safe: each call formats into a stack
 * buffer and issues one write(2), so lines from different workers never interleave. Error-log
 * writes are synchronous by design (they are rare and must not be lost on a crash); access-log
 * lines go through each worker's loop (see proxy/access_log.h) onto the descriptor kept here.
 *
 * Both descriptors are private to this module and keep their numbers for the life of the
 * process: a reload that changes a target (or reopens a rotated file) opens the new one first,
 * then dup2()s it over the old number, so a thread writing at that moment writes to the old or
 * the new file, never to a closed or reused descriptor. Opening, switching and the level are the
 * main thread's (or the admin thread's, under the server's reload lock). */
#ifndef MR_LOG_H
#define MR_LOG_H

#include <stdarg.h>
#include <stdatomic.h>

typedef enum { MR_LOG_DEBUG = 0, MR_LOG_INFO, MR_LOG_NOTICE, MR_LOG_WARN, MR_LOG_ERROR } mr_log_level_t;

/* Opens the error log ("stderr" or a path, appended) and sets the level. Returns 0 or -errno. */
int mr_log_open(const char *target, mr_log_level_t level);
int mr_log_level_parse(const char *name); /* -1 when unknown */
void mr_log_set_level(mr_log_level_t level);

/* Two-step switch, for reloads that must be able to refuse: mr_log_target_open opens a target
 * ("stderr", "stdout" or a path, appended) and returns a descriptor or -errno, without using it;
 * mr_log_use_error / mr_log_use_access make it the error or access log (taking ownership), or
 * the caller closes it to abort. */
int mr_log_target_open(const char *target);
void mr_log_use_error(int fd);
void mr_log_use_access(int fd);
/* The access log's descriptor, or -1 while no access log was ever opened. Workers write to it
 * and never close it. */
int mr_log_access_fd(void);

/* Tags the calling thread's lines (e.g. "w0"); the pointer must stay valid for the thread's life. */
void mr_log_set_thread_tag(const char *tag);
const char *mr_log_thread_tag(void);
extern atomic_int mr_log_min_level;
void mr_log_write(mr_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define mr_log(level, ...) do { \
    if ((int)(level) >= atomic_load_explicit(&mr_log_min_level, memory_order_relaxed)) mr_log_write(level, __VA_ARGS__); \
} while (0)
#define mr_debug(...) mr_log(MR_LOG_DEBUG, __VA_ARGS__)
#define mr_info(...) mr_log(MR_LOG_INFO, __VA_ARGS__)
#define mr_notice(...) mr_log(MR_LOG_NOTICE, __VA_ARGS__)
#define mr_warn(...) mr_log(MR_LOG_WARN, __VA_ARGS__)
#define mr_error(...) mr_log(MR_LOG_ERROR, __VA_ARGS__)

#endif
