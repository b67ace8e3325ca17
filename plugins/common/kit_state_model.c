/*
 * kit_state_model.c - the state model in an answer (states, transitions, invariants,
 * error states), for state_model_first only.
 */
#include "kit_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the state model ---------------------------------------------------------- */

/* Length of an arrow at text[i], or 0. */
static size_t arrow_at(const char *t, size_t len, size_t i)
{
    if (i + 1 < len && (t[i] == '-' || t[i] == '=') && t[i + 1] == '>')
        return 2;
    if (i + 2 < len && (unsigned char)t[i] == 0xE2 &&
        (((unsigned char)t[i + 1] == 0x86 && (unsigned char)t[i + 2] == 0x92) ||
         ((unsigned char)t[i + 1] == 0x9F && (unsigned char)t[i + 2] == 0xB6)))
        return 3;
    return 0;
}

static int decoration(char c)
{
    return c == ' ' || c == '\t' || c == '`' || c == '*' || c == '"' || c == '\'';
}

/* Index of a name in the model (case-insensitive), or -1. */
static long name_find(const okit_state_model *m, const char *name, size_t n)
{
    for (size_t i = 0; i < m->name_count; i++) {
        if (strlen(m->names[i]) == n && kit_same_ci(m->names[i], name, n))
            return (long)i;
    }
    return -1;
}

/* Adds a name (or finds it); -1 when it is too short to be a state name
 * ("A", "B": the minimum is what keeps single letters from passing as a
 * model), too long, or the model is full. */
static long name_add(okit_state_model *m, const char *name, size_t n)
{
    if (n < OKIT_MIN_STATE_NAME || n >= OKIT_STATE_NAME_SZ)
        return -1;
    long k = name_find(m, name, n);
    if (k >= 0 || m->name_count >= OKIT_MAX_STATES)
        return k;
    memcpy(m->names[m->name_count], name, n);
    m->names[m->name_count][n] = '\0';
    return (long)m->name_count++;
}

/* Whether [s, s+n) has the form of a state name by itself: `code` (letters,
 * digits, '_', a kit_letter among them), UPPER_SNAKE_CASE or kit_lower snake_case
 * with an inner '_' ("under_review"; a plain kit_lower-case word is prose), at
 * least OKIT_MIN_STATE_NAME characters. */
static int state_form(const char *s, size_t n, int backticked)
{
    if (n < OKIT_MIN_STATE_NAME || n >= OKIT_STATE_NAME_SZ)
        return 0;
    int upper = s[0] >= 'A' && s[0] <= 'Z', low = s[0] >= 'a' && s[0] <= 'z', underscore = 0,
        has_letter = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((unsigned char)c >= 0x80 || !kit_ident_char(c))
            return 0;
        underscore |= c == '_';
        has_letter |= kit_letter((unsigned char)c);
        if (c >= 'a' && c <= 'z')
            upper = 0;
        if (c >= 'A' && c <= 'Z')
            low = 0;
    }
    if (backticked)
        return has_letter;
    return upper || (low && underscore && s[n - 1] != '_');
}

/* A state name starting at t[i], of state_form ("Refund", mixed case, is
 * a word, not a name). Returns its length and sets *name, or 0. */
static size_t state_token(const char *t, size_t len, size_t i, const char **name)
{
    size_t j = i + (i < len && t[i] == '`');
    size_t k = j;
    while (k < len && kit_ident_char(t[k]))
        k++;
    int backticked = j > i && k < len && t[k] == '`';
    if (j > i && !backticked)
        return 0;
    if (!state_form(t + j, k - j, backticked))
        return 0;
    *name = t + j;
    return k - j;
}

/* "States: a, b and c" on one line: each item (split at commas,
 * semicolons, "and", "or") of one to four words or a `code` name is a state
 * name. */
