/* Test plugin: built for another ABI major (FH_LOAD_ABI_MAJOR). See tp_common.h. */
#define TP_NAME    "bad_major"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

TP_ENTRY(.magic = FUSION_OVERLAY_MAGIC, .abi_major = FUSION_ABI_MAJOR + 1, .abi_minor = 0,
         .size = (uint32_t)sizeof(fusion_overlay_descriptor), .name = TP_NAME,
         .version = TP_VERSION, TP_HOOKS)
