"""CCD classification (docs/DESGW.md#ccd-status, stale FAILs included) and the forcefile check, on real trees in tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from autoproc.config import ConfigError, load_config
from autoproc.desgw.ccd import (
    CODE_DONE,
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
    touch(chip_dir(tmp_path, 17) / "RUN01_expose_prepData.LOG")      # RUN01 log only: -9
    d = chip_dir(tmp_path, 18)                  # RUN28 log without tarball -> done
    touch(d / "RUN01_expose_prepData")          # (the RUN01 script, as checkoutputs knows it)
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


NOW = 1_750_000_000.0
SLACK = 600.0  # seconds: one copyback
FAIL5 = "RUN05_expose_makeWeight.FAIL"
FAIL28 = "RUN28_combined_prepForcePhoto.FAIL"
LOG28 = "RUN28_combined_prepForcePhoto.LOG"


def _chip_with(root: Path, chip: int, files: dict[str, float]) -> None:
    """A chip directory holding these files, each with its mtime set explicitly."""
    d = chip_dir(root, chip)
    for name, mtime in files.items():
        touch(d / (tarball_name(S, NITE, EXP, BAND, chip) if name == "tar" else name), mtime)


# (files with mtimes relative to NOW, expected code, expected stale FAILs)
ORDERINGS = {
    "fail_copied_1s_before_tar": ({FAIL5: -1, "tar": 0}, 5, ()),
    "fail_made_on_worker_before_tar_within_slack": ({FAIL5: -(SLACK - 1), "tar": 0}, 5, ()),
    "fail_same_mtime_as_tar": ({FAIL5: 0, "tar": 0}, 5, ()),
    "fail_copied_after_tar": ({"tar": 0, FAIL5: 2}, 5, ()),
    "fail_older_than_tar_by_more_than_slack": ({FAIL5: -(SLACK + 1), "tar": 0}, CODE_DONE, (FAIL5,)),
    "fail_older_than_success_marker": ({"RUN01_expose_prepData.LOG": -60, FAIL5: -5, LOG28: 0}, CODE_DONE,
                                       (FAIL5,)),
    "fail_older_than_marker_within_tar_slack": ({FAIL5: -5, LOG28: -2, "tar": 0}, CODE_DONE, (FAIL5,)),
    "fail_newer_than_marker": ({LOG28: -7200, FAIL5: 0}, 5, ()),
    "fail_newer_than_marker_with_tar": ({LOG28: -7200, FAIL5: -1, "tar": 0}, 5, ()),
    "run28_fail_after_its_own_log": ({LOG28: -30, FAIL28: -10, "tar": 0}, 28, ()),
    "run28_fail_copied_before_its_log": ({FAIL28: -3, LOG28: 0, "tar": 1}, 28, ()),
    "fail_without_tar_or_marker": ({FAIL5: -99999}, 5, ()),
    "earlier_fail_stale_later_fail_live": (
        {"RUN03_expose_mkWStemplate.FAIL": -7200, "RUN20_combined_sexDiffim.FAIL": -1, "tar": 0}, 20,
        ("RUN03_expose_mkWStemplate.FAIL",)),
    "nooverlaps_with_tar_same_copyback": ({"NOOVERLAPS.FAIL": -1, "tar": 0}, CODE_NO_OVERLAPS, ()),
    "run01_log_only": ({"RUN01_expose_prepData.LOG": 0}, CODE_INCOMPLETE, ()),
    "run01_script_only": ({"RUN01_expose_prepData": 0}, CODE_INCOMPLETE, ()),
    "run01_log_and_marker": ({"RUN01_expose_prepData.LOG": -60, LOG28: 0}, CODE_DONE, ()),
    "nothing": ({}, CODE_NEVER_STARTED, ()),
}


@pytest.mark.parametrize("case", list(ORDERINGS))
def test_fail_ordering_against_tarball_and_success_marker(tmp_path: Path, case: str) -> None:
    files, code, stale = ORDERINGS[case]
    _chip_with(tmp_path, 3, {name: NOW + dt for name, dt in files.items()})
    chip = sweep_exposure(tmp_path, NITE, EXP, S, BAND, chips=[3], copyback_slack=SLACK).chips[0]
    assert (chip.code, chip.stale_fails) == (code, stale), case


def test_a_failed_exposure_never_passes_on_same_copyback_fails(tmp_path: Path) -> None:
    # 52 CCDs whose FAIL landed a second before their tarball (the copyback of a failed run),
    # 7 done: 7 complete, not 59 - the 50-CCD rule cannot pass on failures.
    for c in SEARCH_CHIPS[:52]:
        _chip_with(tmp_path, c, {FAIL5: NOW - 1, "tar": NOW})
    for c in SEARCH_CHIPS[52:]:
        _chip_with(tmp_path, c, {"tar": NOW})
    rep = sweep_exposure(tmp_path, NITE, EXP, S, BAND)   # the default slack (minutes) covers one copyback
    assert (rep.complete, rep.failed, rep.stale) == (7, 52, 0)
    assert rep.failures_by_step == {"RUN05": 52}


def test_copyback_slack_is_configured_in_minutes(tmp_path: Path) -> None:
    cfg = tmp_path / "autoproc.yaml"
    cfg.write_text("desgw:\n  copyback_slack_minutes: 2\n")
    assert load_config(cfg).desgw.copyback_slack_minutes == 2
    _chip_with(tmp_path, 3, {FAIL5: NOW - 180, "tar": NOW})
    minutes = load_config(cfg).desgw.copyback_slack_minutes
    assert sweep_exposure(tmp_path, NITE, EXP, S, BAND, chips=[3], copyback_slack=minutes * 60).complete == 1
    assert sweep_exposure(tmp_path, NITE, EXP, S, BAND, chips=[3]).failed == 1   # default: 30 minutes
    cfg.write_text("desgw:\n  stale_fail_slack: 5\n")
    with pytest.raises(ConfigError, match="copyback_slack_minutes"):
        load_config(cfg)
    cfg.write_text("desgw:\n  copyback_slack_minutes: -1\n")
    with pytest.raises(ConfigError, match="copyback_slack_minutes"):
        load_config(cfg)


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
