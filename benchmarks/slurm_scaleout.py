"""Scale-out on a real single-node Slurm cluster (started here, as the tests do), timed.

    .venv/bin/python benchmarks/slurm_scaleout.py [--repeat 3] [--n-bias 4] [--out DIR]

1. Daemon start → first action running in a Slurm job: a real `autoproc daemon` whose
   watched directory already holds one `.ping` file (its start-up scan finds it); the action
   notes when it began. Timed from the daemon's exec to that moment, with HTEX on Slurm
   (`strategy_period` 1 and Parsl's default 5), against HTEX on a LocalProvider and threads,
   in the same run.
2. One DEEP night of zeros (bias step1 + step2 through `bps submit`), with the Parsl Slurm
   site (`deep.bps_site: slurm`) against the local threads site, in the same run: per step,
   wall time, start-up (attempt start → first `pipetask run-qbb` seen), quanta per second.

Needs root or the Slurm and munge packages the Makefile's `test-tools` installs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from autoproc.store import Store  # noqa: E402
from slurm_cluster import start_cluster, stop_cluster  # noqa: E402  (the tests' cluster)

NIGHT = "20240616"


def daemon(config_path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "tests"),
                                                       os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "autoproc.cli", "-c", str(config_path), "daemon"],  # noqa: S603
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait(condition, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def first_action(root: Path, executor: dict) -> tuple[float, str | None]:
    """Seconds from the daemon's exec to the ping action's start, and the Slurm job it ran in."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "p1.ping").write_text("x")
    config = {"root": str(root), "machines_dir": str(HERE / "machines"), "poll_seconds": 0.2,
              "executor": executor,
              "watch": [{"name": "inbox", "path": str(inbox), "kind": "ping", "mode": "inotify",
                         "quiet_seconds": 0.0}]}
    path = root / "autoproc.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.time()
    proc = daemon(path, root / "daemon.log")
    try:
        def started():
            if not (root / "autoproc.db").exists():
                return None
            store = Store(root / "autoproc.db")
            try:
                done = [a for a in store.attempts() if a.status == "succeeded"]
            finally:
                store.close()
            return done[0] if done else None

        attempt = wait(started, 180, "the first action")
        return attempt.result["evidence"]["action_started"] - t0, attempt.result.get("ran_on", {}).get(
            "slurm_job_id")
    finally:
        stop(proc)


def deep_night(root: Path, site: str, n_bias: int, partition: str) -> list[dict]:
    """Run the zeros night with `site`; per bias step: wall, start-up, quanta, quanta/s."""
    raws = root / "raws"
    raws.mkdir(parents=True)
    from autoproc.sim.deep.scenario import deep_settings

    deep = {**deep_settings(), "mode": "bps", "bps_site": site, "ingest_quiet_seconds": 1.0, "cores": 2,
            "steps": {"bias": ["step1", "step2"]}}
    if site == "slurm":
        deep["slurm"] = {"partition": partition, "walltime": "00:30:00"}
    config = {"root": str(root), "machines_dir": str(REPO / "statemachines"), "kinds": ["night", "template"],
              "poll_seconds": 0.2, "retry": {"backoff_seconds": 0.05}, "deep": deep,
              "watch": [{"name": "raws", "path": str(raws), "kind": "raw", "patterns": ["*.fits"],
                         "mode": "inotify", "quiet_seconds": 0.5}]}
    path = root / "autoproc.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "deep", "init"],  # noqa: S603
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "autoproc.sim.deep.night", "--out", str(raws), "--night",  # noqa: S603
                    NIGHT, "--science", "VR:0", "--flats", "0", "--n-bias", str(n_bias), "--interval", "0"],
                   check=True, capture_output=True)
    first_qbb: dict[str, float] = {}
    proc = daemon(path, root / "daemon.log")
    try:
        def done() -> bool:
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    continue
                if "run-qbb" in argv:
                    for a in argv:
                        if str(root) in a and "/submit" in a:
                            first_qbb.setdefault(a.split("/submit")[0], time.time())
            store = Store(root / "autoproc.db")
            try:
                night = [s for s in store.subjects("night") if s.key == NIGHT]
            finally:
                store.close()
            if night and night[0].state == "failed":
                raise SystemExit(f"the night failed with site {site}: see {root}/daemon.log")
            return bool(night) and night[0].state == "done"

        wait(done, 900, f"the night done ({site})", interval=0.1)
    finally:
        stop(proc)
    store = Store(root / "autoproc.db")
    try:
        steps = [a for a in store.attempts() if a.step == "bias" and a.result.get("evidence", {}).get("run")]
    finally:
        store.close()
    out = []
    for a in steps:
        ev = a.result["evidence"]
        quanta = sum(ev["succeeded"].values())
        wall = a.ended - a.started
        qbb = next((t for d, t in first_qbb.items() if ev["attempt_dir"].startswith(d) or d.startswith(
            ev["attempt_dir"])), None)
        out.append({"step": ev["step"], "wall": wall, "startup": (qbb - a.started) if qbb else None,
                    "quanta": quanta, "per_s": quanta / wall})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-bias", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    print(f"# .venv/bin/python benchmarks/slurm_scaleout.py --repeat {args.repeat} --n-bias {args.n_bias}")
    cluster = start_cluster(out / "cluster")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        slurm = {"kind": "slurm", "partition": cluster.partition, "walltime": "00:30:00", "init_blocks": 1}
        kinds = {"htex on Slurm, strategy_period 1": {"kind": "htex", "strategy_period": 1, "provider": slurm},
                 "htex on Slurm, strategy_period 5": {"kind": "htex", "provider": slurm},
                 "htex on LocalProvider": {"kind": "htex", "provider": {"kind": "local"}},
                 "threads (baseline)": {"kind": "threads"}}
        for k, (name, executor) in enumerate(kinds.items()):
            times, jobs = [], []
            for i in range(args.repeat):
                seconds, job = first_action(out / f"start-{k}-{i}", executor)
                times.append(seconds)
                jobs.append(job)
                cluster.cancel_all()
            where = f"  (in Slurm jobs {', '.join(map(str, jobs))})" if executor.get("provider") == slurm else ""
            print(f"daemon start -> first action, {name:34s}: median {statistics.median(times):5.2f} s "
                  f"(min {min(times):5.2f}, max {max(times):5.2f}){where}")
        results = {}
        for site in ("slurm", "local"):
            results[site] = deep_night(out / f"night-{site}", site, args.n_bias, cluster.partition)
            cluster.cancel_all()
        for site, steps in results.items():
            for s in steps:
                startup = f"{s['startup']:5.1f} s" if s["startup"] is not None else "   ? s"
                print(f"bps {site:5s} bias {s['step']}: wall {s['wall']:5.1f} s, start-up {startup}, "
                      f"{s['quanta']} quanta, {s['per_s']:.3f} quanta/s")
        print(json.dumps(results))
    finally:
        stop_cluster(cluster)


if __name__ == "__main__":
    main()
