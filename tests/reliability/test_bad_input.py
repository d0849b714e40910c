"""Bad input (issue 6): the corpus in tests/data/bad/ (regenerate: python tests/data/make_bad.py)
fed through a real daemon where one reaches it, through intake and the parsers otherwise.
Every bad input gets a recorded reason that says what and where; everything else proceeds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoproc import intake
from autoproc.config import ConfigError, load_config, parse_config
from autoproc.desgw import exposures, postproc, rc
from autoproc.desgw.errors import DesgwInputError
from autoproc.machines import load_machines
from autoproc.store import Store
from conftest import Daemon, child_env, states, wait_for

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad"
sys.path.insert(0, str(ROOT / "tests" / "data"))
from make_bad import EXPECTED_RAWS, HOSTILE_NAMES, NIGHT  # noqa: E402

N = f"{NIGHT:08d}"
FAST_STEPS = {"bias": ["step1", "step2"], "flat": ["step1", "step2", "step3"], "drp": ["step1"]}


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=120, check=False)


def setpriv_works() -> bool:
    if not shutil.which("setpriv"):
        return False
    res = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",  # noqa: S603, S607
                          sys.executable, "-c", "pass"], capture_output=True, check=False)
    return res.returncode == 0


class CaplessDaemon(Daemon):
    """The daemon as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: chmod 000 really denies reading."""

    def start(self) -> CaplessDaemon:
        out = open(self.log, "a")
        prefix = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
                  if os.geteuid() == 0 else [])
        self.proc = subprocess.Popen(  # noqa: S603
            [*prefix, sys.executable, "-m", "autoproc.cli", "-c", str(self.config_path), "daemon"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        out.close()
        return self


def no_pwned(*roots: Path) -> list[Path]:
    found = [p for r in roots if r.exists() for p in r.rglob("PWNED*") if p.name == "PWNED"]
    return found + [p for p in (Path.cwd() / "PWNED", Path("/PWNED"), Path.home() / "PWNED") if p.exists()]


@pytest.mark.slow
def test_bad_raws_through_the_daemon_night_proceeds(write_config, tmp_path, request):
    pytest.importorskip("lsst.daf.butler")
    if os.geteuid() == 0 and not setpriv_works():
        pytest.skip("root without setpriv: an unreadable file cannot be made")
    raws = tmp_path / "raws"
    config, path = write_config(
        machines_dir=str(ROOT / "statemachines"), kinds=["night", "template"],
        watch=[{"name": "raws", "path": str(raws), "kind": "raw", "patterns": ["*.fits"], "mode": "inotify",
                "quiet_seconds": 0.5}],
        deep={"mode": "pipetask", "ingest_quiet_seconds": 1.0, "steps": FAST_STEPS, "incomplete_grace_seconds": 1.0})
    assert cli(path, "deep", "init").returncode == 0
    # The corpus, plus what git cannot hold: a symlink loop, a directory loop, an unreadable raw.
    shutil.copytree(BAD / "raws", raws)
    (raws / "loop.fits").symlink_to("loop.fits")
    (raws / "loopdir").symlink_to(".")
    shutil.copy(raws / "with space.fits", raws / "unreadable.fits")
    (raws / "unreadable.fits").chmod(0)
    # A good night streamed alongside, by the simulator.
    good = subprocess.Popen([sys.executable, "-m", "autoproc.sim.deep.night", "--out", str(raws),  # noqa: S603
                             "--night", N, "--interval", "0.05", "--science", "VR:1", "--n-bias", "2",
                             "--flats", "1"], stdout=subprocess.DEVNULL, env=child_env())
    assert good.wait(60) == 0
    daemon = CaplessDaemon(path, tmp_path / "daemon.log").start()
    request.addfinalizer(daemon.stop)

    def night_done() -> bool:
        now = states(config, "night")
        if now.get(N) == "failed":
            pytest.fail(f"night failed:\n{daemon.output()[-3000:]}")
        return now.get(N) == "done"

    wait_for(night_done, timeout=150, interval=0.5, what=f"night {N} done despite the bad raws")

    store = Store(config.db)
    files = {Path(f["path"]).relative_to(raws).as_posix(): f for f in store.files(limit=1000)}
    bad = {k: f["reason"] for k, f in files.items() if f["status"] == "bad"}
    for name, expect in EXPECTED_RAWS.items():
        if expect == "ingested":
            assert files[name]["status"] == "consumed", (name, files.get(name))
        elif expect != "dup":
            assert expect in bad[name], (name, bad.get(name))
    # The same EXPNUM twice with different content: exactly one refused, saying which and why.
    dups = {k: v for k, v in bad.items() if k.startswith("dup_expnum_")}
    assert len(dups) == 1, dups
    (dup_reason,) = dups.values()
    assert "990007" in dup_reason and ("also in" in dup_reason or "different metadata" in dup_reason)
    assert "Permission denied" in bad["unreadable.fits"]
    # The loops are watch problems, said once, with the path (not files).
    problems = " ".join(p["message"] for p in store.problems(limit=100))
    assert "loop.fits" in problems and "loopdir" in problems, problems
    # Every good raw of the night (2 zeros, 1 flat, 1 science), the valid odd-named ones, one of the
    # duplicates and the incomplete one (after its grace) went through.
    assert sum(f["status"] == "consumed" for f in files.values()) == 4 + len(HOSTILE_NAMES) + 3
    short = store.subject("night", N).data["missing_detectors"]
    assert short == {"990017": {"path": str(raws / "truncated_at_block.fits"), "missing": [],
                                "reason": "1 of NEXTEND=2 extensions (CCDs present: 1)"}}
    tried = len(EXPECTED_RAWS) + 3
    store.close()

    # What an operator sees: `status --json` lists the bad files with reasons; `show` the night's own.
    status = json.loads(cli(path, "status", "--json").stdout)
    listed = {Path(f["path"]).name: f["reason"] for f in status["bad_files"]}
    assert "missing header key(s): EXPNUM, DATE-OBS" in listed["missing_keys.fits"]
    shown = json.loads(cli(path, "show", "night", N, "--json").stdout)
    assert shown["state"] == "done"
    # The report: each bad name and reason, HTML-escaped (the <script> name never raw).
    res = cli(path, "report", "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.fits" in page
    assert "truncated FITS file: 4000 bytes is not a multiple of 2880" in page
    assert no_pwned(tmp_path, ROOT) == []
    print(f"bad-input figures: raws tried={tried} bad={len(bad)} problems=2 lost=0")


def test_manifest_and_duplicate_expnum_in_a_later_batch(tmp_path):
    """A second file with an already-ingested EXPNUM but another DATE-OBS is bad (it was silently
    'skipped: already ingested' before); a malformed manifest is a clear reason, not a KeyError."""
    pytest.importorskip("lsst.daf.butler")
    from lsst.daf.butler import Butler

    from autoproc.deep.ingest import ManifestError, ingest_raws, load_manifest
    from autoproc.sim.deep.instrument import SimDECam

    Butler.makeRepo(str(tmp_path / "repo"))
    b = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    SimDECam().register(b.registry)
    try:
        first = ingest_raws(b, [BAD / "raws" / "dup_expnum_a.fits"])
        assert len(first.ingested) == 1 and not first.bad
        second = ingest_raws(b, [BAD / "raws" / "dup_expnum_b.fits"])
        assert not second.skipped and not second.ingested
        reason = second.bad[BAD / "raws" / "dup_expnum_b.fits"]
        assert "exposure 990007 already registered with different metadata (" in reason
        assert "DATE-OBS 2024-06-20T" in reason and "the same EXPNUM twice with different content" in reason
        assert len(reason) < 400, reason
        again = ingest_raws(b, [BAD / "raws" / "dup_expnum_a.fits"])  # the same file again: a skip
        assert list(again.skipped.values()) == ["exposure 990007 already ingested in DECam/raw/all"] or \
            "already ingested" in next(iter(again.skipped.values()))
    finally:
        b.close()
    expected = {
        "not_ecsv.exposures.ecsv": 'ECSV header line like "# %ECSV <version>" not found',
        "bad_yaml.exposures.ecsv": "unable to parse yaml in meta header",
        "missing_columns.exposures.ecsv": "missing column(s): md5sum, EXPNUM, obs_type, night or caldat",
        "bad_number.exposures.ecsv": "column 'EXPNUM' failed to convert",
    }
    for name, text in expected.items():
        with pytest.raises(ManifestError) as err:
            load_manifest(BAD / "deep" / name)
        assert f"manifest {BAD / 'deep' / name}: not a usable exposures.ecsv" in str(err.value)
        assert text in str(err.value), str(err.value)


def test_bad_manifest_is_a_recorded_reason_at_intake(tmp_path):
    """With `deep.manifest` naming a malformed exposures.ecsv, each raw is refused with that reason
    (before: a KeyError escaped the validator into the engine)."""
    pytest.importorskip("astropy")
    config = parse_config({"root": str(tmp_path / "root"), "machines_dir": str(ROOT / "statemachines"),
                           "kinds": ["night", "template"],
                           "deep": {"manifest": str(BAD / "deep" / "missing_columns.exposures.ecsv")}})
    machines = load_machines(config.machines_dir, config.kinds)
    store = Store(config.db)
    raw = BAD / "raws" / "with space.fits"
    st = raw.stat()
    got = intake.accept(store, config, machines, intake.Arrival("raws", "raw", str(raw), st.st_size, st.st_mtime))
    assert got is None
    (row,) = store.files(status="bad")
    assert "not a usable exposures.ecsv" in row["reason"] and "missing column(s)" in row["reason"]
    store.close()


def test_bad_season_lists_at_intake_good_one_proceeds(tmp_path):
    """Season list files (kind desgw_exposure_list) through intake into a store: each bad one is a
    recorded reason naming the file and line; the good one creates its season."""
    config = parse_config({"root": str(tmp_path / "root"), "machines_dir": str(ROOT / "statemachines"),
                           "kinds": ["exposure", "season"]})
    machines = load_machines(config.machines_dir, config.kinds)
    store = Store(config.db)
    lists = tmp_path / "lists"
    shutil.copytree(BAD / "desgw", lists)
    (lists / "S2207_good.list").write_text("941201\n941202\n")
    expected = {
        "S2206_metachar.list": ":2: '$(touch PWNED)' is not an exposure number",
        "S2206_backtick.list": ":2: '`touch PWNED`' is not an exposure number",
        "S2206_dup.list": ":3: expnum 941201 already listed on line 1",
        "S2206_empty.list": "S2206_empty.list: no exposure numbers in it",
        "S2206_binary.list": ":1: '\\x00\\x01\\x02garbage' is not an exposure number",
        "no_season_in_name.list": "the name must start with the season",
    }
    for p in sorted(lists.glob("*.list")):
        if ".exposures." in p.name:
            continue  # exposures.list tables: the parser tests below
        st = p.stat()
        intake.accept(store, config, machines, intake.Arrival("lists", "desgw_exposure_list", str(p),
                                                              st.st_size, st.st_mtime))
    bad = {Path(f["path"]).name: f["reason"] for f in store.files(status="bad")}
    assert set(bad) == set(expected)
    for name, text in expected.items():
        assert text in bad[name], (name, bad[name])
    assert [s.key for s in store.subjects("season")] == ["2207"]
    store.close()
    assert no_pwned(tmp_path) == []


EXPOSURES_LIST = {
    "empty.exposures.list": "empty file: expected a header line starting with 'expnum'",
    "no_header.exposures.list": ":1: header must start with expnum nite",
    "short_row.exposures.list": ":2: expected at least 10 columns, got 3",
    "bad_expnum.exposures.list": ":2: column expnum: '$(touch' is not a positive integer",
    "bad_nite.exposures.list": ":2: column nite: '2019-08-14' is not YYYYMMDD",
    "bad_band.exposures.list": ":2: column band: 'q' is not one of",
    "dup_expnum.exposures.list": ":3: expnum 941201 already listed on line 2",
    "nan_ra.exposures.list": ":2: column ",
}
RC = {
    "unterminated_quote.dagmaker.rc": ":2: value of RNUM has an unterminated ' quote",
    "continuation.dagmaker.rc": ":2: value of RNUM ends in a line continuation (not supported)",
    "no_season.dagmaker.rc": "no_season.dagmaker.rc: no SEASON= line",
    "season_not_int.dagmaker.rc": "SEASON='22a6' is not a positive integer",
    "command_substitution.dagmaker.rc": ":2: value of RNUM has unquoted text after it ('PWNED)')",
}
INI = {
    "no_section.postproc.ini": ":1: text before the first [section]: 'season = 2206'",
    "dup_option.postproc.ini": ":3: ",
    "dup_section.postproc.ini": ":3: ",
    "not_key_value.postproc.ini": ":3: not a 'key = value' line",
}
CONFIG = {
    "not_yaml.autoproc.yaml": "not valid YAML at line 3, column 1",
    "top_level_list.autoproc.yaml": "the top level must be a mapping of keys, not list",
    "unknown_key.autoproc.yaml": "poll_secs: Extra inputs are not permitted",
    "wrong_type.autoproc.yaml": "poll_seconds: Input should be a valid number",
    "bad_watch.autoproc.yaml": "watch.0.path: Field required",
    "binary.autoproc.yaml": "not valid YAML",
}


@pytest.mark.parametrize("name", sorted(EXPOSURES_LIST))
def test_malformed_exposures_list(name):
    with pytest.raises(DesgwInputError) as err:
        exposures.read_exposures_list(BAD / "desgw" / name)
    assert name in str(err.value) and EXPOSURES_LIST[name] in str(err.value), str(err.value)


@pytest.mark.parametrize("name", sorted(RC))
def test_malformed_dagmaker_rc(name):
    with pytest.raises(DesgwInputError) as err:
        rc.rc_season(rc.read_rc(BAD / "desgw" / name), name)
    assert name in str(err.value) and RC[name] in str(err.value), str(err.value)


@pytest.mark.parametrize("name", sorted(INI))
def test_malformed_postproc_template(name):
    with pytest.raises(DesgwInputError) as err:
        postproc.parse_ini((BAD / "desgw" / name).read_text(), name)
    assert str(err.value).startswith(name) and INI[name] in str(err.value), str(err.value)


@pytest.mark.parametrize("name", sorted(CONFIG))
def test_malformed_config(name):
    with pytest.raises(ConfigError) as err:
        load_config(BAD / "config" / name)
    assert name in str(err.value) and CONFIG[name] in str(err.value), str(err.value)


def test_malformed_config_refused_by_the_cli(tmp_path):
    """The CLI says what is wrong with autoproc.yaml and where, and exits non-zero (no traceback)."""
    res = cli(BAD / "config" / "unknown_key.autoproc.yaml", "status")
    assert res.returncode != 0
    assert "poll_secs: Extra inputs are not permitted" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_a_crashing_validator_is_a_recorded_reason(tmp_path):
    """A file kind whose validator raises something other than ValueError/OSError (a plugin bug, a
    library's KeyError) marks the file bad with that exception; it used to escape intake."""
    from autoproc.actions import file_kind

    @file_kind("reliability_crashing_kind")
    def crashing(path: Path, config):
        raise KeyError("caldat")

    config = parse_config({"root": str(tmp_path / "root"), "machines_dir": str(ROOT / "statemachines"),
                           "kinds": ["night", "template"]})
    store = Store(config.db)
    p = tmp_path / "x.fits"
    p.write_bytes(b"")
    got = intake.accept(store, config, load_machines(config.machines_dir, config.kinds),
                        intake.Arrival("r", "reliability_crashing_kind", str(p), 0, p.stat().st_mtime))
    assert got is None
    (row,) = store.files(status="bad")
    assert row["reason"] == "validator for 'reliability_crashing_kind' failed: KeyError: 'caldat'"
    store.close()
