/*
 * hostapi.h - the fusion_host_api table handed to every plugin.
 *
 * Owns: one static, immutable table; any thread may read it. Log calls are
 * attributed to the overlay set with fh_log_set_overlay() on the calling
 * thread. Metric calls go to a sink installed once at start (before any
 * plugin is loaded); with none installed they are dropped.
 */
#ifndef FH_HOSTAPI_H
#define FH_HOSTAPI_H

#include "fusion/overlay.h"

const fusion_host_api *fh_host_api(void);

/* overlay: the attributed overlay (may be NULL); event already validated. */
typedef void (*fh_metric_sink)(const char *overlay, const char *event, double delta);
void fh_host_api_set_metric_sink(fh_metric_sink sink);

#endif
