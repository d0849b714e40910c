"""Lay out a simulated DESGW site in a directory: gw_workflow, Post-Processing, /pnfs/des, spool, bin."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoproc.desgw.ccd import STEP_NAMES
from autoproc.sim.desgw.scenario import Scenario, parse_scenario

_HERE = Path(__file__).resolve().parent
_SCRIPTS = _HERE / "scripts"
_DATA = _HERE / "data"

STEP_NAMES_TEXT = "\n".join(STEP_NAMES) + "\n"  # Post-Processing/steplist.txt

# The keys of the current gw_workflow dagmaker.rc (docs/DESGW.md#dagmaker-rc), SEASON on line 19.
DAGMAKER_RC = """#
# dagmaker.rc for the simulated gw_workflow (keys and layout as the real file).
# DAGMaker.sh sources this file from the directory it runs in; values with spaces
# must be quoted.
#
#
#
RNUM=4
PNUM=7
#
#### A word on season numbers #######
# Never use season numbers below 11; they are reserved for the SNe group.
# Use a season number between 20 and 100 for testing and development.
# Seasons from 100 correspond to GW events: 1XX for event 1, 2XX for event 2, ...
# The first O3 event was season 600.
# Season 5000 is reserved for DES wide-survey difference imaging in Y5.
# Season 6000 is reserved for DES wide-survey difference imaging in Y6.
##############
SEASON=@SEASON@

DIFFIMG_EUPS_VERSION=gw8

# WRITEDB should be off for initial testing, but on for any production running.
WRITEDB=on

# When true, DAGMaker deletes a pre-existing mytemp dir for the exposure and reruns
RM_MYTEMP=true

JOBSUB_OPTS="--memory=2500MB --disk=70GB --cpu=1 --expected-lifetime=5h --need-storage-modify /des/persistent/gw/exp --need-storage-modify /des/persistent/gw/forcephoto -e GFAL_PLUGIN_DIR=/usr/lib64/gfal2-plugins -e GFAL_CONFIG_DIR=/etc/gfal2.d"
JOBSUB_OPTS_SE="--memory=3600MB --disk=100GB --cpu=1 --expected-lifetime=5h --need-storage-modify /des/persistent/gw/exp --need-storage-modify /des/persistent/gw/forcephoto"
JOBSUB_TEMP_OPTS="$JOBSUB_OPTS --lines='+FERMIHTC_AutoRelease=True' --lines='+FERMIHTC_GraceLifetime=43200' --lines='+FERMIHTC_GraceMemory=5000'"

RESOURCES="DEDICATED,OPPORTUNISTIC,OFFSITE"
IGNORECALIB=true
DESTCACHE=persistent

# optional additional arguments to SEdiff.sh
SEARCH_OPTS="-C"
TEMP_OPTS="-C -t"

### SCHEMA is the naming schema for the output files: gw or wsdiff.
SCHEMA="gw"
#t_eff cuts for each filter
TEFF_CUT_g=0.2
TEFF_CUT_i=0.3
TEFF_CUT_r=0.3
TEFF_CUT_Y=0.2
TEFF_CUT_z=0.3
TEFF_CUT_u=0.2
TWINDOW=15

#### ONLY use this option if you have nothing but late-time templates.
#MIN_NITE=20170831

#### Use only if you want to avoid using images taken after MAX_NITE as templates.
#MAX_NITE=20170901

# Remove as templates any images that look like they are missing SE output.
SKIP_INCOMPLETE_SE=false

### turn off header check for FIELD, OBJECT, TILING to save time.
DO_HEADER_CHECK=0

#Minimum stashcache revision version required for jobs to start.
#STASHVER=30511
"""


@dataclass(frozen=True)
class SimExposure:
    """One search exposure of the simulated night."""

    expnum: int
    nite: str
    band: str = "i"
    mjd_obs: float = 58709.3
    radeg: float = 12.8
    decdeg: float = -25.3
    exptime: float = 90.0
    propid: str = "2019B-0372"
    obstype: str = "object"
    teff: float | None = 0.5
    object: str = "DESGW: LIGO event S190814bv: 1 of 7"


@dataclass(frozen=True)
class SimSite:
    """Paths of a laid-out simulated site."""

    root: Path
    gw_workflow: Path
    postproc: Path
    pnfs: Path
    spool: Path
    bin_dir: Path
    scenario_path: Path
    season: int

    @property
    def exp_root(self) -> Path:
        """`/pnfs/des/persistent/gw/exp`."""
        return self.pnfs / "persistent" / "gw" / "exp"

    @property
    def forcephoto_root(self) -> Path:
        """`/pnfs/des/persistent/gw/forcephoto/images`."""
        return self.pnfs / "persistent" / "gw" / "forcephoto" / "images"

    @property
    def dagmaker(self) -> Path:
        return self.gw_workflow / "DAGMaker.sh"

    @property
    def jobsub(self) -> Path:
        return self.bin_dir / "jobsub_submit_dag"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment with the fake jobsub first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def grid_argv(self, once: bool = True) -> list[str]:
        """`python -m autoproc.sim.desgw.grid --spool … --pnfs … --scenario … [--once]`."""
        argv = [sys.executable, "-m", "autoproc.sim.desgw.grid", "--spool", str(self.spool),
                "--pnfs", str(self.pnfs), "--scenario", str(self.scenario_path)]
        return argv + (["--once"] if once else [])

    def write_scenario(self, scenario: Scenario | Mapping[str, Any]) -> Scenario:
        """Replace the scenario (the grid reads it at each pickup; the fake scripts' copies too)."""
        sc = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario)
        sc.dump(self.scenario_path)
        _write_script_configs(self, sc)
        return sc


