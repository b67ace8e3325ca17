/*
 * answer.h - the stub model's "brain": a deterministic answer for a chat
 * request and the token estimates that go with it.
 *
 * Pure functions over a parsed request (jansson); no I/O, no globals, so
 * any thread may call them.
 */
#ifndef STUB_ANSWER_H
#define STUB_ANSWER_H

#include <jansson.h>
#include <stddef.h>

/* Which directive the system messages carried (bit flags: both may match). */
enum stub_directive {
    STUB_DIRECTIVE_NONE = 0,
    STUB_DIRECTIVE_ROLLBACK = 1 << 0,
    STUB_DIRECTIVE_STATE = 1 << 1,
};

/*
 * Checks the shape OpenAI requires of "messages": a non-empty array of
 * objects, each with a string "role" and a "content" that is a string, an
 * array of parts or null. Returns NULL when valid, else a static message.
 */
const char *stub_messages_invalid(const json_t *messages);

/* Whether any message has role "system" (or "developer"). */
int stub_has_system(const json_t *messages);

/* The directive vocabulary found in the system/developer messages. */
unsigned stub_detect_directive(const json_t *messages);

/*
 * The answer text for these messages (malloc'ed, NUL-terminated, owned by
 * the caller) or NULL when out of memory. Same messages, same answer.
 */
char *stub_compose_answer(const json_t *messages, unsigned directive);

/* (bytes + 3) / 4 + 4 per message, over all message contents. */
long stub_prompt_tokens(const json_t *messages);

/* (bytes + 3) / 4 for the answer. */
long stub_completion_tokens(const char *answer);

#endif
