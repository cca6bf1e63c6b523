#include "proxy/real_ip.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/gen.h"

/* Copies s[0..n) without surrounding blanks into out when it is an IP address. */
static bool take_ip(const char *s, size_t n, char *out, size_t cap)
{
    while (n && (*s == ' ' || *s == '\t')) { s++; n--; }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n == 0 || n >= cap) return false;
    memcpy(out, s, n);
    out[n] = 0;
    uint8_t a[16];
    return mr_ip_parse(out, a) != 0;
}

void mr_real_ip_apply(mr_req_t *r)
{
    const mr_config_t *cfg = r->gen->cfg;
    if (!cfg->real_ip_n || !r->peer || !mr_cidr_match(cfg->real_ip_from, cfg->real_ip_n, r->peer->ip)) return;
    const mr_hdrs_t *h = &r->hdrs;
    char cand[46];
    /* Every field of that name, as one list: the last field's last address is the nearest hop. */
    int last = -1;
    for (uint32_t k = 0; k < h->n; k++) {
        const mr_hdr_t *e = &h->v[k];
        if (!(e->flags & MR_HDR_DELETED) && e->name_len == strlen(cfg->real_ip_header) &&
            strncasecmp(mr_hdr_name(h, e), cfg->real_ip_header, e->name_len) == 0)
            last = (int)k;
    }
    for (int k = last; k >= 0; k--) {
        const mr_hdr_t *e = &h->v[k];
        if ((e->flags & MR_HDR_DELETED) || e->name_len != strlen(cfg->real_ip_header) ||
            strncasecmp(mr_hdr_name(h, e), cfg->real_ip_header, e->name_len) != 0)
            continue;
        const char *v = mr_hdr_value(h, e);
        size_t end = e->val_len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',') start--;
            if (!take_ip(v + start, end - start, cand, sizeof cand)) return; /* garbage: keep the peer */
            snprintf(r->real_ip, sizeof r->real_ip, "%s", cand);
            if (!cfg->real_ip_recursive || !mr_cidr_match(cfg->real_ip_from, cfg->real_ip_n, cand)) return;
            end = start ? start - 1 : 0;
        }
    }
}
