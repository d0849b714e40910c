"""The daemon's configuration: one YAML file (`autoproc.yaml`) read into pydantic models.

Every section has defaults, so the embedded mode runs with no file at all: the state
database and the work directory live under one root directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoproc.errors import AutoprocError

PACKAGE_DIR = Path(__file__).resolve().parent
# What an installed site needs from the repository's top level (the machines, the example
# hooks, the systemd units) is package data: in a checkout `data/<name>` links to the
# top-level directory, and the wheel and sdist carry copies. One copy, one lookup.
DATA_DIR = PACKAGE_DIR / "data"
DEFAULT_MACHINES_DIR = DATA_DIR / "statemachines"

Seconds = Annotated[float, Field(ge=0)]


# The same rules as autoproc.deep.collections (STEP_RE) and statemachines/template.yaml's key_pattern.
_STEP_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class ConfigError(AutoprocError):
    """A configuration file that cannot be used; the message names the file and key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WatchRoot(Section):
    """One watched directory tree and the kind of file it delivers."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Short name used in logs and the store.")
    path: Path = Field(description="Directory to watch. It may be missing at start; it is picked up when it appears.")
    kind: str = Field(description="File kind: picks the validator and the subject the file feeds.")
    patterns: list[str] = Field(default=["*"], description="Glob patterns (on the file name) to accept.")
    ignore_patterns: list[str] = Field(
        default=[".*", "*.tmp", "*.part", "*~"], description="Glob patterns (on the file name) to ignore."
    )
    recursive: bool = Field(default=True, description="Watch subdirectories too.")
    mode: Literal["auto", "inotify", "poll"] = Field(
        default="auto", description="`auto` polls on network and FUSE mounts (read from /proc/self/mounts)."
    )
    poll_interval: Seconds = Field(default=5.0, description="Seconds between polls in poll mode.")
    quiet_seconds: Seconds = Field(
        default=2.0, description="A file not seen closed is ready once its size and mtime were quiet this long."
    )


class RetryPolicy(Section):
    """How often a failing action is tried again, and how long to wait between tries."""

    max_tries: int = Field(default=3, ge=1, description="Tries per state entry, the first included.")
    backoff_seconds: Seconds = Field(default=10.0, description="Wait before the second try.")
    backoff_factor: float = Field(default=2.0, ge=1.0, description="Each later wait is this many times longer.")
    max_backoff_seconds: Seconds = Field(default=600.0, description="Upper bound on one wait.")


class ProviderConfig(Section):
    """Where an HTEX executor gets its workers (Parsl provider)."""

    kind: Literal["local", "slurm"] = Field(default="local", description="LocalProvider or SlurmProvider.")
    partition: str | None = None
    account: str | None = None
    nodes_per_block: int = Field(default=1, ge=1)
    cores_per_node: int | None = Field(default=None, ge=1)
    mem_per_node: int | None = Field(default=None, ge=1, description="GB per node (Slurm).")
    walltime: str = "24:00:00"
    init_blocks: int = Field(default=0, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    worker_init: str = ""


class ExecutorConfig(Section):
    """Where actions run: Parsl threads in the daemon, or a Parsl HighThroughputExecutor."""

    kind: Literal["threads", "htex"] = Field(
        default="threads", description="`threads`: Parsl ThreadPoolExecutor in the daemon; `htex`: HighThroughputExecutor.")
    max_workers: int = Field(default=4, ge=1, description="Actions running at once.")
    provider: ProviderConfig = Field(default_factory=ProviderConfig, description="HTEX only.")
    heartbeat_seconds: int = Field(
        default=30, ge=1, description="HTEX only: how often worker pools check their workers and talk to the "
        "interchange. A killed worker's action is retried (its children killed first) within about this long; "
        "a silent pool is given up after four heartbeats.")


class HooksConfig(Section):
    """Executables run on the transitions they subscribe to (see `autoproc.hooks`)."""

    directory: Path | None = Field(default=None, description="Hook executables; default: <root>/hooks.")
    timeout_seconds: Seconds = Field(default=30.0, description="A hook still running then is killed, its process "
                                     "group included, and the kill recorded as a problem.")
    workers: int = Field(default=2, ge=1, description="Hooks running at once (threads beside the engine).")
    queue_size: int = Field(default=100, ge=1, description="Hook runs waiting at most; more are dropped and "
                            "recorded as a problem.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every hook (e.g. MAILTO, "
                                "SLACK_WEBHOOK_URL_FILE); the daemon's own environment is not passed on.")


class ReportConfig(Section):
    """The static HTML report page (`autoproc report`, and rewritten by the daemon)."""

    enabled: bool = Field(default=True, description="The daemon rewrites the page after changes.")
    directory: Path | None = Field(default=None, description="Where index.html goes; default: <root>/report.")
    min_interval_seconds: Seconds = Field(default=30.0, description="The daemon rewrites it at most this often.")
    subjects_per_kind: int = Field(default=500, ge=1, description="Subjects shown per kind (newest keys first).")
    attempt_rows: int = Field(default=100, ge=1, description="Recent attempts shown.")
    journal_rows: int = Field(default=200, ge=1, description="Recent journal rows shown.")


class BackupConfig(Section):
    """Online copies of the state database (SQLite's backup API), see RELIABILITY.md."""

    directory: Path | None = Field(default=None, description="Where backups go; default: <root>/backups. Best on "
                                   "another disk than the database.")
    interval_minutes: float = Field(default=60.0, ge=0, description="The daemon writes one this often (0: only at a "
                                    "clean stop and by hand, `autoproc store backup`).")
    keep: int = Field(default=24, ge=1, description="Backups kept; older ones are deleted after each new one.")
    at_stop: bool = Field(default=True, description="Write one when the daemon stops cleanly.")


class DeepConfig(Section):
    """DEEP nights on the Rubin middleware (domain/SPEC.md part A). The defaults run the simulated
    DECam and the mock DEEP pipelines shipped in `autoproc.sim.deep`; a site with the real science
    code points `pipelines` at its own YAMLs."""

    repo: Path | None = Field(default=None, description="Butler repository; default: <root>/repo.")
    registry_db: str | None = Field(
        default=None, pattern=r"^(postgresql(\+\w+)?|postgres|sqlite)://",
        description="Registry database URL (e.g. `postgresql://butler@host:5432/deep`); "
        "default: SQLite inside the repo. Used by `autoproc deep init` (see README, 'PostgreSQL registry').")
    registry_namespace: str | None = Field(
        default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema holding this repository's registry tables (the Butler's "
        "`namespace`); several repositories can share one database, one schema each. Default: `public`.")
    instrument: str = Field(default="DECam", pattern=r"^[A-Za-z0-9_]+$", description="Butler instrument name.")
    instrument_class: str = Field(
        default="autoproc.sim.deep.instrument.SimDECam",
        description="Instrument class registered by `autoproc deep init` (obs_decam's `lsst.obs.decam.DarkEnergyCamera` "
        "where it is installed).")
    prefix: str = Field(default="DEEP", description="First component of every DEEP collection name (SPEC §A.3).")
    raw_run: str = Field(default="DECam/raw/all", description="RUN collection all raws are ingested into.")
    fields: list[tuple[float, float]] = Field(
        default=[(150.0, 2.0)], description="(RA, Dec) degrees of the survey fields: `deep init` registers "
        "skymap tracts covering them.")
    skymap: str = Field(default="discrete", description="Skymap name (`deep init` registers it).")
    bpm_dir: Path | None = Field(default=None, description="Bad-pixel-mask files `deep init` turns into "
                                 "defects and suspect masks in <prefix>/calib.")
    fakes_table: Path | None = Field(default=None, description="Fake-source catalog `deep init` ingests "
                                     "into <prefix>/fakes.")
    refcat_command: list[str] | None = Field(default=None, description="Command `deep init` runs to ingest "
                                             "reference catalogs into `refcats` (argv, no shell).")
    ingest_backend: Literal["headers", "obs_base"] = Field(
        default="headers", description="`headers`: dimension records from the FITS headers, then Butler.ingest; "
        "`obs_base`: RawIngestTask + DefineVisitsTask (needs obs_base and obs_decam).")
    ingest_transfer: Literal["direct", "symlink", "copy", "link", "hardlink", "relsymlink"] = Field(
        default="direct", description="How ingested raws enter the datastore; `direct` leaves them where they are.")
    day_obs_rule: Literal["night", "obs_decam"] = Field(
        default="night", description="The night of a raw from DATE-OBS: `night` = date of TAI − 12 h (the local "
        "night at CTIO), `obs_decam` = TAI date. A manifest's `night` column wins.")
    manifest: Path | None = Field(
        default=None, description="`exposures.ecsv` (SPEC §A.2): gives each file's night, and a file is ready "
        "only once its md5 matches.")
    ingest_quiet_seconds: Seconds = Field(
        default=5.0, description="A night ingests its new raws in one batch once none arrived for this long.")
    pipelines: dict[str, str] = Field(
        default_factory=dict, description="Pipeline YAML per proc type (`bias`, `flat`, `drp`, `coadd`, "
        "`diff_drp`, `template`); unset ones are the simulator's DEEP-*.yaml.")
    steps: dict[str, list[str]] = Field(
        default_factory=dict, description="Steps (subset or task labels) run in order per proc type; unset "
        "ones are the DEEP lists: bias step1 step2; flat step0..step3; drp step0 step1 step2a..step2f step3a; "
        "coadd and template assembleCoadd (of DEEP-template.yaml); diff_drp step4a..step4e.")
    where: str = Field(default="instrument='DECam' AND skymap='discrete'",
                       description="Data query of every graph (the chains already select the night).")
    mode: Literal["bps", "pipetask"] = Field(
        default="bps", description="`bps`: `bps submit` with the Parsl plugin; `pipetask`: `pipetask run -j 1`.")
    submit_template: Path | None = Field(
        default=None, description="bps submit YAML template; default: the simulator's (Parsl LocalThreads site).")
    cores: int = Field(default=2, ge=1, description="Cores of the bps Parsl site.")
    clusters: dict[str, dict[str, Any]] | None = Field(
        default=None, description="bps `cluster:` entries ({name: {pipetasks, dimensions, equalDimensions}}), "
        "restricted to the labels of each step; default: per-exposure and per-visit clusters; {} = one job "
        "per quantum.")
    request_memory: int = Field(default=2048, ge=1, description="MB per bps job on a first try.")
    memory_factor: float = Field(default=2.0, ge=1.0, description="A memory-class failure retries the step "
                                 "with this many times the memory (within the state's retry budget).")
    max_memory: int = Field(default=65536, ge=1, description="Upper bound (MB) of the memory escalation.")
    registry_retry_seconds: Seconds = Field(
        default=15.0, description="A step that found the Butler registry unreachable waits this long, "
        "spending no retry, then tries again.")
    step_timeout_seconds: Seconds | None = Field(
        default=None, description="Kill a step's bps/pipetask process group after this long (then recover it).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for bps/pipetask children.")
    certify_begin: str = Field(default="2000-01-01T00:00:00", description="Start (TAI) of certified validity.")
    certify_end: str = Field(default="2050-01-01T00:00:00", description="End (TAI) of certified validity.")
    max_borrow_days: int = Field(default=14, ge=0, description="How far (nights) a missing bias or flat is "
                                 "borrowed from; none within reach = the night waits.")
    nightly_coadd: bool = Field(default=False, description="Coadd each night's own warps after DRP.")
    templates: dict[str, list[str] | str] = Field(
        default_factory=dict, description="Template coadds: name → member nights (a list of YYYYMMDD, or a "
        "regex over the nights known). A member night is differenced against it once it is built.")

    @model_validator(mode="after")
    def _names(self) -> DeepConfig:
        # Step and template names become collection names and argv elements: refuse anything odd here,
        # at load time, rather than when a night reaches the step.
        for proc, steps in self.steps.items():
            for step in steps:
                if not _STEP_NAME.match(step):
                    raise ValueError(f"steps.{proc}: step {step!r} must match {_STEP_NAME.pattern}")
        for name in self.templates:
            if not _TEMPLATE_NAME.match(name):
                raise ValueError(f"templates: name {name!r} must match {_TEMPLATE_NAME.pattern}")
        return self


class DesgwConfig(Section):
    """DESGW seasons and exposures: gw_workflow, the grid, the /pnfs tree, post-processing
    (domain/SPEC.md part B)."""

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
        default=100, ge=1, description="Seasons below this are never used (SN group and testing, SPEC §B.2).")
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
    stale_fail_slack: Seconds = Field(
        default=0.0, description="A `.FAIL` older than its CCD's tarball by more than this is stale (ignored).")

    # Post-processing.
    postproc_python: str = Field(default="python", description="Interpreter that runs run_postproc.py.")
    postproc_update_links: bool = Field(
        default=True, description="Run `update_forcephoto_links.sh` (with `-n NITE` when all new exposures "
        "share one nite) before run_postproc.py.")
    postproc_settings: dict[str, str] = Field(
        default_factory=dict, description="Extra ini values, `section.key: value` (e.g. `general.db: destest`).")

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


