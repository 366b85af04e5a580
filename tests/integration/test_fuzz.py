"""libFuzzer targets (tests/fuzz): a short fuzzing run, and a replay of every
seed and regression input.

  test_fuzz_short_run   tests/fuzz/run.sh with a small budget per target
                        (FUZZ_TEST_SECONDS, default 10): builds fuzz_config,
                        fuzz_tmpl, fuzz_submit and fuzz_json with clang
                        -fsanitize=fuzzer,address,undefined and fuzzes each;
                        any crash, leak, UB, timeout or OOM fails the test.
  test_replay[TARGET]   every file under tests/fuzz/corpus/ and
                        tests/fuzz/regressions/ (all targets' inputs: any
                        byte string is a valid input for every target) is run
                        once through TARGET; exit 0 required.  A crash found
                        by fuzzing is kept as a regression input, so a fix
                        that comes undone fails here.

The targets are built into a private temporary directory (never the source
tree).  Skipped, with the reason, only when no clang with the libFuzzer
runtime is installed (run.sh exits 77: apt-get install clang-14
libclang-rt-14-dev).  No database or network is needed.
"""

import os
import subprocess

import pytest

from conftest import REPO

FUZZ_DIR = os.path.join(REPO, "tests", "fuzz")
RUN_SH = os.path.join(FUZZ_DIR, "run.sh")
TARGETS = ("fuzz_config", "fuzz_tmpl", "fuzz_submit", "fuzz_json")
SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "10"))
BUILD_TIMEOUT = 600           # a cold build with sanitizers on a loaded box
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


def _env(build_dir):
    env = dict(os.environ)
    env.update(SANITIZER_ENV)
    env["FUZZ_BUILD_DIR"] = str(build_dir)
    for k in ("FUZZ_TARGETS", "FUZZ_PARALLEL", "FUZZ_BUILD_ONLY", "FUZZ_ARGS"):
        env.pop(k, None)
    return env


def _tail(text, n=40):
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory):
    """Build the targets once (run.sh FUZZ_BUILD_ONLY=1); skip when the
    toolchain has no libFuzzer."""
    build_dir = tmp_path_factory.mktemp("fuzz-build")
    env = _env(build_dir)
    env["FUZZ_BUILD_ONLY"] = "1"
    p = subprocess.run([RUN_SH], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT)
    if p.returncode == 77:
        pytest.skip("no clang with the libFuzzer runtime: " + p.stderr.strip())
    assert p.returncode == 0, f"building the fuzz targets failed:\n{_tail(p.stderr)}"
    for t in TARGETS:
        assert os.access(os.path.join(build_dir, t), os.X_OK), f"{t} was not built"
    return build_dir


def _inputs():
    files = []
    for kind in ("corpus", "regressions"):
        root = os.path.join(FUZZ_DIR, kind)
        for dirpath, _, names in os.walk(root):
            files.extend(os.path.join(dirpath, n) for n in sorted(names)
                         if not n.startswith("."))
    return sorted(files)


def test_seed_dirs_present():
    for t in TARGETS:
        corpus = os.path.join(FUZZ_DIR, "corpus", t)
        assert os.path.isdir(corpus) and os.listdir(corpus), f"no seed corpus for {t}"
        assert os.path.isdir(os.path.join(FUZZ_DIR, "regressions", t)), \
            f"tests/fuzz/regressions/{t} missing"


@pytest.mark.parametrize("target", TARGETS)
def test_replay(fuzz_build, target):
    files = _inputs()
    assert files, "no inputs under tests/fuzz/corpus or tests/fuzz/regressions"
    binary = os.path.join(fuzz_build, target)
    # libFuzzer runs the files given as arguments once each; chunked to keep
    # the command line short
    for i in range(0, len(files), 200):
        chunk = files[i:i + 200]
        p = subprocess.run([binary, "-rss_limit_mb=2048", "-timeout=20", *chunk],
                           env=_env(fuzz_build), cwd=fuzz_build, capture_output=True,
                           text=True, errors="replace", timeout=300)
        assert p.returncode == 0, (
            f"{target} failed replaying {len(chunk)} inputs (rc {p.returncode}):\n"
            f"{_tail(p.stderr, 60)}")
        assert f"Running {len(chunk)} inputs" in p.stderr, _tail(p.stderr)


def test_fuzz_short_run(fuzz_build):
    p = subprocess.run([RUN_SH, str(SECONDS)], env=_env(fuzz_build), cwd=REPO,
                       capture_output=True, text=True, errors="replace",
                       timeout=BUILD_TIMEOUT + len(TARGETS) * (SECONDS + 60))
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"run.sh {SECONDS} failed (rc {p.returncode}):\n{_tail(out)}"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    for t in TARGETS:
        mine = [ln for ln in lines if ln.split()[0] == t]
        assert len(mine) == 1 and mine[0].split()[1] == "OK", \
            f"no OK summary line for {t}:\n{p.stdout}"
        assert "execs=?" not in mine[0] and "cov=?" not in mine[0], mine[0]
