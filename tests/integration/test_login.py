"""Provider login and token refresh (issue #20, point 3), end to end against
a private PostgreSQL, the real batchd and the real mock provider, whose
/_mock/login hands out fresh random bearer tokens and whose "require" mode
answers 401 to every item request without a currently valid one.

- one login serves a whole batch, and every item request carries its token;
- a short-lived token is refreshed before it expires: no 401 at all;
- tokens revoked server-side mid-drain: the 401s cause one re-login (a
  generation counter: not one per 401), and every item succeeds without
  spending its tries;
- a wrong password: no item request goes out without a token; with a
  fallback provider the items succeed there, without one they go back to
  the queue (no attempt spent) and the status shows the login error;
- the password from a file (${file:}) rotated, then SIGHUP: the next login
  uses the new one;
- config errors, with --check-config.

Every wait is bounded.
"""

import json
import re
import signal
import time
import urllib.request

from conftest import (http_get, http_post_json, items, run_batchd, submit, wait_batch_done,
                      wait_until)

ROUTE = "r"
USER, PASSWORD = "svc", "s3cret"


# ------------------------------------------------------------------ helpers

def auth(mock, **kw):
    """POST /_mock/auth: the mock's login settings; returns its figures."""
    status, body = http_post_json(mock.base + "/_mock/auth", kw)
    assert status == 200, (status, body)
    return json.loads(body)


def auth_stats(mock):
    status, body = http_get(mock.base + "/_mock/auth")
    assert status == 200, (status, body)
    return json.loads(body)


def login_prov(mock, body=None, **keys):
    p = {"url": mock.url("/item/{id}"), "timeout": "5s", "connect_timeout": "2s",
         "login_url": mock.url("/_mock/login"),
         "login_body": body or json.dumps({"user": USER, "password": PASSWORD})}
    p.update({k: str(v) for k, v in keys.items()})
    return p


def item_requests(mock):
    return mock.all_requests()


def status_json(d, conn):
    tok = conn.execute("SELECT batchd.create_token('login-test') AS t").fetchone()["t"]
    req = urllib.request.Request(d.base + "/v1/status",
                                 headers={"Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def provider_status(d, conn, name):
    for p in status_json(d, conn)["providers"]:
        if p["name"] == name:
            return p
    raise AssertionError(f"no provider {name} in /v1/status")


def metric(d, name, **labels):
    code, body = d.get("/metrics")
    assert code == 200
    text = body.decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.index("}") + 1]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def reload(d):
    n = d.log().count("configuration reloaded")
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.log().count("configuration reloaded") > n, 10, desc="the reload")


# ------------------------------------------------------------------ (1) one login, every request carries it

def test_one_login_serves_a_batch_and_every_request_carries_the_token(db, conn, mock,
                                                                      batchd_factory):
    auth(mock, user=USER, password=PASSWORD, require=True, lifetime_s=3600)
    mock.configure(latency_ms=5)
    d = batchd_factory(db=db, providers={"p": login_prov(mock)}, routes={ROUTE: "p"},
                       max_inflight=50)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(300)])
    b = wait_batch_done(conn, bid, timeout=60)
    assert b["status"] == "completed" and b["succeeded"] == 300, b
    a = auth_stats(mock)
    assert a["logins"] == 1 and a["login_failures"] == 0, a
    assert a["unauthorized"] == 0 and a["authorized"] == 300, a
    tok = a["tokens"][0]
    reqs = item_requests(mock)
    assert len(reqs) == 300
    assert {r["authorization"] for r in reqs} == {f"Bearer {tok}"}
    # no login on the item log: /_mock/login is a control path
    assert all(r["path"].startswith("/item/") for r in reqs)
    # the answer of the first try stands: one try each
    assert all(it["attempts"] == 1 for it in items(conn, bid))

    st = provider_status(d, conn, "p")["login"]
    assert st["state"] == "ready" and st["logins"] == 1 and st["failures"] == 0, st
    assert 3500 < st["expires_in_s"] <= 3600, st
    assert st["last_error"] is None
    assert metric(d, "batchd_provider_login_total", provider="p", result="ok") == 1
    assert metric(d, "batchd_provider_login_total", provider="p", result="error") == 0
    assert metric(d, "batchd_provider_login_token_valid", provider="p") == 1
    log = d.log()
    assert re.search(r"provider p: logged in \(token 1, expires in 3\.6e\+03 s", log), log
    assert tok not in log and PASSWORD not in log


