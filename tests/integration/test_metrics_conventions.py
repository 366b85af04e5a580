"""/metrics follows the Prometheus conventions (issue #21, point 7), read
through a strict parser of the text format 0.0.4:

- every sample belongs to a family with one HELP and one TYPE line before it,
  a family's samples are contiguous, no series appears twice;
- counters end in _total and never go negative; no gauge is negative and no
  value is a -1 sentinel: a figure not known yet has no sample (the queue
  depth before the first count);
- histograms: per label set the buckets are in le order, cumulative
  (monotone), and +Inf equals _count;
- batchd_queue_oldest_age_seconds{route} grows while items wait and falls to
  0 once the route is drained; an item not yet due (deferred by an open
  breaker) does not count;
- batchd_loop_lag_seconds is a histogram that no scrape resets; a stall of
  the loop (SIGSTOP) lands in its buckets and in batchd_loop_lag_max_seconds,
  which a second scrape still shows;
- batchd_breaker_in_state{provider,state} is one-hot per provider and follows
  a breaker that opens, beside the numeric batchd_breaker_state.

The queue figures come from a query every 15 s (the first one 1 s after the
start), so the tests that watch them wait for those queries: the file takes
about a minute.
"""

import math
import re
import signal
import time

from conftest import submit, wait_batch_done, wait_until

ROUTE = "r"
DEPTH_EVERY = 15.0   # janitor.c: the depth query's period

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(r"^(" + NAME + r")(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


# ------------------------------------------------------------------ parser

def parse_labels(text, line):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r} in {line!r}"
        k, v = m.group(1), m.group(2)
        assert k not in labels, f"label {k} twice in {line!r}"
        bad = re.search(r'\\[^\\n"]', v)
        assert not bad, f"bad escape {bad.group(0)!r} in {line!r}"
        labels[k] = v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        pos = m.end()
    return labels


def parse_value(s, line):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s), f"bad value in {line!r}"
    return float(s)


def family_of(name, families):
    """The declared family a sample name belongs to (histogram/summary suffixes)."""
    if name in families and families[name]["type"] not in ("histogram",):
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in families and families[base]["type"] in ("histogram", "summary") and \
                    (suffix != "_bucket" or families[base]["type"] == "histogram"):
                return base
    return None


def parse_metrics(text):
    """Strict parse: {family: {"type", "help", "samples": [(name, labels, value)]}};
    asserts the format rules of the module docstring (all but the histograms)."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families, order, seen = {}, [], set()
    current = None
    for line in text.split("\n")[:-1]:
        assert line.strip() == line or line.startswith("# HELP "), f"stray blanks: {line!r}"
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(NAME, name), line
                assert name.startswith("batchd_"), f"name without the batchd_ prefix: {line!r}"
                f = families.setdefault(name, {"type": None, "help": None, "samples": []})
                if f["samples"] or (current != name and (f["type"] or f["help"])):
                    raise AssertionError(f"{parts[1]} of {name} after its samples or "
                                         f"split from its family: {line!r}")
                key = parts[1].lower()
                assert f[key] is None, f"second {parts[1]} line for {name}"
                val = parts[3] if len(parts) > 3 else ""
                if key == "type":
                    assert val in TYPES, line
                else:
                    assert val, f"empty HELP for {name}"
                f[key] = val
                if name not in order:
                    order.append(name)
                current = name
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), parse_labels(m.group(3) or "", line)
        value = parse_value(m.group(4), line)
        fam = family_of(name, families)
        assert fam is not None, f"sample {name} has no TYPE line before it"
        f = families[fam]
        assert f["type"] and f["help"], f"{fam} lacks HELP or TYPE: {f}"
        assert fam == current, f"sample {name} outside its family's block (after {current})"
        series = (name, tuple(sorted(labels.items())))
        assert series not in seen, f"series twice: {line!r}"
        seen.add(series)
        assert value != -1, f"-1 sentinel: {line!r}"
        if f["type"] == "counter":
            assert fam.endswith("_total"), f"counter {fam} does not end in _total"
            assert value >= 0, f"negative counter: {line!r}"
        if f["type"] == "gauge":
            assert not math.isnan(value) and value >= 0, f"negative gauge: {line!r}"
        f["samples"].append((name, labels, value))
    for name, f in families.items():
        assert f["type"] and f["help"], f"{name}: HELP {f['help']!r}, TYPE {f['type']!r}"
    check_histograms(families)
    return families


def check_histograms(families):
    for fam, f in families.items():
        if f["type"] != "histogram":
            continue
        groups = {}
        for name, labels, value in f["samples"]:
            rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
            if name == fam + "_bucket":
                assert "le" in labels, f"{fam}_bucket without le: {labels}"
                g["buckets"].append((parse_value(labels["le"], labels["le"]), value))
            elif name == fam + "_sum":
                g["sum"] = value
            elif name == fam + "_count":
                g["count"] = value
            else:
                raise AssertionError(f"{name} in histogram {fam}")
        for rest, g in groups.items():
            b = g["buckets"]
            assert b and g["sum"] is not None and g["count"] is not None, (fam, rest, g)
            les = [le for le, _ in b]
            assert les == sorted(les) and len(set(les)) == len(les), f"{fam}{rest}: le {les}"
            assert les[-1] == math.inf, f"{fam}{rest}: no +Inf bucket"
            counts = [c for _, c in b]
            assert all(x <= y for x, y in zip(counts, counts[1:])), \
                f"{fam}{rest}: buckets not cumulative {b}"
            assert counts[-1] == g["count"], f"{fam}{rest}: +Inf {counts[-1]} != _count {g['count']}"
            assert g["sum"] >= 0, (fam, rest, g)


def scrape(d):
    code, body = d.get("/metrics")
    assert code == 200, (code, body[:300])
    return parse_metrics(body.decode())


def values(fams, name, **match):
    """{labels tuple: value} of a family's samples named name whose labels match."""
    fam = family_of(name, fams)
    if fam is None:
        return {}
    out = {}
    for n, labels, v in fams[fam]["samples"]:
        if n == name and all(labels.get(k) == v2 for k, v2 in match.items()):
            out[tuple(sorted(labels.items()))] = v
    return out


