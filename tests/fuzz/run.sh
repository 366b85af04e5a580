#!/bin/bash
# run.sh - build the libFuzzer targets and fuzz each one for a while.
#
# usage: tests/fuzz/run.sh [SECONDS]          (default 20 per target)
#
#   fuzz_config   config_load() on arbitrary INI text (src/config.c)
#   fuzz_tmpl     tmpl_check_url() + tmpl_render(), all modes (src/tmpl.c)
#   fuzz_submit   api_validate_submit(), the POST /v1/batches body check
#                 (src/api_submit.c)
#   fuzz_json     json_is_valid() + json_append_body() (src/json.c)
#
# Targets are built with clang -fsanitize=fuzzer,address,undefined into
# $FUZZ_BUILD_DIR (default <repo>/build/fuzz), never into the source tree.
# Each run starts from tests/fuzz/corpus/<target>/ and
# tests/fuzz/regressions/<target>/ (read only) plus the working corpus
# $FUZZ_BUILD_DIR/corpus/<target>/ (kept between runs; new inputs go there).
# Crash, leak, UB, timeout and OOM inputs land in
# $FUZZ_BUILD_DIR/artifacts/<target>/ and the full log in
# $FUZZ_BUILD_DIR/logs/<target>.log.
#
# Environment:
#   CC               clang to use (default clang-14, else clang)
#   FUZZ_BUILD_DIR   build and work directory
#   FUZZ_TARGETS     targets to run, space separated (default all four)
#   FUZZ_PARALLEL    1: fuzz the targets at the same time (default one by one)
#   FUZZ_BUILD_ONLY  1: build, print the binaries' directory, do not fuzz
#   FUZZ_ARGS        extra libFuzzer flags for every target
#
# Exit status: 0 all targets clean; 1 a target found a crash, leak, UB,
# timeout or OOM; 2 build failure or bad usage; 77 no usable clang with the
# libFuzzer runtime (a skip, automake convention).
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
FUZZ_SRC=$SRC/tests/fuzz
B=${FUZZ_BUILD_DIR:-$SRC/build/fuzz}
SECS=${1:-20}
TARGETS=${FUZZ_TARGETS:-fuzz_config fuzz_tmpl fuzz_submit fuzz_json}
RSS_MB=2048

case $SECS in
'' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

# ------------------------------------------------------------ toolchain

if [ -z "${CC:-}" ]; then
	if command -v clang-14 >/dev/null 2>&1; then CC=clang-14
	elif command -v clang >/dev/null 2>&1; then CC=clang
	else echo "run.sh: SKIP: clang not found (need clang with libFuzzer)" >&2; exit 77
	fi
fi
mkdir -p "$B/obj" "$B/logs" || exit 2

printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
	> "$B/probe.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$B/probe.c" -o "$B/probe" \
	> "$B/logs/probe.log" 2>&1; then
	echo "run.sh: SKIP: $CC cannot build a libFuzzer target (missing fuzzer runtime," \
		"e.g. libclang-rt-14-dev?):" >&2
	tail -n 3 "$B/logs/probe.log" >&2
	exit 77
fi

PKGS=(yajl inih)
if ! pkg-config --exists "${PKGS[@]}"; then
	echo "run.sh: pkg-config cannot find: ${PKGS[*]}" >&2
	exit 2
fi
read -r -a LIBS_CONFIG <<< "$(pkg-config --libs yajl inih) -lm"
read -r -a LIBS_TMPL <<< "$(pkg-config --libs yajl) -lm"
read -r -a DEP_CFLAGS <<< "$(pkg-config --cflags "${PKGS[@]}")"

# shellcheck disable=SC2054 # commas belong to the flag
SAN=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
CFLAGS_F=(-g -O1 "${SAN[@]}" -fno-omit-frame-pointer -std=gnu11 -D_GNU_SOURCE
	'-DPACKAGE_VERSION="fuzz"' '-DSYSCONFDIR="/etc"' '-DPKGDATADIR="/usr/share/batchd"'
	"-I$SRC/include" -Wall -Wextra -Wno-unused-parameter "${DEP_CFLAGS[@]}")

# ------------------------------------------------------------ build

# newest header: any change rebuilds every object
HDR_STAMP=$(find "$SRC/include/batchd" -name '*.h' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)

# compile SRC_FILE to OBJ unless OBJ is newer than it and every header
compile() {
	local src=$1 obj=$2
	if [ -f "$obj" ] && [ "$obj" -nt "$src" ] && [ "$obj" -nt "$HDR_STAMP" ]; then
		return 0
	fi
	"$CC" "${CFLAGS_F[@]}" -c "$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj"
}

LIB_SRCS="config expand tmpl json util log api_submit"
pids=""
for s in $LIB_SRCS; do
	compile "$SRC/src/$s.c" "$B/obj/$s.o" > "$B/logs/cc-$s.log" 2>&1 &
	pids="$pids $!"
done
for t in fuzz_config fuzz_tmpl fuzz_submit fuzz_json; do
	compile "$FUZZ_SRC/$t.c" "$B/obj/$t.o" > "$B/logs/cc-$t.log" 2>&1 &
	pids="$pids $!"
