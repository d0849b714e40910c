"""Simulated FNAL grid: runs spooled DESGW DAGs by writing per-CCD outputs into a dCache-like tree.

    python -m autoproc.sim.desgw.grid --spool DIR --pnfs ROOT --scenario FILE [--once]

Spool: `incoming/{cluster}.json` (+ `.dag`) from the fake jobsub_submit_dag → `running/`
while CCDs land in batches → `done/`. Every file is written to a temporary name and renamed,
so a reader never sees half a file.

A failed CCD gets what SEdiff's copyback writes (docs/DESGW.md#ccd-tree): the outputs tarball (written
even on failure) and the `RUNnn_*.FAIL` beside it, in the same step. Their mtimes come in
either order, as they do on dCache: the FAIL is made on the worker before the tarball is
packed (so it is often older, by `FAIL_LEAD` seconds here), or it lands after it. The FAIL
is renamed into place first, so a reader sweeping mid-batch never sees a failed CCD as
done. An incomplete CCD holds only the RUN01 log.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shlex
import shutil
import signal
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoproc.desgw.ccd import STEP_NAMES  # the real steplist.txt: the grid writes what SEdiff writes
from autoproc.sim.desgw.scenario import ScenarioError, load_scenario

STALE_AGE = 3600.0  # a stale FAIL is this much older than the tarball
FAIL_LEAD = 20.0  # a same-copyback FAIL older than its tarball is this much older


@dataclass(frozen=True)
class SearchJob:
    """What the grid needs from a DAG: the search exposure and its CCD jobs."""

    expnum: int
    nite: str
    band: str
    season: int
    destcache: str
    schema: str
    chips: tuple[int, ...]


def parse_dag(text: str) -> SearchJob:
    """Read the search jobs (second <parallel> block) of a desgw_pipeline DAG."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line in ("<parallel>", "<serial>"):
            current = []
        elif line in ("</parallel>", "</serial>"):
            if current is not None:
                blocks.append(current)
            current = None
        elif line and current is not None:
            current.append(line)
    if len(blocks) < 2:
        raise ValueError("DAG has fewer than two blocks")
    chips: list[int] = []
    info: dict[str, str] = {}
    for line in blocks[1]:
        tokens = shlex.split(line)
        if "file://SEdiff.sh" not in tokens:
            continue
        args = tokens[tokens.index("file://SEdiff.sh") + 1:]
        opts = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("-")}
        chips.append(int(opts["-c"]))
        info = opts
    if not chips:
        raise ValueError("DAG has no search jobs")
    return SearchJob(
        expnum=int(info["-E"].split(",")[0]), nite=info["-n"], band=info["-b"],
        season=int(info["-S"].removeprefix("dp")), destcache=info.get("-d", "persistent"),
        schema=info.get("-m", "gw"), chips=tuple(chips),
    )