def format_exposures_list(exposures: Iterable[SimExposure]) -> str:
    """`exposures.list` in DataFrame.to_string(index=False, justify='left') layout."""
    header = ["expnum", "nite", "mjd_obs", "radeg", "decdeg", "band", "exptime", "propid",
              "obstype", "teff", "object"]
    rows = [[str(e.expnum), e.nite, f"{e.mjd_obs:.6f}", f"{e.radeg:.6f}", f"{e.decdeg:.6f}", e.band,
             f"{e.exptime:.1f}", e.propid, e.obstype, "NaN" if e.teff is None else f"{e.teff:.3f}", e.object]
            for e in exposures]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: " ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(r) for r in rows]) + "\n"


def _install_script(src: Path, dest: Path) -> None:
    text = src.read_text()
    dest.write_text(f"#!{sys.executable}\n{text}")
    dest.chmod(0o755)


def _write_script_configs(site: SimSite, scenario: Scenario) -> None:
    def beh(b: Any) -> dict[str, Any]:
        return {"no_templates": b.no_templates, "dagmaker_fail": b.dagmaker_fail, "templates": b.templates}

    (site.gw_workflow / "sim_site.json").write_text(json.dumps({
        "pnfs": str(site.pnfs),
        "default": beh(scenario.default),
        "exposures": {str(k): beh(v) for k, v in scenario.exposures.items()},
    }, indent=1))
    fail = [str(k) for k, v in scenario.exposures.items() if v.jobsub_fail]
    (site.bin_dir / "sim_jobsub.json").write_text(json.dumps({"spool": str(site.spool), "fail_expnums": fail}))
    (site.postproc / "sim_postproc.json").write_text(json.dumps({
        "step_sleep": scenario.postproc_step_sleep, "empty_plots": scenario.postproc_empty_plots,
    }))


def make_site(
    root: Path,
    exposures: Iterable[SimExposure],
    scenario: Scenario | Mapping[str, Any] | None = None,
    season: int = 2206,
) -> SimSite:
    """Create gw_workflow/, Post-Processing/, pnfs/, spool/, bin/ and scenario.yaml under `root`."""
    root = Path(root).resolve()
    site = SimSite(
        root=root, gw_workflow=root / "gw_workflow", postproc=root / "Post-Processing",
        pnfs=root / "pnfs" / "des", spool=root / "spool", bin_dir=root / "bin",
        scenario_path=root / "scenario.yaml", season=season,
    )
    for d in (site.gw_workflow, site.postproc, site.pnfs, site.bin_dir, site.exp_root, site.forcephoto_root):
        d.mkdir(parents=True, exist_ok=True)
    for state in ("incoming", "running", "done"):
        (site.spool / state).mkdir(parents=True, exist_ok=True)
    exposures = list(exposures)
    (site.gw_workflow / "exposures.list").write_text(format_exposures_list(exposures))
    (site.gw_workflow / "dagmaker.rc").write_text(DAGMAKER_RC.replace("@SEASON@", str(season)))
    _install_script(_SCRIPTS / "dagmaker_sh.py", site.dagmaker)
    _install_script(_SCRIPTS / "jobsub_submit_dag.py", site.jobsub)
    _install_script(_SCRIPTS / "run_postproc.py", site.postproc / "run_postproc.py")
    _install_script(_SCRIPTS / "get_season.py", site.postproc / "getSeason.py")
    setup = (_DATA / "diffimg_setup.sh").read_text().replace(
        "@ROOTDIR@", shlex.quote(str(site.pnfs / "persistent" / "gw")))
    (site.postproc / "diffimg_setup.sh").write_text(setup)
    links = site.postproc / "update_forcephoto_links.sh"
    links.write_text((_DATA / "update_forcephoto_links.sh").read_text())
    links.chmod(0o755)
    (site.postproc / "template_postproc.ini").write_text((_DATA / "template_postproc.ini").read_text())
    (site.postproc / "steplist.txt").write_text(STEP_NAMES_TEXT)
    site.write_scenario(scenario if scenario is not None else Scenario())
    return site
