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

/* Lua files a worker VM required lazily (at request time, from disk, not from the validated
 * snapshot): any thread may note one; the main thread collects them with mr_watch_take_notes
 * when mr_watch_note_fd turns readable. Noting is a no-op unless a watch exists. */
void mr_watch_note(const char *path);
/* eventfd to poll (-1 without a watch). */
int mr_watch_note_fd(const mr_watch_t *w);
/* Moves the noted paths (absolute, deduplicated, first 1024) into *files and *n, owned by the
 * caller (free each and the array). Main thread. */
void mr_watch_take_notes(mr_watch_t *w, char ***files, int *n);

#endif
