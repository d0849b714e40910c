"""Stream a simulated DECam night into a directory, file by file, like raws arriving from the archive.

    python -m autoproc.sim.deep.night --out DIR --night 20240601 [--n-bias 5] [--flats 5]
        [--science VR:10 --science g:3] [--missing-flat-band r] [--detectors 1,3] [--interval 0.2]
        [--md5-names] [--manifest DIR/exposures.ecsv] [--plain-write] [--start-expnum N]
        [--no-nextend] [--stall SECONDS]

Each file is written to a hidden temporary name and renamed into place (``--plain-write``: written
under its final name and closed, which inotify reports as a close-after-write). With ``--manifest`` the
``exposures.ecsv`` for the whole night is written first (as the DEEP exposures.py does before any
download), so an ingest with that manifest accepts each file only once it is complete.
``--stall S``: each file is written in place like a network copy that stalls for S seconds after its
first CCD HDU; ``--no-nextend``: the primary carries no NEXTEND (as many archive files).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .raws import DEFAULT_FIELD, SimExposure, plan_night, write_exposures_ecsv, write_raw

__all__ = ["main", "stream_night"]


def stream_night(exposures: Sequence[SimExposure], out: str | Path, *, interval: float = 0.2,
                 md5_names: bool = False, atomic: bool = True, stall_seconds: float = 0.0) -> Iterator[Path]:
    """Write the exposures one by one, sleeping ``interval`` seconds between files; yields each path."""
    for i, exp in enumerate(exposures):
        if i and interval > 0:
            time.sleep(interval)
        yield write_raw(exp, out, md5_names=md5_names, atomic=atomic, stall_seconds=stall_seconds)


def _science(values: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for v in values:
        band, _, n = v.partition(":")
        out.append((band, int(n or 1)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autoproc.sim.deep.night", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory to write the raws into")
    ap.add_argument("--night", required=True, type=int, help="YYYYMMDD (CTIO local night)")
    ap.add_argument("--n-bias", type=int, default=5)
    ap.add_argument("--flats", type=int, default=5, help="dome flats per observed band")
    ap.add_argument("--science", action="append", default=[], metavar="BAND:N",
                    help="science exposures per band (repeatable; default VR:10)")
    ap.add_argument("--missing-flat-band", action="append", default=[], metavar="BAND",
                    help="take no dome flats in this band (repeatable)")
    ap.add_argument("--detectors", default="1,3", help="CCDNUMs written per exposure (default 1,3)")
    ap.add_argument("--ra", type=float, default=DEFAULT_FIELD[0])
    ap.add_argument("--dec", type=float, default=DEFAULT_FIELD[1])
    ap.add_argument("--start-expnum", type=int, default=None)
    ap.add_argument("--propid", default="2024A-0001")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between files")
    ap.add_argument("--md5-names", action="store_true", help="name files <md5>_<basename> like DEEP downloads")
    ap.add_argument("--manifest", type=Path, default=None, help="write this exposures.ecsv first")
    ap.add_argument("--plain-write", action="store_true", help="write in place instead of temp+rename")
    ap.add_argument("--no-nextend", action="store_true", help="no NEXTEND card in the primary HDU")
    ap.add_argument("--stall", type=float, default=0.0, metavar="SECONDS",
                    help="write each file in place, pausing this long after its first CCD HDU")
    args = ap.parse_args(argv)

    exps = plan_night(args.night, args.n_bias, args.flats, _science(args.science or ["VR:10"]),
                      (args.ra, args.dec), args.start_expnum, args.propid,
                      detectors=[int(d) for d in args.detectors.split(",") if d],
                      missing_flat_bands=args.missing_flat_band)
    if args.no_nextend:
        exps = [dataclasses.replace(e, nextend=False) for e in exps]
    if args.manifest:
        write_exposures_ecsv([(e, None) for e in exps], args.manifest)
        print(f"manifest {args.manifest} ({len(exps)} rows)", flush=True)
    for path in stream_night(exps, args.out, interval=args.interval, md5_names=args.md5_names,
                             atomic=not (args.plain_write or args.stall), stall_seconds=args.stall):
        print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