def test_nested_token_field_and_custom_header(db, conn, mock, batchd_factory):
    """login_token_field / login_expires_field as dotted paths (the mock's
    nested answer: {"data": {"token": .., "ttl": "N"}}), and a token_header
    of one's own; the static headers still go along."""
    auth(mock, user=USER, password=PASSWORD, nested=True, lifetime_s=600)
    d = batchd_factory(db=db, providers={"p": login_prov(
        mock, login_token_field="data.token", login_expires_field="data.ttl",
        token_header="Authorization: Bearer {token}",
        header="Idempotency-Key: static-1")}, routes={ROUTE: "p"})
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)])
    assert wait_batch_done(conn, bid)["succeeded"] == 5
    tok = auth_stats(mock)["tokens"][0]
    assert {(r["authorization"], r["idempotency_key"]) for r in item_requests(mock)} == \
        {(f"Bearer {tok}", "static-1")}
    st = provider_status(d, conn, "p")["login"]
    assert 590 < st["expires_in_s"] <= 600, st


# ------------------------------------------------------------------ (2) refresh before expiry

def test_short_lived_token_is_refreshed_before_it_expires(db, conn, mock, batchd_factory):
    """Tokens of 2 s, refresh margin 1 s, a drain of about 6 s (rate 50/s,
    300 items): fresh tokens come before the old ones expire, so the mock
    never answers 401; every request carried a token that was valid then."""
    auth(mock, user=USER, password=PASSWORD, require=True, lifetime_s=2)
    d = batchd_factory(db=db, providers={"p": login_prov(mock, rate="50/s", burst=5,
                                                         login_refresh_margin="1s")},
                       routes={ROUTE: "p"}, max_inflight=20)
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(300)])
    b = wait_batch_done(conn, bid, timeout=60)
    took = time.monotonic() - t0
    assert b["succeeded"] == 300, b
    assert took >= 5.0, took
    a = auth_stats(mock)
    assert a["unauthorized"] == 0, a
    # a login per second of drain, about: at least 4, never one per request
    assert 4 <= a["logins"] <= took / 0.9 + 2, (a["logins"], took)
    toks = {r["authorization"] for r in item_requests(mock)}
    assert len(toks) >= 3, "several tokens were used in turn"
    assert all(it["attempts"] == 1 for it in items(conn, bid))
    assert re.search(r"refresh in 1 s", d.log())


# ------------------------------------------------------------------ (3) server-side revocation

def test_revoked_tokens_cause_one_relogin_and_no_item_fails(db, conn, mock, batchd_factory):
    """Every token revoked mid-drain: the requests in flight and the next ones
    get 401; batchd logs in again once (or twice, at most, if a 401 races a
    login), sends those items again with the new token without counting the
    try, and every item succeeds at its first attempt."""
    auth(mock, user=USER, password=PASSWORD, require=True, lifetime_s=3600)
    mock.configure(latency_ms=20)
    d = batchd_factory(db=db, providers={"p": login_prov(mock, retries=0)},
                       routes={ROUTE: "p"}, max_inflight=50)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(600)])
    wait_until(lambda: auth_stats(mock)["authorized"] >= 150, timeout=30,
               desc="a quarter of the batch through")
    auth(mock, revoke=True)
    b = wait_batch_done(conn, bid, timeout=60)
    a = auth_stats(mock)
    assert b["status"] == "completed" and b["succeeded"] == 600, (b, a)
    assert a["unauthorized"] >= 1, a       # the revocation was seen
    assert 2 <= a["logins"] <= 3, a        # the first, and one (at most two) after
    rows = items(conn, bid)
    assert all(it["status"] == "succeeded" and it["attempts"] == 1 for it in rows)
    st = provider_status(d, conn, "p")["login"]
    assert st["after_401"] in (1, 2) and st["state"] == "ready", st
    assert d.log().count("HTTP 401 to token 1: logging in again") == 1
    assert "HTTP 401 to token 2" not in d.log()
    # the 401s were to the revoked token; after them only the new one went out
    reqs = sorted(item_requests(mock), key=lambda r: r["seq"])
    new_tok = f"Bearer {auth_stats(mock)['tokens'][-1]}"
    first_401 = min(r["seq"] for r in reqs if r["status"] == 401)
    old_tok = reqs[0]["authorization"]
    assert old_tok != new_tok
    assert {r["authorization"] for r in reqs if r["status"] == 401} == {old_tok}
    assert sum(1 for r in reqs if r["status"] == 401) == a["unauthorized"]
    assert sum(1 for r in reqs if r["status"] == 200) == 600
    assert all(r["authorization"] in (old_tok, new_tok) for r in reqs)
    late = [r for r in reqs if r["seq"] > first_401 and r["status"] == 200]
    assert late and all(r["authorization"] == new_tok for r in late[-100:])


