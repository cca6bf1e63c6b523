/* libFuzzer target: path and host normalisation (src/http/path.c).
 *
 * Input: one control byte (the policy: bit 0 merge_slashes off, bits 1-2 escaped_slashes, bits 3-4
 * path_params; bit 7 puts a '/' in front of the rest), then the path bytes. The same bytes also go
 * through mr_host_normalize. Invariants (abort on violation):
 *  - the output is never longer than the input, starts with '/', holds no NUL, no dot-segment
 *    (also none before a ';'), no "//" when merging, no %2F or %5C unless they are kept, only
 *    uppercase hex and no encoding of an unreserved character;
 *  - idempotence: normalising the output again gives MR_PATH_SAME; MR_PATH_SAME means the input
 *    itself already had every property above;
 *  - in place (out == in) gives the same result as into a separate buffer;
 *  - a normalised path is matched by every prefix that ends at one of its segment boundaries, and
 *    strip_prefix leaves a remainder starting with '/' that rebuilds the path;
 *  - hosts: lowercase, no trailing dot, within the input's length, and idempotent. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/path.h"

static void die(const char *what, const char *in, size_t len, const char *out, size_t olen)
{
    fprintf(stderr, "\n==== FUZZ INVARIANT BROKEN: %s\n---- in:  %.*s\n---- out: %.*s\n", what, (int)len, in, (int)olen,
            out ? out : "");
    abort();
}

static bool unreserved(unsigned c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

static int hex(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1; /* lowercase hex is a violation too */
}

/* Returns NULL when out has every property of a normalised path under pol, else what is wrong. */
static const char *shape(const mr_path_policy_t *pol, const char *o, size_t n)
{
    if (n == 0 || o[0] != '/') return "output does not start with '/'";
    if (memchr(o, 0, n)) return "NUL in output";
    size_t seg = 1;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && o[i] == '%') {
            if (n - i < 3) return "truncated %-encoding in output";
            int h1 = hex((unsigned char)o[i + 1]), h2 = hex((unsigned char)o[i + 2]);
            if (h1 < 0 || h2 < 0) return "lowercase or invalid hex in output";
            unsigned d = (unsigned)(h1 << 4 | h2);
            if (unreserved(d)) return "encoded unreserved character in output";
            if ((d == '/' || d == '\\') && pol->escaped_slashes != MR_PATH_SLASHES_KEEP) return "%2F or %5C in output";
            if (d < 0x20 || d == 0x7f) return "encoded control byte in output";
        }
        if (i == n || o[i] == '/') {
            const char *s = o + seg, *semi = memchr(s, ';', i - seg);
            size_t name = semi ? (size_t)(semi - s) : i - seg;
            if ((name == 1 && s[0] == '.') || (name == 2 && s[0] == '.' && s[1] == '.')) return "dot-segment in output";
            if (i < n && i == seg && pol->merge_slashes) return "'//' in output while merging";
            if (semi && i < n && pol->path_params == MR_PATH_PARAMS_LAST) return "';' before the last segment";
            if (semi && pol->path_params == MR_PATH_PARAMS_REJECT) return "';' in output";
            seg = i + 1;
        }
    }
    return NULL;
}

static void fuzz_prefixes(const char *o, size_t n)
{
    if (!mr_path_prefix_match(o, n, o, n)) die("a path does not match itself as a prefix", o, n, NULL, 0);
    if (!mr_path_exact_match(o, n, o, n)) die("a path does not match itself exactly", o, n, NULL, 0);
    for (size_t k = 1; k <= n; k++) {
        bool boundary = k == 1 || k == n || o[k] == '/' || o[k] == ';' || o[k - 1] == '/';
        bool m = mr_path_prefix_match(o, k, o, n);
        if (boundary != m) die(m ? "prefix matched inside a segment" : "prefix at a boundary did not match", o, k, o, n);
        size_t off = 0;
        int slash = mr_path_strip_prefix(o, k, o, n, &off);
        if ((slash >= 0) != m) die("strip_prefix disagrees with prefix_match", o, k, o, n);
        if (slash < 0) continue;
        if (off > n) die("strip_prefix offset beyond the path", o, k, o, n);
        if (!slash && (off == n || o[off] != '/')) die("strip_prefix remainder without '/'", o, k, o + off, n - off);
        if (slash && off < n && o[off] == '/') die("strip_prefix asks for a second '/'", o, k, o + off, n - off);
    }
}

