/*
 * status_names.c - batch and item status names (see status_names.h).
 */
#include <string.h>

#include "batchd/status_names.h"

const char *const batch_statuses[] = {
	"pending", "processing", "completed", "completed_with_errors", "failed", "cancelled", NULL,
};
const char *const item_statuses[] = {
	"queued", "running", "succeeded", "failed", "cancelled", NULL,
};

bool batch_status_terminal(const char *status)
{
	return status && (strcmp(status, "completed") == 0 ||
			  strcmp(status, "completed_with_errors") == 0 ||
			  strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0);
}