static void inline_state_list(const char *t, size_t s, size_t e, okit_state_model *m)
{
    size_t i, k = 0;
    for (i = s; i < e && i < s + 60; i++) {
        long end;
        if (kit_word_start(t, i) && (end = kit_match_at(t, e, i, "states")) >= 0) {
            k = (size_t)end;
            while (k < e && (t[k] == ' ' || t[k] == '*'))
                k++;
            if (k < e && t[k] == ':')
                break;
        }
    }
    if (i >= e || i >= s + 60)
        return;
    for (size_t a = k + 1; a < e;) {
        size_t b = a;
        while (b < e && t[b] != ',' && t[b] != ';' &&
               !(t[b] == ' ' && b > a &&
                 (kit_match_at(t, e, b + 1, "and ") >= 0 || kit_match_at(t, e, b + 1, "or ") >= 0)))
            b++;
        size_t x = a, y = b;
        while (x < y && strchr(" \t`*", t[x]) && t[x])
            x++;
        if (y - x > 4 && kit_match_at(t, y, x, "and ") >= 0)
            x += 4;
        else if (y - x > 3 && kit_match_at(t, y, x, "or ") >= 0)
            x += 3;
        while (y > x && strchr(" \t`*.\r", t[y - 1]) && t[y - 1])
            y--;
        size_t words = y > x ? 1 : 0, ok = y > x && y - x < OKIT_STATE_NAME_SZ;
        for (size_t c = x; c < y && ok; c++) {
            if (t[c] == ' ')
                words++;
            else if (!kit_ident_char(t[c]) && t[c] != '-')
                ok = 0;
        }
        if (ok && words <= 4)
            name_add(m, t + x, y - x);
        a = b + 1;
    }
}

static const char *const error_name_words[] = {"fail",     "failed",   "failing",   "failure",
                                               "failures", "error",    "errors",    "errored",
                                               "reject",   "rejected", "rejection", NULL};
static const char *const error_state_phrases[] = {
    "error state*", "failed state*", "failure state*", "rejected state*", "exception state*", NULL};

/* The listed states: list items ("-", "*", "+", "1." or a "|" table row)
 * that open with a state name, on a line without an arrow, and the items
 * of "States:" lines. */
static void collect_listed(const char *text, size_t len, okit_state_model *m)
{
    const char *name;
    size_t n, pos = 0, s, e;
    while (kit_next_line(text, len, &pos, &s, &e)) {
        size_t i = s;
        inline_state_list(text, s, e, m);
        while (i < e && (text[i] == ' ' || text[i] == '\t'))
            i++;
        if (i < e && strchr("-*+|", text[i]) && text[i]) {
            i++;
        } else {
            size_t d = i;
            while (d < e && text[d] >= '0' && text[d] <= '9')
                d++;
            if (d == i || d >= e || (text[d] != '.' && text[d] != ')'))
                continue;
            i = d + 1;
        }
        while (i < e && (text[i] == ' ' || text[i] == '\t' || text[i] == '*' || text[i] == '_'))
            i++;
        /* "- A -> B" is a transition, not the definition of state A. */
        int arrow = 0;
        for (size_t k = i; k < e && !arrow; k++)
            arrow = arrow_at(text, e, k) > 0;
        long k;
        if (arrow || (n = state_token(text, e, i, &name)) == 0 || (k = name_add(m, name, n)) < 0)
            continue;
        /* "- `ON_HOLD`: error state, ..." declares an error state whatever
         * its name; a sentence elsewhere that mentions the state does not
         * (it may be about leaving it). */
        size_t rest = (size_t)(name - text) + n;
        if (okit_count_distinct(text + rest, e - rest, error_state_phrases) > 0)
            m->error[k] = 1;
    }
}

/* The state named at t[i] (a word start): the longest listed name written
 * there, else a name of state form. Returns its end and sets *at and *n, or 0. */
static size_t state_after(const okit_state_model *m, const char *t, size_t len, size_t i,
                          size_t *at, size_t *n)
{
    size_t best = 0;
    for (size_t k = 0; k < m->listed; k++) {
        size_t l = strlen(m->names[k]);
        if (l > best && i + l <= len && kit_same_ci(t + i, m->names[k], l) &&
            (i + l == len || !kit_ident_char(t[i + l])))
            best = l;
    }
    if (best == 0) {
        size_t j = i;
        while (j < len && kit_ident_char(t[j]))
            j++;
        int bt = i > 0 && t[i - 1] == '`' && j < len && t[j] == '`';
        if (!state_form(t + i, j - i, bt))
            return 0;
        best = j - i;
    }
    *at = i;
    *n = best;
    return i + best;
}

