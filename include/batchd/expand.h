/*
 * expand.h - the expansion of configuration values, before they are parsed.
 */
#ifndef BATCHD_EXPAND_H
#define BATCHD_EXPAND_H

#include <stddef.h>

/*
 * Expand a value: ${VAR} from the environment (an unset variable is an
 * error), ${file:PATH} the content of a file (a relative PATH is relative to
 * base_dir, the config file's directory; NULL: the working directory), and
 * ${credential:NAME} the file $CREDENTIALS_DIRECTORY/NAME (systemd
 * LoadCredential=); a file's trailing line ends are stripped, and it may
 * hold at most 64 KiB and no NUL byte.  "$$" is a literal "$".  Returns a
 * malloc'd string, or NULL with err saying why.
 */
char *config_expand(const char *s, const char *base_dir, char *err, size_t errlen);
/* config_expand(s, NULL, ...) */
char *config_expand_env(const char *s, char *err, size_t errlen);

#endif /* BATCHD_EXPAND_H */
