/*
 * answer.c - deterministic answers that follow the directive the request
 * carries, and the token estimates reported in "usage".
 *
 * The stub stands in for a model that obeys its system prompt: an overlaid
 * request (rollback-first or state-model-first directive) gets an answer
 * that has what those overlays' quality rules look for, and a baseline
 * request gets a short generic answer that has none of it. That contrast is
 * what lets the daemon's tests tell "overlay applied" from "baseline".
 *
 * Threads: pure functions, no shared state.
 */
#include "answer.h"
#include "strbuf.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* Appends the text of a message's content: a string, or the "text" of each
 * part of an array (OpenAI's multi-part content). Returns the bytes added. */
static size_t add_content(struct strbuf *b, const json_t *content)
{
    if (json_is_string(content)) {
        size_t n = json_string_length(content);
        if (b)
            sb_add(b, json_string_value(content), n);
        return n;
    }
    size_t total = 0, i;
    const json_t *part;
    if (json_is_array(content)) {
        json_array_foreach(content, i, part)
        {
            const json_t *text = json_object_get(part, "text");
            if (json_is_string(text)) {
                size_t n = json_string_length(text);
                if (b)
                    sb_add(b, json_string_value(text), n);
                total += n;
            }
        }
    }
    return total;
}

static int role_is(const json_t *msg, const char *role)
{
    const char *r = json_string_value(json_object_get(msg, "role"));
    return r && strcmp(r, role) == 0;
}

static int is_system(const json_t *msg)
{
    /* Newer OpenAI clients send the system prompt as role "developer". */
    return role_is(msg, "system") || role_is(msg, "developer");
}

const char *stub_messages_invalid(const json_t *messages)
{
    if (!json_is_array(messages))
        return "'messages' must be an array of message objects";
    if (json_array_size(messages) == 0)
        return "'messages' must not be empty";
    size_t i;
    const json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        if (!json_is_object(msg))
            return "each element of 'messages' must be an object";
        if (!json_is_string(json_object_get(msg, "role")))
            return "each message needs a string 'role'";
        const json_t *content = json_object_get(msg, "content");
        if (content && !json_is_string(content) && !json_is_array(content) &&
            !json_is_null(content))
            return "a message's 'content' must be a string, an array of parts or null";
    }
    return NULL;
}

int stub_has_system(const json_t *messages)
{
    size_t i;
    const json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        if (is_system(msg))
            return 1;
    }
    return 0;
}

unsigned stub_detect_directive(const json_t *messages)
{
    struct strbuf text = {0};
    size_t i;
    const json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        if (is_system(msg)) {
            add_content(&text, json_object_get(msg, "content"));
            sb_puts(&text, "\n");
        }
    }
    if (!text.data)
        return STUB_DIRECTIVE_NONE;
    for (char *p = text.data; *p; p++)
        *p = (char)tolower((unsigned char)*p);

    unsigned found = STUB_DIRECTIVE_NONE;
    const char *t = text.data;
    if ((strstr(t, "rollback") || strstr(t, "roll back")) &&
        (strstr(t, "compensat") || strstr(t, "idempot")))
        found |= STUB_DIRECTIVE_ROLLBACK;
    if (strstr(t, "state") && strstr(t, "transition") && strstr(t, "invariant"))
        found |= STUB_DIRECTIVE_STATE;
    free(text.data);
    return found;
}

/* The first line of the last user message, at most ~100 bytes, cut at a
 * word and never inside a UTF-8 sequence: the "scenario" the answer names. */
static void add_scenario(struct strbuf *b, const json_t *messages)
{
    struct strbuf user = {0};
    for (size_t i = json_array_size(messages); i-- > 0;) {
        const json_t *msg = json_array_get(messages, i);
        if (role_is(msg, "user")) {
            add_content(&user, json_object_get(msg, "content"));
            break;
        }
    }
    if (!user.data || user.len == 0) {
        free(user.data);
        sb_puts(b, "the operation in the question");
        return;
    }
    size_t n = strcspn(user.data, "\r\n");
    if (n > 100) {
        n = 100;
        while (n > 40 && user.data[n] != ' ')
            n--;
        while (n > 0 && ((unsigned char)user.data[n] & 0xC0) == 0x80)
            n--;
    }
    while (n > 0 && isspace((unsigned char)user.data[n - 1]))
        n--;
    sb_add(b, user.data, n);
    free(user.data);
}

/* Numbered rollback steps, compensating actions, failure scenarios with
 * retries, idempotency: the four sections of the rollback_first directive. */
