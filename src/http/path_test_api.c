/* See path_test_api.h. */
#include "http/path_test_api.h"

#include <stdlib.h>
#include <string.h>

#include "http/path.h"

#include "util/export.h"

MR_EXPORT int mr_path_test_normalize(int merge_slashes, int escaped_slashes, int path_params, const char *in,
                                     size_t len, char *out, size_t cap, size_t *outlen, const char **why)
{
    mr_path_policy_t pol = { merge_slashes != 0, (mr_path_slashes_t)escaped_slashes, (mr_path_params_t)path_params };
    size_t n = 0;
    int rc = mr_path_normalize(&pol, in, len, out, cap, &n, why);
    if (rc == MR_PATH_SAME) memcpy(out, in, len);
    /* the same in place, on a private copy */
    char *copy = malloc(len ? len : 1);
    if (!copy) return -3;
    if (len) memcpy(copy, in, len);
    size_t n2 = 0;
    const char *why2 = NULL;
    int rc2 = mr_path_normalize(&pol, copy, len, copy, cap < len ? cap : len, &n2, &why2);
    bool same = rc2 == rc && (rc < 0 || (n2 == n && memcmp(copy, out, n) == 0));
    free(copy);
    if (!same) {
        if (why) *why = "in-place result differs";
        return -2;
    }
    if (outlen) *outlen = n;
    return rc;
}

MR_EXPORT int mr_host_test_normalize(const char *in, size_t len, char *out, size_t cap, size_t *outlen, int *port,
                                     const char **why)
{
    return mr_host_normalize(in, len, out, cap, outlen, port, why);
}

MR_EXPORT int mr_path_test_prefix_match(const char *prefix, size_t plen, const char *path, size_t len)
{
    return mr_path_prefix_match(prefix, plen, path, len);
}

MR_EXPORT int mr_path_test_exact_match(const char *exact, size_t elen, const char *path, size_t len)
{
    return mr_path_exact_match(exact, elen, path, len);
}

MR_EXPORT int mr_path_test_strip_prefix(const char *prefix, size_t plen, const char *path, size_t len, char *out,
                                        size_t cap)
{
    size_t off = 0;
    int slash = mr_path_strip_prefix(prefix, plen, path, len, &off);
    if (slash < 0 || (size_t)slash + len - off > cap) return -1;
    if (slash) out[0] = '/';
    memcpy(out + slash, path + off, len - off);
    return (int)((size_t)slash + len - off);
}
