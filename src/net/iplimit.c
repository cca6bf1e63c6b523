#include "net/iplimit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct mr_iplimit_ent {
    mr_iplimit_ent_t *next;
    uint32_t hash, count;
    char ip[];
};

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static mr_iplimit_ent_t **find(mr_iplimit_t *t, const char *ip, uint32_t h)
{
    mr_iplimit_ent_t **pp = &t->slots[h & (t->nslots - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->ip, ip) != 0)) pp = &(*pp)->next;
    return pp;
}

/* Keeps chains short as the number of distinct peers grows; never shrinks, since the table
 * is sized by the worker's connection peak, which max_connections bounds. */
static int grow(mr_iplimit_t *t)
{
    uint32_t n = t->nslots ? t->nslots * 2 : 64;
    mr_iplimit_ent_t **slots = calloc(n, sizeof *slots);
    if (!slots) return -ENOMEM;
    for (uint32_t i = 0; i < t->nslots; i++) {
        mr_iplimit_ent_t *e = t->slots[i];
        while (e) {
            mr_iplimit_ent_t *next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = n;
    return 0;
}

int mr_iplimit_acquire(mr_iplimit_t *t, const char *ip, uint32_t max)
{
    if (max == 0) return 0;
    if ((t->nents + 1) > t->nslots && grow(t) < 0 && t->nslots == 0) return -ENOMEM;
    uint32_t h = fnv1a(ip);
    mr_iplimit_ent_t **pp = find(t, ip, h);
    if (*pp) {
        if ((*pp)->count >= max) return -EBUSY;
        (*pp)->count++;
        return 0;
    }
    size_t len = strlen(ip);
    mr_iplimit_ent_t *e = malloc(sizeof *e + len + 1);
    if (!e) return -ENOMEM;
    e->next = NULL;
    e->hash = h;
    e->count = 1;
    memcpy(e->ip, ip, len + 1);
    *pp = e;
    t->nents++;
    return 0;
}

void mr_iplimit_release(mr_iplimit_t *t, const char *ip)
{
    if (!t->nslots) return;
    uint32_t h = fnv1a(ip);
    mr_iplimit_ent_t **pp = find(t, ip, h);
    mr_iplimit_ent_t *e = *pp;
    if (!e) return;
    if (--e->count == 0) {
        *pp = e->next;
        free(e);
        t->nents--;
    }
}

void mr_iplimit_free(mr_iplimit_t *t)
{
    for (uint32_t i = 0; i < t->nslots; i++) {
        mr_iplimit_ent_t *e = t->slots[i];
        while (e) {
            mr_iplimit_ent_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->slots);
    t->slots = NULL;
    t->nslots = t->nents = 0;
}