def test_a_fresh_token_refused_too_is_an_ordinary_answer(db, conn, mock, batchd_factory):
    """A provider that logs in fine but refuses every token: an item is sent
    again once after its first 401, then the 401 stands (permanent: failed),
    with no endless login loop."""
    auth(mock, user=USER, password=PASSWORD, lifetime_s=3600)
    mock.configure(status=401)
    d = batchd_factory(db=db, providers={"p": login_prov(mock)}, routes={ROUTE: "p"},
                       max_inflight=1)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(3)])
    b = wait_batch_done(conn, bid, timeout=30)
    assert b["status"] == "failed" and b["failed"] == 3, b
    assert all(it["http_status"] == 401 for it in items(conn, bid))
    a = auth_stats(mock)
    # one re-login per item at most (each item's first 401 is to a current token)
    assert a["logins"] <= 4, a
    assert len(item_requests(mock)) == 6
    assert d.running()


# ------------------------------------------------------------------ (4) a login that fails

def test_wrong_password_with_a_fallback_items_succeed_there(db, conn, mock, mock_factory,
                                                            batchd_factory):
    auth(mock, user=USER, password="another", require=True)
    fb = mock_factory()
    d = batchd_factory(db=db, providers={
        "p": login_prov(mock, backoff="200ms", backoff_max="1s"),
        "fb": {"url": fb.url("/item/{id}"), "timeout": "5s"}},
        routes={ROUTE: "p, fb"}, max_inflight=20)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(50)])
    b = wait_batch_done(conn, bid, timeout=30)
    assert b["status"] == "completed" and b["succeeded"] == 50, b
    assert {it["provider"] for it in items(conn, bid)} == {"fb"}
    assert mock.stats()["requests"] == 0, "no item request without a token"
    assert len(fb.all_requests()) == 50
    assert all(it["attempts"] == 1 for it in items(conn, bid))
    # the login keeps being retried with backoff, and says why it fails
    wait_until(lambda: auth_stats(mock)["login_failures"] >= 3, timeout=10,
               desc="login retries")
    st = provider_status(d, conn, "p")["login"]
    assert st["state"] in ("failed", "logging_in") and st["failures"] >= 3, st
    assert st["last_error"] == "login answered HTTP 401", st
    assert metric(d, "batchd_provider_login_total", provider="p", result="error") >= 3
    assert metric(d, "batchd_provider_login_token_valid", provider="p") == 0
    log = d.log()
    assert "provider p: login failed (1 in a row)" in log
    assert "another" not in log and PASSWORD not in log

    # the password fixed on the provider's side: the next login works and
    # new items go to p again
    auth(mock, password=PASSWORD)
    wait_until(lambda: provider_status(d, conn, "p")["login"]["state"] == "ready",
               timeout=10, desc="the retried login to succeed")
    bid = submit(conn, "t", ROUTE, [{"id": 100 + i} for i in range(10)])
    assert wait_batch_done(conn, bid)["succeeded"] == 10
    assert {it["provider"] for it in items(conn, bid)} == {"p"}


