"""Coordination cost of the lease loop: many tiny cells on 1, 2 and 4 local worker processes.

Prints numbers; asserts nothing. The study has ``--cells`` cells (seeds of one method) and two cheap
benchmark stages per cell (``bench_a``, then ``bench_b``); each sleeps ``--stage-ms`` milliseconds (the
"work") and returns 5 rows. For each backend (SQLite file; PostgreSQL when ``--postgres`` or
``$CSLROBUST_TEST_POSTGRES_URL`` gives a server whose role may create databases) and each worker count,
a fresh store is filled by N forked processes running the real worker loop (``work_study``); reported:

- cells/min: cells finished per minute of wall time (from the first worker's start to the last's end);
- claim ms: median time of one scheduling step that ended in a claim (read the committed stages,
  try the leases in order until one is won);
- commit ms: median time of one stage's commit (lease check + rows + marker + lease release, one
  transaction);
- overhead ms: median of claim + commit per stage, and its share of the stage's wall time.

    python benchmarks/study_workers.py [--cells 48] [--stage-ms 20] [--workers 1,2,4] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

STUDY = """
name: bench
output_dir: out
seeds: {seeds}
stages: [bench_a, bench_b]
methods:
  simclr: {{objective: {{name: simclr}}}}
cluster: {{lease_s: 60, heartbeat_s: 20, poll_s: 0.05}}
"""


def register_stages(stage_ms: float) -> None:
    from cslrobust.study.stages import STAGES, Stage, register_stage

    def body(name: str):
        def run(cfg, progress: bool):
            del progress
            time.sleep(stage_ms / 1000)
            return [{"metric": f"{name}/m{i}", "value": float(i)} for i in range(5)]

        return run

    for i, name in enumerate(("bench_a", "bench_b")):
        if name not in STAGES:
            register_stage(
                Stage(name=name, order=950 + i, run=body(name), needs=("bench_a",) if i else ())
            )


def worker(study: Path, url: str, log: Path) -> None:
    """One worker process: the real loop, with the claim and commit steps timed."""
    from cslrobust.study import runner
    from cslrobust.study.spec import load_study
    from cslrobust.study.store import ResultsStore

    timings: dict[str, list[float]] = {"claim": [], "commit": []}
    pick, commit = runner._pick, ResultsStore.commit_stage

    def timed_pick(*args, **kwargs):
        tic = time.perf_counter()
        out = pick(*args, **kwargs)
        if out.action == "run":
            timings["claim"].append(time.perf_counter() - tic)
        return out

    def timed_commit(self, *args, **kwargs):
        tic = time.perf_counter()
        commit(self, *args, **kwargs)
        timings["commit"].append(time.perf_counter() - tic)

    runner._pick = timed_pick
    ResultsStore.commit_stage = timed_commit
    runner.work_study(load_study(study), progress=False, storage=url, echo=lambda m: None)
    log.write_text(json.dumps(timings))


def fresh_postgres(server: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    name = f"bench_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


def run_one(backend: str, server: str | None, workers: int, cells: int, folder: Path) -> dict:
    study = folder / "study.yaml"
    study.write_text(STUDY.format(seeds=list(range(cells))))
    url = f"sqlite:///{folder / 'results.db'}" if backend == "sqlite" else fresh_postgres(server)
    from cslrobust.study.store import ResultsStore

    ResultsStore(url).close()  # schema created before the clock starts
    context = multiprocessing.get_context("fork")
    logs = [folder / f"w{i}.json" for i in range(workers)]
    tic = time.perf_counter()
    procs = [context.Process(target=worker, args=(study, url, log)) for log in logs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - tic
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    claims, commits = [], []
    for log in logs:
        data = json.loads(log.read_text())
        claims += data["claim"]
        commits += data["commit"]
    with ResultsStore(url) as store:
        assert store.count_rows() == cells * 2 * 5 and not store.leases()
    if backend == "postgresql":
        drop_postgres(url)
    return {
        "wall": wall,
        "stages": len(commits),
        "claim": statistics.median(claims) * 1000,
        "commit": statistics.median(commits) * 1000,
        "overhead": statistics.median(a + b for a, b in zip(claims, commits, strict=False)) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=48)
    parser.add_argument("--stage-ms", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--postgres", default=os.environ.get("CSLROBUST_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    register_stages(args.stage_ms)
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    print(
        f"{args.cells} cells x 2 stages of {args.stage_ms:g} ms each; {os.cpu_count()} CPUs; "
        "medians per stage"
    )
    print(
        f"{'backend':<11} {'workers':>7} {'wall s':>7} {'cells/min':>10} {'claim ms':>9} "
        f"{'commit ms':>10} {'claim+commit ms':>16} {'share':>6}"
    )
    for backend in backends:
        for n in (int(x) for x in args.workers.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                r = run_one(backend, args.postgres, n, args.cells, Path(tmp))
            share = r["overhead"] / (r["overhead"] + args.stage_ms)
            print(
                f"{backend:<11} {n:>7} {r['wall']:>7.2f} {args.cells / r['wall'] * 60:>10.0f} "
                f"{r['claim']:>9.2f} {r['commit']:>10.2f} {r['overhead']:>16.2f} {share:>6.0%}"
            )
    if not args.postgres:
        print("postgresql: skipped (pass --postgres URL or set CSLROBUST_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()
