/* --watch: inotify on the directories holding the config file and the Lua files it loaded.
 * Directories rather than files are watched so that editors which save by writing a new file
 * and renaming it over the old one (vim, most IDEs) are seen: an inode watch would follow the
 * old, unlinked file. Main thread only; no callbacks. */
#ifndef MR_WATCH_H
#define MR_WATCH_H

#include <stddef.h>

typedef struct mr_watch mr_watch_t;

/* Returns 0 or -errno. */
int mr_watch_new(mr_watch_t **out);
void mr_watch_free(mr_watch_t *w);
/* The inotify fd to poll for readability (non-blocking). */
int mr_watch_fd(const mr_watch_t *w);
/* Replaces the watched set by files (absolute paths; copied). Returns 0 or -errno (a directory
 * that cannot be watched is logged and skipped). */
int mr_watch_set(mr_watch_t *w, char *const *files, int n);
/* Drains pending events. Returns 1 when one names a watched file (its path goes to changed),
 * 0 when none did, or -errno. */
int mr_watch_read(mr_watch_t *w, char *changed, size_t len);

#endif