/* The state named just before t[l] (l is where it ends), as state_after. */
static int state_before(const okit_state_model *m, const char *t, size_t len, size_t l, size_t *at,
                        size_t *n)
{
    size_t best = 0;
    for (size_t k = 0; k < m->listed; k++) {
        size_t w = strlen(m->names[k]);
        if (w > best && w <= l && kit_same_ci(t + l - w, m->names[k], w) &&
            (l == w || !kit_ident_char(t[l - w - 1])))
            best = w;
    }
    if (best == 0) {
        size_t j = l;
        while (j > 0 && kit_ident_char(t[j - 1]))
            j--;
        int bt = j > 0 && t[j - 1] == '`' && l < len && t[l] == '`';
        if (!state_form(t + j, l - j, bt))
            return 0;
        best = l - j;
    }
    *at = l - best;
    *n = best;
    return 1;
}

static void edge_add(okit_state_model *m, const char *t, size_t fa, size_t fn, size_t ta, size_t tn)
{
    long from = name_add(m, t + fa, fn), to = name_add(m, t + ta, tn);
    if (from < 0 || to < 0 || from == to || m->edge_count >= OKIT_MAX_EDGES)
        return; /* "A -> A" changes nothing: not a transition */
    for (size_t i = 0; i < m->edge_count; i++) {
        if (m->edges[i].from == from && m->edges[i].to == to)
            return;
    }
    m->edges[m->edge_count].from = (unsigned char)from;
    m->edges[m->edge_count].to = (unsigned char)to;
    m->edge_count++;
}

static size_t skip_decoration(const char *t, size_t len, size_t i)
{
    while (i < len && decoration(t[i]))
        i++;
    return i;
}

/* "from X to Y" / "from the X state into Y": X and Y as state_after. */
static void from_to(okit_state_model *m, const char *t, size_t len, size_t i)
{
    long w = kit_match_at(t, len, i, "from ");
    size_t fa, fn, ta, tn, k;
    if (w < 0)
        return;
    k = skip_decoration(t, len, (size_t)w);
    if ((w = kit_match_at(t, len, k, "the ")) >= 0)
        k = skip_decoration(t, len, (size_t)w);
    if (!(k = state_after(m, t, len, k, &fa, &fn)))
        return;
    k = skip_decoration(t, len, k);
    if ((w = kit_match_at(t, len, k, "state ")) >= 0)
        k = (size_t)w;
    if ((w = kit_match_at(t, len, k, "to ")) < 0 && (w = kit_match_at(t, len, k, "into ")) < 0)
        return;
    k = skip_decoration(t, len, (size_t)w);
    if ((w = kit_match_at(t, len, k, "the ")) >= 0)
        k = skip_decoration(t, len, (size_t)w);
    if (state_after(m, t, len, k, &ta, &tn))
        edge_add(m, t, fa, fn, ta, tn);
}

/* Error states by name: a failure word in it (PAYMENT_FAILED,
 * evidence_rejected; FAILOVER is not one). collect_listed() has already
 * marked the listed states whose own item calls them an error state. */
static void mark_errors(okit_state_model *m)
{
    for (size_t k = 0; k < m->name_count; k++)
        m->error[k] |= okit_count_distinct(m->names[k], strlen(m->names[k]), error_name_words) > 0;
}

int okit_state_model_parse(const char *text, size_t len, okit_state_model *m)
{
    memset(m, 0, sizeof(*m));
    if (!text)
        return 0;
    collect_listed(text, len, m);
    m->listed = m->name_count;
    for (size_t i = 0; i < len; i++) {
        if (kit_word_start(text, i) && (text[i] == 'f' || text[i] == 'F')) {
            from_to(m, text, len, i);
            continue;
        }
        size_t a = arrow_at(text, len, i);
        if (!a)
            continue;
        size_t l = i, r = i + a, fa, fn, ta, tn;
        while (l > 0 && decoration(text[l - 1]))
            l--;
        r = skip_decoration(text, len, r);
        if (l > 0 && kit_ident_char(text[l - 1]) && r < len && kit_ident_char(text[r]))
            m->written++;
        if (state_before(m, text, len, l, &fa, &fn) && state_after(m, text, len, r, &ta, &tn))
            edge_add(m, text, fa, fn, ta, tn);
        i += a - 1;
    }
    mark_errors(m);
    return 0;
}
