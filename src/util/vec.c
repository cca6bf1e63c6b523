#include "util/vec.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int mr_vec_reserve(mr_vec_t *v, size_t n, size_t limit)
{
    size_t need = (size_t)v->len + n;
    if (need > limit) return -E2BIG;
    if (need <= v->cap) return 0;
    size_t cap = v->cap ? v->cap : 1024;
    while (cap < need) cap *= 2;
    if (cap > limit) cap = limit;
    char *p = realloc(v->p, cap);
    if (!p) return -ENOMEM;
    v->p = p;
    v->cap = (uint32_t)cap;
    return 0;
}

int mr_vec_append(mr_vec_t *v, const void *p, size_t n, size_t limit)
{
    int rc = mr_vec_reserve(v, n, limit);
    if (rc < 0) return rc;
    mr_vec_put(v, p, n);
    return 0;
}

int mr_vec_printf(mr_vec_t *v, size_t limit, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return -EINVAL;
    int rc = mr_vec_reserve(v, (size_t)n + 1, limit);
    if (rc < 0) return rc;
    va_start(ap, fmt);
    vsnprintf(v->p + v->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    v->len += (uint32_t)n;
    return 0;
}

void mr_vec_free(mr_vec_t *v)
{
    free(v->p);
    v->p = NULL;
    v->len = v->cap = 0;
}

int mr_vec_num(mr_vec_t *v, uint64_t n, size_t limit)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return mr_vec_append(v, tmp + i, sizeof tmp - i, limit);
}