def _atomic_bytes(path: Path, data: bytes, mtime: float | None = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _tarball_bytes(member: str, text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(member)
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


class Grid:
    """The spool and output tree of one simulated grid."""

    def __init__(self, spool: Path, pnfs: Path, scenario_path: Path) -> None:
        self.spool = Path(spool)
        self.pnfs = Path(pnfs)
        self.scenario_path = Path(scenario_path)
        for d in ("incoming", "running", "done"):
            (self.spool / d).mkdir(parents=True, exist_ok=True)

    def _save(self, state: dict, where: str) -> Path:
        path = self.spool / where / f"{state['cluster']}.json"
        _atomic_bytes(path, json.dumps(state, indent=1).encode())
        return path

    def pick_up(self) -> int:
        """Move every complete submission from incoming/ to running/."""
        scenario = load_scenario(self.scenario_path)
        n = 0
        for meta_path in sorted((self.spool / "incoming").glob("*.json")):
            meta = json.loads(meta_path.read_text())
            dag_text = Path(meta["dag"]).read_text()
            job = parse_dag(dag_text)
            beh = scenario.for_exposure(job.expnum)
            state = {
                **meta, "search": job.__dict__ | {"chips": list(job.chips)},
                "plan": {str(c): o for c, o in beh.plan(job.chips).items()},
                "behaviour": {"forcefiles": [list(x) for x in beh.forcefile_chips(job.chips)],
                              "extra": beh.forcefiles_extra},
                "next_index": 0, "next_at": time.time() + scenario.seconds_per_batch,
                "seconds_per_batch": scenario.seconds_per_batch, "batch_size": scenario.batch_size,
            }
            self._leave_stale_fails(state)
            self._save(state, "running")
            meta_path.unlink()
            n += 1
        return n

    def _paths(self, state: dict) -> tuple[Path, Path]:
        s = state["search"]
        root = self.pnfs / s["destcache"] / s["schema"]
        dp = root / "exp" / s["nite"] / str(s["expnum"]) / f"dp{s['season']}"
        fp = root / "forcephoto" / "images" / f"dp{s['season']}" / s["nite"] / str(s["expnum"])
        return dp, fp

    def _leave_stale_fails(self, state: dict) -> None:
        # The FAIL of an earlier failed attempt is there before this run starts; the rerun's
        # tarball, written later, makes it stale.
        dp, _ = self._paths(state)
        old = time.time() - STALE_AGE
        for chip, outcome in state["plan"].items():
            if outcome == "done_stale":
                cdir = dp / f"{state['search']['band']}_{int(chip):02d}"
                cdir.mkdir(parents=True, exist_ok=True)
                _atomic_bytes(cdir / "RUN12_combined_swarpSEARCH.FAIL", b"earlier attempt\n", mtime=old)

    def step(self, now: float | None = None) -> bool:
        """Write every batch that is due. True if any job is still running."""
        now = time.time() if now is None else now
        active = False
        for path in sorted((self.spool / "running").glob("*.json")):
            state = json.loads(path.read_text())
            while state["next_index"] < len(state["search"]["chips"]) and now >= state["next_at"]:
                self._write_batch(state)
                state["next_at"] += state["seconds_per_batch"]
                self._save(state, "running")
            if state["next_index"] >= len(state["search"]["chips"]):
                state["finished"] = time.time()
                self._save(state, "done")
                path.unlink()
            else:
                active = True
        return active

    def next_due(self) -> float | None:
        times = [json.loads(p.read_text())["next_at"] for p in (self.spool / "running").glob("*.json")]
        return min(times) if times else None

    def _write_batch(self, state: dict) -> None:
        s = state["search"]
        chips = s["chips"][state["next_index"]: state["next_index"] + state["batch_size"]]
        dp, fp = self._paths(state)
        fits_chips, psf_chips = (set(x) for x in state["behaviour"]["forcefiles"])
        for chip in chips:
            outcome = state["plan"][str(chip)]
            self._write_chip(state, dp, fp, chip, outcome, chip in fits_chips, chip in psf_chips)
        state["next_index"] += len(chips)
        if state["next_index"] >= len(s["chips"]) and state["behaviour"]["extra"]:
            fp.mkdir(parents=True, exist_ok=True)
            for k in range(state["behaviour"]["extra"]):
                chip = s["chips"][k % len(s["chips"])]
                name = f"WS_{s['expnum']}_{s['band']}_{chip:02d}_rerun{k}+fakeSN_diff_mh.fits"
                _atomic_bytes(fp / name, b"SIMPLE  =                    T\n")

    def _write_chip(
        self, state: dict, dp: Path, fp: Path, chip: int, outcome: str, fits: bool, psf: bool
    ) -> None:
        s = state["search"]
        band, cc = s["band"], f"{chip:02d}"
        cdir = dp / f"{band}_{cc}"
        if outcome == "missing":
            shutil.rmtree(cdir, ignore_errors=True)
            return
        cdir.mkdir(parents=True, exist_ok=True)
        if outcome == "never_started":
            return
        if outcome == "incomplete":
            _atomic_bytes(cdir / f"{STEP_NAMES[0]}.LOG", b"prepData started\n")
            return
        tar_name = f"outputs_dp{s['season']}_{s['nite']}_{s['expnum']}_{band}_{cc}.tar.gz"
        tar = _tarball_bytes("RUN_ALL.LOG", f"sim job {state['job_id']} chip {cc}: {outcome}\n")
        signature = f"{state['job_id']} {state['job_id']} fnpc{chip:04d}.fnal.gov\n".encode()
        now = time.time()
        if outcome.startswith("failed:") or outcome == "no_overlaps":
            fail = (STEP_NAMES[int(outcome.split(":")[1]) - 1] + ".FAIL") if outcome != "no_overlaps" \
                else "NOOVERLAPS.FAIL"
            # Odd CCDs: the FAIL predates the tarball (made on the worker); even: it lands after it.
            _atomic_bytes(cdir / fail, signature, mtime=now - FAIL_LEAD if chip % 2 else now + 1)
            _atomic_bytes(cdir / tar_name, tar, mtime=now)
            return
        if fits or psf:
            fp.mkdir(parents=True, exist_ok=True)
            stem = f"WS_{s['expnum']}_{band}_{cc}+fakeSN_diff_mh"
            if fits:
                _atomic_bytes(fp / f"{stem}.fits", b"SIMPLE  =                    T\n")
            if psf:
                _atomic_bytes(fp / f"{stem}.psf", b"SIMPLE  =                    T\n")
        _atomic_bytes(cdir / tar_name, tar, mtime=now)

    def run(self, once: bool, poll: float = 0.2) -> int:
        """Process the spool; with `once`, until nothing is queued or running, else until signalled."""
        stop = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            self.pick_up()
            active = self.step()
            if once and not active and not any((self.spool / "incoming").glob("*.json")):
                return 0
            due = self.next_due()
            wait = poll if due is None else max(0.0, min(poll, due - time.time()))
            time.sleep(wait)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autoproc.sim.desgw.grid", description=__doc__.split("\n")[0])
    ap.add_argument("--spool", type=Path, required=True)
    ap.add_argument("--pnfs", type=Path, required=True, help="stands for /pnfs/des")
    ap.add_argument("--scenario", type=Path, required=True)
    ap.add_argument("--once", action="store_true", help="run what is queued to completion, then exit")
    args = ap.parse_args(argv)
    try:
        return Grid(args.spool, args.pnfs, args.scenario).run(args.once)
    except ScenarioError as err:
        print(f"grid: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
