/* Test plugin: a well-formed overlay 'good_a' 1.0.0. See tp_common.h. */
#define TP_NAME    "good_a"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.1
#include "tp_common.h"

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "test overlay",
                      .license = "MIT", TP_HOOKS)