static void fuzz_host(const char *in, size_t len)
{
    char *out = malloc(len ? len : 1);
    size_t n = 0;
    int port = -2;
    const char *why = NULL;
    if (mr_host_normalize(in, len, out, len, &n, &port, &why) == 0) {
        if (n == 0 || n > len) die("host output length", in, len, out, n);
        if (port < -1 || port > 65535) die("host port out of range", in, len, out, n);
        for (size_t i = 0; i < n; i++)
            if (out[i] >= 'A' && out[i] <= 'Z') die("uppercase in host output", in, len, out, n);
        if (out[n - 1] == '.') die("trailing dot in host output", in, len, out, n);
        char *again = malloc(n);
        size_t n2 = 0;
        int port2 = 0;
        if (mr_host_normalize(out, n, again, n, &n2, &port2, &why) != 0 || n2 != n || memcmp(out, again, n) != 0 ||
            port2 != -1)
            die("host normalisation is not idempotent", in, len, out, n);
        free(again);
    } else if (!why) {
        die("host refused without a reason", in, len, NULL, 0);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t ctl = data[0];
    mr_path_policy_t pol = { !(ctl & 1), (mr_path_slashes_t)((ctl >> 1) & 3), (mr_path_params_t)((ctl >> 3) & 3) };
    if (pol.escaped_slashes > MR_PATH_SLASHES_DECODE) pol.escaped_slashes = MR_PATH_SLASHES_REJECT;
    if (pol.path_params > MR_PATH_PARAMS_REJECT) pol.path_params = MR_PATH_PARAMS_LAST;
    size_t len = size - 1 + ((ctl & 0x80) ? 1 : 0);
    char *in = malloc(len ? len : 1); /* exactly len bytes, so ASan sees any overread */
    if (ctl & 0x80) in[0] = '/';
    memcpy(in + ((ctl & 0x80) ? 1 : 0), data + 1, size - 1);
    fuzz_host(in, len);

    char *out = malloc(len ? len : 1);
    size_t n = 0;
    const char *why = NULL;
    int rc = mr_path_normalize(&pol, in, len, out, len, &n, &why);
    if (rc == MR_PATH_REFUSED) {
        if (!why) die("refused without a reason", in, len, NULL, 0);
    } else {
        const char *o = rc == MR_PATH_SAME ? in : out;
        if (rc != MR_PATH_SAME && rc != MR_PATH_CHANGED) die("unknown return value", in, len, NULL, 0);
        if (n > len) die("output longer than input", in, len, o, n);
        if (rc == MR_PATH_SAME && n != len) die("SAME with a different length", in, len, o, n);
        if (rc == MR_PATH_CHANGED && n == len && memcmp(in, out, n) == 0) die("CHANGED but identical", in, len, o, n);
        const char *bad = shape(&pol, o, n);
        if (bad) die(bad, in, len, o, n);
        char *again = malloc(n);
        size_t n2 = 0;
        if (mr_path_normalize(&pol, o, n, again, n, &n2, &why) != MR_PATH_SAME || n2 != n)
            die("not idempotent", in, len, o, n);
        free(again);
        fuzz_prefixes(o, n);
    }
    /* in place */
    char *copy = malloc(len ? len : 1);
    memcpy(copy, in, len);
    size_t n3 = 0;
    int rc3 = mr_path_normalize(&pol, copy, len, copy, len, &n3, &why);
    if (rc3 != rc) die("in place: different result", in, len, copy, n3);
    if (rc >= 0 && (n3 != n || memcmp(copy, rc == MR_PATH_SAME ? in : out, n) != 0))
        die("in place: different output", in, len, copy, n3);
    free(copy);
    free(out);
    free(in);
    return 0;
}
