/* The main thread: loads the config, starts one pinned worker per CPU, writes the pid file, and
 * turns signals into worker commands. It never serves requests. */
#ifndef MR_SERVER_H
#define MR_SERVER_H

#include <stdbool.h>

typedef struct {
    bool watch;     /* --watch: reload when the config or a Lua file it loaded changes */
    char **argv;    /* the command line, NULL-terminated: a binary upgrade execs it again */
} mr_server_opts_t;

/* Runs until a stop signal (or a binary upgrade handed over); returns the process exit code.
 * opts may be NULL. */
int mr_server_run(const char *config_path, const mr_server_opts_t *opts);
/* -t: validates the config; prints the error. Returns the exit code. */
int mr_server_check(const char *config_path);
/* -s stop|quit|reload|upgrade: signals the instance whose pid file the config names. */
int mr_server_signal(const char *config_path, const char *what);
/* -v [-c FILE]: version, io_uring features, and the backend FILE's `loop` would get. */
int mr_server_version(const char *config_path);

#endif
