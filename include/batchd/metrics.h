/*
 * metrics.h - Prometheus text exposition (format 0.0.4) of batchd's live
 * figures, for GET /metrics.
 */
#ifndef BATCHD_METRICS_H
#define BATCHD_METRICS_H

#include "batchd/batchd.h"
#include "batchd/util.h"

void metrics_render(Batchd *bd, StrBuf *out);

#endif /* BATCHD_METRICS_H */
