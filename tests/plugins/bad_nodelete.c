/* Test plugin: a malformed version (FH_LOAD_BAD_VERSION) whose entry function
 * first pins its own library with RTLD_NODELETE, so the loader's refusal
 * path meets a library that dlclose() cannot unmap. See tp_common.h. */
#define TP_NAME    "bad_nodelete"
#define TP_VERSION "1.0.0"
#define TP_MATCH   0.0
#include "tp_common.h"

#include <dlfcn.h>

static const fusion_overlay_descriptor tp_descriptor = {
    .magic = FUSION_OVERLAY_MAGIC,
    .abi_major = FUSION_ABI_MAJOR,
    .abi_minor = FUSION_ABI_MINOR,
    .size = (uint32_t)sizeof(fusion_overlay_descriptor),
    .name = TP_NAME,
    .version = "1.0",
    TP_HOOKS,
};

FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void);
FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void)
{
    /* Reopening itself by the name it was loaded under, with NODELETE,
     * marks this object as never to be unloaded; the extra reference the
     * dlopen() took is dropped again at once. */
    Dl_info info;
    if (dladdr(&tp_descriptor, &info) && info.dli_fname) {
        void *self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        if (self)
            dlclose(self);
    }
    return &tp_descriptor;
}
