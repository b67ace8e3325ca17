/* Test plugin: its constructor never returns, so dlopen() never returns
 * either and keeps the dynamic loader's lock (FH_LOAD_TIMEOUT, then the
 * loader refuses every further load). Only load it in a process that ends
 * with _exit(): exit() would wait for that lock in _dl_fini. */
#define TP_NAME    "hang_ctor"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

#include <unistd.h>

__attribute__((constructor)) static void hang_forever(void)
{
    for (;;)
        pause();
}

FUSION_OVERLAY_DEFINE(.name = TP_NAME, .version = TP_VERSION, .description = "constructor hangs",
                      .license = "MIT", .init = tp_init, .fini = tp_fini, .apply = tp_apply,
                      .evaluate = tp_evaluate)
