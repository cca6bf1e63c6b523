/* Shared by the libFuzzer targets: a feeding loop that drives mr_http1_msg_t the way proxy.c does
 * (resume after each pause, mr_http1_next after each message), and a failure report. */
#ifndef MR_FUZZ_COMMON_H
#define MR_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1/http1.h"
#include "http1/http1_test_api.h"

#define FUZZ_OUT (1 << 18)

static inline void fuzz_die(const char *what, const char *a, const char *b)
{
    fprintf(stderr, "\n==== FUZZ INVARIANT BROKEN: %s\n---- a:\n%s\n---- b:\n%s\n", what, a ? a : "", b ? b : "");
    abort();
}

/* Feeds all of data (pieces of `step` bytes, 0 = at once). Returns 0, the error status, or -1 if
 * the parser stopped making progress. */
static inline int fuzz_feed(mr_http1_msg_t *m, const char *data, size_t len, size_t step)
{
    size_t off = 0;
    unsigned idle = 0;
    for (;;) {
        size_t end = step && len - off > step ? off + step : len;
        for (;;) {
            bool resumed = false;
            if (mr_http1_paused(m)) {
                mr_http1_resume(m);
                resumed = true;
            }
            if (off == end && !resumed) break;
            size_t used = 0;
            int rc = mr_http1_feed(m, data + off, end - off, &used);
            if (rc < 0) return m->error_status ? m->error_status : 400;
            off += used;
            if (rc == MR_HTTP1_UPGRADE) return 0;
            idle = used ? 0 : idle + 1;
            if (idle > 4) return -1;
        }
        if (off >= len) return 0;
    }
}

/* The summary text of a parse must not depend on how the input was split. */
static inline void fuzz_split_invariant(int type, int flags, const char *data, size_t len, size_t step,
                                        uint32_t line, uint32_t hdr, uint32_t count)
{
    static char a[FUZZ_OUT], b[FUZZ_OUT];
    int ra = mr_http1_parse_ex(type, flags, 0, line, hdr, count, data, len, a, sizeof a);
    int rb = mr_http1_parse_ex(type, flags, step, line, hdr, count, data, len, b, sizeof b);
    /* (Not by looking for words in the text: header values can carry any words.) A pre-scan /
     * llhttp disagreement aborts inside the wrapper (MR_HTTP1_ABORT_ON_MISMATCH). */
    if (ra < 0) fuzz_die("parser stopped making progress", a, NULL);
    if (ra != rb || strcmp(a, b) != 0) fuzz_die("result depends on how the input is split", a, b);
}

#endif
