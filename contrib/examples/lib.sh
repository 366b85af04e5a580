# shellcheck shell=bash
# contrib/examples/lib.sh - shared by the examples' `run` scripts (sourced, not run).
#
# A run script sources this file, then calls, in order:
#   ex_setup                 binaries (build in build/demo unless given), temp dir,
#                            clean-up trap, PostgreSQL (private, or EXAMPLE_DATABASE)
#   ex_start_mock NAME JSON  a mock provider with that config; sets NAME_PORT
#   ex_migrate               `batchd migrate`, then the example's schema.sql
#   ex_start_batchd NAME [VAR=VALUE...]  batchd with the example's batchd.ini
#   ... the scenario (ex_psql, ex_sql, ex_wait_batch, ex_mock_config, ...)
#   ex_result JSON           the last line of the output: RESULT <json>
# Everything started is stopped at exit, by PID (SIGTERM, then SIGKILL after
# 15 s); the temp dir is removed.
#
# The example's batchd.ini is used as it is: batchd itself fills in the
# ${VARIABLES} (the database, the ports of the mock providers, the timings
# that short mode shortens) from the environment, which the run script sets.
#
# Environment (all optional):
#   EXAMPLE_SHORT=1         short mode, for the test suite: fewer rows, shorter
#                           outages, cooldowns and leases (same story)
#   EXAMPLE_DATABASE=CONN   use this (empty) database instead of a private
#                           PostgreSQL cluster; the run leaves its tables there
#   EXAMPLE_TIMEOUT=SECS    longest wait for one batch (default 120)
#   EXAMPLE_LOG_DIR=DIR     copy the logs (batchd, mock, postgres) there at exit
#   BATCHD_BIN, BATCHCTL_BIN, MOCK_PROVIDER_BIN
#                           use these binaries (all three) instead of building
#                           build/demo
#   PG_BINDIR               PostgreSQL server binaries (default
#                           /usr/lib/postgresql/15/bin, else pg_config --bindir)

set -euo pipefail

EX_DIR=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
EX_NAME=$(basename "$EX_DIR")

# shellcheck source=contrib/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# A BATCHD_DATABASE from the caller's environment would override the
# example's database (batchd gives it precedence): never run against it.
unset BATCHD_DATABASE

# shellcheck disable=SC2034  # EX_SHORT, EX_URL, BATCHCTL: for the run scripts
EX_SHORT=${EXAMPLE_SHORT:-0}
EX_TIMEOUT=${EXAMPLE_TIMEOUT:-120}
EX_TMP=
EX_PG_STARTED=0
EX_PIDS=()          # every process we started, by PID (batchd, mocks)
declare -A EX_PROC  # NAME -> PID
declare -A EX_URL   # batchd NAME -> http://127.0.0.1:PORT

ex_say() { printf '\n==> %s\n' "$*"; }
ex_note() { printf '    %s\n' "$*"; }

ex_free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ex_wait_for() { # seconds description command...: poll until command succeeds
	local secs=$1 what=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "timed out waiting for $what" >&2
	return 1
}

# ------------------------------------------------------------------ binaries

ex_binaries() {
	local tool
	if [ -n "${BATCHD_BIN:-}" ] && [ -n "${BATCHCTL_BIN:-}" ] && [ -n "${MOCK_PROVIDER_BIN:-}" ]; then
		BATCHD=$(realpath "$BATCHD_BIN")
		BATCHCTL=$(realpath "$BATCHCTL_BIN")
		MOCK=$(realpath "$MOCK_PROVIDER_BIN")
		for tool in psql curl jq; do
			command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install ${tool/psql/postgresql-client-15})" >&2; exit 1; }
		done
		return 0
	fi
	bd_install_deps jq
	bd_unconfigure_tree
	bd_autoreconf
	local build="$REPO/build/demo"
	mkdir -p "$build"
	if [ ! -f "$build/Makefile" ]; then
		bd_say "configure (in build/demo)"
		(cd "$build" && ../../configure -q)
	fi
	bd_say "make (build/demo)"
	make -C "$build" -j"$(nproc 2>/dev/null || echo 2)" batchd batchctl tests/mock/mock_provider >/dev/null
	BATCHD="$build/batchd"
	# shellcheck disable=SC2034
	BATCHCTL="$build/batchctl"
	MOCK="$build/tests/mock/mock_provider"
}

# ------------------------------------------------------------------ clean-up

