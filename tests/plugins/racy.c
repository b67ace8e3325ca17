/*
 * racy - a test overlay with a deliberate data race, for `plugin-test
 * --stress` to catch.
 *
 * apply() builds its directive a piece at a time in one static scratch
 * buffer that every call shares, with a few microseconds of sleep between
 * the pieces. Two calls at once interleave: one starts the text again while
 * the other is still appending, so the system message a call prepends has
 * pieces missing or repeated, and the rewritten request differs from the
 * one a lone call makes. That is the bug the SDK's threading rule forbids
 * ("treat state as read-only after init() or protect it yourself"): a
 * static buffer is state every thread shares.
 *
 * Called alone (plugin-test without --stress, or --threads 1) it is a
 * well-formed overlay: a match score, the same rewrite every time, an
 * evaluation with two rules in [0,1].
 *
 * The race is on purpose and memory-safe: every append checks its bound
 * against its own copy of the shared length, and the buffer's last byte is
 * never written, so a corrupted text is the only symptom (AddressSanitizer
 * stays quiet; ThreadSanitizer reports the race, as it should: keep this
 * plugin out of the TSan tests).
 */
#include <fusion/overlay.h>

#include <string.h>
#include <time.h>

static char scratch[512];
static size_t scratch_len; /* shared by every call: the race */

static void put(const char *piece)
{
    size_t n = strlen(piece), at = scratch_len;
    if (at >= sizeof(scratch) - 1 || n > sizeof(scratch) - 2 - at)
        return;
    memcpy(scratch + at, piece, n);
    scratch[at + n] = '\0';
    scratch_len = at + n;
}

/* Long enough for another thread to get in between. */
static void pause_briefly(void)
{
    struct timespec ts = {0, 5000};
    nanosleep(&ts, NULL);
}

static const char *const pieces[] = {
    "Racy overlay directive. ",
    "1. Check the lot before you touch it. ",
    "2. Reverse the duplicate first. ",
    "3. Confirm the result against the ledger.",
};

static int racy_init(const fusion_init_args *args, void **state)
{
    (void)args;
    *state = NULL;
    return 0;
}

static void racy_fini(void *state)
{
    (void)state;
}

static double racy_match(void *state, const fusion_request *req, const fusion_host_api *host)
{
    (void)state;
    return strncmp(host->req_scenario_type(req), "refund", 6) == 0 ? 0.9 : 0.3;
}

static int racy_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    (void)state;
    scratch_len = 0;
    scratch[0] = '\0';
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        put(pieces[i]);
        pause_briefly();
    }
    if (host->req_prepend_system(req, scratch) != 0)
        return -1;
    return host->req_set_number(req, "temperature", 0.3);
}

static int contains(const char *text, size_t len, const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; n <= len && i <= len - n; i++)
        if (memcmp(text + i, word, n) == 0)
            return 1;
    return 0;
}

static int racy_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                         fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)host;
    double ledger = contains(answer, len, "ledger") ? 1.0 : 0.0;
    double answered = len > 0 ? 1.0 : 0.0;
    fusion_eval_add(out, "mentions_ledger", ledger, "the answer checks the ledger");
    fusion_eval_add(out, "answered", answered, NULL);
    out->quality = (ledger + answered) / 2.0;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "racy", .version = "1.0.0",
                      .description = "test: apply() races on a static scratch buffer",
                      .license = "MIT", .init = racy_init, .fini = racy_fini, .match = racy_match,
                      .apply = racy_apply, .evaluate = racy_evaluate)
