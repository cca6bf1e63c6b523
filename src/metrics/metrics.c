#include "metrics/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

const uint32_t mr_m_bounds_us[MR_M_NBOUNDS] = { 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
                                                500000, 1000000, 2500000, 5000000, 10000000 };

/* ---- names --------------------------------------------------------------------------------- */

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char **str;                 /* by id; [0] = "" */
    uint32_t n, cap;
    uint32_t *idx;              /* open addressing: id + 1, 0 = empty */
    uint32_t icap;
} names;

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int names_grow_index(void)
{
    uint32_t cap = names.icap ? names.icap * 2 : 256;
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (!idx) return -1;
    for (uint32_t id = 1; id < names.n; id++) {
        uint32_t h = hash_bytes(names.str[id], strlen(names.str[id])) & (cap - 1);
        while (idx[h]) h = (h + 1) & (cap - 1);
        idx[h] = id + 1;
    }
    free(names.idx);
    names.idx = idx;
    names.icap = cap;
    return 0;
}

uint32_t mr_metrics_name(const char *s, size_t n)
{
    if (!s || n == 0) return 0;
    pthread_mutex_lock(&names_lock);
    uint32_t id = 0;
    if (!names.str) {
        names.cap = 64;
        names.str = calloc(names.cap, sizeof *names.str);
        if (!names.str) goto out;
        names.str[0] = strdup("");
        names.n = 1;
    }
    if ((names.n + 1) * 2 > names.icap && names_grow_index() < 0) goto out;
    uint32_t h = hash_bytes(s, n) & (names.icap - 1);
    for (; names.idx[h]; h = (h + 1) & (names.icap - 1)) {
        const char *e = names.str[names.idx[h] - 1];
        if (strlen(e) == n && memcmp(e, s, n) == 0) { id = names.idx[h] - 1; goto out; }
    }
    if (names.n == names.cap) {
        /* The array grows, but the admin thread reads strings only through mr_metrics_str,
         * under the lock, so nobody holds the old array. */
        char **str = realloc(names.str, (size_t)names.cap * 2 * sizeof *str);
        if (!str) goto out;
        names.str = str;
        names.cap *= 2;
    }
    char *copy = strndup(s, n);
    if (!copy) goto out;
    id = names.n++;
    names.str[id] = copy;
    names.idx[h] = id + 1;
out:
    pthread_mutex_unlock(&names_lock);
    return id;
}

const char *mr_metrics_str(uint32_t id)
{
    pthread_mutex_lock(&names_lock);
    const char *s = id < names.n ? names.str[id] : "";
    pthread_mutex_unlock(&names_lock);
    return s;
}

/* ---- workers ------------------------------------------------------------------------------- */

static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(mr_metrics_t *) workers_head;
static _Thread_local mr_metrics_t *self;

mr_metrics_t *mr_metrics_worker(int worker)
{
    mr_metrics_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->worker = worker;
    pthread_mutex_lock(&workers_lock);
    m->next = atomic_load(&workers_head);
    atomic_store_explicit(&workers_head, m, memory_order_release);
    pthread_mutex_unlock(&workers_lock);
    self = m;
    return m;
}

mr_metrics_t *mr_metrics_self(void) { return self; }

mr_metrics_t *mr_metrics_workers(void) { return atomic_load_explicit(&workers_head, memory_order_acquire); }

static uint32_t key_hash(uint32_t kind, uint32_t a, uint32_t b)
{
    uint64_t k = ((uint64_t)kind << 56) ^ ((uint64_t)a << 28) ^ b;
    k *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(k >> 32);
}

static int index_grow(mr_metrics_t *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 64;
    mr_mcell_t **tab = calloc(cap, sizeof *tab);
    if (!tab) return -1;
    for (uint32_t i = 0; i < m->cap; i++) {
        mr_mcell_t *c = m->tab[i];
        if (!c) continue;
        uint32_t h = key_hash(c->kind, c->a, c->b) & (cap - 1);
        while (tab[h]) h = (h + 1) & (cap - 1);
        tab[h] = c;
    }
    free(m->tab);
    m->tab = tab;
    m->cap = cap;
    return 0;
}

