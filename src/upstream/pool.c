#include "upstream/pool.h"

#include <stddef.h>

void mr_pool_put(mr_server_t *s, mr_pool_link_t *l)
{
    l->prev = NULL;
    l->next = s->idle;
    if (s->idle) s->idle->prev = l;
    s->idle = l;
    s->nidle++;
    l->pooled = true;
}

void mr_pool_remove(mr_server_t *s, mr_pool_link_t *l)
{
    if (!l->pooled) return;
    if (l->prev) l->prev->next = l->next;
    else s->idle = l->next;
    if (l->next) l->next->prev = l->prev;
    l->next = l->prev = NULL;
    l->pooled = false;
    s->nidle--;
}

mr_pool_link_t *mr_pool_take(mr_server_t *s)
{
    mr_pool_link_t *l = s->idle;
    if (l) mr_pool_remove(s, l);
    return l;
}
