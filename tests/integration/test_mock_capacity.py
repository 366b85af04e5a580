"""The mock provider's capacity model (tests/mock/README.md): capacity N
served at once at the base latency, the rest waiting first come first
served, overflow_status beyond queue_max, capacity changed at run time, and
the in-flight figures of /_mock/stats. The real mock binary, driven with
concurrent plain HTTP requests (no batchd, no database)."""
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import http_post_json, wait_until


def one_request(port, path, timeout=10.0):
    """(status, seconds, Retry-After) of one GET on a fresh connection."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status, time.monotonic() - t0, r.getheader("Retry-After")
    finally:
        c.close()


def burst(mock, n, prefix="b"):
    """n requests sent at once; their (status, seconds, retry_after), in order
    of their ids."""
    gate = threading.Barrier(n)

    def go(i):
        gate.wait()
        return one_request(mock.port, f"/item/{prefix}{i}")

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


def test_capacity_serves_n_at_the_base_latency(mock):
    mock.configure(latency_ms=200, capacity=10)
    res = burst(mock, 10)
    assert [s for s, _, _ in res] == [200] * 10
    times = sorted(t for _, t, _ in res)
    assert times[0] >= 0.195 and times[-1] < 0.45, times
    st = mock.stats()
    assert st["max_serving"] == 10 and st["max_queued"] == 0
    assert st["serving"] == 0 and st["queued"] == 0 and st["overflowed"] == 0


def test_beyond_capacity_requests_wait_their_turn(mock):
    mock.configure(latency_ms=200, capacity=10)
    res = burst(mock, 30)
    assert [s for s, _, _ in res] == [200] * 30
    times = sorted(t for _, t, _ in res)
    # three waves: 200, 400 and 600 ms (the latency grows with the queue)
    assert times[0] >= 0.195 and times[9] < 0.38, times
    assert 0.39 <= times[10] and times[19] < 0.58, times
    assert 0.59 <= times[20] and times[29] < 0.85, times
    st = mock.stats()
    assert st["max_serving"] == 10 and st["max_queued"] == 20, st
    assert st["max_inflight"] == 30
    assert st["by_status"] == {"200": 30}


def test_beyond_the_queue_the_answer_is_503(mock):
    mock.configure(latency_ms=300, capacity=5, queue_max=5, retry_after="2")
    res = burst(mock, 20)
    ok = [t for s, t, _ in res if s == 200]
    over = [(t, ra) for s, t, ra in res if s == 503]
    assert len(ok) == 10 and len(over) == 10, [s for s, _, _ in res]
    # refused at once, with the Retry-After of the config
    assert all(t < 0.25 for t, _ in over), over
    assert all(ra == "2" for _, ra in over), over
    assert all(t >= 0.295 for t in ok), ok
    st = mock.stats()
    assert st["overflowed"] == 10 and st["by_status"] == {"200": 10, "503": 10}, st
    assert st["max_serving"] == 5 and st["max_queued"] == 5
    log = mock.requests()
    assert sum(1 for e in log if e["status"] == 503) == 10
    # overflow_status changes the answer
    mock.configure(overflow_status=429, retry_after=None)
    res = burst(mock, 15, prefix="c")
    assert sorted(s for s, _, _ in res) == [200] * 10 + [429] * 5


def test_capacity_changes_at_run_time(mock):
    """A closed loop of 40 clients; capacity 50 -> 10 -> 50."""
    mock.configure(latency_ms=100, capacity=50)
    stop = threading.Event()
    statuses = []

    def client(k):
        i = 0
        while not stop.is_set():
            s, _, _ = one_request(mock.port, f"/item/k{k}-{i}")
            statuses.append(s)
            i += 1

    pool = ThreadPoolExecutor(max_workers=40)
    futs = [pool.submit(client, k) for k in range(40)]
    try:
        wait_until(lambda: mock.stats()["serving"] >= 35, timeout=5,
                   desc="40 clients served at once")
        assert mock.stats()["queued"] == 0
        mock.configure(capacity=10)
        # who is being served finishes; then never more than 10 at once
        time.sleep(0.3)
        a = mock.stats()
        samples = []
        for _ in range(20):
            st = mock.stats()
            samples.append((st["serving"], st["queued"]))
            time.sleep(0.02)
        assert all(s <= 10 for s, _ in samples), samples
        assert all(q >= 20 for _, q in samples), samples
        b = mock.stats()
        # in flight at the mock over the window: all 40 (served or waiting)
        mean = (b["inflight_area"] - a["inflight_area"]) / (b["now"] - a["now"])
        assert 36 <= mean <= 40.5, mean
        assert b["max_inflight"] <= 41
        # raised again: the waiting ones are served at once
        mock.configure(capacity=50)
        wait_until(lambda: mock.stats()["queued"] == 0, timeout=1,
                   desc="the queue to drain after the capacity went up")
        assert mock.stats()["serving"] >= 30
    finally:
        stop.set()
        for f in futs:
            f.result(timeout=10)
        pool.shutdown()
    assert set(statuses) == {200}, set(statuses)
    st = mock.stats()
    assert st["serving"] == 0 and st["queued"] == 0 and st["inflight"] == 0


def test_a_client_gone_while_waiting_frees_its_place(mock):
    mock.configure(latency_ms=400, capacity=1)
    conns = []
    for i in range(3):
        c = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
        c.request("GET", f"/item/g{i}")
        conns.append(c)
    wait_until(lambda: mock.stats()["queued"] == 2, timeout=2, desc="two waiting")
    conns[1].close()      # the first of the waiting ones leaves
    wait_until(lambda: mock.stats()["queued"] == 1, timeout=2, desc="one waiting")
    r = conns[2].getresponse()
    r.read()
    assert r.status == 200
    conns[0].getresponse().read()
    conns[0].close()
    conns[2].close()
    st = mock.stats()
    assert st["dropped"] == 1 and st["by_status"] == {"200": 2}
    assert st["serving"] == 0 and st["queued"] == 0


def test_capacity_settings_are_global_and_checked(mock):
    cfg = json.loads(http_post_json(mock.base + "/_mock/config", {})[1])
    assert (cfg["capacity"], cfg["queue_max"], cfg["overflow_status"]) == (0, 1000000, 503)
    for bad in ({"capacity": -1}, {"capacity": 1.5}, {"queue_max": "x"},
                {"overflow_status": 100}, {"ids": {"7": {"capacity": 3}}}):
        status, body = http_post_json(mock.base + "/_mock/config", bad)
        assert status == 400, (bad, status, body)
    mock.configure(capacity=3, queue_max=0)
    res = burst(mock, 5)
    assert sorted(s for s, _, _ in res) == [200] * 5   # latency 0: never held
    mock.configure(latency_ms=200)
    res = burst(mock, 5, prefix="q")
    assert sorted(s for s, _, _ in res) == [200] * 3 + [503] * 2
    status, body = http_post_json(mock.base + "/_mock/reset", {"config": True})
    assert status == 200
    cfg = json.loads(http_post_json(mock.base + "/_mock/config", {})[1])
    assert cfg["capacity"] == 0 and cfg["latency_ms"] == 0
    # null puts the default back
    mock.configure(capacity=4, queue_max=7)
    mock.configure(queue_max=None)
    cfg = json.loads(http_post_json(mock.base + "/_mock/config", {})[1])
    assert cfg["capacity"] == 4 and cfg["queue_max"] == 1000000