def test_wrong_password_without_a_fallback_items_wait_in_the_queue(db, conn, mock,
                                                                   batchd_factory):
    """No provider to fail over to: the items go back to the queue until the
    next login try, no attempt spent and nothing failed, their error says
    why; once the login works they run."""
    auth(mock, user=USER, password="another", require=True)
    d = batchd_factory(db=db, providers={"p": login_prov(mock, backoff="300ms",
                                                         backoff_max="600ms")},
                       routes={ROUTE: "p"}, max_inflight=10)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(20)])
    wait_until(lambda: auth_stats(mock)["login_failures"] >= 3, timeout=15,
               desc="three failed logins")
    # the items cycle between the queue (deferred) and this worker (claimed
    # again when due), never failed, never sent, no attempt spent
    why = "no provider of route r is available: provider p: login failed: login answered HTTP 401"
    wait_until(lambda: any(it["status"] == "queued" and it["error"] == why
                           for it in items(conn, bid)), timeout=10,
               desc="a deferred item with the login's error")
    for _ in range(5):
        rows = items(conn, bid)
        assert all(it["status"] in ("queued", "running") for it in rows), rows
        assert all(it["attempts"] == 0 for it in rows if it["status"] == "queued"), rows
        time.sleep(0.1)
    assert mock.stats()["requests"] == 0, "no item request without a token"
    assert "back to the queue for" in d.log() and why in d.log()
    st = provider_status(d, conn, "p")["login"]
    assert st["last_error"] == "login answered HTTP 401" and st["failures"] >= 3, st

    auth(mock, password=PASSWORD)
    b = wait_batch_done(conn, bid, timeout=30)
    assert b["succeeded"] == 20, b
    assert all(it["attempts"] == 1 for it in items(conn, bid))
    assert d.running()


def test_login_server_down_then_up(db, conn, mock, batchd_factory):
    """A login answered 503 (or not at all) is retried with the provider's
    backoff; items wait, then succeed."""
    auth(mock, user=USER, password=PASSWORD, require=True, login_status=503)
    batchd_factory(db=db, providers={"p": login_prov(mock, backoff="100ms", backoff_max="300ms")},
                   routes={ROUTE: "p"})
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)])
    wait_until(lambda: auth_stats(mock)["login_failures"] >= 2, timeout=10, desc="failures")
    assert mock.stats()["requests"] == 0
    auth(mock, login_status=0)
    assert wait_batch_done(conn, bid, timeout=30)["succeeded"] == 5


# ------------------------------------------------------------------ (5) rotated credential, SIGHUP

def test_password_from_a_file_rotated_then_reload(db, conn, mock, batchd_factory, tmp_path):
    """login_body with ${file:password} and ${credential:user}: after the
    file changes and SIGHUP the token is dropped and the next login sends the
    new password (the only one the mock accepts by then); a reload that
    changes nothing of the login keeps the token."""
    (tmp_path / "password").write_text(PASSWORD + "\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "user").write_text(USER)
    auth(mock, user=USER, password=PASSWORD, require=True, lifetime_s=3600)
    body = '{"user": "${credential:user}", "password": "${file:password}"}'
    d = batchd_factory(db=db, env={"CREDENTIALS_DIRECTORY": str(creds)},
                       providers={"p": login_prov(mock, body=body)}, routes={ROUTE: "p"})
    bid = submit(conn, "t", ROUTE, [{"id": 1}])
    assert wait_batch_done(conn, bid)["succeeded"] == 1
    assert auth_stats(mock)["logins"] == 1

    # a reload with the same credentials keeps the token
    reload(d)
    bid = submit(conn, "t", ROUTE, [{"id": 2}])
    assert wait_batch_done(conn, bid)["succeeded"] == 1
    assert auth_stats(mock)["logins"] == 1
    assert "login settings changed" not in d.log()

    # rotation: the provider accepts only the new password and revokes the tokens
    new = "n3w-" + PASSWORD
    (tmp_path / "password").write_text(new + "\n")
    auth(mock, password=new, revoke=True)
    reload(d)
    assert "provider p: login settings changed: the token is dropped" in d.log()
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(3, 13)])
    b = wait_batch_done(conn, bid, timeout=30)
    a = auth_stats(mock)
    assert b["succeeded"] == 10, b
    assert a["logins"] == 2 and a["login_failures"] == 0, a
    assert a["unauthorized"] == 0, "the old token was not used after the reload"
    log = d.log()
    assert new not in log and PASSWORD not in log