class Config(Section):
    """Top-level configuration (`autoproc.yaml`)."""

    root: Path = Field(
        default=Path("autoproc-data"),
        description="Directory holding the state database and the work directory ($AUTOPROC_ROOT if unset here).",
    )
    db: Path | None = Field(default=None, description="SQLite state database; default: <root>/autoproc.db.")
    work_dir: Path | None = Field(default=None, description="Per-attempt working directories; default: <root>/work.")
    machines_dir: Path = Field(default=DEFAULT_MACHINES_DIR, description="Directory of <kind>.yaml machines; default: the ones shipped "
                             "with autoproc (the repository's `statemachines/`).")
    kinds: list[str] = Field(default_factory=list, description="Machines to load; default: every YAML file there.")
    plugins: list[str] = Field(
        default_factory=list, description="Extra modules that register actions, conditions and file kinds."
    )
    watch: list[WatchRoot] = Field(default_factory=list, description="Directories whose new files feed subjects.")
    reconcile_minutes: float = Field(default=10.0, gt=0, description="Full rescan of watched roots.")
    poll_seconds: float = Field(default=30.0, gt=0, description="Seconds before an action that found nothing to "
                                "do yet runs again, unless it says when (`Outcome(None, retry_after=…)`).")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    max_interruptions: int = Field(
        default=30, ge=1, description="Daemon crashes (not clean stops) in a row, with no sign of progress between "
        "them, after which a state counts as failed: the guard against a step that takes the daemon down with it. "
        "An attempt that succeeds or reports progress (e.g. a DEEP step recovering finished quanta of the killed "
        "one) starts the count again, so outside kills of a step that moves forward never exhaust it; generous, "
        "because kills that come faster than a step can finish anything also count.")
    limits: dict[str, int] = Field(default_factory=dict, description="Actions running at once per concurrency group.")
    deadlines: dict[str, float] = Field(default_factory=dict, description="Seconds, by `kind.state`; overrides machines.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    deep: DeepConfig = Field(default_factory=DeepConfig)
    desgw: DesgwConfig = Field(default_factory=DesgwConfig)
    space_retry_seconds: float = Field(default=60.0, gt=0, description="An action that found its disk full "
                                       "(no space, file too large) waits this long, then tries again.")
    stop_timeout_seconds: float = Field(default=8.0, gt=0, description="SIGTERM to exit, children included.")

    @model_validator(mode="after")
    def _fill_paths(self) -> Config:
        self.root = self.root.expanduser()
        if self.db is None:
            self.db = self.root / "autoproc.db"
        if self.work_dir is None:
            self.work_dir = self.root / "work"
        if self.hooks.directory is None:
            self.hooks.directory = self.root / "hooks"
        if self.backup.directory is None:
            self.backup.directory = self.root / "backups"
        names = [w.name for w in self.watch]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"watch root names must be unique, repeated: {', '.join(duplicates)}")
        return self


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"  {where}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed YAML data; raises ConfigError naming the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, not {type(data).__name__}")
    if "root" not in data and os.environ.get("AUTOPROC_ROOT"):
        data = {**data, "root": os.environ["AUTOPROC_ROOT"]}
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: Path | str | None) -> Config:
    """Read `autoproc.yaml`; None means the embedded defaults."""
    if path is None:
        return parse_config({}, "<defaults>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(path))
