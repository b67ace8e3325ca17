/*
 * crasher - a test overlay whose apply() dereferences a null pointer when
 * the request's scenario type is "crash" (a SIGSEGV inside plugin code, so
 * inside the door), and recurses until its stack overflows for
 * "crash_stack"; with `config: { crash_in: "init" }` its init() crashes.
 * The crash-quarantine test uses it: the daemon dies, the crash journal
 * names the overlay, and the next start quarantines it (or, for init(),
 * refuses that file). Other requests it serves as a no-op.
 */
#include <fusion/overlay.h>

#include <string.h>

static void crash_now(void)
{
    volatile int *volatile nowhere = NULL;
    *nowhere = 42; /* SIGSEGV, on purpose */
}

/* Each frame keeps a page alive after the call: no tail call to loop. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winfinite-recursion"
static int recurse(volatile char *up, int depth)
{
    volatile char page[4096];
    page[0] = (char)depth;
    page[1] = up ? up[0] : 0;
    return recurse(page, depth + 1) + page[1];
}
#pragma GCC diagnostic pop

static int crasher_init(const fusion_init_args *args, void **state)
{
    if (args->config_json && strstr(args->config_json, "\"init\""))
        crash_now();
    *state = NULL;
    return 0;
}

static void crasher_fini(void *state)
{
    (void)state;
}

static int crasher_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    (void)state;
    const char *type = host->req_scenario_type(req);
    if (type && strcmp(type, "crash") == 0) {
        host->log(FUSION_LOG_WARN, "crashing in apply()");
        crash_now();
    }
    if (type && strcmp(type, "crash_stack") == 0) {
        host->log(FUSION_LOG_WARN, "overflowing the stack in apply()");
        return recurse(NULL, 0);
    }
    return 0;
}

static int crasher_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                            fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)answer, (void)len, (void)host;
    out->quality = 1.0;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "crasher", .version = "1.0.0",
                      .description = "test: apply() crashes with SIGSEGV", .license = "MIT",
                      .init = crasher_init, .fini = crasher_fini, .apply = crasher_apply,
                      .evaluate = crasher_evaluate)
