/*
 * status.c - batch and item status names (see status.h).
 */
#include <string.h>

#include "batchd/status.h"
#include "batchd/util.h"

const char *const status_batch_names[] = {
	"pending", "processing", "completed", "completed_with_errors", "failed", "cancelled", NULL,
};
const char *const status_item_names[] = {
	"queued", "running", "succeeded", "failed", "cancelled", NULL,
};

bool status_is_batch(const char *s)
{
	return s && str_in_list(s, status_batch_names);
}

bool status_is_item(const char *s)
{
	return s && str_in_list(s, status_item_names);
}

bool status_batch_terminal(const char *s)
{
	return status_is_batch(s) && strcmp(s, "pending") != 0 && strcmp(s, "processing") != 0;
}
