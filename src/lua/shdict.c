/* Shared dictionaries: see shdict.h for the model (budget, LRU, lazy expiry, locking, ABI). */
#include "lua/shdict.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* One entry: a single allocation holding the header, the key and (for strings) the value. */
typedef struct mr_shent mr_shent_t;
struct mr_shent {
    mr_shent_t *hnext, **hprev;   /* hash chain (hprev: the pointer that points at us) */
    mr_shent_t *prev, *next;      /* LRU list: d->head is the most recently used */
    uint64_t hash;
    uint64_t expires;             /* monotonic ms; 0 = never */
    uint64_t gen;                 /* d->gen when stored; older = flushed */
    double num;                   /* number, or 0/1 for a boolean */
    size_t vlen;                  /* string value length */
    size_t cap;                   /* bytes available in data[] */
    uint32_t flags;               /* user flags */
    uint16_t klen;
    uint8_t type;
    char data[];                  /* key, then the string value */
};

struct mr_shdict {
    pthread_mutex_t lock;
    mr_shent_t **buckets;
    size_t mask;                  /* bucket count - 1 (a power of two) */
    mr_shent_t *head, *tail;
    size_t size;                  /* budget, bytes */
    size_t used;                  /* bytes charged by entries */
    size_t count;
    uint64_t gen;                 /* flush_all generation */
    int retired;
    unsigned epoch;               /* registry epoch of the last define */
    mr_shdict_t *reg_next;
    size_t namelen;
    char name[];
};

/* Charge per entry: header + data + the malloc chunk header, in 16-byte steps (glibc's
 * granularity), so the budget tracks the real heap use closely. */
#define HDR sizeof(mr_shent_t)
#define MALLOC_OVH 8
#define SCAN 8                /* stores look this far from the LRU tail for expired entries ... */
#define SAFE_SCAN 64          /* ... and safe_* stores (which fail otherwise) this far */
#define TAIL_RECLAIM 2        /* expired entries reclaimed from the LRU tail on every write */
#define MAX_TTL_MS 1e15       /* ~31700 years: "never" in practice, and no uint64 overflow */

static size_t cap_for(size_t need)
{
    size_t total = (HDR + need + MALLOC_OVH + 15) & ~(size_t)15;
    return total - HDR - MALLOC_OVH;
}

static size_t charge_of_cap(size_t cap) { return HDR + cap + MALLOC_OVH; }
static size_t charge(const mr_shent_t *e) { return charge_of_cap(e->cap); }

/* ---- hashing: SipHash-1-3 with a per-process random key (keys may be client-controlled) ---- */

static uint64_t sip_k0, sip_k1;
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;

static void seed_init(void)
{
    uint64_t k[2];
    if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)ts.tv_sec;
        k[1] = (uint64_t)(uintptr_t)&ts * 0xbf58476d1ce4e5b9ULL ^ k[0];
    }
    sip_k0 = k[0];
    sip_k1 = k[1];
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                              \
    do {                                                                      \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);             \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);             \
    } while (0)

