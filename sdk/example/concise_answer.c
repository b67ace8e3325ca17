/*
 * concise_answer.c - an example overlay built out of tree against the
 * installed SDK. It asks the model for a short, direct answer and scores the
 * answer on two rules. Copy it as the start of your own overlay.
 *
 * Threads: init/fini run alone; match/apply/evaluate may run concurrently,
 * so the state is written only in init and only read afterwards.
 */
#include <fusion/overlay.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 120

struct state {
    char *directive; /* owned; freed in fini */
};

static const char default_directive[] =
    "Answer in at most 120 words. Lead with the answer itself, not with a "
    "greeting or a restatement of the question. Use a short list only when "
    "the answer has separate steps.";

static int ca_init(const fusion_init_args *args, void **out)
{
    struct state *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(args->error, args->error_size, "concise_answer: out of memory");
        return -1;
    }
    /* Use the feature's first micro-overlay text when there is one. */
    const char *text = default_directive;
    size_t len = sizeof(default_directive) - 1;
    if (args->directive_count > 0 && args->directives[0].text_len > 0) {
        text = args->directives[0].text;
        len = args->directives[0].text_len;
    }
    st->directive = malloc(len + 1); /* the host's text is ours only during init */
    if (!st->directive) {
        free(st);
        snprintf(args->error, args->error_size, "concise_answer: out of memory");
        return -1;
    }
    memcpy(st->directive, text, len);
    st->directive[len] = '\0';
    *out = st;
    return 0;
}

static void ca_fini(void *state)
{
    struct state *st = state;
    free(st->directive);
    free(st);
}

/* Suits any request that has a user message; the flags decide the rest. */
static double ca_match(void *state, const fusion_request *req, const fusion_host_api *host)
{
    (void)state;
    for (size_t i = 0; i < host->req_message_count(req); i++) {
        if (strcmp(host->req_message_role(req, i), "user") == 0)
            return 0.5;
    }
    return 0.0;
}

static int ca_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    const struct state *st = state;
    if (host->req_prepend_system(req, st->directive) != 0)
        return -1;
    if (host->req_set_number(req, "temperature", 0.2) != 0)
        return -1;
    double caller_limit;
    if (!host->req_get_number(req, "max_tokens", &caller_limit) &&
        host->req_set_integer(req, "max_tokens", 400) != 0)
        return -1;
    host->log(FUSION_LOG_DEBUG, "concise directive applied");
    return 0;
}

static size_t count_words(const char *s, size_t len)
{
    size_t words = 0;
    int in_word = 0;
    for (size_t i = 0; i < len; i++) {
        int space = s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    return words;
}

static int starts_with_filler(const char *s, size_t len)
{
    static const char *const fillers[] = {"Sure", "Certainly", "Great question", "Of course"};
    for (size_t i = 0; i < sizeof(fillers) / sizeof(fillers[0]); i++) {
        size_t n = strlen(fillers[i]);
        if (len >= n && strncmp(s, fillers[i], n) == 0)
            return 1;
    }
    return 0;
}

static int ca_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                       fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)host;
    size_t words = count_words(answer, len);
    int short_enough = words > 0 && words <= MAX_WORDS;
    fusion_eval_add(out, "within_word_limit", short_enough ? 1.0 : 0.0,
                    short_enough ? "at most 120 words" : "empty or longer than 120 words");
    int direct = len > 0 && !starts_with_filler(answer, len);
    fusion_eval_add(out, "answer_first", direct ? 1.0 : 0.0,
                    direct ? "opens with the answer" : "opens with filler");
    out->quality = (out->rules[0].score + out->rules[1].score) / 2.0;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "concise_answer", .version = "0.1.0",
                      .description = "Short, direct answers", .license = "MIT", .init = ca_init,
                      .fini = ca_fini, .match = ca_match, .apply = ca_apply,
                      .evaluate = ca_evaluate)
