/*
 * kit_text.c - checks of an answer's text: patterns as words, an index per
 * evaluate() so many patterns cost one pass, sentences, numbered steps,
 * conditional failure handling, weighted quality. Pure functions and a
 * thread-local index: safe from every hook thread.
 */
#include "kit_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- text checks --------------------------------------------------------------- */

char kit_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Letters and digits (and any non-ASCII byte, so a word is never split in
 * the middle of a UTF-8 sequence). '_' separates words: PAYMENT_FAILED
 * contains the word "failed". */
static int word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

/* A state name or code identifier keeps its '_' (PAYMENT_FAILED is one
 * name), unlike a word. */
int kit_ident_char(char c)
{
    return word_char((unsigned char)c) || c == '_';
}

int kit_letter(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

static int gap_char(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '-' || c == '_';
}

/* Matches pattern at text[pos] (pos on a word start); returns the end or -1. */
long kit_match_at(const char *text, size_t len, size_t pos, const char *p)
{
    size_t i = pos;
    int open_end = 0; /* a pattern ending in a space ends on the gap itself */
    for (; *p; p++) {
        open_end = *p == ' ';
        if (p[0] == '*' && p[1] == '\0') {
            while (i < len && word_char((unsigned char)text[i]))
                i++;
            return (long)i;
        }
        if (*p == ' ') {
            if (i >= len || !gap_char(text[i]))
                return -1;
            while (i < len && gap_char(text[i]))
                i++;
            continue;
        }
        if (i >= len || kit_lower(text[i]) != kit_lower(*p))
            return -1;
        i++;
    }
    if (!open_end && i < len && word_char((unsigned char)text[i]))
        return -1;
    return (long)i;
}

int kit_word_start(const char *text, size_t pos)
{
    return pos == 0 || !word_char((unsigned char)text[pos - 1]);
}

int okit_has(const char *text, size_t len, const char *pattern)
{
    if (!text || !pattern || !*pattern)
        return 0;
    char first = kit_lower(pattern[0]);
    for (size_t i = 0; i < len; i++) {
        if (kit_lower(text[i]) == first && kit_word_start(text, i) &&
            kit_match_at(text, len, i, pattern) >= 0)
            return 1;
    }
    return 0;
}

/* The word starts of a text, chained by their lowercased first byte, so
 * that a list of patterns is matched by visiting each pattern's candidate
 * positions only, rather than scanning the whole text once per pattern. */
#define WORD_INDEX_MAX 2048 /* longer texts fall back to one scan per pattern */

#define BUCKETS 28 /* a..z, digits, anything else */

typedef struct word_index {
    uint16_t head[BUCKETS];        /* 1 + first entry of a bucket; 0: none */
    uint16_t next[WORD_INDEX_MAX]; /* 1 + next entry in the same bucket */
    uint32_t pos[WORD_INDEX_MAX];
} word_index;

static unsigned bucket(char c)
{
    c = kit_lower(c);
    if (c >= 'a' && c <= 'z')
        return (unsigned)(c - 'a');
    return c >= '0' && c <= '9' ? 26 : 27;
}

static int index_build(word_index *ix, const char *text, size_t len)
{
    if (len > UINT32_MAX)
        return -1;
    memset(ix->head, 0, sizeof(ix->head));
    size_t n = 0;
    int after_word = 0; /* kit_word_start(): the previous byte is not a word byte */
    for (size_t i = 0; i < len; i++) {
        int was = after_word;
        after_word = word_char((unsigned char)text[i]);
        if (was)
            continue;
        if (n == WORD_INDEX_MAX)
            return -1;
        unsigned b = bucket(text[i]);
        ix->pos[n] = (uint32_t)i;
        ix->next[n] = ix->head[b];
        ix->head[b] = (uint16_t)(n + 1);
        n++;
    }
    return 0;
}

/* A cheap filter before kit_match_at(): the first two bytes, when the pattern's
 * second one is literal. Most word starts in a bucket fail it. */
static int may_match_at(const char *text, size_t len, size_t at, const char *p)
{
    if (kit_lower(text[at]) != kit_lower(p[0]))
        return 0;
    if (p[0] == ' ' || p[1] == '\0' || p[1] == ' ' || p[1] == '*')
        return 1; /* a gap spans several bytes; '*' ends in anything */
    return at + 1 < len && kit_lower(text[at + 1]) == kit_lower(p[1]);
}

/* okit_has() over the index: the same matches, visiting only the word starts
 * whose first byte can begin the pattern (kit_match_at() checks it exactly). */
static int index_has(const word_index *ix, const char *text, size_t len, const char *pattern)
{
    if (!pattern || !*pattern)
        return 0;
    for (uint16_t k = ix->head[bucket(pattern[0])]; k; k = ix->next[k - 1]) {
        uint32_t at = ix->pos[k - 1];
        if (may_match_at(text, len, at, pattern) && kit_match_at(text, len, at, pattern) >= 0)
            return 1;
    }
    return 0;
}

/* The answer being evaluated, indexed once (okit_eval_begin): a query on
 * any span of it uses this index (a binary search per pattern) instead of
 * building one for the span. Per thread, plain data, no destructor: one
 * thread runs one evaluate() at a time. */
typedef struct answer_index {
    const char *text;
    size_t len;
    uint32_t *pos;               /* word starts, grouped by bucket, ascending */
    uint32_t first[BUCKETS + 1]; /* bucket b: pos[first[b] .. first[b + 1]) */
} answer_index;

static _Thread_local answer_index *current_answer;

void okit_eval_begin(const char *text, size_t len)
{
    okit_eval_end();
    if (!text || len == 0 || len > UINT32_MAX)
        return;
    answer_index *a = calloc(1, sizeof(*a));
    uint32_t count[BUCKETS] = {0};
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (kit_word_start(text, i)) {
            count[bucket(text[i])]++;
            n++;
        }
    if (a)
        a->pos = malloc((n ? n : 1) * sizeof(*a->pos));
    if (!a || !a->pos) {
        free(a);
        return; /* each query indexes its own span instead */
    }
    for (unsigned b = 0; b < BUCKETS; b++)
        a->first[b + 1] = a->first[b] + count[b];
    uint32_t fill[BUCKETS];
    memcpy(fill, a->first, sizeof(fill));
    for (size_t i = 0; i < len; i++)
        if (kit_word_start(text, i))
            a->pos[fill[bucket(text[i])]++] = (uint32_t)i;
    a->text = text;
    a->len = len;
    current_answer = a;
}

void okit_eval_end(void)
{
    if (current_answer) {
        free(current_answer->pos);
        free(current_answer);
        current_answer = NULL;
    }
}

/* An index over one text, built once for several pattern lists: the
 * answer's, when the text is a span of it, else one of its own. */
typedef struct text_ix {
    word_index ix;
    int indexed;                /* 0: too many words, scan per pattern instead */
    const answer_index *answer; /* the span's answer, or NULL */
    size_t off;                 /* where the span starts in it */
} text_ix;

static void text_ix_build(text_ix *t, const char *text, size_t len)
{
    const answer_index *a = current_answer;
    if (a && text >= a->text && text + len <= a->text + a->len) {
        t->answer = a;
        t->off = (size_t)(text - a->text);
        t->indexed = 1;
        return;
    }
    t->answer = NULL;
    t->indexed = index_build(&t->ix, text, len) == 0;
}

/* okit_has() on a span of the indexed answer. */
static int answer_has(const answer_index *a, size_t off, const char *text, size_t len,
                      const char *pattern)
{
    unsigned b = bucket(pattern[0]);
    uint32_t lo = a->first[b], hi = a->first[b + 1];
    while (lo < hi) { /* the first word start at or after the span */
        uint32_t mid = lo + (hi - lo) / 2;
        if (a->pos[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t k = lo; k < a->first[b + 1] && a->pos[k] < off + len; k++) {
        size_t at = a->pos[k] - off;
        if (may_match_at(text, len, at, pattern) && kit_match_at(text, len, at, pattern) >= 0)
            return 1;
    }
    /* The span's first byte starts a word of the span even in the middle
     * of one of the answer's. */
    return off > 0 && len > 0 && !kit_word_start(a->text, off) &&
           kit_lower(text[0]) == kit_lower(pattern[0]) && kit_match_at(text, len, 0, pattern) >= 0;
}

static int ix_has(const text_ix *t, const char *text, size_t len, const char *pattern)
{
    if (!pattern || !*pattern)
        return 0;
    if (t->answer)
        return answer_has(t->answer, t->off, text, len, pattern);
    return t->indexed ? index_has(&t->ix, text, len, pattern) : okit_has(text, len, pattern);
}

static uint32_t ix_mask(const text_ix *t, const char *text, size_t len, const char *const *patterns)
{
    uint32_t mask = 0;
    for (size_t i = 0; patterns && patterns[i] && i < 32; i++)
        if (ix_has(t, text, len, patterns[i]))
            mask |= (uint32_t)1 << i;
    return mask;
}

static size_t ix_count(const text_ix *t, const char *text, size_t len, const char *const *patterns)
{
    size_t n = 0;
    for (size_t i = 0; patterns && patterns[i]; i++)
        n += ix_has(t, text, len, patterns[i]) ? 1 : 0;
    return n;
}

uint32_t okit_match_mask(const char *text, size_t len, const char *const *patterns)
{
    if (!text || !patterns)
        return 0;
    text_ix t;
    text_ix_build(&t, text, len);
    return ix_mask(&t, text, len, patterns);
}

size_t okit_count_distinct(const char *text, size_t len, const char *const *patterns)
{
    if (!text || !patterns)
        return 0;
    text_ix t;
    text_ix_build(&t, text, len);
    return ix_count(&t, text, len, patterns);
}

int kit_same_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kit_lower(a[i]) != kit_lower(b[i]))
            return 0;
    }
    return 1;
}

