/* moonring: command line only; everything else is in core/. */
#include <stdio.h>
#include <string.h>

#include "core/server.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: moonring [-c FILE] [-t] [-s stop|quit|reload|reopen|upgrade] [--watch] [-v]\n"
            "  -c FILE   configuration file (default conf/moonring.lua)\n"
            "  -t        check the configuration and exit\n"
            "  -s SIG    send stop, quit, reload, reopen (the log files) or upgrade to the running\n"
            "            instance (via its admin endpoint for reload/upgrade if it has one, else\n"
            "            its pid file)\n"
            "  --watch   development mode: reload when the config or a Lua file it loaded changes\n"
            "  -v        print the version, the io_uring features found, the Lua library used,\n"
            "            and the loop backend the config (with -c) would get\n"
            "  -h, --help  this text\n");
}

int main(int argc, char **argv)
{
    const char *conf = "conf/moonring.lua", *sig = NULL;
    int check = 0, version = 0, conf_given = 0, watch = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) { conf = argv[++i]; conf_given = 1; }
        else if (strcmp(argv[i], "-t") == 0) check = 1;
        else if (strcmp(argv[i], "--watch") == 0) watch = 1;
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) sig = argv[++i];
        else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) version = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) { usage(stdout); return 0; }
        else { usage(stderr); return 2; }
    }
    if (version) return mr_server_version(conf_given ? conf : NULL);
    if (check) return mr_server_check(conf);
    if (sig) return mr_server_signal(conf, sig);
    mr_server_opts_t opts = { .watch = watch != 0, .argv = argv };
    return mr_server_run(conf, &opts);
}
