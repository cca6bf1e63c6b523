/* File path helpers (any thread; no I/O beyond realpath on the directory). */
#ifndef MR_PATH_H
#define MR_PATH_H

/* Absolute form of path without resolving its last component, which may be renamed over or
 * briefly missing while an editor saves. Returns malloc'd memory (the caller frees), or NULL. */
char *mr_path_absolute(const char *path);

#endif
