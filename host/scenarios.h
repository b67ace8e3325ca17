/*
 * scenarios.h - the built-in canonical scenarios: one request per scenario
 * id of the tuning table, with a realistic prompt and a sample answer. Used
 * by `plugin-test` when no --scenario file is given. Immutable data.
 */
#ifndef FH_SCENARIOS_H
#define FH_SCENARIOS_H

#include <stddef.h>

typedef struct fh_scenario {
    const char *id;            /* also its scenario type */
    const char *system;        /* the caller's own system message */
    const char *prompt;        /* the user message */
    const char *sample_answer; /* a plausible model answer, for evaluate() */
} fh_scenario;

const fh_scenario *fh_scenarios(size_t *count);
const fh_scenario *fh_scenario_find(const char *id);
/* The scenario as a chat-completion body with its `fusion` object
 * (malloc'd JSON text). */
char *fh_scenario_request_json(const fh_scenario *s);

#endif
