/* See shdict_test_api.h. */
#include "lua/shdict_test_api.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    mr_shdict_t *d;
    int id, iters, failed;
} stress_arg_t;

static const char STRESS_KEY[] = "stress:counter";

static void *stress_main(void *p)
{
    stress_arg_t *a = p;
    uint32_t x = 2654435761u * (uint32_t)(a->id + 1);
    char key[48], val[512], buf[600], keys[1024];
    memset(val, 'v', sizeof val);
    for (int i = 0; i < a->iters; i++) {
        double out;
        int forcible, type, stale;
        uint32_t flags;
        if (mr_shdict_incr(a->d, STRESS_KEY, sizeof STRESS_KEY - 1, 1, 1, 0, 0, &out, &forcible) != MR_FFI_OK)
            a->failed = 1;
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        int kl = snprintf(key, sizeof key, "s:%d:%u", a->id % 4, (x >> 9) % 128);
        size_t vl = x % sizeof val, bl = sizeof buf, n = sizeof keys;
        int64_t ms;
        switch (i & 7) {
        case 0: case 1: case 2:
            mr_shdict_store(a->d, MR_SHD_SET, key, (size_t)kl, MR_SHD_TSTRING, val, vl, 0,
                            (x & 1) ? 0.002 : 0, x, &forcible);
            break;
        case 3:
            mr_shdict_store(a->d, MR_SHD_ADD | ((x & 2) ? MR_SHD_SAFE : 0), key, (size_t)kl,
                            MR_SHD_TNUMBER, NULL, 0, i, 0, 0, &forcible);
            break;
        case 4:
            mr_shdict_get(a->d, key, (size_t)kl, (int)(x & 1), &type, &out, buf, &bl, &flags, &stale);
            break;
        case 5:
            mr_shdict_delete(a->d, key, (size_t)kl);
            break;
        case 6:
            if (mr_shdict_ttl(a->d, key, (size_t)kl, &ms) == MR_FFI_OK) mr_shdict_expire(a->d, key, (size_t)kl, 0.001);
            break;
        default:
            if ((i & 63) == 7) mr_shdict_get_keys(a->d, 16, keys, &n, &kl);
            else if ((i & 255) == 15) mr_shdict_flush_expired(a->d, 8);
            else mr_shdict_incr(a->d, key, (size_t)kl, 1, 1, 0, 0.001, &out, &forcible);
            break;
        }
    }
    return NULL;
}

MR_EXPORT int mr_shdict_stress(mr_shdict_t *d, int threads, int iters)
{
    if (!d || threads < 1 || threads > 256 || iters < 0) return MR_FFI_ERROR;
    mr_shdict_delete(d, STRESS_KEY, sizeof STRESS_KEY - 1);
    pthread_t tid[256];
    stress_arg_t args[256];
    int started = 0, failed = 0;
    for (int i = 0; i < threads; i++) {
        args[i] = (stress_arg_t){ .d = d, .id = i, .iters = iters };
        if (pthread_create(&tid[i], NULL, stress_main, &args[i]) != 0) { failed = 1; break; }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        failed |= args[i].failed;
    }
    if (failed) return MR_FFI_ERROR;
    int type, stale;
    double num = 0;
    size_t len = 0;
    uint32_t flags;
    if (mr_shdict_get(d, STRESS_KEY, sizeof STRESS_KEY - 1, 0, &type, &num, NULL, &len, &flags, &stale) != MR_FFI_OK
        || type != MR_SHD_TNUMBER)
        return MR_FFI_ERROR;
    return (int)num;
}
