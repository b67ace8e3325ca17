/* Test plugin: needs a symbol nothing defines, so dlopen(RTLD_NOW) fails
 * (FH_LOAD_DLOPEN). See tp_common.h. */
#define TP_NAME    "bad_undefined"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

extern int tp_symbol_nobody_defines(void);

static int undefined_init(const fusion_init_args *args, void **state)
{
    (void)args;
    *state = NULL;
    return tp_symbol_nobody_defines();
}

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "unresolvable",
                      .license = "MIT", .init = undefined_init, .fini = tp_fini, .apply = tp_apply,
                      .evaluate = tp_evaluate)