# ------------------------------------------------------------------ (6) config errors

def check(tmp_path, provider_lines, name="bad.ini"):
    text = ("[batchd]\ndatabase = host=127.0.0.1 port=1 dbname=x\n\n"
            "[provider p]\nurl = http://127.0.0.1:9/item/{id}\n" + provider_lines +
            "\n[route r]\nproviders = p\n")
    path = tmp_path / name
    path.write_text(text)
    return run_batchd(["--check-config", "-c", str(path)], timeout=30)


def test_config_errors(tmp_path):
    cases = [
        ("login_body = {}\n", r"bad\.ini:6: login_body needs login_url in \[provider p\]"),
        ("token_header = X-Token: {token}\n", r"bad\.ini:6: token_header needs login_url"),
        ("login_url = ftp://x/login\n", r"bad\.ini:6: login_url: "),
        ("login_url = http://127.0.0.1:9/login/{id}\n",
         r"bad\.ini:6: login_url takes no \{placeholders\}"),
        ("login_url = http://127.0.0.1:9/login\nlogin_method = FETCH\n",
         r"bad\.ini:7: login_method: invalid value 'FETCH'"),
        ("login_url = http://127.0.0.1:9/login\ntoken_header = Authorization: Bearer x\n",
         r"bad\.ini:7: token_header must hold \{token\} exactly once"),
        ("login_url = http://127.0.0.1:9/login\ntoken_header = {token}: x\n",
         r"bad\.ini:7: token_header must look like 'Name: value'"),
        ("login_url = http://127.0.0.1:9/login\nlogin_token_field = a..b\n",
         r"bad\.ini:7: login_token_field: invalid field 'a\.\.b'"),
        ("login_url = http://127.0.0.1:9/login\nlogin_token_lifetime = 10s\n"
         "login_refresh_margin = 10s\n",
         r"bad\.ini:8: login_refresh_margin must be shorter than login_token_lifetime"),
        ("login_url = http://127.0.0.1:9/login\nlogin_method = GET\nlogin_body = {}\n",
         r"bad\.ini:7: login_body needs login_method POST, PUT or PATCH"),
        ("login_url = http://127.0.0.1:9/login\nheader = Authorization: Bearer static\n",
         r"bad\.ini:7: header Authorization is also the token header of the login"),
        ("login_url = http://127.0.0.1:9/login\nlogin_header = nocolon\n",
         r"bad\.ini:7: login_header must look like 'Name: value'"),
        ("login_url = http://127.0.0.1:9/login\nlogin_content_type = json\n",
         r"bad\.ini:7: login_content_type: invalid media type 'json'"),
        ("login_url = http://127.0.0.1:9/login\nlogin_body = ${file:/nonexistent/pw}\n",
         r"bad\.ini:7: login_body: \$\{file:/nonexistent/pw\}|bad\.ini:7: login_body: .*cannot read"),
    ]
    for lines, want in cases:
        r = check(tmp_path, lines)
        out = r.stdout + r.stderr
        assert r.returncode == 2, (lines, r.returncode, out)
        assert re.search(want, out), (lines, out)
        assert "static" not in out or "Authorization" in lines, out

    good = ("login_url = http://127.0.0.1:9/login\nlogin_method = PUT\n"
            'login_body = {"user": "u", "password": "p"}\n'
            "login_content_type = application/json; charset=utf-8\n"
            "login_header = X-Api-Key: k\nlogin_token_field = data.token\n"
            "login_expires_field = data.ttl\nlogin_token_lifetime = 1h\n"
            "login_refresh_margin = 5m\ntoken_header = X-Token: tok {token}\n")
    r = check(tmp_path, good, "good.ini")
    assert r.returncode == 0, r.stdout + r.stderr