static uint64_t hash_key(const char *k, size_t len)
{
    const uint8_t *p = (const uint8_t *)k;
    uint64_t v0 = 0x736f6d6570736575ULL ^ sip_k0, v1 = 0x646f72616e646f6dULL ^ sip_k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ sip_k0, v3 = 0x7465646279746573ULL ^ sip_k1;
    size_t i, full = len & ~(size_t)7;
    for (i = 0; i < full; i += 8) {
        uint64_t m = 0;
        for (int j = 0; j < 8; j++) m |= (uint64_t)p[i + j] << (8 * j);
        v3 ^= m; SIPROUND; v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (int j = 0; i + (size_t)j < len; j++) b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b; SIPROUND; v0 ^= b;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- time ---------------------------------------------------------------------------------- */

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Seconds -> absolute expiry in ms (0 = never). Positive ttls round up to whole ms. */
static uint64_t expiry(double seconds, uint64_t now)
{
    if (!(seconds > 0)) return 0;   /* also NaN */
    double ms = ceil(seconds * 1000.0);
    if (ms > MAX_TTL_MS) ms = MAX_TTL_MS;
    if (ms < 1) ms = 1;
    return now + (uint64_t)ms;
}

/* ---- entries (all below run with d->lock held) ---------------------------------------------- */

static inline int live(const mr_shdict_t *d, const mr_shent_t *e, uint64_t now)
{
    return e->gen == d->gen && (e->expires == 0 || now < e->expires);
}

static mr_shent_t *lookup(mr_shdict_t *d, uint64_t h, const char *k, size_t kl)
{
    for (mr_shent_t *e = d->buckets[h & d->mask]; e; e = e->hnext)
        if (e->hash == h && e->klen == kl && memcmp(e->data, k, kl) == 0) return e;
    return NULL;
}

static void hash_link(mr_shdict_t *d, mr_shent_t *e)
{
    mr_shent_t **b = &d->buckets[e->hash & d->mask];
    e->hnext = *b;
    if (*b) (*b)->hprev = &e->hnext;
    e->hprev = b;
    *b = e;
}

static void hash_unlink(mr_shent_t *e)
{
    *e->hprev = e->hnext;
    if (e->hnext) e->hnext->hprev = e->hprev;
}

static void lru_unlink(mr_shdict_t *d, mr_shent_t *e)
{
    if (e->prev) e->prev->next = e->next; else d->head = e->next;
    if (e->next) e->next->prev = e->prev; else d->tail = e->prev;
}

static void lru_push(mr_shdict_t *d, mr_shent_t *e)
{
    e->prev = NULL;
    e->next = d->head;
    if (d->head) d->head->prev = e; else d->tail = e;
    d->head = e;
}

static inline void lru_touch(mr_shdict_t *d, mr_shent_t *e)
{
    if (d->head == e) return;
    lru_unlink(d, e);
    lru_push(d, e);
}

static void free_entry(mr_shdict_t *d, mr_shent_t *e)
{
    hash_unlink(e);
    lru_unlink(d, e);
    d->used -= charge(e);
    d->count--;
    free(e);
}

static void free_all(mr_shdict_t *d)
{
    mr_shent_t *e = d->head;
    while (e) {
        mr_shent_t *n = e->next;
        free(e);
        e = n;
    }
    d->head = d->tail = NULL;
    memset(d->buckets, 0, (d->mask + 1) * sizeof *d->buckets);
    d->used = 0;
    d->count = 0;
}

/* Opportunistic lazy expiry: frees up to TAIL_RECLAIM dead entries at the LRU tail. */
static void reclaim_tail(mr_shdict_t *d, uint64_t now)
{
    for (int i = 0; i < TAIL_RECLAIM && d->tail && !live(d, d->tail, now); i++) free_entry(d, d->tail);
}

/* Makes room for an entry charging `need` bytes, given that `skip` (the entry being replaced,
 * may be NULL) will be freed by the caller. First, dead entries among the last SCAN (SAFE_SCAN
 * for safe stores) of the LRU list are freed silently; then, unless `safe` (which fails
 * instead), entries are evicted from the LRU tail, setting *forcible when one was live. The
 * scans are bounded so a store's time under the lock is too. The caller checked need <= size. */
static int make_room(mr_shdict_t *d, size_t need, mr_shent_t *skip, int safe, uint64_t now, int *forcible)
{
    size_t freed = skip ? charge(skip) : 0;
#define FITS() (d->used - freed + need <= d->size)
    if (FITS()) return 0;
    mr_shent_t *t = d->tail;
    for (int i = 0, scan = safe ? SAFE_SCAN : SCAN; t && i < scan && !FITS(); i++) {
        mr_shent_t *p = t->prev;
        if (t != skip && !live(d, t, now)) free_entry(d, t);
        t = p;
    }
    if (safe || FITS()) return FITS() ? 0 : -1;
    while (!FITS()) {
        mr_shent_t *t = d->tail;
        if (t == skip) t = t->prev;
        if (!t) return -1;   /* unreachable while need <= d->size */
        if (live(d, t, now)) *forcible = 1;
        free_entry(d, t);
    }
    return 0;
#undef FITS
}

static void write_value(mr_shent_t *e, int type, const char *str, size_t sl, double num)
{
    e->type = (uint8_t)type;
    if (type == MR_SHD_TSTRING) {
        e->num = 0;
        e->vlen = sl;
        if (sl) memcpy(e->data + e->klen, str, sl);
    } else {
        e->num = type == MR_SHD_TBOOLEAN ? (num != 0) : num;
        e->vlen = 0;
    }
}

/* Stores into `e` (the existing entry for the key, live or dead, or NULL). */
static int put(mr_shdict_t *d, mr_shent_t *e, uint64_t h, const char *k, size_t kl, int type,
               const char *str, size_t sl, double num, uint64_t expires, uint32_t flags, int safe,
               uint64_t now, int *forcible)
{
    size_t vl = type == MR_SHD_TSTRING ? sl : 0;
    if (vl > d->size || kl + vl > d->size) return MR_FFI_NOMEM;
    size_t need = kl + vl, cap = cap_for(need), ch = charge_of_cap(cap);
    if (ch > d->size) return MR_FFI_NOMEM;
    if (e && e->cap >= need && e->cap <= 2 * need + 64) {
        /* In place: same charge, no allocation (the common overwrite / counter path). */
        write_value(e, type, str, sl, num);
        e->expires = expires;
        e->flags = flags;
        e->gen = d->gen;
        lru_touch(d, e);
        return MR_FFI_OK;
    }
    if (make_room(d, ch, e, safe, now, forcible) != 0) return MR_FFI_NOMEM;
    mr_shent_t *n = malloc(HDR + cap);
    if (!n) return MR_FFI_NOMEM;
    if (e) free_entry(d, e);
    n->hash = h;
    n->klen = (uint16_t)kl;
    n->cap = cap;
    memcpy(n->data, k, kl);
    write_value(n, type, str, sl, num);
    n->expires = expires;
    n->flags = flags;
    n->gen = d->gen;
    hash_link(d, n);
    lru_push(d, n);
    d->used += ch;
    d->count++;
    return MR_FFI_OK;
}

static inline int bad_key(const mr_shdict_t *d, const char *k, size_t kl)
{
    return !d || !k || kl == 0 || kl > MR_SHDICT_KEY_MAX;
}

/* ---- FFI surface ---------------------------------------------------------------------------- */

MR_EXPORT int mr_shdict_get(mr_shdict_t *d, const char *k, size_t kl, int stale_ok, int *type,
                            double *num, char *buf, size_t *len, uint32_t *flags, int *stale)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (!e) { rc = MR_FFI_DECLINED; goto out; }
    int alive = live(d, e, now);
    if (!alive && !stale_ok) { free_entry(d, e); rc = MR_FFI_DECLINED; goto out; }
    if (alive) lru_touch(d, e);
    if (e->type == MR_SHD_TSTRING && e->vlen > *len) { *len = e->vlen; rc = MR_FFI_TOO_SMALL; goto out; }
    *type = e->type;
    *num = e->num;
    *len = e->type == MR_SHD_TSTRING ? e->vlen : 0; /* a list (TLIST) is not copied: num is its length */
    if (e->type == MR_SHD_TSTRING && e->vlen) memcpy(buf, e->data + e->klen, e->vlen);
    *flags = e->flags;
    *stale = !alive;
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

MR_EXPORT int mr_shdict_store(mr_shdict_t *d, int op, const char *k, size_t kl, int type,
                              const char *str, size_t sl, double num, double exptime,
                              uint32_t flags, int *forcible)
{
    int dummy, base = op & ~MR_SHD_SAFE, safe = (op & MR_SHD_SAFE) != 0;
    if (!forcible) forcible = &dummy;
    *forcible = 0;
    if (bad_key(d, k, kl) || base < MR_SHD_SET || base > MR_SHD_REPLACE) return MR_FFI_BAD_ARG;
    if (type != MR_SHD_TNIL && type != MR_SHD_TBOOLEAN && type != MR_SHD_TNUMBER && type != MR_SHD_TSTRING)
        return MR_FFI_BAD_ARG;
    if (type == MR_SHD_TSTRING && !str && sl) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc;
    pthread_mutex_lock(&d->lock);
    if (d->retired) { rc = MR_FFI_RETIRED; goto out; }
    reclaim_tail(d, now);
    mr_shent_t *e = lookup(d, h, k, kl);
    int alive = e && live(d, e, now);
    if (base == MR_SHD_ADD && alive) rc = MR_FFI_EXISTS;
    else if (base == MR_SHD_REPLACE && !alive) {
        if (e) free_entry(d, e);
        rc = MR_FFI_DECLINED;
    } else if (type == MR_SHD_TNIL) {
        if (e) free_entry(d, e);
        rc = MR_FFI_OK;
    } else {
        rc = put(d, e, h, k, kl, type, str, sl, num, expiry(exptime, now), flags, safe, now, forcible);
    }
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

MR_EXPORT int mr_shdict_incr(mr_shdict_t *d, const char *k, size_t kl, double by, int has_init,
                             double init, double init_ttl, double *out, int *forcible)
{
    int dummy;
    if (!forcible) forcible = &dummy;
    *forcible = 0;
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    pthread_mutex_lock(&d->lock);
    if (d->retired) { rc = MR_FFI_RETIRED; goto out; }
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && live(d, e, now)) {
        if (e->type != MR_SHD_TNUMBER) { rc = MR_FFI_BAD_TYPE; goto out; }
        e->num += by;
        *out = e->num;
        lru_touch(d, e);
        goto out;
    }
    if (!has_init) {
        if (e) free_entry(d, e);
        rc = MR_FFI_DECLINED;
        goto out;
    }
    reclaim_tail(d, now);
    e = lookup(d, h, k, kl);   /* reclaim_tail may have freed it */
    double v = init + by;
    rc = put(d, e, h, k, kl, MR_SHD_TNUMBER, NULL, 0, v, expiry(init_ttl, now), 0, 0, now, forcible);
    if (rc == MR_FFI_OK) *out = v;
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

MR_EXPORT int mr_shdict_delete(mr_shdict_t *d, const char *k, size_t kl)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl);
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e) free_entry(d, e);
    pthread_mutex_unlock(&d->lock);
    return MR_FFI_OK;
}

