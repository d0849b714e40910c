"""Simulated `jobsub_submit_dag` (standalone: make_site installs it with a shebang).

Checks its arguments like jobsub_lite would, copies the DAG into the sim spool for the
grid simulator, and prints a job id. It starts nothing in the background.
"""

import fcntl
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def atomic_write(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fail(msg, code=1):
    print(f"jobsub_submit_dag: error: {msg}", file=sys.stderr)
    return code


def main(argv):
    conf = json.loads((HERE / "sim_jobsub.json").read_text())
    if not argv or not argv[-1].startswith("file://"):
        return fail("the last argument must be file://<dag>", 2)
    group = role = None
    i = 0
    opts = argv[:-1]
    while i < len(opts):
        a = opts[i]
        if a == "-G" and i + 1 < len(opts):
            group = opts[i + 1]
            i += 2
            continue
        if a.startswith("--group="):
            group = a.split("=", 1)[1]
        elif a.startswith("--role="):
            role = a.split("=", 1)[1]
        elif a in ("--need-storage-modify", "--maxRunning") and i + 1 < len(opts):
            i += 2
            continue
        elif not a.startswith("--"):
            return fail(f"unrecognized argument {a!r}", 2)
        i += 1
    if group != "des":
        return fail("-G des is required", 2)
    if (role or "").lower() != "desgw":
        return fail("--role=desgw (or DESGW) is required", 2)
    dag = Path(argv[-1][len("file://"):])
    try:
        text = dag.read_text()
    except OSError as err:
        return fail(f"cannot read {dag}: {err.strerror}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "<parallel>" or lines.count("<parallel>") < 2:
        return fail(f"{dag}: not a DESGW pipeline DAG (expected <parallel> blocks)")
    expnum = dag.name.removeprefix("desgw_pipeline_").removesuffix(".dag")
    if expnum in conf.get("fail_expnums", []):
        print("Submitting job(s).")
        print("ERROR: Unable to submit: SCHEDD jobsub01.fnal.gov not responding (simulated)", file=sys.stderr)
        return 1
    spool = Path(conf["spool"])
    incoming = spool / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    with open(spool / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read().strip() or "0") + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    cluster = 50000000 + n
    job_id = f"{cluster}.0@jobsub0{1 + n % 2}.fnal.gov"
    atomic_write(incoming / f"{cluster}.dag", text)
    meta = {"job_id": job_id, "cluster": cluster, "expnum": int(expnum) if expnum.isdigit() else expnum,
            "dag": str(incoming / f"{cluster}.dag"), "cwd": os.getcwd(), "submitted": time.time()}
    atomic_write(incoming / f"{cluster}.json", json.dumps(meta))  # last: the grid picks up by .json
    print("Submitting job(s).")
    print(f"1 job(s) submitted to cluster {cluster}.")
    print("")
    print(f"Use job id {job_id} to retrieve output")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