int okit_has_name(const char *text, size_t len, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (!text || n == 0 || n > len)
        return 0;
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || !kit_ident_char(text[i - 1])) &&
            (i + n == len || !kit_ident_char(text[i + n])) && kit_same_ci(text + i, name, n))
            return 1;
    }
    return 0;
}

size_t okit_distinct_words(const char *text, size_t len, size_t cap)
{
    size_t start[OKIT_MAX_WORDS], size[OKIT_MAX_WORDS], n = 0;
    if (!text)
        return 0;
    if (cap > OKIT_MAX_WORDS)
        cap = OKIT_MAX_WORDS;
    for (size_t i = 0; i < len && n < cap;) {
        if (!kit_ident_char(text[i])) {
            i++;
            continue;
        }
        size_t s = i;
        int has_letter = 0;
        /* "customer's" is one word: an apostrophe between two word
         * characters does not end it. */
        while (i < len && (kit_ident_char(text[i]) ||
                           (text[i] == '\'' && i + 1 < len && kit_ident_char(text[i + 1])))) {
            has_letter |= kit_letter((unsigned char)text[i]);
            i++;
        }
        /* "3", "2024" (numbers alone) and "x", "y" (one-character filler)
         * do not make a sentence. */
        if (!has_letter || i - s < 2)
            continue;
        size_t k = 0;
        while (k < n && !(size[k] == i - s && kit_same_ci(text + start[k], text + s, i - s)))
            k++;
        if (k == n) {
            start[n] = s;
            size[n++] = i - s;
        }
    }
    return n;
}