MR_EXPORT int mr_shdict_ttl(mr_shdict_t *d, const char *k, size_t kl, int64_t *ms)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && live(d, e, now)) {
        *ms = e->expires ? (int64_t)(e->expires - now) : 0;   /* live => expires > now => >= 1 */
    } else {
        if (e) free_entry(d, e);
        rc = MR_FFI_DECLINED;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

MR_EXPORT int mr_shdict_expire(mr_shdict_t *d, const char *k, size_t kl, double exptime)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && live(d, e, now)) {
        e->expires = expiry(exptime, now);
    } else {
        if (e) free_entry(d, e);
        rc = MR_FFI_DECLINED;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

MR_EXPORT int mr_shdict_get_keys(mr_shdict_t *d, int max, char *buf, size_t *len, int *count)
{
    if (!d || !len || !count || (*len && !buf)) return MR_FFI_BAD_ARG;
    uint64_t now = now_ms();
    size_t cap = *len, used = 0;
    int n = 0;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = d->head;
    while (e && (max <= 0 || n < max)) {
        mr_shent_t *next = e->next;
        if (!live(d, e, now)) { free_entry(d, e); e = next; continue; }
        size_t sz = 2 + (size_t)e->klen;
        if (used + sz <= cap) {
            buf[used] = (char)(e->klen & 0xff);
            buf[used + 1] = (char)(e->klen >> 8);
            memcpy(buf + used + 2, e->data, e->klen);
        } else {
            cap = 0;   /* stop writing; keep counting the size needed */
        }
        used += sz;
        n++;
        e = next;
    }
    pthread_mutex_unlock(&d->lock);
    *len = used;
    *count = n;
    return used <= cap ? MR_FFI_OK : MR_FFI_TOO_SMALL;
}

MR_EXPORT int mr_shdict_flush_all(mr_shdict_t *d)
{
    if (!d) return MR_FFI_BAD_ARG;
    pthread_mutex_lock(&d->lock);
    d->gen++;
    pthread_mutex_unlock(&d->lock);
    return MR_FFI_OK;
}

MR_EXPORT int mr_shdict_flush_expired(mr_shdict_t *d, int max)
{
    if (!d) return 0;
    uint64_t now = now_ms();
    int n = 0;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = d->tail;
    while (e && (max <= 0 || n < max)) {
        mr_shent_t *p = e->prev;
        if (!live(d, e, now)) { free_entry(d, e); n++; }
        e = p;
    }
    pthread_mutex_unlock(&d->lock);
    return n;
}

MR_EXPORT size_t mr_shdict_capacity(mr_shdict_t *d)
{
    if (!d) return 0;
    pthread_mutex_lock(&d->lock);
    size_t s = d->size;
    pthread_mutex_unlock(&d->lock);
    return s;
}

MR_EXPORT size_t mr_shdict_free_space(mr_shdict_t *d)
{
    if (!d) return 0;
    pthread_mutex_lock(&d->lock);
    size_t s = d->size > d->used ? d->size - d->used : 0;
    pthread_mutex_unlock(&d->lock);
    return s;
}


/* ---- lists (lpush, rpush, lpop, rpop, llen) -------------------------------------------------
 * A list is one entry of type MR_SHD_TLIST whose value bytes are its items, each framed as
 * [type:1][len:4][payload][len:4] (numbers as 8-byte doubles), so both ends pop in O(1) after
 * the framing; e->num holds the item count. A push that outgrows the entry reallocates it with
 * headroom (charged to the budget like any store, evicting if needed); a pop shrinks in place;
 * the entry goes away with its last item. A new list never expires (expire() sets a TTL). */

#define ITEM_OVH 9

static int list_push(mr_shdict_t *d, mr_shent_t *e, uint64_t h, const char *k, size_t kl, int left, int type,
                     const char *str, size_t sl, double num, uint64_t now, int *forcible, int *n_out)
{
    size_t plen = type == MR_SHD_TSTRING ? sl : sizeof(double);
    size_t old = e ? e->vlen : 0, vl = old + plen + ITEM_OVH;
    if (vl > d->size || kl + vl > d->size) return MR_FFI_NOMEM;
    if (!e || e->cap < kl + vl) {
        size_t want = kl + vl + vl / 2;   /* headroom: pushes amortise their copies */
        if (charge_of_cap(cap_for(want)) > d->size) want = kl + vl;
        size_t cap = cap_for(want), ch = charge_of_cap(cap);
        if (ch > d->size) return MR_FFI_NOMEM;
        if (make_room(d, ch, e, 0, now, forcible) != 0) return MR_FFI_NOMEM;
        mr_shent_t *n = malloc(HDR + cap);
        if (!n) return MR_FFI_NOMEM;
        n->hash = h;
        n->klen = (uint16_t)kl;
        n->cap = cap;
        memcpy(n->data, k, kl);
        n->type = MR_SHD_TLIST;
        n->vlen = old;
        n->num = 0;
        n->expires = 0;
        n->flags = 0;
        n->gen = d->gen;
        if (e) {
            n->num = e->num;
            n->expires = e->expires;
            char *dst = n->data;
            const char *src = e->data;
            memcpy(dst + kl, src + kl, old); /* the items so far */
            free_entry(d, e);
        }
        hash_link(d, n);
        lru_push(d, n);
        d->used += ch;
        d->count++;
        e = n;
    } else {
        lru_touch(d, e);
    }
    char *v = e->data + kl;
    size_t isz = plen + ITEM_OVH;
    if (left && old) memmove(v + isz, v, old);
    char *it = left ? v : v + old;
    uint32_t l32 = (uint32_t)plen;
    it[0] = (char)type;
    memcpy(it + 1, &l32, 4);
    if (type == MR_SHD_TSTRING) { if (sl) memcpy(it + 5, str, sl); }
    else memcpy(it + 5, &num, sizeof num);
    memcpy(it + 5 + plen, &l32, 4);
    e->vlen = old + isz;
    e->num += 1;
    *n_out = (int)e->num;
    return MR_FFI_OK;
}

/* Pushes a string or number at the head (left) or the tail. *len_out: the list's length after.
 * BAD_TYPE: the key holds something else than a list. */
MR_EXPORT int mr_shdict_push(mr_shdict_t *d, const char *k, size_t kl, int left, int type, const char *str,
                             size_t sl, double num, int *len_out, int *forcible)
{
    int dummy;
    if (!forcible) forcible = &dummy;
    *forcible = 0;
    if (bad_key(d, k, kl) || (type != MR_SHD_TSTRING && type != MR_SHD_TNUMBER)) return MR_FFI_BAD_ARG;
    if (type == MR_SHD_TSTRING && !str && sl) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc;
    pthread_mutex_lock(&d->lock);
    if (d->retired) { rc = MR_FFI_RETIRED; goto out; }
    reclaim_tail(d, now);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && !live(d, e, now)) { free_entry(d, e); e = NULL; }
    if (e && e->type != MR_SHD_TLIST) { rc = MR_FFI_BAD_TYPE; goto out; }
    rc = list_push(d, e, h, k, kl, left, type, str, sl, num, now, forcible, len_out);
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* Pops from the head (left) or the tail: *type and *num, or a string copied into buf (capacity
 * *len on entry, its length on return). TOO_SMALL (*len = the size needed, nothing popped),
 * DECLINED (no such list: nil), BAD_TYPE (not a list). */
MR_EXPORT int mr_shdict_pop(mr_shdict_t *d, const char *k, size_t kl, int left, int *type, double *num, char *buf,
                            size_t *len)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && !live(d, e, now)) { free_entry(d, e); e = NULL; }
    if (!e) { rc = MR_FFI_DECLINED; goto out; }
    if (e->type != MR_SHD_TLIST) { rc = MR_FFI_BAD_TYPE; goto out; }
    char *v = e->data + e->klen;
    uint32_t plen;
    char *it;
    if (left) {
        it = v;
        memcpy(&plen, it + 1, 4);
    } else {
        memcpy(&plen, v + e->vlen - 4, 4);
        it = v + e->vlen - plen - ITEM_OVH;
    }
    *type = (unsigned char)it[0];
    if (*type == MR_SHD_TSTRING) {
        if (plen > *len) { *len = plen; rc = MR_FFI_TOO_SMALL; goto out; }
        if (plen) memcpy(buf, it + 5, plen);
        *len = plen;
        *num = 0;
    } else {
        memcpy(num, it + 5, sizeof *num);
        *len = 0;
    }
    size_t isz = plen + ITEM_OVH;
    if (left) memmove(v, v + isz, e->vlen - isz);
    e->vlen -= isz;
    e->num -= 1;
    if (e->num <= 0) free_entry(d, e);
    else lru_touch(d, e);
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* The number of items of a list (0 when there is none); BAD_TYPE when the key is not a list. */
MR_EXPORT int mr_shdict_llen(mr_shdict_t *d, const char *k, size_t kl, int *n)
{
    if (bad_key(d, k, kl)) return MR_FFI_BAD_ARG;
    uint64_t h = hash_key(k, kl), now = now_ms();
    int rc = MR_FFI_OK;
    *n = 0;
    pthread_mutex_lock(&d->lock);
    mr_shent_t *e = lookup(d, h, k, kl);
    if (e && !live(d, e, now)) { free_entry(d, e); e = NULL; }
    if (e && e->type != MR_SHD_TLIST) rc = MR_FFI_BAD_TYPE;
    else if (e) *n = (int)e->num;
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* ---- registry ------------------------------------------------------------------------------ */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static mr_shdict_t *reg_head;
static unsigned reg_epoch;

/* One bucket per 256 bytes of budget (at most ~3 minimal entries per chain when full). The
 * bucket array is not charged to the budget: it is a fixed size/32 bytes on top. */
static size_t buckets_for(size_t size)
{
    size_t want = size / 256, n = 16;
    while (n < want && n < ((size_t)1 << 26)) n <<= 1;
    return n;
}

MR_EXPORT mr_shdict_t *mr_shdict_find(const char *name, size_t len)
{
    if (!name) return NULL;
    pthread_mutex_lock(&reg_lock);
    mr_shdict_t *d = reg_head;
    while (d && (d->retired || d->namelen != len || memcmp(d->name, name, len) != 0)) d = d->reg_next;
    pthread_mutex_unlock(&reg_lock);
    return d;
}

/* Applies a new budget/bucket count to an existing dict (under reg_lock). */
static int resize(mr_shdict_t *d, size_t size)
{
    size_t nb = buckets_for(size);
    mr_shent_t **nbk = NULL;
    pthread_mutex_lock(&d->lock);
    size_t old_nb = d->mask + 1;
    pthread_mutex_unlock(&d->lock);
    if (nb != old_nb && !(nbk = calloc(nb, sizeof *nbk))) return -1;

    uint64_t now = now_ms();
    mr_shent_t **old = NULL;
    pthread_mutex_lock(&d->lock);
    if (d->retired) { free_all(d); d->retired = 0; }
    d->size = size;
    if (d->used > size) {
        /* Shrinking below the contents: drop dead entries, then the least recently used. */
        for (mr_shent_t *e = d->tail, *p; e; e = p) {
            p = e->prev;
            if (!live(d, e, now)) free_entry(d, e);
        }
        while (d->used > size && d->tail) free_entry(d, d->tail);
    }
    if (nbk) {
        old = d->buckets;
        d->buckets = nbk;
        d->mask = nb - 1;
        for (mr_shent_t *e = d->head; e; e = e->next) hash_link(d, e);
    }
    pthread_mutex_unlock(&d->lock);
    free(old);
    return 0;
}

MR_EXPORT int mr_shdict_define(const char *name, size_t size)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > MR_SHDICT_NAME_MAX || size == 0) return MR_FFI_BAD_ARG;
    pthread_once(&seed_once, seed_init);
    pthread_mutex_lock(&reg_lock);
    mr_shdict_t *d = reg_head;
    while (d && (d->namelen != len || memcmp(d->name, name, len) != 0)) d = d->reg_next;
    if (d) {
        int rc = resize(d, size);
        if (rc == 0) d->epoch = reg_epoch;
        pthread_mutex_unlock(&reg_lock);
        return rc == 0 ? MR_FFI_OK : MR_FFI_NOMEM;
    }
    d = calloc(1, sizeof *d + len + 1);
    size_t nb = buckets_for(size);
    if (d) d->buckets = calloc(nb, sizeof *d->buckets);
    if (!d || !d->buckets) {
        if (d) free(d);
        pthread_mutex_unlock(&reg_lock);
        return MR_FFI_NOMEM;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&d->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    d->mask = nb - 1;
    d->size = size;
    d->epoch = reg_epoch;
    d->namelen = len;
    memcpy(d->name, name, len + 1);
    d->reg_next = reg_head;
    reg_head = d;   /* dicts are never freed: handles held by VMs stay valid */
    pthread_mutex_unlock(&reg_lock);
    return MR_FFI_OK;
}

MR_EXPORT void mr_shdict_reload_begin(void)
{
    pthread_mutex_lock(&reg_lock);
    reg_epoch++;
    pthread_mutex_unlock(&reg_lock);
}

MR_EXPORT void mr_shdict_reload_end(void)
{
    pthread_mutex_lock(&reg_lock);
    for (mr_shdict_t *d = reg_head; d; d = d->reg_next) {
        if (d->epoch == reg_epoch) continue;
        pthread_mutex_lock(&d->lock);
        if (!d->retired) {
            free_all(d);
            d->retired = 1;
            d->gen++;
        }
        pthread_mutex_unlock(&d->lock);
    }
    pthread_mutex_unlock(&reg_lock);
}
