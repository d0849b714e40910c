"""The `desgw:` section of `autoproc.yaml`: the DESGW chain's configuration model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from autoproc.config import Seconds, Section
from autoproc.desgw.ccd import COPYBACK_SLACK_SECONDS


class DesgwConfig(Section):
    """DESGW seasons and exposures: gw_workflow, the grid, the /pnfs tree, post-processing
    (docs/DESGW.md)."""

    # Where things are.
    gw_workflow: Path | None = Field(
        default=None, description="The gw_workflow checkout: DAGMaker runs here, reading `dagmaker.rc` and "
        "`exposures.list`, and writes `desgw_pipeline_{EXPNUM}.dag` here. Required for exposures to run.")
    dagmaker_script: str = Field(
        default="./DAGMaker.sh", description="DAGMaker script, relative to gw_workflow or absolute "
        "(`./DAGMaker_proxyuser.sh` when not running as the desgw user).")
    setup_script: Path | None = Field(
        default=None, description="Sourced in the same shell just before DAGMaker (e.g. `setup_img_proc.sh`); "
        "none: DAGMaker runs in the daemon's environment.")
    exposures_list: Path | None = Field(
        default=None, description="Exposure table (band and nite by exact EXPNUM); default: "
        "<gw_workflow>/exposures.list.")
    jobsub_program: str = Field(
        default="jobsub_submit_dag", description="Run in place of the first token of the submit command "
        "DAGMaker prints (a full path such as /opt/jobsub_lite/bin/jobsub_submit_dag, or a name on PATH).")
    credential_check: list[str] = Field(
        default_factory=list, description="Command (argv, no shell) that must exit 0 before a DAG is submitted, "
        "e.g. [voms-proxy-info, -exists, -valid, '1:00']; empty: no check.")
    exp_root: Path = Field(
        default=Path("/pnfs/des/persistent/gw/exp"), description="Grid output tree: "
        "`{exp_root}/{nite}/{expnum}/dp{S}/{band}_{CC}/`. Its parent is post-processing's `rootdir`.")
    forcephoto_root: Path = Field(
        default=Path("/pnfs/des/persistent/gw/forcephoto/images"),
        description="Forced-photometry inputs: `{forcephoto_root}/dp{S}/{nite}/{expnum}/`.")
    postproc_dir: Path | None = Field(
        default=None, description="The Post-Processing checkout (run_postproc.py, diffimg_setup.sh); the "
        "ini and exposure list are written here. Required for post-processing.")
    template_ini: Path | None = Field(
        default=None, description="Template of `postproc_{S}.ini`; default: <postproc_dir>/template_postproc.ini.")
    outdir_root: Path | None = Field(
        default=None, description="Post-processing outputs go to `{outdir_root}/season{S}` unless the season "
        "names its own outdir; default: <postproc_dir>/outputs.")

    # Seasons.
    season_range: tuple[int, int] = Field(
        default=(100, 9999), description="Seasons picked automatically come from this range (lowest free first).")
    reserved_below: int = Field(
        default=100, ge=1, description="Seasons below this are never used (SN group and testing, docs/DESGW.md#seasons).")
    reserved_seasons: list[int] = Field(
        default_factory=lambda: [5000, 6000], description="Seasons never used (DES wide survey Y5 and Y6).")
    season_command: list[str] = Field(
        default_factory=list, description="Command (argv) printing the seasons already in the DES database, "
        "one or more per line; empty: the database is not asked.")
    season_command_timeout: Seconds = Field(default=120.0, description="Seconds the season command may take.")

    # Checks.
    min_ccds: int = Field(default=50, ge=1, description="Complete CCDs an exposure needs for post-processing.")
    skip_chips: list[int] = Field(
        default_factory=lambda: [2, 31, 61], description="DECam CCDs (of 1-62) the search DAG does not run.")
    poll_seconds: Seconds = Field(
        default=300.0, description="Seconds between sweeps of an exposure's output tree (dCache cannot be "
        "watched), and between credential checks while the proxy is expired.")
    stable_sweeps: int = Field(
        default=2, ge=1, description="A CCD or forcefile verdict is acted on once this many sweeps in a row, "
        "`poll_seconds` apart, saw the same files (unless every CCD has finished).")
    copyback_slack_minutes: float = Field(
        default=COPYBACK_SLACK_SECONDS / 60, ge=0, description="How long one SEdiff copyback may take: a "
        "`.FAIL` older than its CCD's tarball by more than this (or older than the CCD's "
        "`RUN28_combined_prepForcePhoto.LOG`) is left from an earlier run and ignored; a FAIL copied back "
        "with its tarball, in either order, is a failure of that run.")

    # Post-processing.
    postproc_python: str = Field(default="python", description="Interpreter that runs run_postproc.py.")
    postproc_update_links: bool = Field(
        default=True, description="Run `update_forcephoto_links.sh` (with `-n NITE` when all new exposures "
        "share one nite) before run_postproc.py.")
    postproc_settings: dict[str, str] = Field(
        default_factory=dict, description="Extra ini values, `section.key: value` (e.g. `general.db: destest`).")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stale_fail_slack" in data:
            raise ValueError("stale_fail_slack (seconds) was replaced by copyback_slack_minutes (minutes; "
                             "a FAIL within one copyback of its tarball, in either order, counts as a failure)")
        return data

    @model_validator(mode="after")
    def _check(self) -> DesgwConfig:
        low, high = self.season_range
        if not self.reserved_below <= low <= high:
            raise ValueError(f"season_range {low}..{high} must be non-empty and start at or above "
                             f"reserved_below ({self.reserved_below})")
        bad = [c for c in self.skip_chips if not 1 <= c <= 62]
        if bad:
            raise ValueError(f"skip_chips must be DECam CCDs 1-62, got {bad}")
        for key in self.postproc_settings:
            if key.count(".") != 1 or not all(key.split(".")):
                raise ValueError(f"postproc_settings key {key!r} must be `section.key`")
        return self

    @property
    def chips(self) -> tuple[int, ...]:
        """The CCDs whose outputs are checked."""
        return tuple(c for c in range(1, 63) if c not in self.skip_chips)

    @property
    def reserved(self) -> frozenset[int]:
        return frozenset(range(1, self.reserved_below)) | frozenset(self.reserved_seasons)
