/* Test plugin: declares exactly the ABI 1.0 descriptor size, standing in
 * for a plugin built against an older minor with a smaller descriptor than
 * the host's (with ABI 1.0 the two are equal; the host must accept any size
 * from the 1.0 layout up). See tp_common.h. */
#define TP_NAME    "exact_size"
#define TP_VERSION "1.0.0-rc.1"
#define TP_MATCH   0.4
#include "tp_common.h"

TP_ENTRY(.magic = FUSION_OVERLAY_MAGIC, .abi_major = FUSION_ABI_MAJOR, .abi_minor = 0,
         .size = (uint32_t)(offsetof(fusion_overlay_descriptor, evaluate) +
                            sizeof(((fusion_overlay_descriptor *)0)->evaluate)),
         .name = TP_NAME, .version = TP_VERSION, TP_HOOKS)
