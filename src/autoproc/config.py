"""The daemon's configuration: one YAML file (`autoproc.yaml`) read into pydantic models.

Every section has defaults, so the embedded mode runs with no file at all: the state
database and the work directory live under one root directory.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

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

    directory: Path = Field(default=Path("hooks"), description="Hook executables (a relative path is under `root`).")
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
    """Who may read (status, show, history, report, and the chains' views) through the control socket;
    operators may too."""


class ControlConfig(Section):
    """The daemon's control socket: the CLI's overrides go through it while the daemon runs, and the
    daemon journals who sent them from the socket's peer credentials (`autoproc.control`)."""

    enabled: bool = Field(default=True, description="Listen on the socket.")
    socket: Path = Field(
        default=Path("control.sock"), description="Unix socket path (a relative path is under `root`). Under the "
        "system unit: "
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

    file: Path = Field(
        default=Path("autoproc.prom"), description="Written atomically every `interval_seconds` (a relative path "
        "is under `root`). "
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


class BackupConfig(Section):
    """Online copies of the state database (SQLite's backup API), see RELIABILITY.md."""

    directory: Path = Field(default=Path("backups"), description="Where backups go (a relative path is under `root`). Best on "
                                   "another disk than the database.")
    interval_minutes: float = Field(default=60.0, ge=0, description="The daemon writes one this often (0: only at a "
                                    "clean stop and by hand, `autoproc store backup`).")
    keep: int = Field(default=24, ge=1, description="Backups kept; older ones are deleted after each new one.")
    at_stop: bool = Field(default=True, description="Write one when the daemon stops cleanly.")


class Config(Section):
    """Top-level configuration (`autoproc.yaml`)."""

    root: Path = Field(
        default=Path("autoproc-data"),
        description="Directory holding the state database and the work directory ($AUTOPROC_ROOT if unset here).",
    )
    db: Path = Field(default=Path("autoproc.db"), description="SQLite state database (a relative path is under `root`).")
    work_dir: Path = Field(default=Path("work"), description="Per-attempt working directories (a relative path is under "
                           "`root`).")
    machines_dir: Path | None = Field(default=None, description="Directory of <kind>.yaml machines; default: "
                                      "the machines of the installed chains (docs/CHAINS.md).")
    kinds: list[str] = Field(default_factory=list, description="Machines to load; default: every one there.")
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
    space_retry_seconds: float = Field(default=60.0, gt=0, description="An action that found its disk full "
                                       "(no space, file too large) waits this long, then tries again.")
    stop_timeout_seconds: float = Field(default=8.0, gt=0, description="SIGTERM to exit, children included.")

    # Each installed chain adds its section (`deep:`, `desgw:`, …) as a field of the model
    # `parse_config` validates with (`config_model`); to the type checker they are dynamic.
    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

    @property
    def uses_slurm(self) -> bool:
        """Actions or a chain's steps run as Slurm jobs (so the daemon looks after Slurm jobs)."""
        return self.executor.uses_slurm or self.actions_start_slurm_jobs

    @property
    def actions_start_slurm_jobs(self) -> bool:
        """A chain's actions start Slurm jobs of their own, tagged with their attempt (`Chain.starts_slurm_jobs`)."""
        from autoproc.chain import chains

        return any(c.starts_slurm_jobs is not None and c.starts_slurm_jobs(c.section(self)) for c in chains()
                   if c.section(self) is not None)

    @model_validator(mode="after")
    def _fill_paths(self) -> Config:
        self.root = self.root.expanduser()
        # `root / p` is `p` itself when `p` is absolute.
        self.db = self.root / self.db.expanduser()
        self.work_dir = self.root / self.work_dir.expanduser()
        self.hooks.directory = self.root / self.hooks.directory.expanduser()
        self.control.socket = self.root / self.control.socket.expanduser()
        self.metrics.file = self.root / self.metrics.file.expanduser()
        self.backup.directory = self.root / self.backup.directory.expanduser()
        names = [w.name for w in self.watch]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"watch root names must be unique, repeated: {', '.join(duplicates)}")
        return self


@functools.cache
def config_model() -> type[Config]:
    """`Config` with a section per installed chain, validated by the chain's own model."""
    from autoproc.chain import chains

    sections: dict[str, Any] = {}
    for chain in chains():
        if chain.config is None:
            continue
        if chain.name in Config.model_fields:
            raise ConfigError(f"chain {chain.name!r}: its config section would hide the core's {chain.name!r} key")
        sections[chain.name] = (chain.config, Field(default_factory=chain.config, description=chain.description))
    model = create_model("ChainedConfig", __base__=Config, __module__=__name__, **sections)
    model.__doc__ = Config.__doc__
    return model


def __getattr__(name: str) -> Any:
    # Pickle finds the class of a loaded configuration by name (an action's context goes to a
    # Parsl worker): the model is built on first use there too.
    if name == "ChainedConfig":
        return config_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        return config_model().model_validate(data)
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