def one(fams, name, **match):
    v = values(fams, name, **match)
    assert len(v) == 1, f"{name}{match}: {v or 'no sample'}"
    return next(iter(v.values()))


def prov(mock, path="/item/{id}", **keys):
    p = {"url": mock.url(path), "timeout": "5s", "connect_timeout": "2s"}
    p.update({k: str(v) for k, v in keys.items()})
    return p


def wait_for_count(d, route, desc, pred=lambda depth, age: True, timeout=DEPTH_EVERY + 5):
    """Scrape until the route's queue figures are there and pred(depth, age)
    holds; returns (depth, age, families)."""
    def ok():
        fams = scrape(d)
        depth = values(fams, "batchd_queue_depth", route=route)
        age = values(fams, "batchd_queue_oldest_age_seconds", route=route)
        if not depth or not age:
            return None
        dv, av = next(iter(depth.values())), next(iter(age.values()))
        return (dv, av, fams) if pred(dv, av) else None
    return wait_until(ok, timeout=timeout, interval=0.2, desc=desc)


# ------------------------------------------------------------------ tests

def test_strict_format_and_no_sentinel_before_the_first_count(db, conn, mock, batchd_factory):
    """The first scrapes, before the janitor's first count (1 s after the
    start), carry no queue sample at all -- the old code said -1 -- and every
    scrape parses strictly. Then the count arrives: 0 and 0 for an empty route."""
    t0 = time.monotonic()
    d = batchd_factory(db=db, providers={"mock": prov(mock)},
                       routes={ROUTE: "mock", "other": "mock"}, wait=False)

    def first():
        try:
            code, body = d.get("/metrics", timeout=1)
        except OSError:
            return None
        return body.decode() if code == 200 else None
    text = wait_until(first, timeout=10, interval=0.02, desc="/metrics to answer")
    early = time.monotonic() - t0
    fams = parse_metrics(text)
    assert early < 1.0, f"first scrape {early:.2f}s after the start: not before the first count"
    for name in ("batchd_queue_depth", "batchd_queue_oldest_age_seconds"):
        assert name in fams, f"no HELP/TYPE for {name}"
        assert values(fams, name) == {}, f"{name} before the first count: {fams[name]['samples']}"

    for route in (ROUTE, "other"):
        depth, age, fams = wait_for_count(d, route, f"the first count of {route}")
        assert (depth, age) == (0, 0), (route, depth, age)
    # the families the conventions are about, with HELP and TYPE
    for name, typ in (("batchd_queue_depth", "gauge"),
                      ("batchd_queue_oldest_age_seconds", "gauge"),
                      ("batchd_loop_lag_seconds", "histogram"),
                      ("batchd_loop_lag_max_seconds", "gauge"),
                      ("batchd_breaker_state", "gauge"),
                      ("batchd_breaker_in_state", "gauge"),
                      ("batchd_db_query_duration_seconds", "histogram"),
                      ("batchd_provider_request_duration_seconds", "histogram"),
                      ("batchd_process_open_fds", "gauge")):
        assert fams[name]["type"] == typ, (name, fams.get(name))
    # a batch through, then the whole page again, histograms with samples
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(20)])
    assert wait_batch_done(conn, bid)["status"] == "completed"
    fams = scrape(d)
    assert one(fams, "batchd_provider_request_duration_seconds_count", provider="mock") == 20
    assert one(fams, "batchd_items_total", route=ROUTE, outcome="succeeded") == 20


