/*
 * metrics.h - Prometheus metrics (SPEC section 8) with cardinality control.
 *
 * Owns: every series. Label names come only from overlay, scenario and
 * result; values are sanitised to at most 50 chars of [A-Za-z0-9_.-] (other
 * bytes become '_', empty becomes "none"). Each metric keeps at most
 * max_series series; a new series past that is folded into
 * scenario="__other__" and counted in fusion_metrics_dropped_total.
 *
 * Threads: any thread may record or render; one mutex guards the tables
 * (recording is a hash lookup and a few additions).
 */
#ifndef FH_METRICS_H
#define FH_METRICS_H

#include <stddef.h>

typedef struct fh_metrics fh_metrics;

/* The runbook's thresholds (SPEC 8), built in: rendered as gauges here and
 * checked over each overlay's recent requests by gates.c for /health. */
#define FH_RUNBOOK_LATENCY_P95_WARN_MS      2000.0
#define FH_RUNBOOK_LATENCY_P95_CRITICAL_MS  5000.0
#define FH_RUNBOOK_TOKEN_DELTA_WARN_PCT     12.0
#define FH_RUNBOOK_TOKEN_DELTA_CRITICAL_PCT 25.0
#define FH_RUNBOOK_QUALITY_MIN_WARN         0.8

fh_metrics *fh_metrics_new(size_t max_series_per_metric);
void fh_metrics_free(fh_metrics *m);

/* fusion_requests_total{overlay,scenario,result} and the
 * fusion_execution_latency_ms histogram (same labels but result). overlay
 * is the overlay name or "baseline"; result is the routing reason. */
void fh_metrics_request(fh_metrics *m, const char *overlay, const char *scenario,
                        const char *result, double latency_ms);
/* All of one finished request's samples at once: the request counter and
 * latency, the quality (NAN: none) and the host overhead (NAN: none). */
void fh_metrics_request_done(fh_metrics *m, const char *overlay, const char *scenario,
                             const char *result, double latency_ms, double quality,
                             double overhead_ms);
/* fusion_quality_score and fusion_tokens_delta_pct histograms. */
void fh_metrics_quality(fh_metrics *m, const char *overlay, const char *scenario, double score);
void fh_metrics_token_delta(fh_metrics *m, const char *overlay, const char *scenario, double pct);
/* fusion_circuit_breaker_events_total{overlay,result}. */
void fh_metrics_breaker_event(fh_metrics *m, const char *overlay, const char *result);
/* fusion_overlay_events_total{overlay,result}: a plugin's metric_count. */
void fh_metrics_overlay_event(fh_metrics *m, const char *overlay, const char *event, double delta);
/* fusion_overlay_state{overlay,state}: 1 for the current state, 0 for the
 * others; call with the full list each time it changes. */
void fh_metrics_overlay_state(fh_metrics *m, const char *overlay, const char *state);

/* An upstream call cancelled because its client left. Any thread, lock-free. */
void fh_metrics_client_cancelled(fh_metrics *m);

/* The text exposition format (malloc'd). */
char *fh_metrics_render(fh_metrics *m, size_t *len);

/* Sanitises a label value into out (at least 51 bytes). */
void fh_metrics_sanitize(const char *in, char *out);

#endif