/* Whether the line [s, e) is a block of its own even without a blank line
 * around it: a heading or a table row. */
static int own_line(const char *t, size_t s, size_t e)
{
    while (s < e && (t[s] == ' ' || t[s] == '\t'))
        s++;
    return s < e && (t[s] == '#' || t[s] == '|');
}

/* Whether the line starting at t[i] starts a new block: blank, a heading,
 * a table row, a quote or a list item ("- ", "* ", "+ ", "1. ", "2) "). */
static int block_start(const char *t, size_t len, size_t i)
{
    while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r'))
        i++;
    if (i >= len || t[i] == '\n' || t[i] == '#' || t[i] == '|' || t[i] == '>')
        return 1;
    if ((t[i] == '-' || t[i] == '*' || t[i] == '+') && i + 1 < len &&
        (t[i + 1] == ' ' || t[i + 1] == '\t'))
        return 1;
    size_t d = i;
    while (d < len && t[d] >= '0' && t[d] <= '9')
        d++;
    return d > i && d < len && (t[d] == '.' || t[d] == ')');
}

int okit_next_sentence(const char *text, size_t len, size_t *pos, size_t *start, size_t *end)
{
    if (!text)
        return 0;
    size_t i = *pos;
    while (i < len && kit_is_space(text[i]))
        i++;
    if (i >= len) {
        *pos = len;
        return 0;
    }
    *start = i;
    for (; i < len; i++) {
        char c = text[i];
        /* "1.5" and "v2.1" do not end a sentence: the mark must be
         * followed by a space or the end. */
        if ((c == '.' || c == '!' || c == '?') && (i + 1 >= len || kit_is_space(text[i + 1]))) {
            *end = i + 1;
            *pos = i + 1;
            return 1;
        }
        if (c == '\n') {
            /* Each line break is looked at by one call only, so finding
             * its line's start here keeps the iteration linear. */
            size_t line = i;
            while (line > 0 && text[line - 1] != '\n')
                line--;
            /* A line wrapped to a width continues its sentence; a short
             * line ("invariant must never"), a heading, a table row, a
             * list item or a paragraph break does not, so keywords on
             * lines of their own never add up to one long sentence. */
            if (i - line < OKIT_WRAP_WIDTH || own_line(text, line, i) ||
                block_start(text, len, i + 1)) {
                *end = i;
                *pos = i + 1;
                return 1;
            }
        }
    }
    *end = len;
    *pos = len;
    return 1;
}

