/* Test plugin: a wrong magic (FH_LOAD_BAD_MAGIC) and a destructor that calls
 * back into the test, so the test can see which overlay the host's log
 * attributes the destructor to when it closes the refused library. The test
 * passes the callback's address in hex in TP_DTOR_PROBE (a plugin cannot
 * link against the test's symbols). See tp_common.h. */
#define TP_NAME    "bad_dtor_probe"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

#include <stdint.h>
#include <stdlib.h>

__attribute__((destructor)) static void tp_probe_destructor(void)
{
    const char *hex = getenv("TP_DTOR_PROBE");
    if (!hex || !*hex)
        return;
    void (*probe)(void) = (void (*)(void))(uintptr_t)strtoull(hex, NULL, 16);
    if (probe)
        probe();
}

TP_ENTRY(.magic = 0x12345678u, .abi_major = FUSION_ABI_MAJOR, .abi_minor = FUSION_ABI_MINOR,
         .size = (uint32_t)sizeof(fusion_overlay_descriptor), .name = TP_NAME,
         .version = TP_VERSION, TP_HOOKS)
