"""Benchmark: one CCD + forcefile sweep of 200 waiting DESGW exposures × 59 CCDs.

Compares autoproc.desgw.ccd + forcefiles (one scandir of dp{S}, one per chip directory, nite
known) with the original automation's check (docs/DESGW.md#thresholds): a glob over every nite per exposure,
then `*.FAIL` and `outputs_*` globs per CCD directory, then the forcephoto glob with the nite
wildcarded. Filesystem calls are counted by wrapping os.scandir/os.stat/os.lstat (what glob and
os.path use) plus DirEntry.stat calls counted by autoproc's FsCounter.

    .venv/bin/python benchmarks/desgw_ccd_sweep.py [--exposures 200] [--other-nites 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from glob import glob
from pathlib import Path

from autoproc.desgw.ccd import SEARCH_CHIPS, FsCounter, sweep_exposure, tarball_name
from autoproc.desgw.forcefiles import check_forcefiles

SEASON = 2206
BANDS = ("g", "r", "i", "z")


class SyscallCounter:
    """Wraps os.scandir / os.stat / os.lstat so every caller (glob, os.path, autoproc) is counted."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._orig = {name: getattr(os, name) for name in ("scandir", "stat", "lstat")}

    def __enter__(self) -> SyscallCounter:
        for name, fn in self._orig.items():
            def wrapped(*a, _fn=fn, _name=name, **k):  # type: ignore[no-untyped-def]
                self.calls[_name] += 1
                return _fn(*a, **k)
            setattr(os, name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._orig.items():
            setattr(os, name, fn)


def build_tree(root: Path, n_exposures: int, other_nites: int, seed: int = 1) -> list[tuple[int, str, str]]:
    """A /pnfs-like tree: the waiting exposures spread over 10 nites, plus an archive of older nites."""
    rng = random.Random(seed)
    exp_root = root / "exp"
    fp_root = root / "forcephoto" / "images"
    now = time.time()
    exposures = []
    for k in range(n_exposures):
        expnum, nite, band = 1_000_000 + k, f"202405{10 + k % 10:02d}", BANDS[k % len(BANDS)]
        exposures.append((expnum, nite, band))
        dp = exp_root / nite / str(expnum) / f"dp{SEASON}"
        (dp / "input_files").mkdir(parents=True)
        fp = fp_root / f"dp{SEASON}" / nite / str(expnum)
        fp.mkdir(parents=True)
        kind = rng.random()
        for chip in SEARCH_CHIPS:
            cdir = dp / f"{band}_{chip:02d}"
            r = rng.random()
            if kind < 0.1 and r < 0.5:          # a slow exposure: half its CCDs not reported yet
                cdir.mkdir()
                (cdir / "ingest").mkdir()
                continue
            if r < 0.01:                        # chip directory missing
                continue
            cdir.mkdir()
            (cdir / "ingest").mkdir()
            (cdir / f"stamps_{nite}_WS1+2_{band}_{chip:02d}").mkdir()
            tar = cdir / tarball_name(SEASON, nite, expnum, band, chip)
            if r < 0.06:                        # failed at some step
                (cdir / f"RUN{rng.randint(1, 28):02d}_step.FAIL").write_text("job")
                tar.write_text("t")
            elif r < 0.08:                      # started, not finished
                (cdir / "RUN01_expose_prepData").write_text("s")
            elif r < 0.09:                      # never started
                pass
            else:
                if r < 0.10:                    # done, with a FAIL left from an earlier attempt
                    f = cdir / "RUN12_combined_swarpSEARCH.FAIL"
                    f.write_text("old")
                    os.utime(f, (now - 7200, now - 7200))
                tar.write_text("t")
                if rng.random() > 0.03:
                    (fp / f"WS_{expnum}_{band}_{chip:02d}+fakeSN_diff_mh.fits").write_text("f")
                    (fp / f"WS_{expnum}_{band}_{chip:02d}+fakeSN_diff_mh.psf").write_text("p")
    for k in range(other_nites):                # older events' nites, as on the real /pnfs
        (exp_root / f"2019{k // 28 % 12 + 1:02d}{k % 28 + 1:02d}{k // 336:01d}" / str(500_000 + k)).mkdir(parents=True)
    return exposures


def sweep_autoproc(root: Path, exposures: list[tuple[int, str, str]], fs: FsCounter) -> dict[int, int]:
    complete = {}
    for expnum, nite, band in exposures:
        rep = sweep_exposure(root / "exp", nite, expnum, SEASON, band, fs=fs)
        complete[expnum] = rep.complete
        if rep.complete >= 50:
            check_forcefiles(root / "forcephoto" / "images", SEASON, nite, expnum, band, rep.complete_chips, fs=fs)
    return complete


def sweep_baseline(root: Path, exposures: list[tuple[int, str, str]]) -> dict[int, int]:
    """The original postprocessing_automations.py check (docs/DESGW.md#thresholds)."""
    complete_counts = {}
    for expnum, _nite, band in exposures:
        dirs = glob(f"{root}/exp/*/{expnum}/dp{SEASON}/{band}_*/")
        complete, failed, incomplete = [], [], []
        for d in dirs:
            fails = glob(d + "*.FAIL")
            if fails:
                failed.append(d[-5:-1])
            elif glob(d + "outputs_*"):
                complete.append(d[-5:-1])
            else:
                incomplete.append(d[-5:-1])
        complete_counts[expnum] = len(complete)
        if len(complete) >= 50:
            expected = 2 * len(complete)
            files = glob(f"{root}/forcephoto/images/dp{SEASON}/*/{expnum}//*_{band}_*")
            if expected / 2 < len(files) < expected:
                for ccd in complete:
                    glob(f"{root}/forcephoto/images/dp{SEASON}/*/{expnum}/*{ccd}*.fits")
    return complete_counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exposures", type=int, default=200)
    ap.add_argument("--other-nites", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"# reproduce: .venv/bin/python benchmarks/desgw_ccd_sweep.py --exposures {args.exposures} "
          f"--other-nites {args.other_nites} --repeat {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="desgw-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        exposures = build_tree(root, args.exposures, args.other_nites)
        print(f"# tree: {args.exposures} exposures x {len(SEARCH_CHIPS)} CCDs over 10 nites, "
              f"+{args.other_nites} archive nites; built in {time.perf_counter() - t0:.1f} s under {tmp}")
        results = {}
        for name in ("baseline (glob)", "autoproc"):
            times, calls = [], []
            for _ in range(args.repeat):
                fs = FsCounter()
                with SyscallCounter() as sc:
                    t = time.perf_counter()
                    counts = sweep_baseline(root, exposures) if name.startswith("baseline") else \
                        sweep_autoproc(root, exposures, fs)
                    times.append(time.perf_counter() - t)
                calls.append(sum(sc.calls.values()) + fs.calls["stat"])
                detail = dict(sc.calls) | ({"DirEntry.stat": fs.calls["stat"]} if fs.calls["stat"] else {})
            results[name] = (statistics.median(times), statistics.median(calls), counts, detail)
        base_t, base_c, base_counts, base_detail = results["baseline (glob)"]
        our_t, our_c, our_counts, our_detail = results["autoproc"]
        print()
        print(f"{'method':<18}{'median s/sweep':>16}{'fs calls/sweep':>16}  breakdown")
        for name, (t, c, _, detail) in results.items():
            print(f"{name:<18}{t:>16.4f}{c:>16,.0f}  {detail}")
        print(f"{'ratio base/ours':<18}{base_t / our_t:>16.1f}{base_c / our_c:>16.1f}")
        # Agreement: the baseline counts a CCD with a stale FAIL as failed; autoproc as done.
        fs = FsCounter()
        stale_done = {e: sum(1 for c in sweep_exposure(root / "exp", n, e, SEASON, b, fs=fs).chips
                             if c.status == "done" and c.stale_fails) for e, n, b in exposures}
        agree = all(our_counts[e] == base_counts[e] + stale_done[e] for e in our_counts)
        print()
        print(f"complete CCDs: autoproc {sum(our_counts.values())}, baseline {sum(base_counts.values())}, "
              f"difference = CCDs with a stale FAIL ({sum(stale_done.values())}): "
              f"{'agree' if agree else 'DISAGREE'} on all {len(exposures)} exposures")
        eligible = sum(1 for v in our_counts.values() if v >= 50)
        print(f"exposures with >= 50 complete CCDs: autoproc {eligible}, "
              f"baseline {sum(1 for v in base_counts.values() if v >= 50)}")
        return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
