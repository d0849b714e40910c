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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoproc.desgw.ccd import COPYBACK_SLACK_SECONDS
from autoproc.errors import AutoprocError

PACKAGE_DIR = Path(__file__).resolve().parent
# What an installed site needs from the repository's top level (the machines, the example
# hooks, the systemd units) is package data: in a checkout `data/<name>` links to the
# top-level directory, and the wheel and sdist carry copies. One copy, one lookup.
DATA_DIR = PACKAGE_DIR / "data"
DEFAULT_MACHINES_DIR = DATA_DIR / "statemachines"

Seconds = Annotated[float, Field(ge=0)]
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "VERBOSE", "DEBUG", "TRACE")


def check_level(name: str) -> str:
    """A log level name (lsst.utils' VERBOSE and TRACE included), upper-cased."""
    if name.upper() not in LOG_LEVELS:
        raise ValueError(f"{name!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return name.upper()


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


# Slurm names (partition, account, QOS, constraint) go into `#SBATCH` lines of a batch script.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+-]+$")
# sbatch --time forms with hours: [D-]HH:MM:SS (Parsl and the bps Slurm site pass it through as is).
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")


def _slurm_name(value: str | None) -> str | None:
    if value is not None and not _SLURM_NAME.match(value):
        raise ValueError(f"{value!r} must match {_SLURM_NAME.pattern}")
    return value


def _walltime(value: str) -> str:
    if not _WALLTIME.match(value) or value.replace("-", ":").strip("0:") == "":
        raise ValueError(f"{value!r} is not a time limit of the form [D-]HH:MM:SS greater than zero")
    return value


def _sbatch_lines(lines: list[str]) -> list[str]:
    for line in lines:
        if "\n" in line or "\r" in line or not re.match(r"^#SBATCH\s+--?[A-Za-z]", line):
            raise ValueError(f"{line!r} is not one `#SBATCH --option` line")
    return lines


class ProviderConfig(Section):
    """Where an HTEX executor gets its workers (Parsl provider). Every key but `kind`,
    `init_blocks`, `min_blocks`, `max_blocks` and `worker_init` is for `kind: slurm` only."""

    kind: Literal["local", "slurm"] = Field(default="local", description="LocalProvider or SlurmProvider.")
    partition: str | None = Field(default=None, description="Slurm partition of the blocks; default: the "
                                  "cluster's default partition.")
    account: str | None = Field(default=None, description="Slurm account charged for the blocks.")
    qos: str | None = Field(default=None, description="Slurm quality of service of the blocks.")
    constraint: str | None = Field(default=None, description="Slurm node features a block needs (`--constraint`).")
    nodes_per_block: int = Field(default=1, ge=1, description="Nodes per block (one Slurm job).")
    cores_per_node: int | None = Field(default=None, ge=1, description="Cores per node of a block; default: "
                                       "all of them.")
    mem_per_node: int | None = Field(default=None, ge=1, description="GB per node (Slurm).")
    exclusive: bool = Field(default=True, description="A block takes whole nodes (`--exclusive`); false shares "
                            "them, which `cores_per_node` and `mem_per_node` then bound.")
    walltime: str = Field(default="24:00:00", description="Time limit of one block, `[D-]HH:MM:SS`; a block that "
                          "reaches it is replaced (the actions it ran are retried).")
    init_blocks: int = Field(default=0, ge=0, description="Blocks started with the daemon (local: at least 1).")
    min_blocks: int = Field(default=0, ge=0, description="Blocks kept even when idle.")
    max_blocks: int = Field(default=1, ge=1, description="Blocks at most.")
    launcher: Literal["single_node", "srun"] = Field(
        default="single_node", description="How a block starts its worker pools: `single_node` (one pool, on the "
        "batch host) or `srun` (one per node; with `--export=NONE` put `export SLURM_EXPORT_ENV=ALL` in "
        "worker_init).")
    worker_init: str = Field(default="", description="Shell lines run before a block's workers start, e.g. "
                             "`source /opt/autoproc/bin/activate`: a worker needs the daemon's Python environment.")
    scheduler_options: list[str] = Field(
        default_factory=list, description="Extra `#SBATCH --option` lines of a block's batch script.")

    _names = field_validator("partition", "account", "qos", "constraint")(_slurm_name)
    _walltime = field_validator("walltime")(_walltime)
    _sbatch = field_validator("scheduler_options")(_sbatch_lines)

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.min_blocks > self.max_blocks:
            raise ValueError(f"min_blocks ({self.min_blocks}) is more than max_blocks ({self.max_blocks})")
        if self.init_blocks > self.max_blocks:
            raise ValueError(f"init_blocks ({self.init_blocks}) is more than max_blocks ({self.max_blocks})")
        if self.kind != "slurm":
            slurm_only = sorted(k for k in self.model_fields_set if k in _SLURM_ONLY)
            if slurm_only:
                raise ValueError(f"{', '.join(slurm_only)}: only for kind slurm (kind is {self.kind})")
        return self


_SLURM_ONLY = frozenset(set(ProviderConfig.model_fields) - {"kind", "init_blocks", "min_blocks", "max_blocks",
                                                             "worker_init"})


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
    address: str | None = Field(
        default=None, description="HTEX only: the address workers reach the daemon's interchange at (a host name "
        "or IP of the daemon's host that compute nodes can route to); default: Parsl's guess.")
    strategy_period: float = Field(
        default=5.0, gt=0, description="HTEX only: seconds between Parsl's looks at the queue to start or stop "
        "blocks (the first block starts after about one period).")

    @property
    def uses_slurm(self) -> bool:
        return self.kind == "htex" and self.provider.kind == "slurm"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.:-]+$", value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value


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


