/* Test plugin: the entry function returns NULL (FH_LOAD_NULL_DESCRIPTOR). */
#include <fusion/overlay.h>

FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void);
FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void)
{
    return NULL;
}
