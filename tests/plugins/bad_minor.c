/* Test plugin: built for a newer ABI minor than the host (FH_LOAD_ABI_MINOR). See tp_common.h. */
#define TP_NAME    "bad_minor"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

TP_ENTRY(.magic = FUSION_OVERLAY_MAGIC, .abi_major = FUSION_ABI_MAJOR,
         .abi_minor = FUSION_ABI_MINOR + 1, .size = (uint32_t)sizeof(fusion_overlay_descriptor),
         .name = TP_NAME, .version = TP_VERSION, TP_HOOKS)
