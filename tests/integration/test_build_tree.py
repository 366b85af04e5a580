"""The README's two commands after the README's own build-by-hand steps
(issue #21): once the source tree is configured in place (./configure run in
it), automake refuses the out-of-tree builds contrib/check and contrib/demo
make under build/ ("source directory already configured"). Both must clean
the tree first, saying so, and build.

Runs on a copy of the tracked files (git ls-files) in a temp dir, each script
only up to its build (CHECK_BUILD_ONLY=1, DEMO_BUILD_ONLY=1); the Debian
packages are installed already (the scripts' apt step is then a check).
"""

import os
import shutil
import subprocess

import pytest

from conftest import REPO, UPGRADE_FROM

pytestmark = pytest.mark.skipif(UPGRADE_FROM is not None,
                                reason="no database here: once, in the first run, is enough")


def copy_tree(dst):
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in files:
        if not f:
            continue
        src = os.path.join(REPO, f)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))


def run(argv, cwd, env=None, timeout=900):
    e = dict(os.environ)
    for k in ("BATCHD_BIN", "BATCHCTL_BIN", "MOCK_PROVIDER_BIN", "BATCHD_PLAIN_BIN"):
        e.pop(k, None)
    e.update(env or {})
    r = subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r


def configure_in_place(tree):
    r = run(["autoreconf", "-fi"], tree)
    assert r.returncode == 0, r.stderr
    assert "couldn't open directory 'm4'" not in r.stderr, "m4/ is part of the tree"
    r = run(["./configure", "-q"], tree)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.path.join(tree, "config.status"))


@pytest.mark.parametrize("script,env,binary", [
    ("contrib/check", {"CHECK_BUILD_ONLY": "1", "JOBS": "2"}, "build/check/batchd"),
    ("contrib/demo", {"DEMO_BUILD_ONLY": "1"}, "build/demo/batchd"),
], ids=["check", "demo"])
def test_readme_commands_build_after_an_in_tree_configure(tmp_path, script, env, binary):
    tree = str(tmp_path / "src")
    copy_tree(tree)
    configure_in_place(tree)
    r = run([os.path.join(tree, script)], tree, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{script} after an in-tree configure failed:\n{out[-4000:]}"
    assert "source directory already configured" not in out
    assert "configured in place" in out and "make distclean" in out, out[-2000:]
    assert os.access(os.path.join(tree, binary), os.X_OK)
    assert not os.path.exists(os.path.join(tree, "config.status"))
    # a second run has nothing to clean and still builds
    r = run([os.path.join(tree, script)], tree, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "configured in place" not in r.stdout + r.stderr
