#include "core/watch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log/log.h"
#include "util/path.h"

typedef struct {
    int wd;
    char *path;
} watch_dir_t;

typedef struct {
    int dir;      /* index into dirs */
    char *name;   /* last component */
} watch_file_t;

/* Lazy-require notes, from worker threads. Bounded: a module set is small, and a runaway
 * script must not grow this without end. */
#define MAX_NOTES 1024
static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;
static char *notes[MAX_NOTES];
static int nnotes, nseen;
static char *seen[MAX_NOTES];
static atomic_int notes_fd = -1;

struct mr_watch {
    int fd;
    int note_fd;
    watch_dir_t *dirs;
    int ndirs;
    watch_file_t *files;
    int nfiles;
};

/* Modified in place, created, renamed over, deleted: any of them changes what a reload reads. */
#define WATCH_MASK (IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ONLYDIR)

int mr_watch_new(mr_watch_t **out)
{
    mr_watch_t *w = calloc(1, sizeof *w);
    if (!w) return -ENOMEM;
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    w->note_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->fd < 0 || w->note_fd < 0) {
        int rc = -errno;
        if (w->fd >= 0) close(w->fd);
        free(w);
        return rc;
    }
    atomic_store(&notes_fd, w->note_fd);
    *out = w;
    return 0;
}

static void clear(mr_watch_t *w, watch_dir_t *keep, int nkeep)
{
    for (int i = 0; i < w->ndirs; i++) {
        bool kept = false;
        for (int j = 0; j < nkeep && !kept; j++) kept = keep[j].wd == w->dirs[i].wd;
        if (!kept) inotify_rm_watch(w->fd, w->dirs[i].wd);
        free(w->dirs[i].path);
    }
    for (int i = 0; i < w->nfiles; i++) free(w->files[i].name);
    free(w->dirs);
    free(w->files);
    w->dirs = NULL;
    w->files = NULL;
    w->ndirs = w->nfiles = 0;
}

void mr_watch_free(mr_watch_t *w)
{
    if (!w) return;
    atomic_store(&notes_fd, -1);
    clear(w, NULL, 0);
    close(w->fd);
    close(w->note_fd);
    pthread_mutex_lock(&notes_lock);
    for (int i = 0; i < nnotes; i++) free(notes[i]);
    for (int i = 0; i < nseen; i++) free(seen[i]);
    nnotes = nseen = 0;
    pthread_mutex_unlock(&notes_lock);
    free(w);
}

int mr_watch_fd(const mr_watch_t *w) { return w->fd; }

int mr_watch_set(mr_watch_t *w, char *const *files, int n)
{
    watch_dir_t *dirs = calloc((size_t)n + 1, sizeof *dirs);
    watch_file_t *fl = calloc((size_t)n + 1, sizeof *fl);
    int ndirs = 0, nfl = 0;
    if (!dirs || !fl) { free(dirs); free(fl); return -ENOMEM; }
    for (int i = 0; i < n; i++) {
        const char *slash = strrchr(files[i], '/');
        if (!slash || !slash[1]) continue;
        char dir[4096];
        snprintf(dir, sizeof dir, "%.*s", slash == files[i] ? 1 : (int)(slash - files[i]), files[i]);
        int d = -1;
        for (int j = 0; j < ndirs && d < 0; j++)
            if (strcmp(dirs[j].path, dir) == 0) d = j;
        if (d < 0) {
            /* Adding a watch on a directory already watched returns its existing wd. */
            int wd = inotify_add_watch(w->fd, dir, WATCH_MASK);
            if (wd < 0) {
                mr_warn("watch: cannot watch %s: %s", dir, strerror(errno));
                continue;
            }
            d = ndirs++;
            dirs[d].wd = wd;
            dirs[d].path = strdup(dir);
        }
        fl[nfl].dir = d;
        fl[nfl].name = strdup(slash + 1);
        nfl++;
    }
    clear(w, dirs, ndirs);
    w->dirs = dirs;
    w->ndirs = ndirs;
    w->files = fl;
    w->nfiles = nfl;
    return 0;
}

int mr_watch_read(mr_watch_t *w, char *changed, size_t len)
{
    /* Aligned as inotify requires; events never straddle a read. */
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    for (;;) {
        ssize_t r = read(w->fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return hit;
            return -errno;
        }
        if (r == 0) return hit;
        for (char *p = buf; p < buf + r;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (!ev->len) continue;
            for (int i = 0; i < w->nfiles; i++) {
                const watch_dir_t *d = &w->dirs[w->files[i].dir];
                if (d->wd != ev->wd || strcmp(w->files[i].name, ev->name) != 0) continue;
                if (!hit) snprintf(changed, len, "%s/%s", strcmp(d->path, "/") == 0 ? "" : d->path, ev->name);
                hit = 1;
            }
        }
    }
}

void mr_watch_note(const char *path)
{
    int fd = atomic_load(&notes_fd);
    if (fd < 0 || !path) return;
    bool added = false;
    pthread_mutex_lock(&notes_lock);
    bool dup = false;
    for (int i = 0; i < nseen && !dup; i++) dup = strcmp(seen[i], path) == 0;
    if (!dup && nseen < MAX_NOTES) {
        char *a = strdup(path), *b = strdup(path);
        if (a && b) {
            seen[nseen++] = a;
            notes[nnotes++] = b;
            added = true;
        } else {
            free(a);
            free(b);
        }
    }
    pthread_mutex_unlock(&notes_lock);
    if (added) {
        uint64_t one = 1;
        ssize_t n = write(fd, &one, sizeof one);
        (void)n;
    }
}

int mr_watch_note_fd(const mr_watch_t *w) { return w ? w->note_fd : -1; }

void mr_watch_take_notes(mr_watch_t *w, char ***files, int *n)
{
    uint64_t v;
    ssize_t r = read(w->note_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&notes_lock);
    *files = calloc((size_t)nnotes + 1, sizeof **files);
    *n = 0;
    for (int i = 0; i < nnotes; i++) {
        if (*files && ((*files)[*n] = mr_path_absolute(notes[i]))) (*n)++;
        free(notes[i]);
    }
    nnotes = 0;
    pthread_mutex_unlock(&notes_lock);
}
