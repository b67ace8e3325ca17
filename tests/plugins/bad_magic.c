/* Test plugin: a wrong magic (FH_LOAD_BAD_MAGIC). See tp_common.h. */
#define TP_NAME    "bad_magic"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

TP_ENTRY(.magic = 0x12345678u, .abi_major = FUSION_ABI_MAJOR, .abi_minor = FUSION_ABI_MINOR,
         .size = (uint32_t)sizeof(fusion_overlay_descriptor), .name = TP_NAME,
         .version = TP_VERSION, TP_HOOKS)