mr_mcell_t *mr_metrics_cell(mr_metrics_t *m, uint32_t kind, uint32_t a, uint32_t b, uint32_t n)
{
    if (!m) return NULL;
    if (m->cap) {
        for (uint32_t h = key_hash(kind, a, b) & (m->cap - 1); m->tab[h]; h = (h + 1) & (m->cap - 1)) {
            mr_mcell_t *c = m->tab[h];
            if (c->kind == kind && c->a == a && c->b == b) return c;
        }
    }
    if ((m->count + 1) * 2 > m->cap && index_grow(m) < 0) return NULL;
    mr_mcell_t *c = calloc(1, sizeof *c + (size_t)n * sizeof c->v[0]);
    if (!c) return NULL;
    c->kind = kind;
    c->a = a;
    c->b = b;
    c->n = n;
    uint32_t h = key_hash(kind, a, b) & (m->cap - 1);
    while (m->tab[h]) h = (h + 1) & (m->cap - 1);
    m->tab[h] = c;
    m->count++;
    c->next = atomic_load_explicit(&m->head, memory_order_relaxed);
    atomic_store_explicit(&m->head, c, memory_order_release); /* key and zeroes before the pointer */
    return c;
}

void mr_metrics_observe_us(_Atomic uint64_t *h, uint64_t us)
{
    int b = 0;
    while (b < MR_M_NBOUNDS && us > mr_m_bounds_us[b]) b++;
    mr_m_add(&h[b], 1);
    mr_m_add(&h[MR_M_NBUCKETS], us);
}

/* ---- process-wide ------------------------------------------------------------------------- */

static _Atomic uint64_t reloads_ok, reloads_refused, generation = 1;

void mr_metrics_reload(bool ok, uint64_t gen)
{
    atomic_fetch_add(ok ? &reloads_ok : &reloads_refused, 1);
    if (ok) atomic_store(&generation, gen);
}

void mr_metrics_get_reloads(uint64_t *ok, uint64_t *refused, uint64_t *gen)
{
    *ok = atomic_load(&reloads_ok);
    *refused = atomic_load(&reloads_refused);
    *gen = atomic_load(&generation);
}

/* ---- server states ------------------------------------------------------------------------ */

typedef struct srv_state {
    uint32_t up, addr;
    _Atomic int state;
    struct srv_state *next;
} srv_state_t;

static pthread_mutex_t states_lock = PTHREAD_MUTEX_INITIALIZER;
static srv_state_t *states;

_Atomic int *mr_metrics_srv_state(uint32_t up, uint32_t addr)
{
    pthread_mutex_lock(&states_lock);
    srv_state_t *s = states;
    while (s && !(s->up == up && s->addr == addr)) s = s->next;
    if (!s && (s = calloc(1, sizeof *s))) {
        s->up = up;
        s->addr = addr;
        atomic_init(&s->state, MR_SRV_UP);
        s->next = states;
        states = s;
    }
    pthread_mutex_unlock(&states_lock);
    return s ? &s->state : NULL;
}

static const char *const state_names[] = { "up", "down", "draining" };

const char *mr_metrics_srv_state_name(int state)
{
    return state >= 0 && state <= MR_SRV_DRAINING ? state_names[state] : "up";
}

int mr_metrics_srv_state_parse(const char *s, size_t n)
{
    for (int i = 0; i <= MR_SRV_DRAINING; i++)
        if (strlen(state_names[i]) == n && memcmp(state_names[i], s, n) == 0) return i;
    if (n == 5 && memcmp(s, "drain", 5) == 0) return MR_SRV_DRAINING;
    return -1;
}

/* ---- Lua errors ---------------------------------------------------------------------------- */

