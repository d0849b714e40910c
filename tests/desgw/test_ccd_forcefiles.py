"""CCD classification (SPEC §B.7 + stale FAILs) and the forcefile check, on real trees in tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from autoproc.desgw.ccd import (
    CODE_INCOMPLETE,
    CODE_MISSING,
    CODE_NEVER_STARTED,
    CODE_NO_OVERLAPS,
    SEARCH_CHIPS,
    FsCounter,
    checkoutputs_row,
    sweep_exposure,
    tarball_name,
)
from autoproc.desgw.forcefiles import check_forcefiles, verdict_for

S, NITE, EXP, BAND = 2206, "20190814", 941225, "i"


def chip_dir(root: Path, chip: int) -> Path:
    d = root / NITE / str(EXP) / f"dp{S}" / f"{BAND}_{chip:02d}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def touch(path: Path, mtime: float | None = None) -> None:
    path.write_text("x")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_search_chips() -> None:
    assert len(SEARCH_CHIPS) == 59 and {2, 31, 61}.isdisjoint(SEARCH_CHIPS)


def test_codes_and_stale_fails(tmp_path: Path) -> None:
    now = time.time()
    for chip in SEARCH_CHIPS:
        chip_dir(tmp_path, chip)
    tar = lambda c: chip_dir(tmp_path, c) / tarball_name(S, NITE, EXP, BAND, c)  # noqa: E731
    for c in range(3, 13):                      # done
        touch(tar(c))
    d = chip_dir(tmp_path, 13)                  # failed at 5 and 18: first failing step wins
    touch(d / "RUN18_combined+expose_hotpants.FAIL", now)
    touch(d / "RUN05_expose_makeWeight.FAIL", now)
    touch(tar(13), now - 1)
    d = chip_dir(tmp_path, 14)                  # stale FAIL older than the tarball -> done
    touch(d / "RUN12_combined_swarpSEARCH.FAIL", now - 3600)
    touch(tar(14), now)
    d = chip_dir(tmp_path, 15)                  # one stale, one live
    touch(d / "RUN03_expose_mkWStemplate.FAIL", now - 3600)
    touch(d / "RUN20_combined_sexDiffim.FAIL", now + 5)
    touch(tar(15), now)
    d = chip_dir(tmp_path, 16)                  # FAIL and no tarball: never stale
    touch(d / "RUN07_combined_astromScamp.FAIL", now - 99999)
    touch(chip_dir(tmp_path, 17) / "RUN01_expose_prepData")          # -9
    d = chip_dir(tmp_path, 18)                  # RUN28 log without tarball -> done
    touch(d / "RUN01_expose_prepData")
    touch(d / "RUN28_combined_prepForcePhoto.LOG")
    touch(chip_dir(tmp_path, 19) / "NOOVERLAPS.FAIL")
    (chip_dir(tmp_path, 20) / "ingest").mkdir()                     # only DAGMaker's subdirs -> -1
    for c in (21, 22):                           # chip dirs removed -> missing
        os.rmdir(chip_dir(tmp_path, c))
    (tmp_path / NITE / str(EXP) / f"dp{S}" / "input_files").mkdir()
    (tmp_path / NITE / str(EXP) / f"dp{S}" / f"{BAND}_02").mkdir()  # not a search chip

    fs = FsCounter()
    rep = sweep_exposure(tmp_path, NITE, EXP, S, BAND, fs=fs)
    codes = rep.codes
    assert [codes[c] for c in (3, 12)] == [0, 0]
    assert codes[13] == 5 and rep.chips[SEARCH_CHIPS.index(13)].fail_file == "RUN05_expose_makeWeight.FAIL"
    assert codes[14] == 0 and rep.chips[SEARCH_CHIPS.index(14)].stale_fails == ("RUN12_combined_swarpSEARCH.FAIL",)
    assert codes[15] == 20 and rep.chips[SEARCH_CHIPS.index(15)].stale_fails == ("RUN03_expose_mkWStemplate.FAIL",)
    assert codes[16] == 7
    assert codes[17] == CODE_INCOMPLETE
    assert codes[18] == 0
    assert codes[19] == CODE_NO_OVERLAPS
    assert codes[20] == CODE_NEVER_STARTED
    assert codes[21] == codes[22] == CODE_MISSING
    # 10 done + chips 14, 18; failed 13, 15, 16, 19; incomplete 17, 20 + 39 untouched dirs; missing 21, 22
    assert (rep.complete, rep.failed, rep.incomplete, rep.missing) == (12, 4, 2 + 39, 2)
    assert rep.failures_by_step == {"NOOVERLAPS": 1, "RUN05": 1, "RUN07": 1, "RUN20": 1}
    assert rep.stale == 2 and rep.input_files and rep.extra_dirs == ("i_02",)
    # one scandir of dp{S} + one per present chip dir; stats only where FAIL and tarball coexist
    assert fs.calls["scandir"] == 1 + 57
    assert fs.calls["stat"] == 3 + 2 + 3  # chips 13, 14, 15: tarball + each FAIL
    row = checkoutputs_row(rep)
    assert row["successes"] == 12 and row["unfinished"] == 43 and row["ccd13"] == 5


def test_missing_exposure_dir_and_custom_chips(tmp_path: Path) -> None:
    rep = sweep_exposure(tmp_path, NITE, EXP, S, BAND, chips=[1, 3, 4])
    assert not rep.dp_dir_exists and rep.missing == 3 and rep.complete == 0
    touch(chip_dir(tmp_path, 1) / tarball_name(S, NITE, EXP, BAND, 1))
    rep = sweep_exposure(tmp_path, NITE, EXP, S, BAND, chips=[1, 3, 4])
    assert (rep.complete, rep.missing) == (1, 2)


def test_forcefiles(tmp_path: Path) -> None:
    d = tmp_path / f"dp{S}" / NITE / str(EXP)
    d.mkdir(parents=True)
    complete = list(range(1, 11))
    for c in complete[:8]:
        touch(d / f"WS_{EXP}_{BAND}_{c:02d}+fakeSN_diff_mh.fits")
        touch(d / f"WS_{EXP}_{BAND}_{c:02d}+fakeSN_diff_mh.psf")
    touch(d / f"WS_{EXP}_{BAND}_09+fakeSN_diff_mh.fits")       # .fits without .psf
    touch(d / f".WS_{EXP}_{BAND}_10.fits.123.tmp")             # in-flight temp file: ignored
    touch(d / f"WS_{EXP}_z_10+fakeSN_diff_mh.fits")            # other band: ignored
    rep = check_forcefiles(tmp_path, S, NITE, EXP, BAND, complete)
    assert (rep.count, rep.expected, rep.verdict) == (17, 20, "pass")
    assert rep.missing_fits == (10,) and rep.missing_psf == (9, 10)
    rep = check_forcefiles(tmp_path, S, NITE, EXP, BAND, complete[:8])
    assert (rep.count, rep.expected, rep.verdict) == (17, 16, "too_many")
    rep = check_forcefiles(tmp_path, S, NITE, EXP, BAND, list(range(1, 18)))
    assert (rep.count, rep.expected, rep.verdict) == (17, 34, "short")
    rep = check_forcefiles(tmp_path, S, NITE, 1, BAND, complete)
    assert not rep.directory_exists and rep.verdict == "short" and rep.count == 0


def test_verdict_boundaries() -> None:
    assert verdict_for(59, 118) == "short"      # exactly half is not enough
    assert verdict_for(60, 118) == "pass"
    assert verdict_for(118, 118) == "pass"
    assert verdict_for(119, 118) == "too_many"
    assert verdict_for(0, 0) == "short"
