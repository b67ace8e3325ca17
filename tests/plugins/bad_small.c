/* Test plugin: declares a descriptor smaller than the 1.0 layout (FH_LOAD_TOO_SMALL). See
 * tp_common.h. */
#define TP_NAME    "bad_small"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

TP_ENTRY(.magic = FUSION_OVERLAY_MAGIC, .abi_major = FUSION_ABI_MAJOR, .abi_minor = 0,
         .size = (uint32_t)offsetof(fusion_overlay_descriptor, evaluate), .name = TP_NAME,
         .version = TP_VERSION, TP_HOOKS)