void mr_metrics_lua_error(uint32_t route, const char *msg)
{
    mr_metrics_t *m = self;
    if (!m || !msg) return;
    /* The runtime prefixes the failing filter: "filter <route>.filters[i] (module): ..." or
     * "handler: ...". The label is "filters[i] (module)", "handler", or "" when unknown. */
    const char *f = "", *end = NULL;
    if (strncmp(msg, "filter ", 7) == 0) {
        const char *dot = strstr(msg, ".filters[");
        end = strstr(msg, ": ");
        if (dot && end && dot < end) f = dot + 1;
        else end = NULL;
    } else if (strncmp(msg, "handler: ", 9) == 0) {
        f = msg;
        end = msg + 7;
    }
    uint32_t fid = end ? mr_metrics_name(f, (size_t)(end - f)) : 0;
    mr_mcell_t *c = mr_metrics_cell(m, MR_MK_LUA, route, fid, MR_ML_NVALUES);
    if (!c) return;
    mr_m_add(&c->v[MR_ML_ERRORS], 1);
    if (strstr(msg, "time budget exceeded")) mr_m_add(&c->v[MR_ML_BUDGET], 1);
}

/* ---- user metrics -------------------------------------------------------------------------- */

typedef struct user_metric {
    char *name, *help, *labels;
    int type, nlabels, nbounds;
    double *bounds;
} user_metric_t;

static pthread_mutex_t user_lock = PTHREAD_MUTEX_INITIALIZER;
static user_metric_t *user;
static int nuser, capuser;
#define USER_MAX 4096

static bool eq(const char *a, const char *b, size_t bl) { return strlen(a) == bl && memcmp(a, b, bl) == 0; }

static bool name_ok(const char *s, size_t n, bool label)
{
    if (n == 0 || n > 200) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return !(label && n >= 2 && s[0] == '_' && s[1] == '_');
}

int mr_metrics_user_define(const char *name, size_t nl, int type, const char *help, size_t hl, const char *labels,
                           size_t ll, const double *bounds, int nbounds)
{
    if (!name_ok(name, nl, false) || type < MR_MU_COUNTER || type > MR_MU_HISTOGRAM || nbounds < 0 || nbounds > 64)
        return MR_FFI_BAD_ARG;
    if (type != MR_MU_HISTOGRAM) nbounds = 0;
    int nlabels = 0;
    for (size_t i = 0, start = 0; ll && i <= ll; i++) {
        if (i < ll && labels[i] != '\n') continue;
        if (!name_ok(labels + start, i - start, true) || eq("le", labels + start, i - start)) return MR_FFI_BAD_ARG;
        nlabels++;
        start = i + 1;
    }
    for (int i = 1; i < nbounds; i++)
        if (!(bounds[i] > bounds[i - 1])) return MR_FFI_BAD_ARG;
    /* A built-in family's name (or one of its series' names) is taken. */
    for (const char *const *b = mr_metrics_builtin_names; *b; b++) {
        size_t bl = strlen(*b);
        if (nl >= bl && memcmp(name, *b, bl) == 0) return MR_FFI_EXISTS;
    }
    int rc = MR_FFI_NOMEM;
    pthread_mutex_lock(&user_lock);
    for (int i = 0; i < nuser; i++) {
        user_metric_t *u = &user[i];
        if (!eq(u->name, name, nl)) continue;
        bool same = u->type == type && eq(u->help, help, hl) && eq(u->labels, labels, ll) && u->nbounds == nbounds &&
                    (nbounds == 0 || memcmp(u->bounds, bounds, (size_t)nbounds * sizeof *bounds) == 0);
        rc = same ? i + 1 : MR_FFI_EXISTS;
        goto out;
    }
    if (nuser >= USER_MAX) { rc = MR_FFI_NOMEM; goto out; }
    if (nuser == capuser) {
        int cap = capuser ? capuser * 2 : 16;
        user_metric_t *t = realloc(user, (size_t)cap * sizeof *t);
        if (!t) goto out;
        user = t;
        capuser = cap;
    }
    user_metric_t *u = &user[nuser];
    memset(u, 0, sizeof *u);
    u->name = strndup(name, nl);
    u->help = strndup(help ? help : "", help ? hl : 0);
    u->labels = strndup(labels ? labels : "", labels ? ll : 0);
    u->bounds = nbounds ? malloc((size_t)nbounds * sizeof *bounds) : NULL;
    if (!u->name || !u->help || !u->labels || (nbounds && !u->bounds)) {
        free(u->name); free(u->help); free(u->labels); free(u->bounds);
        goto out;
    }
    if (nbounds) memcpy(u->bounds, bounds, (size_t)nbounds * sizeof *bounds);
    u->type = type;
    u->nlabels = nlabels;
    u->nbounds = nbounds;
    rc = ++nuser;
out:
    pthread_mutex_unlock(&user_lock);
    return rc;
}

