/*
 * tmpl.h - templates filled from an item's JSON payload.
 *
 * A placeholder is "{" NAME "}" where NAME is one or more of
 * [A-Za-z0-9_.-]; dots walk into nested objects ("{vehicle.vin}").
 * Any other brace is literal text, so JSON bodies need no escaping:
 * '{"vin": {vin}}' has exactly one placeholder.
 */
#ifndef BATCHD_TMPL_H
#define BATCHD_TMPL_H

#include <yajl/yajl_tree.h>
#include "batchd/util.h"

enum TmplMode {
	TMPL_URL,     /* value percent-encoded (RFC 3986 unreserved kept) */
	TMPL_JSON,    /* value inserted as JSON text (strings quoted) */
	TMPL_HEADER,  /* value inserted as text; CR, LF and NUL rejected */
};

/*
 * Check a URL template at config time: must start with http:// or https://,
 * and no placeholder may appear in the scheme or the host[:port] part.
 * Returns 0 or -1 with a message in err.
 */
int tmpl_check_url(const char *tmpl, char *err, size_t errlen) _MUSTCHECK;

/*
 * Render a template into out (appended).  A missing field, a null, an
 * object or an array (in URL and HEADER modes) is an error: returns -1
 * and writes e.g. "payload has no field 'id'" into err.  In JSON mode
 * objects and arrays are inserted as JSON.  The special name "." stands
 * for the whole payload.
 */
int tmpl_render(const char *tmpl, yajl_val payload, enum TmplMode mode,
		StrBuf *out, char *err, size_t errlen) _MUSTCHECK;

#endif /* BATCHD_TMPL_H */