ex_stop_pid() { # pid: SIGTERM, wait up to 15 s, then SIGKILL; returns the exit status
	local pid=$1 rc=0
	kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || rc=$?; return "$rc"; }
	for _ in $(seq 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

ex_cleanup() {
	local rc=$? i f
	set +e
	# newest first: batchd before the mock providers it calls
	for ((i = ${#EX_PIDS[@]} - 1; i >= 0; i--)); do
		ex_stop_pid "${EX_PIDS[i]}"
	done
	if [ "$EX_PG_STARTED" = 1 ]; then
		ex_as_pg "$PG_BIN/pg_ctl" -D "$EX_TMP/pgdata" -m fast -w stop >/dev/null 2>&1
	fi
	if [ -n "$EX_TMP" ]; then
		if [ "$rc" -ne 0 ]; then
			for f in "$EX_TMP"/*.log; do
				[ -s "$f" ] && { echo "--- $f (tail) ---"; tail -n 30 "$f"; }
			done >&2
		fi
		if [ -n "${EXAMPLE_LOG_DIR:-}" ]; then
			mkdir -p "$EXAMPLE_LOG_DIR"
			cp "$EX_TMP"/*.log "$EXAMPLE_LOG_DIR"/ 2>/dev/null
		fi
		rm -rf "$EX_TMP"
	fi
	exit "$rc"
}

# ------------------------------------------------------------------ PostgreSQL

ex_as_pg() { "$@"; }

ex_start_pg() {
	if [ -n "${EXAMPLE_DATABASE:-}" ]; then
		DB=$EXAMPLE_DATABASE
		bd_say "PostgreSQL: the database given in EXAMPLE_DATABASE"
		return 0
	fi
	PG_BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
	[ -x "$PG_BIN/pg_ctl" ] || PG_BIN=$(pg_config --bindir)
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$EX_TMP"
		ex_as_pg() { runuser -u postgres -- "$@"; }
	fi
	bd_say "PostgreSQL: private cluster in $EX_TMP"
	ex_as_pg "$PG_BIN/initdb" -D "$EX_TMP/pgdata" -A trust -U postgres -E UTF8 --locale=C \
		--no-sync >/dev/null
	local port
	port=$(ex_free_port)
	cat >>"$EX_TMP/pgdata/postgresql.conf" <<-CONF
		listen_addresses = '127.0.0.1'
		port = $port
		unix_socket_directories = '$EX_TMP'
		fsync = off
		synchronous_commit = off
		full_page_writes = off
	CONF
	ex_as_pg "$PG_BIN/pg_ctl" -D "$EX_TMP/pgdata" -l "$EX_TMP/postgres.log" -w -t 60 start >/dev/null
	EX_PG_STARTED=1
	DB="host=127.0.0.1 port=$port user=postgres dbname=postgres"
}

# psql on the example's database: ex_psql [psql args] (tables, notices shown);
# ex_sql SQL: one value (unaligned, tuples only)
ex_psql() { psql "$DB" -X -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
ex_sql() { psql "$DB" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

ex_setup() {
	ex_binaries
	EX_TMP=$(mktemp -d "/tmp/batchd-example-$EX_NAME.XXXXXX")
	chmod 755 "$EX_TMP"
	trap ex_cleanup EXIT
	trap 'exit 130' INT TERM
	ex_start_pg
	export EXAMPLE_DB=$DB
}

# ------------------------------------------------------------------ mock providers

# ex_start_mock NAME JSON: start a mock provider with the config JSON; sets
# and exports NAME_PORT (NAME upper-cased) for batchd.ini.
ex_start_mock() {
	local name=$1 config=$2 var pid port
	var="$(echo "$name" | tr '[:lower:]-' '[:upper:]_')_PORT"
	"$MOCK" --port 0 --config "$config" >"$EX_TMP/mock-$name.out" 2>"$EX_TMP/mock-$name.log" &
	pid=$!
	EX_PIDS+=("$pid")
	EX_PROC[mock-$name]=$pid
	ex_wait_for 10 "mock provider $name" grep -q '^PORT=' "$EX_TMP/mock-$name.out"
	port=$(sed -n 's/^PORT=//p' "$EX_TMP/mock-$name.out" | head -n 1)
	printf -v "$var" '%s' "$port"
	export "${var?}"
	ex_note "mock provider '$name' on 127.0.0.1:$port: $config"
}

# ex_mock_config PORT JSON: merge JSON into that mock's config
ex_mock_config() {
	curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' \
		--data "$2" "http://127.0.0.1:$1/_mock/config"
}

# ex_mock_get PORT PATH: a mock control endpoint (JSON on stdout)
ex_mock_get() { curl -sf "http://127.0.0.1:$1$2"; }

# ------------------------------------------------------------------ batchd

# ex_migrate [VAR=VALUE...]: create or upgrade the batchd schema, then the
# example's schema.sql (domain tables, hooks, callbacks): before batchd
# starts, since batchd checks at start that its hook functions exist.
# shellcheck disable=SC2120  # the arguments are optional
ex_migrate() {
	env EXAMPLE_HTTP_PORT="$(ex_free_port)" "$@" "$BATCHD" migrate -c "$EX_DIR/batchd.ini" \
		2>"$EX_TMP/migrate.log" ||
		{ cat "$EX_TMP/migrate.log" >&2; return 1; }
	ex_psql -f "$EX_DIR/schema.sql"
}

# ex_start_batchd NAME [VAR=VALUE...]: start batchd with the example's
# batchd.ini (and the given environment), wait until /readyz answers 200.
# Sets EX_URL[NAME] and EX_PROC[NAME].
ex_start_batchd() {
	local name=$1 port pid
	shift
	port=$(ex_free_port)
	env EXAMPLE_HTTP_PORT="$port" "$@" "$BATCHD" -c "$EX_DIR/batchd.ini" \
		>>"$EX_TMP/$name.log" 2>&1 </dev/null &
	pid=$!
	EX_PIDS+=("$pid")
	EX_PROC[$name]=$pid
	# shellcheck disable=SC2034
	EX_URL[$name]="http://127.0.0.1:$port"
	ex_wait_for 30 "$name to be ready" curl -sf "http://127.0.0.1:$port/readyz"
	ex_note "$name: pid $pid, http://127.0.0.1:$port, log $EX_TMP/$name.log"
}

# ex_stop_batchd NAME: SIGTERM; batchd must exit 0 (graceful stop)
ex_stop_batchd() {
	local rc=0
	ex_stop_pid "${EX_PROC[$1]}" || rc=$?
	ex_forget "${EX_PROC[$1]}"
	[ "$rc" -eq 0 ] || { echo "$1 exited $rc after SIGTERM" >&2; return 1; }
}

# ex_kill9 NAME: kill -9, no goodbye
ex_kill9() {
	kill -KILL "${EX_PROC[$1]}"
	wait "${EX_PROC[$1]}" 2>/dev/null || true
	ex_forget "${EX_PROC[$1]}"
}

ex_forget() { # pid: no longer ours to stop
	local p keep=()
	for p in "${EX_PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	EX_PIDS=("${keep[@]+"${keep[@]}"}")
}

ex_log() { cat "$EX_TMP/$1.log"; }

# ex_worker_id NAME: the worker id batchd NAME logged at start
ex_worker_id() {
	sed -n 's/.*starting: worker \([0-9a-f-]\{36\}\).*/\1/p' "$EX_TMP/$1.log" | head -n 1
}

# ------------------------------------------------------------------ batches

EX_TERMINAL="'completed','completed_with_errors','failed','cancelled'"

# ex_wait_batch ID [TIMEOUT]: wait until the batch has ended (a progress line
# each second), then print its status line.
ex_wait_batch() {
	local id=$1 secs=${2:-$EX_TIMEOUT} line last='' t=0
	while :; do
		line=$(ex_sql "SELECT status || ' ' || (succeeded + failed + cancelled) || '/' || total
		                 || ' (succeeded ' || succeeded || ', failed ' || failed
		                 || ', cancelled ' || cancelled || ')'
		                 || CASE WHEN finished_at IS NOT NULL AND status IN ($EX_TERMINAL)
		                         THEN ' END' ELSE '' END
		                 FROM batchd.batches WHERE id = '$id'")
		case "$line" in *" END") ex_note "batch ${id:0:8}: ${line% END}"; return 0 ;; esac
		if [ $((t % 10)) -eq 0 ] && [ "$line" != "$last" ]; then
			ex_note "batch ${id:0:8}: $line"
			last=$line
		fi
		t=$((t + 1))
		if [ "$t" -gt $((secs * 10)) ]; then
			echo "batch $id did not end within ${secs}s: $line" >&2
			return 1
		fi
		sleep 0.1
	done
}

# ex_check_clean: batchd's own consistency checks must be empty
ex_check_clean() {
	local bad
	bad=$(ex_sql "SELECT (SELECT count(*) FROM batchd.check_consistency())
	                   + (SELECT count(*) FROM batchd.check_groups())")
	[ "$bad" = 0 ] || { echo "batchd.check_consistency()/check_groups() not empty" >&2; return 1; }
}

# ex_result JSON: the machine-readable outcome, always the last line
ex_result() {
	printf '\nRESULT %s\n' "$(echo "$1" | jq -c .)"
}