class AccessList(Section):
    """Users and groups (names, as in /etc/passwd and /etc/group)."""

    users: list[str] = Field(default_factory=list, description="User names.")
    groups: list[str] = Field(default_factory=list, description="Group names; members (primary or supplementary) "
                              "are included.")


class Operators(AccessList):
    """Who may change state through the control socket, besides the daemon's own user and root
    (who can write the database anyway)."""


class Viewers(AccessList):
    """Who may read (status, show, history, report, desgw report) through the control socket;
    operators may too."""


class ControlConfig(Section):
    """The daemon's control socket: the CLI's overrides go through it while the daemon runs, and the
    daemon journals who sent them from the socket's peer credentials (`autoproc.control`)."""

    enabled: bool = Field(default=True, description="Listen on the socket.")
    socket: Path | None = Field(
        default=None, description="Unix socket path; default: <root>/control.sock. Under the system unit: "
        "/run/autoproc/control.sock (its RuntimeDirectory).")
    group: str | None = Field(
        default=None, description="Group given the socket (mode 0660): who may connect at all; default: the "
        "daemon's own group.")
    operators: Operators = Field(default_factory=Operators)
    viewers: Viewers = Field(default_factory=Viewers)
    timeout_seconds: Seconds = Field(
        default=5.0, description="A client must send its whole request within this long, and take the reply.")
    max_request_bytes: int = Field(default=65536, ge=1024, description="Larger requests are refused unread.")
    max_clients: int = Field(default=8, ge=1, description="Connections served at once; more are refused.")


class LoggingConfig(Section):
    """The daemon's own log (stderr, or the journal under systemd). Library loggers are quiet there:
    their full output stays in each attempt's log."""

    level: str = Field(default="INFO", description="Level of autoproc's own loggers.")
    libraries: str = Field(
        default="WARNING", description="Level of every other logger (lsst.*, transitions, parsl, …).")
    loggers: dict[str, str] = Field(
        default_factory=dict, description="Level per logger name, e.g. `lsst.daf.butler: DEBUG`; wins over both.")
    long: bool = Field(default=False, description="Long format: also the thread, the file and the line.")

    @model_validator(mode="after")
    def _levels(self) -> LoggingConfig:
        for where, level in [("level", self.level), ("libraries", self.libraries),
                             *((f"loggers.{k}", v) for k, v in self.loggers.items())]:
            try:
                check_level(level)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        return self


class MetricsConfig(Section):
    """Prometheus metrics (`autoproc.metrics`): a text-format file for node_exporter's textfile collector,
    and optionally `/metrics` over HTTP on a loopback address."""

    file: Path | None = Field(
        default=None, description="Written atomically every `interval_seconds`; default: <root>/autoproc.prom. "
        "Point node_exporter's --collector.textfile.directory at its directory.")
    interval_seconds: Seconds = Field(default=15.0, description="How often the metrics are gathered.")
    listen: str | None = Field(
        default=None, description="`HOST:PORT` to serve `/metrics` on (loopback only, e.g. 127.0.0.1:9464); "
        "none: no HTTP server.")

    @field_validator("listen")
    @classmethod
    def _loopback(cls, listen: str | None) -> str | None:
        if listen is not None:
            host, sep, port = listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be HOST:PORT")
            if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"{host!r} is not a loopback address (127.0.0.1, ::1, localhost)")
        return listen


