/*
 * status.h - the names of batch and item statuses, as the schema spells
 * them (CHECK constraints of batchd.batches and batchd.items), shared by
 * the REST API (query parameters) and batchctl (--status, waiting).
 */
#ifndef BATCHD_STATUS_H
#define BATCHD_STATUS_H

#include <stdbool.h>

/* NULL-terminated, in lifecycle order. */
extern const char *const status_batch_names[];
extern const char *const status_item_names[];

/* The same names joined by ", ", for messages (a unit test keeps them
 * equal to the lists). */
#define STATUS_BATCH_NAMES_TEXT \
	"pending, processing, completed, completed_with_errors, failed, cancelled"
#define STATUS_ITEM_NAMES_TEXT "queued, running, succeeded, failed, cancelled"

bool status_is_batch(const char *s);
bool status_is_item(const char *s);
/* A batch status that no longer changes by itself: completed,
 * completed_with_errors, failed, cancelled (false for NULL). */
bool status_batch_terminal(const char *s);

#endif /* BATCHD_STATUS_H */
