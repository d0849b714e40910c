"""exposures.list, .list, dagmaker.rc, season, DAGMaker output and jobsub id parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoproc.desgw.dagmaker import judge_dagmaker_run, parse_jobsub_job_id, validate_submit_command
from autoproc.desgw.errors import DesgwInputError
from autoproc.desgw.exposures import (
    find_exposure,
    parse_expnum_list,
    parse_exposures_list,
)
from autoproc.desgw.rc import edit_rc, parse_rc, rc_season
from autoproc.desgw.season import (
    SeasonInUseError,
    SeasonQueryError,
    allocate_season,
    collect_used_seasons,
)
from autoproc.sim.desgw.site import DAGMAKER_RC

EXPOSURES = """\
expnum  nite     mjd_obs       radeg      decdeg     band exptime propid     obstype teff  object
941225  20190814 58709.300000  12.800000  -25.300000 i    90.0    2019B-0372 object  0.500 DESGW: LIGO event S190814bv: 1 of 7
1941225 20190815 58710.300000  12.800000  -25.300000 z    90.0    2019B-0372 object  NaN   x
94122   20190814 58709.400000  12.900000  -25.400000 r    90.0    2019B-0372 object  0.400
"""


# ---------------------------------------------------------------- exposures.list

def test_exposures_list_columns_and_free_text_object() -> None:
    rows = parse_exposures_list(EXPOSURES)
    assert [r.expnum for r in rows] == [941225, 1941225, 94122]
    first = rows[0]
    assert (first.nite, first.band, first.propid, first.teff) == ("20190814", "i", "2019B-0372", 0.5)
    assert first.object == "DESGW: LIGO event S190814bv: 1 of 7"
    assert rows[1].teff is None and rows[1].band == "z"
    assert rows[2].object == ""


def test_exposure_lookup_is_exact_not_substring() -> None:
    rows = parse_exposures_list(EXPOSURES)
    assert find_exposure(rows, 941225).band == "i"
    assert find_exposure(rows, 94122).band == "r"
    assert find_exposure(rows, 1941225).band == "z"
    assert find_exposure(rows, 4122) is None


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("", None, "empty file"),
        ("941225 20190814 1 2 3 i 90 p o 0.5 x\n", 1, "header"),
        (EXPOSURES.splitlines()[0] + "\n941225 20190814 1 2 3 i\n", 2, "at least 10 columns"),
        (EXPOSURES.splitlines()[0] + "\n94x225 20190814 1 2 3 i 90 p o 0.5 x\n", 2, "expnum"),
        (EXPOSURES.splitlines()[0] + "\n941225 2019081 1 2 3 i 90 p o 0.5 x\n", 2, "nite"),
        (EXPOSURES.splitlines()[0] + "\n941225 20190814 abc 2 3 i 90 p o 0.5 x\n", 2, "mjd_obs"),
        (EXPOSURES.splitlines()[0] + "\n941225 20190814 1 2 3 q 90 p o 0.5 x\n", 2, "band"),
        (EXPOSURES.splitlines()[0] + "\n\n941225 20190814 1 2 3 i 90 p o 0.5 x\n"
         "941225 20190814 1 2 3 i 90 p o 0.5 x\n", 4, "already listed on line 3"),
    ],
)
def test_exposures_list_malformed(text: str, line: int | None, what: str) -> None:
    with pytest.raises(DesgwInputError) as info:
        parse_exposures_list(text, "gw/exposures.list")
    assert info.value.line == line
    assert what in str(info.value)
    assert str(info.value).startswith("gw/exposures.list")


def test_expnum_list() -> None:
    assert parse_expnum_list("# night 1\n941225\n\n 941226  # second\n") == [941225, 941226]
    with pytest.raises(DesgwInputError, match=r"my.list:3: '94x' is not an exposure number"):
        parse_expnum_list("1\n2\n94x\n", "my.list")
    with pytest.raises(DesgwInputError, match=r"my.list:2: expnum 1 already listed on line 1"):
        parse_expnum_list("1\n1\n", "my.list")


# ---------------------------------------------------------------- dagmaker.rc

def test_rc_parse_real_layout() -> None:
    text = DAGMAKER_RC.replace("@SEASON@", "33")
    values = parse_rc(text)
    assert text.splitlines()[18] == "SEASON=33"
    assert rc_season(values) == 33
    assert values["SCHEMA"] == "gw"
    assert values["JOBSUB_TEMP_OPTS"].startswith("$JOBSUB_OPTS --lines='+FERMIHTC")
    assert "MIN_NITE" not in values


def test_rc_edit_by_key_and_bash_agrees(tmp_path: Path) -> None:
    text = DAGMAKER_RC.replace("@SEASON@", "33")
    edit = edit_rc(text, {
        "SEASON": 2206, "MIN_NITE": 20190801, "RESOURCES": "DEDICATED,OPPORTUNISTIC",
        "JOBSUB_OPTS": "--memory=4000MB --disk=70GB $(touch /tmp/pwned)", "NEWKEY": "it's odd",
        "TEFF_CUT_g": 0.1,
    })
    how = {c.key: (c.how, c.old) for c in edit.changes}
    assert how["SEASON"] == ("replaced", "33")
    assert how["MIN_NITE"] == ("uncommented", "20170831")
    assert how["RESOURCES"] == ("replaced", "DEDICATED,OPPORTUNISTIC,OFFSITE")
    assert how["NEWKEY"] == ("appended", None)
    lines = edit.text.splitlines()
    assert lines[18] == "SEASON=2206"
    assert "#MAX_NITE=20170901" in lines  # a different commented key is left alone
    assert len(lines) == len(text.splitlines()) + 1
    # bash reads back exactly what we wrote, with nothing executed
    rc = tmp_path / "dagmaker.rc"
    rc.write_text(edit.text)
    out = subprocess.run(  # noqa: S603 - constant script, file path as an argument
        ["bash", "-c", 'source "$1"; printf "%s\\n" "$SEASON" "$MIN_NITE" "$JOBSUB_OPTS" "$NEWKEY"', "x", str(rc)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out == ["2206", "20190801", "--memory=4000MB --disk=70GB $(touch /tmp/pwned)", "it's odd"]
    assert parse_rc(edit.text)["NEWKEY"] == "it's odd"


def test_rc_edit_rejects_bad_keys_and_values() -> None:
    with pytest.raises(ValueError, match="invalid dagmaker.rc key"):
        edit_rc("A=1\n", {"season": 1})
    with pytest.raises(ValueError, match="invalid dagmaker.rc key"):
        edit_rc("A=1\n", {"A;rm": 1})
    with pytest.raises(ValueError, match="newline"):
        edit_rc("A=1\n", {"A": "1\nB=2"})


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("RNUM=4\nJOBSUB_OPTS=--memory=1 --disk=2\n", 2, "unquoted text"),
        ("RNUM=4\n\nSEASON=\"33\n", 3, "unterminated"),
    ],
)
def test_rc_malformed(text: str, line: int, what: str) -> None:
    with pytest.raises(DesgwInputError) as info:
        parse_rc(text, "gw/dagmaker.rc")
    assert info.value.line == line and what in str(info.value)


def test_rc_season_required() -> None:
    with pytest.raises(DesgwInputError, match="no SEASON"):
        rc_season(parse_rc("RNUM=4\n"))


# ---------------------------------------------------------------- season

def test_season_allocation(tmp_path: Path) -> None:
    exp_root = tmp_path / "exp"
    (exp_root / "20190814" / "941225" / "dp100").mkdir(parents=True)
    fp = tmp_path / "forcephoto"
    (fp / "dp102").mkdir(parents=True)
    inv = collect_used_seasons(known=[101], exp_root=exp_root, forcephoto_root=fp)
    assert allocate_season(inv) == 103
    assert allocate_season(inv, 2206) == 2206
    for season, why in ((50, "reserved"), (5000, "reserved"), (101, "known"), (100, "dp100"), (102, "dp102")):
        with pytest.raises(SeasonInUseError, match=why) as info:
            allocate_season(inv, season)
        assert info.value.season == season


def test_season_command(tmp_path: Path) -> None:
    ok = [sys.executable, "-c", "print('SEASON'); print('2206'); print('2208, 103')"]
    inv = collect_used_seasons(command=ok)
    assert {2206, 2208, 103} <= inv.seasons
    with pytest.raises(SeasonInUseError, match="database"):
        allocate_season(inv, 2208)
    assert allocate_season(inv) == 100
    with pytest.raises(SeasonQueryError, match="exited 3"):
        collect_used_seasons(command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(SeasonQueryError, match="timed out"):
        collect_used_seasons(command=[sys.executable, "-c", "import time; time.sleep(10)"], command_timeout=0.5)
    with pytest.raises(SeasonQueryError, match="line 1: 'ORA-12541:' is not a season number"):
        collect_used_seasons(command=[sys.executable, "-c", "print('ORA-12541: no listener')"])


# ---------------------------------------------------------------- DAGMaker output and jobsub

SUBMIT = ("jobsub_submit_dag -G des --role=desgw --need-storage-modify /des/persistent/gw/exp "
          "--need-storage-modify /des/persistent/gw/forcephoto file://desgw_pipeline_941225.dag")


def test_validate_submit_command() -> None:
    argv = validate_submit_command(SUBMIT, 941225)
    assert argv[0] == "jobsub_submit_dag" and argv[-1] == "file://desgw_pipeline_941225.dag"
    assert argv[1:3] == ["-G", "des"]
    for bad, what in (
        (SUBMIT.replace("941225.dag", "94122.dag"), "last token"),
        (SUBMIT + "; rm -rf ~", "metacharacters"),
        ("sh -c x file://desgw_pipeline_941225.dag", "first token"),
        (SUBMIT.replace("-G des", "-G $(id)"), "metacharacters"),
        (SUBMIT.replace("-G des", "des"), "not an option"),
    ):
        with pytest.raises(DesgwInputError, match=what):
            validate_submit_command(bad, 941225)


def test_judge_dagmaker(tmp_path: Path) -> None:
    out = "EXPNUM = 941225\nTo submit this DAG do\n" + SUBMIT + "\n\n"
    assert judge_dagmaker_run(tmp_path, 941225, out).verdict == "failed"  # no DONE
    (tmp_path / "mytemp_941225").mkdir()
    (tmp_path / "mytemp_941225" / "DAGMaker.DONE").write_text(SUBMIT + "\n")
    res = judge_dagmaker_run(tmp_path, 941225, out)
    assert res.verdict == "failed" and "desgw_pipeline_941225.dag" in res.reason
    (tmp_path / "desgw_pipeline_941225.dag").write_text("<parallel>\n")
    res = judge_dagmaker_run(tmp_path, 941225, out, returncode=0)
    assert res.ok and res.submit_argv is not None and res.submit_argv[-1].endswith("941225.dag")
    res = judge_dagmaker_run(tmp_path, 941225, "NO TEMPLATE IMAGES, DIFFIMG WILL FAIL\nx\n" + SUBMIT)
    assert res.verdict == "no_templates" and res.submit_argv is None
    res = judge_dagmaker_run(tmp_path, 941225, out + "trailing noise\n")
    assert res.verdict == "failed" and "not the submit command" in res.reason
    assert judge_dagmaker_run(tmp_path, 941225, out, returncode=2).verdict == "failed"


def test_jobsub_job_id() -> None:
    text = "Submitting job(s).\n1 job(s) submitted to cluster 12345678.\n\nUse job id 12345678.0@jobsub02.fnal.gov to retrieve output\n"
    assert parse_jobsub_job_id(text) == "12345678.0@jobsub02.fnal.gov"
    with pytest.raises(DesgwInputError, match="no job id"):
        parse_jobsub_job_id("ERROR: schedd not responding\n")
