"""Benchmark: Prefect's share of an expiry sweep, by size: task runs per flow run, and time.

Not a test. For each size (default 10,000 and 1,000,000 consents, a quarter of them due, one
webhook subscriber: the data of ``bench/expiry_sweep.py``) it runs the ``expiry-sweep`` flow
once, as ``consentflow run expiry-sweep`` runs it without a server (an embedded Prefect in a
throw-away ``PREFECT_HOME``, warmed up by a trivial flow run first), and then asks the Prefect
API how many task runs the flow run has, by task name. The claim to check: task runs grow with
batches (one per batch of ``--batch-size`` consents, plus the empty batch that ends the loop),
not with consents. It also prints the run's time from the first batch's start to the last one's
commit, and the same batches in process without Prefect (``sweeps.expire_batch``) on a copy, so
the difference is roughly Prefect's cost per task run (on a shared machine, mostly noise).

    python bench/orchestration.py                       # SQLite, 10,000 and 1,000,000
    python bench/orchestration.py --sizes 10000 100000  # quicker
    python bench/orchestration.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from expiry_sweep import Databases, run_flow, run_sweep, start_prefect

from consentflow.models import utcnow


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--batch-size", type=int, default=5000)
    args = ap.parse_args()
    started = time.perf_counter()
    start_prefect()
    print(f"embedded Prefect started in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for n in args.sizes:
        due = n // 4
        dbs = Databases(args.url, prefix=f"consentflow_orch_{n}")
        try:
            as_of = utcnow()
            engine = dbs.filled(n, due, as_of)
            url_d, url_a = dbs.copy(engine, "d"), dbs.copy(engine, "a")
            batches = -(-due // args.batch_size) + 1  # the last, empty batch ends the loop
            d = run_flow(url_d, as_of, args.batch_size, batches)
            a = run_sweep(url_a, as_of, args.batch_size)
        finally:
            dbs.close()
        tasks = sum(d.task_runs.values())
        per_task = (d.batch_seconds - a.seconds) / max(1, d.task_runs.get("expire-batch", 1))
        rows.append((n, due, batches, d.task_runs, tasks, d.batch_seconds, a.seconds, per_task))
        print(
            f"{n:>10,} consents, {due:,} due: {tasks} task runs {d.task_runs} "
            f"(batches of {args.batch_size:,}: {batches}); batches in the flow "
            f"{d.batch_seconds:.2f} s, in process {a.seconds:.2f} s "
            f"(Prefect ~{per_task * 1000:.0f} ms per task run); whole call {d.seconds:.2f} s",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    print(
        f"consents x{last[0] / first[0]:,.0f}: task runs x{last[4] / first[4]:,.1f}, "
        f"batches x{last[2] / first[2]:,.1f}"
    )


if __name__ == "__main__":
    main()