size_t okit_substantive(const char *text, size_t len, const char *const *need,
                        const char *const *also, size_t min_words, uint32_t *mask)
{
    size_t pos = 0, s, e, n = 0;
    uint32_t m = 0;
    while (okit_next_sentence(text, len, &pos, &s, &e)) {
        text_ix t; /* one index of the sentence for both lists */
        text_ix_build(&t, text + s, e - s);
        uint32_t hit = ix_mask(&t, text + s, e - s, need);
        if (!hit || (also && ix_count(&t, text + s, e - s, also) == 0) ||
            okit_distinct_words(text + s, e - s, min_words) < min_words)
            continue;
        n++;
        m |= hit;
    }
    if (mask)
        *mask = m;
    return n;
}

/* Line iteration: [start, end) of the line beginning at *pos. */
int kit_next_line(const char *text, size_t len, size_t *pos, size_t *start, size_t *end)
{
    if (*pos >= len)
        return 0;
    *start = *pos;
    const char *nl = memchr(text + *pos, '\n', len - *pos);
    *end = nl ? (size_t)(nl - text) : len;
    *pos = *end + 1;
    return 1;
}

/* The step number a line opens with, or 0 when it is not a numbered line;
 * *after gets where the step's own text starts. */
static unsigned line_number(const char *t, size_t i, size_t end, size_t *after)
{
    while (i < end && strchr(" \t*_>", t[i]) && t[i])
        i++;
    int step_word = 0;
    if (end - i > 5 && kit_lower(t[i]) == 's' && kit_lower(t[i + 1]) == 't' &&
        kit_lower(t[i + 2]) == 'e' && kit_lower(t[i + 3]) == 'p' &&
        (t[i + 4] == ' ' || t[i + 4] == '\t')) {
        i += 5;
        step_word = 1;
    }
    unsigned n = 0, digits = 0;
    while (i < end && t[i] >= '0' && t[i] <= '9' && digits < 3) {
        n = n * 10 + (unsigned)(t[i++] - '0');
        digits++;
    }
    if (digits == 0 || i >= end)
        return 0;
    /* "1." "1)" "1:" and, after "Step", also "Step 1 -"; never "1.5" or 10 % */
    if (t[i] == '.' || t[i] == ')' || t[i] == ':' || (step_word && (t[i] == ' ' || t[i] == '-'))) {
        if (i + 1 < end && t[i + 1] >= '0' && t[i + 1] <= '9')
            return 0;
        *after = i + 1;
        return n;
    }
    return 0;
}

