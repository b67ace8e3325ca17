/* Test plugin: a well-formed overlay 'good_a' 2.0.0 (the hot-swap successor of good_a.c). See
 * tp_common.h. */
#define TP_NAME    "good_a"
#define TP_VERSION "2.0.0"
#define TP_MATCH   0.2
#include "tp_common.h"

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "test overlay",
                      .license = "MIT", TP_HOOKS)
