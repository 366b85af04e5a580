"""`make install` as a package would do it (issue #21, point 6).

Runs the real install rules of the build tree that made the batchd under test
(the directory of BATCHD_BIN), into a DESTDIR under tmp_path:

  - the config is installed as batchd.ini only when there is none, always as
    batchd.ini.example beside it, both mode 0640: a second install keeps an
    edited batchd.ini;
  - the man pages name the paths the build was configured for;
  - LICENSE and README go to the doc directory;
  - a separate configure with --with-systemdsystemunitdir=DIR installs the
    units there, and =no installs none.
"""

import os
import re
import shutil
import stat
import subprocess

import pytest

from conftest import REPO, batchd_bin


def build_dir():
    d = os.path.dirname(os.path.abspath(batchd_bin()))
    if not os.path.isfile(os.path.join(d, "Makefile")):
        pytest.fail(f"{d} (the directory of the batchd under test) has no Makefile: "
                    "run the tests from a configured build (make check)")
    return d


def make_var(builddir, name):
    """A variable of the build's Makefile, expanded (make's own answer)."""
    r = subprocess.run(["make", "-s", "-C", builddir, "--no-print-directory",
                        "-f", "Makefile", "-f", "-", "print-var"],
                       input=f"print-var:\n\t@echo $({name})\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def make_install(builddir, destdir, target="install"):
    r = subprocess.run(["make", "-C", builddir, target, f"DESTDIR={destdir}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"make {target} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_install_twice_keeps_an_edited_config(tmp_path):
    b = build_dir()
    sysconfdir = make_var(b, "sysconfdir")
    dest = str(tmp_path / "root")
    make_install(b, dest)

    confdir = dest + sysconfdir + "/batchd"
    ini = os.path.join(confdir, "batchd.ini")
    example = os.path.join(confdir, "batchd.ini.example")
    shipped = open(os.path.join(REPO, "contrib", "batchd.ini")).read()
    assert open(ini).read() == shipped
    assert open(example).read() == shipped
    assert mode(ini) == 0o640, oct(mode(ini))
    assert mode(example) == 0o640, oct(mode(example))

    edited = shipped + "\n# edited by the operator\n"
    with open(ini, "w") as f:
        f.write(edited)
    os.chmod(ini, 0o600)
    os.remove(example)
    out = make_install(b, dest)
    assert open(ini).read() == edited, "a second make install overwrote the edited config"
    assert mode(ini) == 0o600, "a second make install changed the config's mode"
    assert open(example).read() == shipped, "the example was not installed again"
    assert "keeping the existing" in out

    # uninstall keeps the operator's config, removes the example
    make_install(b, dest, "uninstall")
    assert open(ini).read() == edited
    assert not os.path.exists(example)


def test_installed_man_pages_name_the_configured_paths(tmp_path):
    b = build_dir()
    sysconfdir = make_var(b, "sysconfdir")
    pkgdatadir = make_var(b, "pkgdatadir")
    mandir = make_var(b, "mandir")
    docdir = make_var(b, "docdir")
    dest = str(tmp_path / "root")
    make_install(b, dest)

    page = open(dest + mandir + "/man8/batchd.8").read()
    assert f"{sysconfdir}/batchd/batchd.ini" in page
    assert f"{pkgdatadir}/sql/" in page
    if sysconfdir != "/etc":
        assert "/etc/batchd/" not in page.replace(f"{sysconfdir}/batchd/", "")
    ini5 = open(dest + mandir + "/man5/batchd.ini.5").read()
    assert f"{sysconfdir}/batchd/batchd.ini" in ini5
    for name in ("LICENSE", "README"):
        assert os.path.isfile(os.path.join(dest + docdir, name)), name
    assert "ISC License" in open(os.path.join(dest + docdir, "LICENSE")).read()


@pytest.mark.parametrize("unitdir", ["/opt/units", "no"])
def test_with_systemdsystemunitdir(tmp_path, unitdir):
    if os.path.exists(os.path.join(REPO, "config.status")):
        pytest.skip("source tree configured in place: a second build tree is refused")
    bdir = tmp_path / "build"
    bdir.mkdir()
    r = subprocess.run([os.path.join(REPO, "configure"),
                        f"--with-systemdsystemunitdir={unitdir}",
                        "--prefix=/opt/batchd"], cwd=bdir,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (("units:      /opt/units" if unitdir != "no" else "units:      not installed")
            in r.stdout), r.stdout
    dest = str(tmp_path / "root")
    make_install(str(bdir), dest, "install-data")
    units = ("batchd.service", "batchd.socket", "batchd-nightly.service",
             "batchd-nightly.timer")
    if unitdir == "no":
        found = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
                 if f in units]
        assert found == []
    else:
        for u in units:
            assert os.path.isfile(os.path.join(dest + unitdir, u)), u
        svc = open(os.path.join(dest + unitdir, "batchd.service")).read()
        assert re.search(r"^ExecStart=/opt/batchd/bin/batchd -c /opt/batchd/etc/batchd/batchd.ini$",
                         svc, re.M), svc
    assert os.path.isfile(dest + "/opt/batchd/etc/batchd/batchd.ini")
    shutil.rmtree(bdir)
