/*
 * expand.c - the expansion of configuration values: ${VAR} from the
 * environment, ${file:PATH} and ${credential:NAME} from files (see expand.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/expand.h"
#include "batchd/util.h"

/* The most a ${file:...} or ${credential:...} may hold: a secret, not data. */
#define EXPAND_FILE_MAX (64 * 1024)

/* Append the content of path (relative: to base_dir) to sb, trailing line
 * ends stripped; 0, or -1 with err. */
static int expand_file(StrBuf *sb, const char *path, const char *base_dir, const char *what,
		       char *err, size_t errlen)
{
	char full[8300];
	char *buf;
	size_t n;
	FILE *f;

	if (path[0] != '/' && base_dir && *base_dir)
		snprintf(full, sizeof(full), "%s/%s", base_dir, path);
	else
		snprintf(full, sizeof(full), "%s", path);
	f = fopen(full, "rb");
	if (!f) {
		snprintf(err, errlen, "%s: cannot read %s: %s", what, full, strerror(errno));
		return -1;
	}
	buf = xmalloc(EXPAND_FILE_MAX + 1);
	n = fread(buf, 1, EXPAND_FILE_MAX + 1, f);
	if (ferror(f)) {
		snprintf(err, errlen, "%s: cannot read %s: %s", what, full, strerror(errno));
		fclose(f);
		free(buf);
		return -1;
	}
	fclose(f);
	if (n > EXPAND_FILE_MAX) {
		snprintf(err, errlen, "%s: %s is larger than %d bytes", what, full, EXPAND_FILE_MAX);
		free(buf);
		return -1;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	if (memchr(buf, '\0', n)) {
		snprintf(err, errlen, "%s: %s holds a NUL byte", what, full);
		free(buf);
		return -1;
	}
	sb_append(sb, buf, n);
	free(buf);
	return 0;
}

char *config_expand(const char *s, const char *base_dir, char *err, size_t errlen)
{
	StrBuf sb;
	const char *p = s;

	sb_init(&sb);
	sb_append(&sb, "", 0);
	while (*p) {
		const char *dollar = strchr(p, '$'), *end, *v;
		char name[128];
		size_t n, i;

		if (!dollar) {
			sb_puts(&sb, p);
			break;
		}
		sb_append(&sb, p, (size_t)(dollar - p));
		if (dollar[1] == '$') {
			sb_putc(&sb, '$');
			p = dollar + 2;
			continue;
		}
		if (dollar[1] != '{') {
			/* a lone '$' is literal, e.g. in a password */
			sb_putc(&sb, '$');
			p = dollar + 1;
			continue;
		}
		end = strchr(dollar + 2, '}');
		if (!end) {
			snprintf(err, errlen, "unterminated ${ (missing '}')");
			goto fail;
		}
		n = (size_t)(end - (dollar + 2));
		if (n > 5 && strncmp(dollar + 2, "file:", 5) == 0) {
			/* ${file:PATH}: the file's content (a secret kept out of the config) */
			char path[4096], what[4200];

			if (n - 5 >= sizeof(path)) {
				snprintf(err, errlen, "${file:...}: path too long");
				goto fail;
			}
			memcpy(path, dollar + 7, n - 5);
			path[n - 5] = '\0';
			snprintf(what, sizeof(what), "${file:%s}", path);
			if (expand_file(&sb, path, base_dir, what, err, errlen) < 0)
				goto fail;
			p = end + 1;
			continue;
		}
		if (n > 11 && strncmp(dollar + 2, "credential:", 11) == 0) {
			/* ${credential:NAME}: $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=) */
			const char *dir = getenv("CREDENTIALS_DIRECTORY");
			char cname[256], path[4096], what[300];

			if (n - 11 >= sizeof(cname)) {
				snprintf(err, errlen, "${credential:...}: name too long");
				goto fail;
			}
			memcpy(cname, dollar + 13, n - 11);
			cname[n - 11] = '\0';
			snprintf(what, sizeof(what), "${credential:%s}", cname);
			if (strchr(cname, '/') || strcmp(cname, ".") == 0 || strcmp(cname, "..") == 0) {
				snprintf(err, errlen, "%s: a credential name has no '/'", what);
				goto fail;
			}
			if (!dir || !*dir) {
				snprintf(err, errlen, "%s: CREDENTIALS_DIRECTORY is not set (systemd sets "
					 "it for a unit with LoadCredential=)", what);
				goto fail;
			}
			snprintf(path, sizeof(path), "%s/%s", dir, cname);
			if (expand_file(&sb, path, NULL, what, err, errlen) < 0)
				goto fail;
			p = end + 1;
			continue;
		}
		for (i = 0; i < n; i++) {
			char c = dollar[2 + i];

			if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
			      (i > 0 && c >= '0' && c <= '9')))
				break;
		}
		if (n == 0 || i < n || n >= sizeof(name)) {
			snprintf(err, errlen, "invalid variable name in '${%.*s}'",
				 (int)(n > 64 ? 64 : n), dollar + 2);
			goto fail;
		}
		memcpy(name, dollar + 2, n);
		name[n] = '\0';
		v = getenv(name);
		if (!v) {
			snprintf(err, errlen, "environment variable '%s' is not set", name);
			goto fail;
		}
		sb_puts(&sb, v);
		p = end + 1;
	}
	return sb_steal(&sb);
fail:
	sb_free(&sb);
	return NULL;
}

char *config_expand_env(const char *s, char *err, size_t errlen)
{
	return config_expand(s, NULL, err, errlen);
}
