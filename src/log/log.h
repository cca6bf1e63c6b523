/* Error log. Thread-safe: each call formats into a stack buffer and issues one write(2), so lines
 * from different workers never interleave. Error-log writes are synchronous by design (they are rare
 * and must not be lost on a crash); the access log goes through the loop (see proxy/access_log.h). */
#ifndef MR_LOG_H
#define MR_LOG_H

#include <stdarg.h>

typedef enum { MR_LOG_DEBUG = 0, MR_LOG_INFO, MR_LOG_NOTICE, MR_LOG_WARN, MR_LOG_ERROR } mr_log_level_t;

/* Opens the error log ("stderr" or a path, appended). Returns 0 or -errno. Main thread only. */
int mr_log_open(const char *target, mr_log_level_t level);
int mr_log_level_parse(const char *name); /* -1 when unknown */
/* Tags the calling thread's lines (e.g. "w0"); the pointer must stay valid for the thread's life. */
void mr_log_set_thread_tag(const char *tag);
const char *mr_log_thread_tag(void);
extern int mr_log_min_level;
void mr_log_write(mr_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define mr_log(level, ...) do { if ((int)(level) >= mr_log_min_level) mr_log_write(level, __VA_ARGS__); } while (0)
#define mr_debug(...) mr_log(MR_LOG_DEBUG, __VA_ARGS__)
#define mr_info(...) mr_log(MR_LOG_INFO, __VA_ARGS__)
#define mr_notice(...) mr_log(MR_LOG_NOTICE, __VA_ARGS__)
#define mr_warn(...) mr_log(MR_LOG_WARN, __VA_ARGS__)
#define mr_error(...) mr_log(MR_LOG_ERROR, __VA_ARGS__)

#endif