done
failed=0
for p in $pids; do wait "$p" || failed=1; done
if [ $failed -ne 0 ]; then
	echo "run.sh: compile failed:" >&2
	cat "$B"/logs/cc-*.log >&2
	exit 2
fi

link() {
	local out=$1; shift
	"$CC" "${SAN[@]}" "$@" -o "$out.tmp" && mv "$out.tmp" "$out"
}

O=$B/obj
link "$B/fuzz_config" "$O/fuzz_config.o" "$O/config.o" "$O/expand.o" "$O/tmpl.o" "$O/json.o" \
	"$O/util.o" "$O/log.o" "${LIBS_CONFIG[@]}" \
	> "$B/logs/ld-fuzz_config.log" 2>&1 || { cat "$B/logs/ld-fuzz_config.log" >&2; exit 2; }
link "$B/fuzz_tmpl" "$O/fuzz_tmpl.o" "$O/tmpl.o" "$O/json.o" "$O/util.o" "$O/log.o" \
	"${LIBS_TMPL[@]}" \
	> "$B/logs/ld-fuzz_tmpl.log" 2>&1 || { cat "$B/logs/ld-fuzz_tmpl.log" >&2; exit 2; }
link "$B/fuzz_json" "$O/fuzz_json.o" "$O/json.o" "$O/util.o" "$O/log.o" "${LIBS_TMPL[@]}" \
	> "$B/logs/ld-fuzz_json.log" 2>&1 || { cat "$B/logs/ld-fuzz_json.log" >&2; exit 2; }

# api_submit.c is the validator alone: no server, database or event loop
link "$B/fuzz_submit" "$O/fuzz_submit.o" "$O/api_submit.o" "$O/config.o" "$O/expand.o" "$O/tmpl.o" \
	"$O/json.o" "$O/util.o" "$O/log.o" "${LIBS_CONFIG[@]}" \
	> "$B/logs/ld-fuzz_submit.log" 2>&1 || { cat "$B/logs/ld-fuzz_submit.log" >&2; exit 2; }

if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then
	echo "$B"
	exit 0
fi

# ------------------------------------------------------------ fuzz

max_len() {
	case $1 in
	fuzz_config) echo 16384 ;;
	fuzz_tmpl) echo 4096 ;;
	fuzz_submit) echo 16384 ;;
	fuzz_json) echo 8192 ;;
	esac
}
dict() {
	case $1 in
	fuzz_config) echo "$FUZZ_SRC/config.dict" ;;
	fuzz_tmpl) echo "$FUZZ_SRC/tmpl.dict" ;;
	fuzz_submit) echo "$FUZZ_SRC/submit.dict" ;;
	fuzz_json) echo "$FUZZ_SRC/json.dict" ;;
	esac
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"

# fuzz one target; its exit status is libFuzzer's
fuzz_one() {
	local t=$1 d
	local dirs=("$B/corpus/$t") extra=()
	mkdir -p "$B/corpus/$t" "$B/artifacts/$t"
	for d in "$FUZZ_SRC/corpus/$t" "$FUZZ_SRC/regressions/$t"; do
		[ -d "$d" ] && dirs+=("$d")
	done
	read -r -a extra <<< "${FUZZ_ARGS:-}"
	"$B/$t" -max_total_time="$SECS" -max_len="$(max_len "$t")" -rss_limit_mb=$RSS_MB \
		-timeout=10 -print_final_stats=1 -dict="$(dict "$t")" \
		-artifact_prefix="$B/artifacts/$t/" "${extra[@]}" "${dirs[@]}" \
		> "$B/logs/$t.log" 2>&1
}

# one line per target from its log
summary() {
	local t=$1 rc=$2
	local log=$B/logs/$t.log last execs rate rss cov ft corp what art
	last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
	cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p')
	if [ "$rc" -eq 0 ]; then
		printf '%-12s OK     %ss execs=%s (%s/s) cov=%s ft=%s corpus=%s rss=%sMB\n' \
			"$t" "$SECS" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
			"${corp:-?}" "${rss:-?}"
	else
		what=$(grep -m 1 -E '^(SUMMARY: |==[0-9]+== ?ERROR: |.*runtime error: |fuzz_[a-z]+: )' "$log" |
			cut -c 1-160)
		art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
		printf '%-12s FAILED rc=%s execs=%s cov=%s: %s; input: %s; log: %s\n' \
			"$t" "$rc" "${execs:-?}" "${cov:-?}" "${what:-see log}" "${art:-none}" "$log"
	fi
}

status=0
declare -A rcs
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
	declare -A tpids
	for t in $TARGETS; do fuzz_one "$t" & tpids[$t]=$!; done
	for t in $TARGETS; do wait "${tpids[$t]}"; rcs[$t]=$?; done
else
	for t in $TARGETS; do fuzz_one "$t"; rcs[$t]=$?; done
fi
for t in $TARGETS; do
	summary "$t" "${rcs[$t]}"
	[ "${rcs[$t]}" -eq 0 ] || status=1
done
exit $status