/* Copies metric id's declaration for the exposition (admin thread). */
int mr_metrics_user_get(int id, char **name, char **help, char **labels, int *type, double **bounds, int *nbounds)
{
    int rc = -1;
    pthread_mutex_lock(&user_lock);
    if (id >= 1 && id <= nuser) {
        user_metric_t *u = &user[id - 1];
        *name = strdup(u->name);
        *help = strdup(u->help);
        *labels = strdup(u->labels);
        *type = u->type;
        *nbounds = u->nbounds;
        *bounds = u->nbounds ? malloc((size_t)u->nbounds * sizeof **bounds) : NULL;
        if (*bounds) memcpy(*bounds, u->bounds, (size_t)u->nbounds * sizeof **bounds);
        rc = 0;
    }
    pthread_mutex_unlock(&user_lock);
    return rc;
}

int mr_metrics_user_count(void)
{
    pthread_mutex_lock(&user_lock);
    int n = nuser;
    pthread_mutex_unlock(&user_lock);
    return n;
}

double *mr_metrics_user_slots(int id, const char *values, size_t vl)
{
    mr_metrics_t *m = self;
    if (!m) return NULL;
    int type, nlabels, nbounds;
    pthread_mutex_lock(&user_lock);
    bool known = id >= 1 && id <= nuser;
    if (known) {
        type = user[id - 1].type;
        nlabels = user[id - 1].nlabels;
        nbounds = user[id - 1].nbounds;
    }
    pthread_mutex_unlock(&user_lock);
    if (!known) return NULL;
    int nvalues = vl || nlabels == 1 ? 1 : 0;
    for (size_t i = 0; i < vl; i++) nvalues += values[i] == '\n';
    if (nvalues != nlabels) return NULL;
    uint32_t n = type == MR_MU_HISTOGRAM ? (uint32_t)nbounds + 2 : 1;
    mr_mcell_t *c = mr_metrics_cell(m, MR_MK_USER, (uint32_t)id, mr_metrics_name(values, vl), n);
    return c ? (double *)(void *)c->v : NULL;
}

/* ---- generations ------------------------------------------------------------------------- */

static pthread_mutex_t gens_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { uint64_t id; int count; } gens[64];

void mr_metrics_gen_live(uint64_t id, int delta)
{
    pthread_mutex_lock(&gens_lock);
    int free_slot = -1, i;
    for (i = 0; i < 64 && gens[i].id != id; i++)
        if (free_slot < 0 && gens[i].count == 0) free_slot = i;
    if (i == 64 && delta > 0 && free_slot >= 0) { i = free_slot; gens[i].id = id; }
    if (i < 64) gens[i].count += delta;
    if (i < 64 && gens[i].count <= 0) gens[i].id = 0, gens[i].count = 0;
    pthread_mutex_unlock(&gens_lock);
}

int mr_metrics_gens(uint64_t *ids, int *counts, int max)
{
    int n = 0;
    pthread_mutex_lock(&gens_lock);
    for (int i = 0; i < 64 && n < max; i++)
        if (gens[i].count > 0) { ids[n] = gens[i].id; counts[n] = gens[i].count; n++; }
    pthread_mutex_unlock(&gens_lock);
    return n;
}

void mr_metrics_free_all(void)
{
    mr_metrics_t *m = atomic_exchange(&workers_head, NULL);
    while (m) {
        mr_metrics_t *next = m->next;
        for (mr_mcell_t *c = atomic_load(&m->head), *cn; c; c = cn) {
            cn = c->next;
            free(c);
        }
        free(m->tab);
        free(m);
        m = next;
    }
}
