/* Test plugin: a well-formed overlay 'pinned' 1.0.0 (linked with -z nodelete by
 * tests/CMakeLists.txt, so dlclose() cannot unmap it). See tp_common.h. */
#define TP_NAME    "pinned"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.3
#include "tp_common.h"

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "test overlay",
                      .license = "MIT", TP_HOOKS)
