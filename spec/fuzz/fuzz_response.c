/* libFuzzer target: response parsing (src/http1), as the proxy reads an upstream.
 *
 * Input: one control byte (response to HEAD?, EOF after the input?, split size, small limits),
 * then the bytes an upstream sends. Invariants (abort on violation):
 *  - the outcome does not depend on how the bytes are split across feeds;
 *  - pausing at the head and deciding "no body" on resume (a yielding Lua phase) gives exactly
 *    the outcome of deciding at once;
 *  - the pre-scan and llhttp never disagree, and the parser never stops making progress. */
#include <stdint.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t ctl = data[0];
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    int flags = ctl & (MR_H1T_HEAD | MR_H1T_EOF);
    size_t step = (size_t)((ctl >> 2) & 15) + 1;
    bool small = ctl & 0x40;
    uint32_t line = small ? 64 : 0, hdr = small ? 256 : 0, count = small ? 8 : 0;
    fuzz_split_invariant(MR_HTTP1_RESPONSE, flags, p, n, step, line, hdr, count);

    static char a[FUZZ_OUT], b[FUZZ_OUT];
    int ra = mr_http1_parse_ex(MR_HTTP1_RESPONSE, flags, 0, line, hdr, count, p, n, a, sizeof a);
    int rb = mr_http1_parse_ex(MR_HTTP1_RESPONSE, flags | MR_H1T_PAUSE_HEAD, step, line, hdr, count, p, n, b, sizeof b);
    if (ra != rb || strcmp(a, b) != 0) fuzz_die("a pause at the head changed the outcome", a, b);
    return 0;
}
