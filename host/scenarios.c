/* scenarios.c - see scenarios.h. */
#include "scenarios.h"

#include <jansson.h>
#include <string.h>

static const char refund_answer[] =
    "Plan for reversing the duplicate refund:\n"
    "1. Freeze the order so no further refund can be issued.\n"
    "2. Roll back the second refund: create a reversal entry in the ledger and revert the "
    "payment provider transfer.\n"
    "3. As a compensating action, credit back the customer's store balance if the reversal "
    "cannot be captured.\n"
    "If the provider call times out, retry with the same idempotency key so the reversal "
    "happens exactly once; if it fails after three retries, escalate to finance.\n";

static const char compliance_answer[] =
    "Audit preparation tracked as a state model.\n"
    "States: collecting_evidence, under_review, remediation, ready_for_audit, "
    "evidence_rejected.\n"
    "Transitions: collecting_evidence -> under_review when every control has evidence; "
    "under_review -> remediation when a gap is found; remediation -> under_review once fixed; "
    "under_review -> ready_for_audit after sign-off; under_review -> evidence_rejected when "
    "the auditor rejects evidence; evidence_rejected -> collecting_evidence when the owner "
    "starts over.\n"
    "Invariant: every control must always have an owner and a dated evidence link.\n"
    "Error state: evidence_rejected; recovery returns the control to collecting_evidence, and "
    "a control still rejected after five business days is escalated to the compliance lead.\n";

static const char generic_answer[] =
    "Here is a short plan: identify the cause, apply the fix, and monitor the result.\n";

#define SYS "You are an operations assistant for an e-commerce platform."

static const fh_scenario scenarios[] = {
    {"refund_processing_duplicate", SYS,
     "A customer was refunded twice for order 4411 because the refund job ran twice. "
     "How do we reverse the duplicate refund safely?",
     refund_answer},
    {"lot_boundary_dispute_resolution", SYS,
     "Two merchants claim the same inventory lot after a warehouse lot switch. How do we "
     "resolve it and move the units back if we assigned them wrongly?",
     refund_answer},
    {"webhook_endpoint_failure_cascade", SYS,
     "Our order webhooks fail and retries pile up across three consumers. What do we do?",
     generic_answer},
    {"regulatory_compliance_audit_prep", SYS,
     "We have a SOC 2 audit in six weeks. Model the preparation so we know where each "
     "control stands.",
     compliance_answer},
    {"subscription_downgrade_retention", SYS,
     "A customer wants to downgrade from the annual plan. How do we keep them?", generic_answer},
    {"api_rate_limit_optimization", SYS,
     "Our partners hit rate limits at peak. How should we tune the limits?", generic_answer},
    {"data_migration_rollback_scenario", SYS,
     "The customer table migration corrupted 2% of rows. How do we roll it back?", refund_answer},
    {"security_incident_containment", SYS,
     "An API key leaked in a public repository an hour ago. Contain it.", generic_answer},
    {"vendor_contract_negotiation_renewal", SYS,
     "Our payment vendor's renewal raises fees by 30%. How do we negotiate?", generic_answer},
    {"performance_monitoring_alert_fatigue", SYS,
     "On-call gets 200 alerts a day and ignores most. How do we fix that?", generic_answer},
};

const fh_scenario *fh_scenarios(size_t *count)
{
    *count = sizeof(scenarios) / sizeof(scenarios[0]);
    return scenarios;
}

const fh_scenario *fh_scenario_find(const char *id)
{
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
        if (strcmp(scenarios[i].id, id) == 0)
            return &scenarios[i];
    return NULL;
}

char *fh_scenario_request_json(const fh_scenario *s)
{
    json_t *body = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:{s:s, s:s, s:f}}", "model",
                             "fusion-stub", "messages", "role", "system", "content", s->system,
                             "role", "user", "content", s->prompt, "fusion", "scenario_type", s->id,
                             "scenario_id", s->id, "confidence", 0.9);
    if (!body)
        return NULL;
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}