static void add_rollback(struct strbuf *b, const json_t *messages)
{
    sb_puts(b, "Rollback plan for: ");
    add_scenario(b, messages);
    sb_puts(b,
            "\n\n"
            "## 1. Rollback procedure\n"
            "1. Snapshot the source of truth: export the ledger rows of the affected records "
            "before the first change, so the rollback can restore them.\n"
            "2. Revert the change in the primary system: reverse the operation and check that "
            "the balance matches the snapshot before the next step starts.\n"
            "3. Roll back the downstream copies (inventory, notifications, reporting) and confirm "
            "each one matches the restored record.\n"
            "4. Close the incident only when every system agrees with the snapshot.\n"
            "\n"
            "## 2. Compensating actions\n"
            "Where a step cannot be undone in place, use a compensating action: post a reversing "
            "entry in the ledger and issue a credit back to the customer. A supervisor approves "
            "each compensation and it is recorded for audit.\n"
            "\n"
            "## 3. Failure scenarios\n"
            "If a step fails or times out, stop, check whether it was partially applied, and "
            "retry up to 3 times with exponential backoff. If it still fails, escalate to the "
            "on-call owner and keep the snapshot.\n"
            "\n"
            "## 4. Idempotency\n"
            "Every step carries an idempotency key (one per refund or transfer), so a retry after "
            "a crash is applied exactly once; a deduplication check against the ledger refuses a "
            "second application.\n");
}

/* States, FROM -> TO transitions, must-always invariants, an error state
 * and its recovery: the sections of the state-model directives. */
static void add_state_model(struct strbuf *b, const json_t *messages)
{
    sb_puts(b, "State model for: ");
    add_scenario(b, messages);
    sb_puts(b, "\n\n"
               "## States\n"
               "- `SUBMITTED`: the request was received; evidence: the intake record.\n"
               "- `PENDING_REVIEW`: waiting for a reviewer; evidence: the review ticket.\n"
               "- `APPROVED`: a reviewer approved it (terminal); evidence: the signed approval.\n"
               "- `REJECTED`: a reviewer declined it (terminal); evidence: the decision letter.\n"
               "- `VERIFICATION_FAILED`: error state, an automated check failed; evidence: the "
               "check log.\n"
               "\n"
               "## Transitions\n"
               "- SUBMITTED -> PENDING_REVIEW: the intake check passed (system, logged).\n"
               "- PENDING_REVIEW -> APPROVED: the reviewer approves (reviewer, signed).\n"
               "- PENDING_REVIEW -> REJECTED: the reviewer declines (reviewer, signed).\n"
               "- SUBMITTED -> VERIFICATION_FAILED: automated verification fails (system).\n"
               "- VERIFICATION_FAILED -> SUBMITTED: resubmission with corrected data.\n"
               "Any transition not listed is forbidden.\n"
               "\n"
               "## Invariants\n"
               "- An item must always have a recorded reviewer before it reaches APPROVED.\n"
               "- The audit trail must never be edited: it is append-only.\n"
               "\n"
               "## Error states and recovery\n"
               "VERIFICATION_FAILED is the error state: recover by resubmission with corrected "
               "data, or escalate to manual review after 5 business days.\n");
}

char *stub_compose_answer(const json_t *messages, unsigned directive)
{
    struct strbuf b = {0};
    if (directive & STUB_DIRECTIVE_ROLLBACK)
        add_rollback(&b, messages);
    if ((directive & STUB_DIRECTIVE_ROLLBACK) && (directive & STUB_DIRECTIVE_STATE))
        sb_puts(&b, "\n");
    if (directive & STUB_DIRECTIVE_STATE)
        add_state_model(&b, messages);
    if (directive == STUB_DIRECTIVE_NONE) {
        /* Deliberately free of every word the overlays' quality rules score
         * (no numbered steps, states, arrows, retries, "must" rules). */
        sb_puts(&b, "Thanks for the question. In short: check the details of the request with "
                    "the people involved, then go ahead with the usual process. Ask again if "
                    "you need more detail.");
    }
    return b.failed ? NULL : b.data;
}

long stub_prompt_tokens(const json_t *messages)
{
    long total = 0;
    size_t i;
    const json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        size_t bytes = add_content(NULL, json_object_get(msg, "content"));
        total += (long)((bytes + 3) / 4) + 4;
    }
    return total;
}

long stub_completion_tokens(const char *answer)
{
    return (long)((strlen(answer) + 3) / 4);
}
