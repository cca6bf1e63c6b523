/* Regular expressions for Lua (moonring.re, ngx.re.*) on PCRE2 (Debian's libpcre2-8), reached
 * through FFI so matching JIT-compiles on the Lua side: compile once, match many times.
 *
 * A compiled regex owns its pattern, its match data (the ovector) and, with MR_RE_JIT, its JIT
 * code. The ovector is the regex's own: valid until the next mr_regex_exec on the same regex,
 * which is enough because a VM is single-threaded and Lua copies the captures out at once.
 * Caching compiled regexes is Lua's business (moonring.re keeps an LRU per VM for the "o" flag);
 * C holds no global state. Thread affinity: any thread, one regex used by one thread at a time.
 *
 * Return codes are the FFI set (util/export.h); mr_regex_error describes a failure in words,
 * PCRE2's own message. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/export.h"

/* Option bits, one per ngx.re option letter (moonring.re maps the letters). */
enum {
    MR_RE_CASELESS = 1 << 0,  /* i */
    MR_RE_MULTILINE = 1 << 1, /* m */
    MR_RE_DOTALL = 1 << 2,    /* s */
    MR_RE_EXTENDED = 1 << 3,  /* x */
    MR_RE_ANCHORED = 1 << 4,  /* a */
    MR_RE_UTF = 1 << 5,       /* u */
    MR_RE_NO_UTF_CHECK = 1 << 6, /* U: UTF, input trusted to be valid */
    MR_RE_DUPNAMES = 1 << 7,  /* D */
    MR_RE_JS = 1 << 8,        /* J: JavaScript compatible escapes */
    MR_RE_JIT = 1 << 9,       /* j */
};

typedef struct mr_regex {
    pcre2_code *code;
    pcre2_match_data *md;
    uint32_t match_opts;
    int ncap;                /* capture groups, not counting group 0 */
    uint32_t nnames, name_size;
    PCRE2_SPTR names;        /* the name table: entries of name_size bytes, group number first */
} mr_regex_t;

static __thread char errbuf[256];

/* The message for the last failure of this thread (compile or match), valid until the next call. */
MR_EXPORT const char *mr_regex_error(void) { return errbuf; }

/* Compiles pat with MR_RE_* flags. MR_FFI_OK with *out, or MR_FFI_BAD_ARG (the pattern does not
 * compile: mr_regex_error says why and where) or MR_FFI_NOMEM. */
MR_EXPORT int mr_regex_compile(const char *pat, size_t len, int flags, mr_regex_t **out)
{
    uint32_t o = 0;
    if (flags & MR_RE_CASELESS) o |= PCRE2_CASELESS;
    if (flags & MR_RE_MULTILINE) o |= PCRE2_MULTILINE;
    if (flags & MR_RE_DOTALL) o |= PCRE2_DOTALL;
    if (flags & MR_RE_EXTENDED) o |= PCRE2_EXTENDED;
    if (flags & MR_RE_ANCHORED) o |= PCRE2_ANCHORED;
    if (flags & (MR_RE_UTF | MR_RE_NO_UTF_CHECK)) o |= PCRE2_UTF;
    if (flags & MR_RE_DUPNAMES) o |= PCRE2_DUPNAMES;
    if (flags & MR_RE_JS) o |= PCRE2_ALT_BSUX | PCRE2_ALLOW_EMPTY_CLASS | PCRE2_MATCH_UNSET_BACKREF;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pat, len, o, &ec, &eo, NULL);
    if (!code) {
        char msg[160];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(errbuf, sizeof errbuf, "pcre2_compile() failed: %s in \"%.*s\" at offset %zu", msg,
                 (int)(len > 80 ? 80 : len), pat, (size_t)eo);
        return MR_FFI_BAD_ARG;
    }
    mr_regex_t *re = calloc(1, sizeof *re);
    if (!re) { pcre2_code_free(code); return MR_FFI_NOMEM; }
    re->code = code;
    /* A JIT failure (no JIT on this CPU, out of memory) only loses speed: match interprets. */
    if (flags & MR_RE_JIT) pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    uint32_t n = 0;
    pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &n);
    re->ncap = (int)n;
    pcre2_pattern_info(code, PCRE2_INFO_NAMECOUNT, &re->nnames);
    pcre2_pattern_info(code, PCRE2_INFO_NAMEENTRYSIZE, &re->name_size);
    pcre2_pattern_info(code, PCRE2_INFO_NAMETABLE, &re->names);
    re->md = pcre2_match_data_create_from_pattern(code, NULL);
    if (!re->md) { pcre2_code_free(code); free(re); return MR_FFI_NOMEM; }
    if (flags & MR_RE_NO_UTF_CHECK) re->match_opts |= PCRE2_NO_UTF_CHECK;
    *out = re;
    return MR_FFI_OK;
}

MR_EXPORT void mr_regex_free(mr_regex_t *re)
{
    if (!re) return;
    pcre2_match_data_free(re->md);
    pcre2_code_free(re->code);
    free(re);
}

MR_EXPORT int mr_regex_ncaptures(const mr_regex_t *re) { return re->ncap; }
MR_EXPORT int mr_regex_nnames(const mr_regex_t *re) { return (int)re->nnames; }

/* The i-th (0-based) named group: its name (NUL-terminated, in the pattern's table) and number. */
MR_EXPORT int mr_regex_name_at(const mr_regex_t *re, int i, const char **name, int *group)
{
    if (i < 0 || (uint32_t)i >= re->nnames) return MR_FFI_BAD_ARG;
    PCRE2_SPTR e = re->names + (size_t)i * re->name_size;
    *group = (e[0] << 8) | e[1];
    *name = (const char *)(e + 2);
    return MR_FFI_OK;
}

/* Matches subject[0..len) from byte offset `from`. Returns the number of ovector pairs set (>= 1)
 * with *ov pointing at the regex's ovector (2 size_t per group, (size_t)-1 for an unset group;
 * valid until the next exec on this regex), MR_FFI_DECLINED when nothing matches, or MR_FFI_ERROR
 * (match limit, bad UTF-8...: mr_regex_error). */
MR_EXPORT int mr_regex_exec(mr_regex_t *re, const char *subj, size_t len, size_t from, const size_t **ov)
{
    if (from > len) return MR_FFI_DECLINED;
    int rc = pcre2_match(re->code, (PCRE2_SPTR)subj, len, from, re->match_opts, re->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return MR_FFI_DECLINED;
    if (rc < 0) {
        char msg[160];
        pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(errbuf, sizeof errbuf, "pcre2_match() failed: %s", msg);
        return MR_FFI_ERROR;
    }
    if (rc == 0) rc = re->ncap + 1; /* the ovector was too small: cannot happen (sized from the pattern) */
    *ov = (const size_t *)pcre2_get_ovector_pointer(re->md);
    return rc;
}
