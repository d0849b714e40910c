"""postproc ini rendering, SKIPTO derivation, PostProcStatus parsing and the launch argv."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from autoproc.desgw.errors import DesgwInputError
from autoproc.desgw.postproc import (
    LAUNCH_SCRIPT,
    build_postproc_launch,
    derive_skipto,
    parse_postproc_status,
    render_postproc_ini,
    stage_postproc_inputs,
    step7_outputs_exist,
)

TEMPLATE = (Path(__file__).parents[2] / "src/autoproc/sim/desgw/data/template_postproc.ini").read_text()


def test_template_has_inline_comments() -> None:
    assert "exposures_listfile = exposures.list ;" in TEMPLATE and "bands = i ;" in TEMPLATE


def test_render_ini_clean_values(tmp_path: Path) -> None:
    text = render_postproc_ini(
        TEMPLATE, season=2206, exposures_listfile="complete_exposures_S2206_20190815_03-10.list",
        bands=["z", "i", "i"], outdir=tmp_path / "out", propid="2019B-0372", triggermjd=58709.1,
    )
    # A plain Python 3 parser (no inline-comment handling) must see clean values.
    p = configparser.RawConfigParser()
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(text)
    g = p["general"]
    assert g["season"] == "2206"
    assert g["bands"] == "i,z"
    assert g["exposures_listfile"] == "complete_exposures_S2206_20190815_03-10.list"
    assert g["outdir"] == str(tmp_path / "out")
    assert g["propid"] == "2019B-0372" and g["triggermjd"] == "58709.1"
    assert g["ligoid"] == "GW170814"  # untouched when not given
    assert p["masterlist"]["blacklist"] == "blacklist.txt"
    assert p["checkoutputs"]["steplist"] == "steplist.txt"
    assert p["GWmakeDataFiles"]["2nite_trigger"] == "null"
    assert ";" not in text


@pytest.mark.parametrize(
    ("template", "line", "what"),
    [
        ("season = 1\n[general]\n", 1, "before the first [section]"),
        ("[general]\nseason = 1\nthis line has no delimiter\n", 3, "not a 'key = value' line"),
        ("[general]\nseason = 1\nseason = 2\n", 3, "season"),
        ("[general]\n[plots]\n[general]\n", 3, "general"),
    ],
)
def test_render_ini_malformed_template(template: str, line: int, what: str) -> None:
    with pytest.raises(DesgwInputError) as info:
        render_postproc_ini(template, season=1, exposures_listfile="x.list", bands=["i"], outdir="/o",
                            source="tpl.ini")
    assert info.value.line == line and what in str(info.value) and str(info.value).startswith("tpl.ini:")


def test_render_ini_missing_required_key() -> None:
    broken = TEMPLATE.replace("plusname = truthplus.tab\n", "")
    with pytest.raises(DesgwInputError, match=r"missing \[truthtable\] plusname"):
        render_postproc_ini(broken, season=1, exposures_listfile="x.list", bands=["i"], outdir="/o")
    with pytest.raises(ValueError, match="band"):
        render_postproc_ini(TEMPLATE, season=1, exposures_listfile="x.list", bands=["i z"], outdir="/o")


def _make(out: Path, *names: str) -> None:
    for n in names:
        (out / n).parent.mkdir(parents=True, exist_ok=True)
        (out / n).write_text("x")


STEP0 = ("masterlist/expniteband_df.csv", "masterlist/MasterExposureList_prelim.fits",
         "checkoutputs/step0_expnums.txt", "checkoutputs/step0_a_blacklist.txt")


def test_derive_skipto_strict(tmp_path: Path) -> None:
    cwd, out = tmp_path / "pp", tmp_path / "pp" / "outputs"
    cwd.mkdir()
    d = derive_skipto("outputs", 2206, cwd)
    assert d.skipto == 0 and d.argv() == [] and "masterlist/expniteband_df.csv" in d.missing
    # The original would say 6 here (LightCurvesReal/*.dat exists) and crash on mastertableinfo.npy.
    _make(out, *STEP0[:3], "makedatafiles/LightCurvesReal/a.dat", "truthtable2206/truthplus.tab")
    assert derive_skipto("outputs", 2206, cwd).skipto == 0        # blacklist missing
    _make(out, STEP0[3])
    assert derive_skipto("outputs", 2206, cwd).skipto == 1        # no hostmatchstatus.txt in cwd
    _make(cwd, "hostmatchstatus.txt")
    d = derive_skipto(out, 2206, cwd)
    assert d.skipto == 5 and d.argv() == ["--SKIPTO", "5"] and "mastertableinfo.npy" in d.missing
    _make(out, "mastertableinfo.npy")
    assert derive_skipto(out, 2206, cwd).skipto == 5               # combined fits still missing
    _make(out, "makedatafiles/datafiles_combined.fits")
    d = derive_skipto(out, 2206, cwd)
    assert d.skipto == 6 and not d.missing
    assert derive_skipto(out, 2208, cwd).skipto == 1               # another season's truth table


def test_status_file() -> None:
    st = parse_postproc_status("1 \n0 \n1 \n0 \n1 \n1 \n0 \n0 \n0 \nincomplete")
    assert not st.complete and st.env_ok and st.step1_ok and st.hostmatch_ok and st.truthtable_ok
    assert not st.datafiles_ok and not st.html_ok
    assert parse_postproc_status("1 \n" * 9 + "complete\n").complete
    for text, what in (
        ("1 \n" * 8 + "complete", "expected 10 entries"),
        ("1 \n" * 4 + "2 \n" + "1 \n" * 4 + "complete", "PostProcStatus9.txt:5: expected 0 or 1"),
        ("1 \n" * 9 + "done", "PostProcStatus9.txt:10"),
        ("", "expected 10 entries, found 0"),
    ):
        with pytest.raises(DesgwInputError, match=what):
            parse_postproc_status(text, "PostProcStatus9.txt")


def test_step7_outputs(tmp_path: Path) -> None:
    for d in ("htmls", "pngs", "stamps"):
        (tmp_path / d).mkdir()
    assert not step7_outputs_exist(tmp_path)       # run_postproc makes these dirs at start
    (tmp_path / "htmls" / "season.html").write_text("<html>")
    assert step7_outputs_exist(tmp_path)


def test_launch_argv_keeps_data_out_of_the_script(tmp_path: Path) -> None:
    weird = tmp_path / "out dir; rm -rf ~ $(id)"
    launch = build_postproc_launch(tmp_path, weird, 2206, skipto=5, update_links=True, nite="20190814")
    assert launch.argv[:3] == ("bash", "-c", LAUNCH_SCRIPT)
    assert launch.argv[3:] == ("autoproc-postproc", str(tmp_path.resolve()), str(weird), "2206", "5", "1",
                               "20190814", "python")
    assert str(weird) not in launch.argv[2]
    assert build_postproc_launch(tmp_path, "o", 2206).argv[7] == ""  # SKIPTO 0: no flag
    with pytest.raises(ValueError):
        build_postproc_launch(tmp_path, "o", 2206, skipto=8)
    with pytest.raises(ValueError):
        build_postproc_launch(tmp_path, "o", 2206, nite="2019;x")


def test_stage_inputs(tmp_path: Path) -> None:
    ini = render_postproc_ini(TEMPLATE, season=2206, exposures_listfile="c.list", bands=["i"], outdir="/o")
    staged = stage_postproc_inputs(tmp_path, 2206, ini, [941225, 941226], "c.list")
    assert staged.exposure_list.read_text() == "941225\n941226\n"
    assert staged.ini.name == "postproc_2206.ini"
    with pytest.raises(ValueError, match="exposures_listfile"):
        stage_postproc_inputs(tmp_path, 2206, ini, [1], "other.list")
    with pytest.raises(ValueError, match="no exposures"):
        stage_postproc_inputs(tmp_path, 2206, ini, [], "c.list")
    assert not list(tmp_path.glob(".*.tmp"))