def test_oldest_age_grows_while_items_wait_then_zero(db, conn, mock, batchd_factory, capsys):
    """One item at a time against a slow provider: the rest wait in the queue,
    claimable. Their oldest age follows the wall clock from the submit from
    one count to the next; once drained, 0 (and depth 0)."""
    mock.configure(latency_ms=2000)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(20)])
    t_submit = time.monotonic()
    d = batchd_factory(db=db, providers={"mock": prov(mock, max_concurrency=1)},
                       routes={ROUTE: "mock"}, max_inflight=1, claim_ahead=0)
    depth1, age1, _ = wait_for_count(d, ROUTE, "a count with items queued",
                                     pred=lambda dp, a: dp > 0)
    t1 = time.monotonic()
    assert 0 <= age1 <= t1 - t_submit + 0.5, (age1, t1 - t_submit)
    # the next count, 15 s on: the same oldest items, 15 s older
    depth2, age2, _ = wait_for_count(d, ROUTE, "the next count",
                                     pred=lambda dp, a: a > age1 + 1)
    t2 = time.monotonic()
    assert 0 < depth2 < depth1, (depth1, depth2)
    assert DEPTH_EVERY - 1.5 <= age2 - age1 <= DEPTH_EVERY + 1.5, (age1, age2)
    assert age2 <= t2 - t_submit + 0.5, (age2, t2 - t_submit)
    # drained: the provider answers at once, the next count says 0 and 0
    mock.configure(latency_ms=0)
    assert wait_batch_done(conn, bid, timeout=20)["status"] == "completed"
    depth3, age3, _ = wait_for_count(d, ROUTE, "a count after the drain",
                                     pred=lambda dp, a: dp == 0)
    assert age3 == 0, age3
    with capsys.disabled():
        print(f"\n[oldest age] {age1:.1f}s (depth {depth1}), then {age2:.1f}s "
              f"(depth {depth2}), drained: {age3}")


