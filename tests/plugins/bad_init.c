/* Test plugin: loads fine but its init() fails with a reason
 * (FH_LOAD_INIT_FAILED in the registry). See tp_common.h. */
#define TP_NAME    "bad_init"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

#include <stdio.h>

static int failing_init(const fusion_init_args *args, void **state)
{
    (void)state;
    if (args->error && args->error_size > 0)
        snprintf(args->error, args->error_size, "cannot open the model table 'tp_table.csv'");
    return -1;
}

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "fails init",
                      .license = "MIT", .init = failing_init, .fini = tp_fini, .apply = tp_apply,
                      .evaluate = tp_evaluate)
