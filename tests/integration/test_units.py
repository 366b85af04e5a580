"""systemd units (contrib/systemd) and man pages (man/).

Units: generated from their .in templates the way `make` does, with the
real batchd binary, then checked with `systemd-analyze verify`, which must
exit 0 and print nothing (unknown keys, bad values, missing executables,
missing man pages named in Documentation= all print). Also: the credentials
drop-in documented in batchd.service verifies, the sysusers.d entry creates
the user, and the nightly timer's SQL submits the right batch against a real
database (and nothing, without failing, when no truck is due).

Man pages: render without a single warning (man -l, groff -ww, mandoc
-Tlint when installed), and cover what the code has: every config key of
src/config.c, every option of `batchd --help`, every `batchctl` command; the
example configs in batchd.ini(5) pass `batchd --check-config`.

Skipped, with the reason, only when the tool a test needs is not installed
(systemd-analyze, systemd-sysusers, man/groff).
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO, batchd_env

UNITS_SRC = os.path.join(REPO, "contrib", "systemd")
MAN_SRC = os.path.join(REPO, "man")
MAN_PAGES = ("batchd.8", "batchctl.1", "batchd.ini.5")
TEMPLATES = ("batchd.service.in",)
STATIC_UNITS = ("batchd.socket", "batchd-nightly.service", "batchd-nightly.timer")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found (apt-get install systemd): units not verified")


def find_binary(env_var, name):
    """The built binary: $ENV_VAR, else build/dev/NAME, else ./NAME."""
    env = os.environ.get(env_var)
    cands = [env] if env else [os.path.join(REPO, "build", "dev", name),
                               os.path.join(REPO, name)]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail(f"{name} not found (tried {', '.join(cands)}): build it (make) or set {env_var}")


def read(path):
    with open(path) as f:
        return f.read()


def render_template(src, dst, bindir, sysconfdir):
    """What the Makefile rule does: sed @bindir@ and @sysconfdir@."""
    text = read(src).replace("@bindir@", bindir).replace("@sysconfdir@", sysconfdir)
    left = re.findall(r"@[A-Za-z_]+@", text)
    assert not left, f"{os.path.basename(src)}: unsubstituted {sorted(set(left))}"
    with open(dst, "w") as f:
        f.write(text)


def unit_entries(path):
    """[(section, key, value)] of a unit file: comments skipped, continuation
    lines joined with a space (systemd.syntax(7)), repeated keys kept."""
    text = read(path).replace("\\\n", " ")
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(path, section, key):
    return [v for s, k, v in unit_entries(path) if s == section and k == key]


def seconds(span):
    """A systemd time span made of NUMBER+UNIT parts, e.g. 45s, 1min 30s."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(int(n) * units[u or "s"] for n, u in parts)


@pytest.fixture
def tree(tmp_path):
    """A directory of generated units, a bindir holding the real batchd (as
    `batchd`, whatever the build calls it), and a man tree of our pages for
    the Documentation= check."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(os.path.abspath(find_binary("BATCHD_BIN", "batchd")), bindir / "batchd")
    sysconfdir = tmp_path / "etc"
    (sysconfdir / "batchd").mkdir(parents=True)
    units = tmp_path / "units"
    units.mkdir()
    for t in TEMPLATES:
        render_template(os.path.join(UNITS_SRC, t), units / t[:-3], str(bindir), str(sysconfdir))
    for u in STATIC_UNITS:
        shutil.copy(os.path.join(UNITS_SRC, u), units / u)
    man = tmp_path / "man"
    for page in MAN_PAGES:
        sect = man / f"man{page.rsplit('.', 1)[1]}"
        sect.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(MAN_SRC, page), sect / page)
    return {"units": units, "bindir": bindir, "sysconfdir": sysconfdir, "man": man}


def analyze_verify(tree, *names):
    env = dict(os.environ, MANPATH=str(tree["man"]), SYSTEMD_LOG_COLOR="0")
    argv = [SYSTEMD_ANALYZE, "verify", "--recursive-errors=yes"]
    if not shutil.which("man"):
        argv.append("--man=no")  # nothing to look the Documentation= pages up with
    argv += [f"./{n}" for n in names]
    return subprocess.run(argv, cwd=tree["units"], env=env, capture_output=True, text=True,
                          timeout=120)


# ------------------------------------------------------------------ units

@needs_analyze
def test_units_verify_clean(tree):
    names = [t[:-3] for t in TEMPLATES] + list(STATIC_UNITS)
    r = analyze_verify(tree, *names)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and out == "", \
        f"systemd-analyze verify {' '.join(names)} exited {r.returncode}:\n{out}"


@needs_analyze
def test_credentials_dropin_verifies(tree):
    """The LoadCredential= block documented in batchd.service, put in a
    drop-in as the comment says, is a valid unit too."""
    service = tree["units"] / "batchd.service"
    lines = read(service).splitlines()
    start = lines.index("#   [Service]")
    block = []
    for line in lines[start:]:
        if line == "#":
            break
        assert line.startswith("#   "), line
        block.append(line[4:])
    dropin = "\n".join(block) + "\n"
    assert "LoadCredential=provider-token:/etc/batchd/credentials/provider-token" in dropin
    # batchd reads the credential itself (${credential:NAME}): no shell wrapper
    assert "ExecStart" not in dropin and "/bin/sh" not in dropin
    assert "${credential:provider-token}" in read(service)
    d = tree["units"] / "batchd.service.d"
    d.mkdir()
    (d / "credentials.conf").write_text(dropin)
    r = analyze_verify(tree, "batchd.service")
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and out == "", f"with the credentials drop-in:\n{dropin}\n{out}"


def test_service_settings(tree):
    """The choices batchd relies on, against the code's own defaults."""
    svc = tree["units"] / "batchd.service"
    conf = f"{tree['sysconfdir']}/batchd/batchd.ini"
    assert unit_values(svc, "Service", "Type") == ["notify"]
    assert unit_values(svc, "Service", "NotifyAccess") == ["main"]
    assert unit_values(svc, "Service", "ExecStart") == [f"{tree['bindir']}/batchd -c {conf}"]
    # reload: check first (a failing command aborts the rest), then SIGHUP
    assert unit_values(svc, "Service", "ExecReload") == [
        f"{tree['bindir']}/batchd --check-config -c {conf}", "/bin/kill -HUP $MAINPID"]
    # bad configuration (exit 2) is not retried
    assert unit_values(svc, "Service", "RestartPreventExitStatus") == ["2"]
    # the stop timeout leaves room for batchd's default shutdown_timeout
    config_c = read(os.path.join(REPO, "src", "config.c"))
    m = re.search(r"cfg->shutdown_timeout_ms = (\d+) \* 1000;", config_c)
    assert m, "default shutdown_timeout not found in src/config.c"
    (stop,) = unit_values(svc, "Service", "TimeoutStopSec")
    assert seconds(stop) >= int(m.group(1)) + 10, \
        f"TimeoutStopSec={stop} leaves no room after shutdown_timeout={m.group(1)}s"
    (wd,) = unit_values(svc, "Service", "WatchdogSec")
    assert seconds(wd) >= 10
    sock = tree["units"] / "batchd.socket"
    assert unit_values(sock, "Socket", "Accept") == ["no"]
    assert unit_values(sock, "Socket", "ListenStream") == ["127.0.0.1:8080"]