/* An indented line that is neither blank nor numbered carries on the step
 * above it (a wrapped step, or its sub-items); anything else ends it. */
static int continues_step(const char *t, size_t s, size_t e)
{
    size_t after, i = s;
    if (s >= e || (t[s] != ' ' && t[s] != '\t'))
        return 0;
    while (i < e && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r'))
        i++;
    return i < e && line_number(t, s, e, &after) == 0;
}

/* Order of preference between two runs: one that qualifies first, then
 * more steps with the wording, then more substantive steps, then more
 * steps. */
static int better_run(const okit_step_run *a, const okit_step_run *b, size_t min_steps)
{
    int qa = a->substantive >= min_steps && a->worded > 0;
    int qb = b->substantive >= min_steps && b->worded > 0;
    if (qa != qb)
        return qa > qb;
    if (a->worded != b->worded)
        return a->worded > b->worded;
    if (a->substantive != b->substantive)
        return a->substantive > b->substantive;
    return a->steps > b->steps;
}

void okit_best_step_run(const char *text, size_t len, size_t min_words, size_t min_steps,
                        const char *const *patterns, okit_step_run *best)
{
    okit_step_run cur = {0, 0, 0};
    int active = 0;
    unsigned prev = 0;
    size_t pos = 0, s, e;
    *best = cur;
    while (text && kit_next_line(text, len, &pos, &s, &e)) {
        size_t after = 0;
        unsigned n = line_number(text, s, e, &after);
        if (n == 0)
            continue; /* prose between steps does not break the run */
        if (n == 1 || !active || n != prev + 1) {
            if (active && better_run(&cur, best, min_steps))
                *best = cur;
            cur = (okit_step_run){0, 0, 0};
            active = n == 1; /* "5." out of order starts nothing */
        }
        prev = n;
        if (!active)
            continue;
        size_t step_end = e, q = pos, ls, le;
        while (kit_next_line(text, len, &q, &ls, &le) && continues_step(text, ls, le))
            step_end = le;
        cur.steps++;
        if (okit_distinct_words(text + after, step_end - after, min_words) >= min_words) {
            cur.substantive++;
            if (okit_count_distinct(text + after, step_end - after, patterns) > 0)
                cur.worded++;
        }
    }
    if (active && better_run(&cur, best, min_steps))
        *best = cur;
}

static const char *const failure_words[] = {
    "fail",        "fails",       "failed",   "failing",   "failure", "failures", "timeout*",
    "times out",   "timed out",   "time out", "crash",     "crashes", "crashed",  "crashing",
    "error",       "errors",      "errored",  "reject",    "rejects", "rejected", "declined",
    "unavailable", "unreachable", "is down",  "goes down", NULL};

int okit_conditional_failure(const char *text, size_t len)
{
    if (!text)
        return 0;
    /* Only the first "if"/"when" matters: a failure word after any later
     * one is also after the first. One pass, however many there are. */
    long end = -1;
    for (size_t i = 0; i < len && end < 0; i++) {
        if (!kit_word_start(text, i))
            continue;
        end = kit_match_at(text, len, i, "if");
        if (end < 0)
            end = kit_match_at(text, len, i, "when");
    }
    for (size_t j = end < 0 ? len : (size_t)end; j < len; j++) {
        if (!kit_word_start(text, j))
            continue;
        for (size_t k = 0; failure_words[k]; k++) {
            if (kit_match_at(text, len, j, failure_words[k]) >= 0)
                return 1;
        }
    }
    return 0;
}

double okit_weighted_quality(fusion_evaluation *out, const double *weights)
{
    double sum = 0.0, wsum = 0.0;
    for (size_t i = 0; i < out->rule_count; i++) {
        sum += weights[i] * out->rules[i].score;
        wsum += weights[i];
    }
    out->quality = wsum > 0.0 ? sum / wsum : 0.0;
    if (out->quality > 1.0)
        out->quality = 1.0;
    if (out->quality < 0.0)
        out->quality = 0.0;
    return out->quality;
}