class BpsSlurmSite(Section):
    """The Slurm jobs of a DEEP step under `deep.bps_site: slurm` (ctrl_bps_parsl's `Slurm`
    site: one block of `nodes` per step, cancelled when the step ends)."""

    partition: str | None = Field(default=None, description="Slurm partition; default: the cluster's default.")
    account: str | None = Field(default=None, description="Slurm account charged.")
    qos: str | None = Field(default=None, description="Slurm quality of service.")
    nodes: int = Field(default=1, ge=1, description="Nodes of a step's block.")
    cores_per_node: int | None = Field(default=None, ge=1, description="Cores per node; default: all.")
    mem_per_node: int | None = Field(default=None, ge=1, description="GB per node; default: Slurm's.")
    walltime: str = Field(default="04:00:00", description="Time limit of a step's block, `[D-]HH:MM:SS`.")
    scheduler_options: list[str] = Field(default_factory=list, description="Extra `#SBATCH --option` lines.")

    _names = field_validator("partition", "account", "qos")(_slurm_name)
    _walltime = field_validator("walltime")(_walltime)
    _sbatch = field_validator("scheduler_options")(_sbatch_lines)

    def site_settings(self, comment: str | None = None) -> dict[str, Any]:
        """The bps `site.slurm` values these give (`comment` tags the block, see autoproc.slurm)."""
        lines = [*([f"#SBATCH --partition={self.partition}"] if self.partition else []), *self.scheduler_options,
                 *([f"#SBATCH --comment={comment}"] if comment else [])]
        out: dict[str, Any] = {"nodes": self.nodes, "walltime": self.walltime, "scheduler_options": "\n".join(lines)}
        for key in ("account", "qos", "cores_per_node", "mem_per_node"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


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
        default=None, description="`exposures.ecsv` (SPEC §A.2): gives each file's night, and a file is complete "
        "only once its md5 matches.")
    ingest_quiet_seconds: Seconds = Field(
        default=5.0, description="A night ingests its new raws in one batch once none arrived for this long.")
    expected_detectors: dict[str, list[int]] = Field(
        default_factory=dict, description="CCDNUMs a complete raw carries, per OBSTYPE (`zero`, `dome flat`, "
        "`object`, or `*` for any), where a file has no NEXTEND; unset: every DECam CCD (1-62).")
    incomplete_grace_seconds: Seconds = Field(
        default=600.0, description="A raw short of HDUs (or of its manifest md5) waits this long after its last "
        "change; then it is ingested with its missing CCDs recorded (an md5 mismatch is then a bad file).")
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
    warm: bool = Field(
        default=True, description="mode `pipetask`: each step's `pipetask run` is forked "
        "from a server that has the middleware imported already, in its own process group with its own log "
        "(no 1-3 s of start-up per step); false: a fresh `pipetask` process per step.")
    warm_preload: list[str] = Field(
        default_factory=list, description="Python modules the warm server imports once besides the middleware "
        "(e.g. the science tasks' modules, `lsst.ip.isr`), so no step pays their import.")
    bps_site: Literal["local", "slurm"] = Field(
        default="local", description="Where `bps` runs a step's quanta: `local` (Parsl threads beside bps) or "
        "`slurm` (ctrl_bps_parsl's Slurm site, one Slurm job per step; see `slurm`). Picks the shipped submit "
        "template.")
    slurm: BpsSlurmSite = Field(default_factory=BpsSlurmSite, description="The Slurm site (bps_site: slurm).")
    submit_template: Path | None = Field(
        default=None, description="bps submit YAML template; default: the shipped one of `bps_site` (the "
        "simulator's Parsl LocalThreads site, or ctrl_bps_parsl's Slurm site).")
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

    @property
    def steps_on_slurm(self) -> bool:
        """Each step's quanta run in a Slurm job of its own (bps on the Slurm site)."""
        return self.mode == "bps" and self.bps_site == "slurm"

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
        from autoproc.deep.decam import DETECTORS

        for obstype, ccds in self.expected_detectors.items():
            unknown = sorted(set(ccds) - set(DETECTORS))
            if unknown or not ccds:
                raise ValueError(f"expected_detectors.{obstype}: "
                                 + (f"CCDNUM {unknown} not DECam's (1-62)" if unknown else "an empty list"))
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
    control: ControlConfig = Field(default_factory=ControlConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    deep: DeepConfig = Field(default_factory=DeepConfig)
    desgw: DesgwConfig = Field(default_factory=DesgwConfig)
    space_retry_seconds: float = Field(default=60.0, gt=0, description="An action that found its disk full "
                                       "(no space, file too large) waits this long, then tries again.")
    stop_timeout_seconds: float = Field(default=8.0, gt=0, description="SIGTERM to exit, children included.")

    @property
    def uses_slurm(self) -> bool:
        """Actions or DEEP steps run as Slurm jobs (so the daemon looks after Slurm jobs)."""
        return self.executor.uses_slurm or self.deep.steps_on_slurm

    @model_validator(mode="after")
    def _fill_paths(self) -> Config:
        self.root = self.root.expanduser()
        if self.db is None:
            self.db = self.root / "autoproc.db"
        if self.work_dir is None:
            self.work_dir = self.root / "work"
        if self.hooks.directory is None:
            self.hooks.directory = self.root / "hooks"
        if self.control.socket is None:
            self.control.socket = self.root / "control.sock"
        if self.metrics.file is None:
            self.metrics.file = self.root / "autoproc.prom"
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
