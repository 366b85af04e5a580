# shellcheck shell=bash
# contrib/lib.sh - shared by contrib/check and contrib/demo (sourced, not run).
#
# Sets REPO (the source tree) and provides:
#   bd_install_deps   install the Debian packages batchd needs to build and test,
#                     skipping apt entirely when they are all installed already
#   bd_as_root CMD..  run CMD as root (directly, or via sudo)
#   bd_say MSG        a progress line on stderr

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BD_PACKAGES=(
	build-essential autoconf automake libtool pkg-config
	libevent-dev libpq-dev libcurl4-openssl-dev libyajl-dev libsystemd-dev
	libinih-dev libcmocka-dev
	postgresql-15 postgresql-client-15
	python3 python3-pytest python3-psycopg
	curl
)

# Only for the test suite (contrib/check): promtool checks the /metrics
# exposition, systemd-analyze the unit files, clang's libFuzzer the parsers,
# valgrind the daemon's memory, mandoc the man pages.
BD_TEST_PACKAGES=(
	prometheus systemd clang libclang-rt-14-dev valgrind mandoc man-db
	wrk chromium fonts-dejavu-core
)
# The browser test drives Chromium with playwright-core (npm), which needs
# Node 20+: use the machine's node when there is one (Debian's is 18).
command -v node >/dev/null 2>&1 || BD_TEST_PACKAGES+=(nodejs npm)

bd_say() { printf '==> %s\n' "$*" >&2; }

bd_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		echo "need root (or sudo) for: $*" >&2
		return 1
	fi
}

# Packages from BD_PACKAGES (and the extra ones given) that are not fully installed.
bd_missing_packages() {
	local p status
	for p in "${BD_PACKAGES[@]}" "$@"; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[ "$status" = installed ] || printf '%s\n' "$p"
	done
}

bd_install_deps() {
	local missing
	missing=$(bd_missing_packages "$@")
	if [ -z "$missing" ]; then
		bd_say "Debian packages: all installed"
		return 0
	fi
	# shellcheck disable=SC2086
	bd_say "installing Debian packages:" $missing
	export DEBIAN_FRONTEND=noninteractive
	bd_as_root apt-get update -q
	# shellcheck disable=SC2086
	bd_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

# Regenerate the build system when configure is missing or older than its inputs.
# A source tree configured in place (./configure run in it, as in README's
# "Building and installing by hand") refuses the out-of-tree builds these
# scripts make under build/ ("source directory already configured"): say so
# and clean it with make distclean first. Run ./configure && make in the tree
# again to build there.
bd_unconfigure_tree() {
	if [ -f "$REPO/config.status" ]; then
		bd_say "the source tree is configured in place (./configure was run in it), which" \
			"refuses builds under build/: running 'make distclean' in it first" \
			"(./configure there again to build in the tree)"
		(cd "$REPO" && make distclean >/dev/null 2>&1) ||
			(cd "$REPO" && rm -f config.status config.log config.h Makefile stamp-h1)
	fi
}

bd_autoreconf() {
	if [ ! -x "$REPO/configure" ] || [ "$REPO/configure.ac" -nt "$REPO/configure" ] ||
		[ "$REPO/Makefile.am" -nt "$REPO/Makefile.in" ]; then
		bd_say "autoreconf -fi"
		(cd "$REPO" && autoreconf -fi)
	fi
}
