#!/usr/bin/python3
"""Show a batch's progress until it finishes, then its outcome.

usage: demo-progress.py CONNINFO BATCH_ID [TIMEOUT_SECONDS]

On a terminal: one progress line redrawn in place (bar, done/total, percent,
items/s, ETA). Otherwise: a plain line every second. Then the outcome:
succeeded, failed, elapsed, items/s, and the most common errors. Exits 0 when
the batch finished, 1 on timeout.
"""

import shutil
import sys
import time

import psycopg

TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")


def fmt_secs(s):
    if s is None:
        return "--"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    conninfo, batch_id = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) == 4 else 600.0
    tty = sys.stdout.isatty()
    conn = psycopg.connect(conninfo, autocommit=True)

    deadline = time.monotonic() + timeout
    window = []          # (seconds since submit, done) samples for a recent rate
    last_plain = 0.0
    row = None
    while True:
        row = conn.execute(
            "SELECT status, total, succeeded, failed, cancelled, "
            "extract(epoch FROM clock_timestamp() - created_at)::float8 "
            "FROM batchd.batches WHERE id = %s", (batch_id,)).fetchone()
        if row is None:
            print(f"batch {batch_id} not found", file=sys.stderr)
            return 1
        status, total, ok, bad, cancelled, age = row
        done = ok + bad + cancelled
        now = time.monotonic()
        window.append((age, done))
        while len(window) > 2 and age - window[0][0] > 3.0:
            window.pop(0)
        dt = age - window[0][0]
        # over the last 3 s once there is a second of history, else since submit
        rate = (done - window[0][1]) / dt if dt >= 1.0 else (done / age if age > 0 else 0.0)
        eta = (total - done) / rate if rate > 0 else None
        pct = 100.0 * done / total if total else 100.0
        finished = status in TERMINAL
        if tty:
            width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 60))
            fill = int(width * done / total) if total else width
            bar = "#" * fill + "-" * (width - fill)
            sys.stdout.write(f"\r[{bar}] {done}/{total} {pct:5.1f}%  {rate:7.0f} items/s  "
                             f"ETA {fmt_secs(0 if finished else eta):>6}  ({bad} failed)\033[K")
            sys.stdout.flush()
        elif finished or now - last_plain >= 1.0:
            last_plain = now
            print(f"progress: {done}/{total} {pct:.1f}% {rate:.0f} items/s "
                  f"ETA {fmt_secs(0 if finished else eta)} ({bad} failed) [{status}]", flush=True)
        if finished:
            break
        if now > deadline:
            if tty:
                print()
            print(f"timed out after {timeout:.0f}s: batch is still {status}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    if tty:
        print()

    b = conn.execute(
        "SELECT status, total, succeeded, failed, cancelled, "
        "extract(epoch FROM finished_at - created_at)::float8, "
        "extract(epoch FROM finished_at - started_at)::float8 "
        "FROM batchd.batches WHERE id = %s", (batch_id,)).fetchone()
    status, total, ok, bad, cancelled, elapsed, secs = b
    elapsed = elapsed or 0.0
    print()
    print(f"batch {batch_id}: {status}")
    print(f"  succeeded  {ok}")
    print(f"  failed     {bad}")
    if cancelled:
        print(f"  cancelled  {cancelled}")
    print(f"  elapsed    {elapsed:.2f}s from submit to last result "
          f"({secs or 0:.2f}s from first claim)")
    if elapsed > 0:
        print(f"  rate       {total / elapsed:.0f} items/s"
              + (f" ({total / secs:.0f} items/s from first claim)" if secs else ""))
    errors = conn.execute(
        "SELECT http_status, count(*), min(error) FROM batchd.items "
        "WHERE batch_id = %s AND status = 'failed' "
        "GROUP BY http_status ORDER BY count(*) DESC LIMIT 5", (batch_id,)).fetchall()
    if errors:
        print("  failures:")
    for http_status, n, err in errors:
        what = f"HTTP {http_status}" if http_status else "no HTTP answer"
        print(f"  {n:8d} x {what}, e.g. {err[:100] if err else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