def test_sysusers_creates_user(tmp_path):
    sysusers = shutil.which("systemd-sysusers")
    if not sysusers:
        pytest.skip("systemd-sysusers not found (apt-get install systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = tmp_path / "batchd.conf"  # sysusers.d wants the .conf suffix
    shutil.copy(os.path.join(UNITS_SRC, "batchd.sysusers"), conf)
    r = subprocess.run([sysusers, f"--root={root}", str(conf)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    passwd = read(root / "etc" / "passwd")
    group = read(root / "etc" / "group")
    assert re.search(r"^batchd:x:\d+:\d+:[^:]*:/:/usr/sbin/nologin$", passwd, re.M), passwd
    assert re.search(r"^batchd:x:\d+:", group, re.M), group


def nightly_argv():
    """ExecStart= of batchd-nightly.service as systemd splits it. shlex
    splits the same way as long as the command uses no %-specifier, no $
    and no backslash escape other than \\" (asserted)."""
    (cmd,) = unit_values(os.path.join(UNITS_SRC, "batchd-nightly.service"), "Service",
                         "ExecStart")
    assert "%" not in cmd and "$" not in cmd
    assert not re.search(r'\\[^"]', cmd), "an escape shlex would read differently"
    return shlex.split(cmd)


def test_nightly_submits_due_trucks(db, conn):
    argv = nightly_argv()
    assert os.path.basename(argv[0]) == "psql"
    if not os.access(argv[0], os.X_OK):
        pytest.skip(f"{argv[0]} not installed (apt-get install postgresql-client)")
    conn.execute("""
        CREATE TABLE trucks (id int PRIMARY KEY, plate text NOT NULL, verified_at timestamptz);
        INSERT INTO trucks VALUES
            (1, 'B-AB 123', NULL),
            (2, 'M-XY 9', now() - interval '8 days'),
            (3, 'HH-Q 77', now() - interval '1 day');
    """)
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(db.cluster.port), PGUSER="postgres",
               PGDATABASE=db.name)
    env.pop("PGSERVICE", None)

    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv}\n{r.stderr}"
    batch_id = r.stdout.strip()
    assert UUID_RE.match(batch_id), r.stdout
    b = conn.execute("SELECT tenant, route, name, total FROM batchd.batches WHERE id = %s",
                     (batch_id,)).fetchone()
    assert (b["tenant"], b["route"], b["name"], b["total"]) == \
        ("fleet", "verify", "nightly verification", 2)
    payloads = [row["payload"] for row in conn.execute(
        "SELECT payload FROM batchd.items WHERE batch_id = %s ORDER BY seq", (batch_id,))]
    assert payloads == [{"id": 1, "plate": "B-AB 123"}, {"id": 2, "plate": "M-XY 9"}]

    # nothing due: no batch, and the run still succeeds
    conn.execute("UPDATE trucks SET verified_at = now()")
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
    assert conn.execute("SELECT count(*) AS n FROM batchd.batches").fetchone()["n"] == 1


# ------------------------------------------------------------------ man pages

@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_cleanly(page):
    path = os.path.join(MAN_SRC, page)
    ran = False
    if shutil.which("man"):
        r = subprocess.run(["man", "-l", path], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat",
                                    MAN_DISABLE_SECCOMP="1", LC_ALL="C.UTF-8"))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "NAME" in r.stdout and "SEE ALSO" in r.stdout
        ran = True
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        ran = True
    if shutil.which("mandoc"):
        r = subprocess.run(["mandoc", "-Tlint", path], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and (r.stdout + r.stderr) == "", r.stdout + r.stderr
        ran = True
    if not ran:
        pytest.skip("neither man, groff nor mandoc is installed")


def man_section(page, title):
    """Source lines of one .SH section of a man page."""
    text = read(os.path.join(MAN_SRC, page))
    m = re.search(r'^\.SH "?' + re.escape(title) + r'"?\n(.*?)(?=^\.SH |\Z)', text, re.M | re.S)
    assert m, f"{page}: no section {title}"
    return m.group(1)


def documented_keys(body):
    """Keys of a section: the .B word of each .TP entry."""
    return re.findall(r"^\.TP\n\.B (\w+)$", body, re.M)


def config_keys():
    """{table: [key]} from the key tables of src/config.c."""
    src = read(os.path.join(REPO, "src", "config.c"))
    tables = {}
    for name, body in re.findall(r"static const ConfigKey (\w+)_keys\[\] = \{(.*?)\n\};", src,
                                 re.S):
        tables[name] = re.findall(r'\{ "(\w+)",', body)
    assert set(tables) == {"batchd", "provider", "route"}, tables
    return tables


def test_ini_page_documents_every_key():
    for table, section in (("batchd", "[batchd] SECTION"), ("provider", "[provider NAME] SECTION"),
                           ("route", "[route NAME] SECTION")):
        keys = config_keys()[table]
        documented = documented_keys(man_section("batchd.ini.5", section))
        assert sorted(documented) == sorted(keys), \
            f"batchd.ini(5) {section}: missing {sorted(set(keys) - set(documented))}, " \
            f"not in src/config.c {sorted(set(documented) - set(keys))}"


def test_ini_page_examples_pass_check_config(tmp_path):
    text = read(os.path.join(MAN_SRC, "batchd.ini.5"))
    blocks = [b.replace("\\-", "-").replace("\\e", "\\")
              for b in re.findall(r"^\.EX\n(.*?)^\.EE", text, re.M | re.S)]
    configs = [b for b in blocks if b.lstrip().startswith("[")]
    assert configs, "no example configuration found"
    batchd = find_binary("BATCHD_BIN", "batchd")
    for i, cfg in enumerate(configs):
        variables = set(re.findall(r"\$\{(\w+)\}", cfg))
        path = tmp_path / f"example{i}.ini"
        path.write_text(cfg)
        env = batchd_env({v: "x" for v in variables})
        env["BATCHD_DATABASE"] = "dbname=example"  # for examples without [batchd]
        creds = set(re.findall(r"\$\{credential:(\w+)\}", cfg))
        if creds:  # as systemd's LoadCredential= would provide them
            cdir = tmp_path / f"creds{i}"
            cdir.mkdir()
            for c in creds:
                (cdir / c).write_text("x")
            env["CREDENTIALS_DIRECTORY"] = str(cdir)
        r = subprocess.run([batchd, "--check-config", "-c", str(path)], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"example {i} of batchd.ini(5):\n{cfg}\n{r.stderr}"


def test_batchd_page_documents_every_option():
    r = subprocess.run([find_binary("BATCHD_BIN", "batchd"), "--help"], capture_output=True,
                       text=True, timeout=60, env=batchd_env())
    assert r.returncode == 0, r.stderr
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", r.stdout))
    options.add("migrate")
    page = re.sub(r"\\f[BIRP]", " ", read(os.path.join(MAN_SRC, "batchd.8")).replace("\\-", "-"))
    missing = [o for o in sorted(options) if not re.search(r"(?<![\w-])" + re.escape(o) + r"\b",
                                                           page)]
    assert not missing, f"batchd(8) does not mention {missing} from batchd --help"


def test_batchctl_page_documents_every_command():
    r = subprocess.run([find_binary("BATCHCTL_BIN", "batchctl"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    commands = set(re.findall(r"^  batchctl (\w+)", r.stdout, re.M))
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)\b", r.stdout))
    assert "submit" in commands and "token" in commands, r.stdout
    body = man_section("batchctl.1", "COMMANDS").replace("\\-", "-")
    entries = set(re.findall(r"^\.(?:B|BI|BR) \"?(\w+)", body, re.M))
    assert not commands - entries, f"batchctl(1) lacks commands {sorted(commands - entries)}"
    page = read(os.path.join(MAN_SRC, "batchctl.1")).replace("\\-", "-")
    missing = [o for o in sorted(options) if o not in page]
    assert not missing, f"batchctl(1) does not mention {missing} from batchctl --help"
