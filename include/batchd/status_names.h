/*
 * status_names.h - the names of batch and item statuses (the batchd.batches
 * and batchd.items CHECK constraints), for the REST API's filters and
 * batchctl's options.
 */
#ifndef BATCHD_STATUS_NAMES_H
#define BATCHD_STATUS_NAMES_H

#include <stdbool.h>

/* NULL-terminated, in lifecycle order. */
extern const char *const batch_statuses[];
extern const char *const item_statuses[];

/* completed, completed_with_errors, failed or cancelled. */
bool batch_status_terminal(const char *status);

#endif /* BATCHD_STATUS_NAMES_H */
