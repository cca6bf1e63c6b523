/* Flat wrappers over src/http/path.h for unit specs (LuaJIT FFI on libmoonring_ffi.so): plain ints
 * instead of the policy struct, and each call also checks what a spec cannot see from outside.
 *
 * mr_path_test_normalize runs mr_path_normalize into `out` and, on MR_PATH_SAME, copies the input
 * there so the spec always reads `out`. It also normalises a copy of the input in place and returns
 * -2 ("*why" = "in-place result differs") if that disagrees with the out-of-place result. Other
 * return values are mr_path_normalize's. */
#ifndef MR_HTTP_PATH_TEST_API_H
#define MR_HTTP_PATH_TEST_API_H

#include <stddef.h>

int mr_path_test_normalize(int merge_slashes, int escaped_slashes, int path_params, const char *in, size_t len,
                           char *out, size_t cap, size_t *outlen, const char **why);

/* mr_host_normalize as is. */
int mr_host_test_normalize(const char *in, size_t len, char *out, size_t cap, size_t *outlen, int *port,
                           const char **why);

/* 1 or 0. */
int mr_path_test_prefix_match(const char *prefix, size_t plen, const char *path, size_t len);
int mr_path_test_exact_match(const char *exact, size_t elen, const char *path, size_t len);

/* Writes the stripped path ('/' included when the C API asks the caller for one) into out and
 * returns its length, or -1 when the prefix does not match (or out is too small). */
int mr_path_test_strip_prefix(const char *prefix, size_t plen, const char *path, size_t len, char *out, size_t cap);

#endif
