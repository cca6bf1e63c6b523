/* A growable byte buffer addressed by offsets (so growth never invalidates stored spans).
 * Owned by its embedding object; not thread-safe. Growth is bounded by the caller's `limit`. */
#ifndef MR_VEC_H
#define MR_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *p;
    uint32_t len, cap;
} mr_vec_t;

/* Ensures room for n more bytes without exceeding limit total. Returns 0 or -ENOMEM/-E2BIG. */
int mr_vec_reserve(mr_vec_t *v, size_t n, size_t limit);
int mr_vec_append(mr_vec_t *v, const void *p, size_t n, size_t limit);
int mr_vec_printf(mr_vec_t *v, size_t limit, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void mr_vec_free(mr_vec_t *v);
/* Hot-path appends without printf: a string literal, a C string, a decimal number. */
#define mr_vec_lit(v, lit, limit) mr_vec_append((v), (lit), sizeof(lit) - 1, (limit))
static inline int mr_vec_str(mr_vec_t *v, const char *s, size_t limit) { return mr_vec_append(v, s, strlen(s), limit); }
int mr_vec_num(mr_vec_t *v, uint64_t n, size_t limit);
static inline void mr_vec_reset(mr_vec_t *v) { v->len = 0; }
/* Appends without a limit check; caller reserved first. */
static inline void mr_vec_put(mr_vec_t *v, const void *p, size_t n) { memcpy(v->p + v->len, p, n); v->len += (uint32_t)n; }

#endif
