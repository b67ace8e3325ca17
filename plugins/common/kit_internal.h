/*
 * kit_internal.h - what the overlay kit's files share among themselves and
 * nobody else (the shipped overlays use overlay_kit.h). Hidden: plugins are
 * built with -fvisibility=hidden and export only their entry.
 */
#ifndef KIT_INTERNAL_H
#define KIT_INTERNAL_H

#include "overlay_kit.h"

#include <stddef.h>

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

extern const okit_sampling kit_param_defaults;
int kit_is_space(char c);
char kit_lower(char c);
int kit_ident_char(char c);
int kit_letter(unsigned char c);
long kit_match_at(const char *text, size_t len, size_t pos, const char *p);
int kit_word_start(const char *text, size_t pos);
int kit_same_ci(const char *a, const char *b, size_t n);
int kit_next_line(const char *text, size_t len, size_t *pos, size_t *start, size_t *end);

#endif
