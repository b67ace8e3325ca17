/* Test plugin: overlay 'good_b' 1.0.0 without the optional match hook
 * (the host must score it 1.0). See tp_common.h. */
#define TP_NAME    "good_b"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.5
#include "tp_common.h"

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "test overlay",
                      .license = "MIT", .init = tp_init, .fini = tp_fini, .apply = tp_apply,
                      .evaluate = tp_evaluate)
