#include "core/watch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log/log.h"

typedef struct {
    int wd;
    char *path;
} watch_dir_t;

typedef struct {
    int dir;      /* index into dirs */
    char *name;   /* last component */
} watch_file_t;

struct mr_watch {
    int fd;
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
    if (w->fd < 0) {
        int rc = -errno;
        free(w);
        return rc;
    }
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
    clear(w, NULL, 0);
    close(w->fd);
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