def test_loop_lag_histogram_is_never_reset_and_sees_a_stall(db, conn, mock, batchd_factory):
    """Two scrapes: the histogram only grows. A 0.7 s SIGSTOP makes one tick
    of the 250 ms probe at least 0.45 s late: it lands above le=0.1, and
    batchd_loop_lag_max_seconds shows it on this scrape and the next (a
    scrape resets nothing)."""
    d = batchd_factory(db=db, providers={"mock": prov(mock)}, routes={ROUTE: "mock"})
    f1 = scrape(d)
    time.sleep(0.6)
    f2 = scrape(d)
    c1, c2 = (one(f, "batchd_loop_lag_seconds_count") for f in (f1, f2))
    assert c2 >= c1 + 1, (c1, c2)     # 4 ticks a second
    assert one(f2, "batchd_loop_lag_seconds_sum") >= one(f1, "batchd_loop_lag_seconds_sum")
    for le in ("0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "+Inf"):
        assert one(f2, "batchd_loop_lag_seconds_bucket", le=le) >= \
            one(f1, "batchd_loop_lag_seconds_bucket", le=le), le
    above = one(f2, "batchd_loop_lag_seconds_count") - \
        one(f2, "batchd_loop_lag_seconds_bucket", le="0.1")

    d.signal(signal.SIGSTOP)
    try:
        time.sleep(0.7)
    finally:
        d.signal(signal.SIGCONT)
    time.sleep(0.6)   # the late tick, and a few on time
    f3 = scrape(d)
    above3 = one(f3, "batchd_loop_lag_seconds_count") - \
        one(f3, "batchd_loop_lag_seconds_bucket", le="0.1")
    assert above3 >= above + 1, f"no tick later than 0.1 s after the stall: {above} -> {above3}"
    m3 = one(f3, "batchd_loop_lag_max_seconds")
    assert 0.4 <= m3 <= 2.0, m3
    f4 = scrape(d)
    assert one(f4, "batchd_loop_lag_max_seconds") == m3, "the maximum changed between scrapes"
    assert one(f4, "batchd_loop_lag_seconds_count") >= one(f3, "batchd_loop_lag_seconds_count")


def breaker_one_hot(fams, provider):
    st = {dict(k)["state"]: v
          for k, v in values(fams, "batchd_breaker_in_state", provider=provider).items()}
    assert set(st) == {"closed", "open", "half_open"}, st
    assert sorted(st.values()) == [0, 0, 1], st
    return next(s for s, v in st.items() if v == 1)


def test_breaker_in_state_one_hot_and_follows_an_open_breaker(db, conn, mock_factory,
                                                              batchd_factory):
    """a is down: two failures open its breaker (cooldown 60 s, so it stays
    open). in_state says open for a, closed for b, one 1 each, and agrees
    with batchd_breaker_state. The items, deferred to a's half-open time, are
    queued but not due: depth counts them, the oldest age does not."""
    mock_a = mock_factory({"down": True, "error_status": 500})
    mock_b = mock_factory()
    d = batchd_factory(
        db=db,
        # as in test_resilience: a's retries meet the breaker, which opens on
        # the second failure and defers every item without spending an attempt
        providers={"a": prov(mock_a, retries=3, backoff="20ms", max_concurrency=1,
                             breaker_failures=2, breaker_cooldown="60s"),
                   "b": prov(mock_b)},
        routes={ROUTE: "a", "rb": "b"}, poll_interval="200ms")
    names = {"closed": 0, "open": 1, "half_open": 2}
    f = scrape(d)
    for p in ("a", "b"):
        assert breaker_one_hot(f, p) == "closed"
        assert one(f, "batchd_breaker_state", provider=p) == 0

    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)], {"max_attempts": 3})
    wait_until(lambda: re.search(r"provider a: circuit breaker closed -> open", d.log()),
               timeout=10, desc="a's breaker to open")
    f = scrape(d)
    assert breaker_one_hot(f, "a") == "open"
    assert one(f, "batchd_breaker_state", provider="a") == names["open"]
    assert breaker_one_hot(f, "b") == "closed"
    assert one(f, "batchd_breaker_state", provider="b") == 0
    assert one(f, "batchd_breaker_transitions_total", provider="a", to="open") == 1

    wait_until(lambda: conn.execute(
        "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s AND status = 'queued' "
        "AND run_after > now() + interval '30 s'", (bid,)).fetchone()["n"] == 5,
        timeout=10, desc="the 5 items deferred to a's half-open time")
    depth, age, f = wait_for_count(d, ROUTE, "a count with the deferred items",
                                   pred=lambda dp, a: dp == 5)
    assert age == 0, f"items not due counted in the oldest age: {age}"
    assert breaker_one_hot(f, "a") == "open"


def test_route_added_by_reload_has_no_sample_until_the_next_count(db, conn, mock,
                                                                   batchd_factory):
    """A route a SIGHUP adds is not known to the last count: it has no queue
    sample (the old code showed -1) until the next count, which says 0; the
    routes that stay keep theirs."""
    d = batchd_factory(db=db, providers={"mock": prov(mock)}, routes={ROUTE: "mock"})
    wait_for_count(d, ROUTE, "the first count")   # 1 s in; the next one 15 s later
    with open(d.config_path, "a") as f:
        f.write("\n[route r2]\nproviders = mock\n")
    d.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.log(), 5, desc="reload logged")
    f = scrape(d)
    assert one(f, "batchd_queue_depth", route=ROUTE) == 0
    assert one(f, "batchd_queue_oldest_age_seconds", route=ROUTE) == 0
    assert values(f, "batchd_queue_depth", route="r2") == {}, f["batchd_queue_depth"]
    assert values(f, "batchd_queue_oldest_age_seconds", route="r2") == {}
    assert one(f, "batchd_items_total", route="r2", outcome="succeeded") == 0
    depth, age, _ = wait_for_count(d, "r2", "r2's first count")
    assert (depth, age) == (0, 0)
