"""The `deep:` section of `autoproc.yaml`: the DEEP chain's configuration model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from autoproc.config import Seconds, Section, _sbatch_lines, _slurm_name, _walltime

# The same rules as autoproc.deep.collections (STEP_RE) and statemachines/template.yaml's key_pattern.
_STEP_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")

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

class DeepConfig(Section):
    """DEEP nights on the Rubin middleware (docs/DEEP.md). A site sets its instrument class and
    the pipeline of each proc type; `autoproc demo` writes the simulator's (docs/DEEP.md#instrument-class)."""

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
        default="lsst.obs.decam.DarkEnergyCamera",
        description="Instrument class registered by `autoproc deep init` (default: obs_decam's); the headers "
        "ingest backend also needs its `detector_corners` for visit regions (docs/DEEP.md#instrument-class).")
    prefix: str = Field(default="DEEP", description="First component of every DEEP collection name (docs/DEEP.md#collections).")
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
        default=None, description="`exposures.ecsv` (docs/DEEP.md#exposures-manifest): gives each file's night, and a file is complete "
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
        "`diff_drp`, `template`); no default: a proc type without one fails at its first step.")
    steps: dict[str, list[str]] = Field(
        default_factory=dict, description="Steps (subset or task labels) run in order per proc type; unset "
        "ones are the DEEP lists: bias step1 step2; flat step0..step3; drp step0 step1 step2a..step2f step3a; "
        "coadd and template assembleCoadd (of DEEP-template.yaml); diff_drp step4a..step4e.")
    where: str = Field(default="instrument='DECam' AND skymap='discrete'",
                       description="Data query of every graph (the chains already select the night).")
    mode: Literal["bps", "pipetask"] = Field(
        default="bps", description="`bps`: `bps submit` with the Parsl plugin; `pipetask`: one process per step "
        "runs the step's graph (see `quantum_backed`).")
    quantum_backed: bool = Field(
        default=True, description="mode `pipetask`: the step's graph runs through `autoproc-step` (one "
        "quantum-backed Butler for all its quanta, their outputs registered in one transaction at the end); "
        "false: `pipetask run -j 1` (every output registered as it is written).")
    warm: bool = Field(
        default=True, description="mode `pipetask`: each step's process is forked "
        "from a server that has the middleware imported already, in its own process group with its own log "
        "(no 1-3 s of start-up per step); false: a fresh process per step.")
    warm_preload: list[str] = Field(
        default_factory=list, description="Python modules the warm server imports once besides the middleware "
        "(e.g. the science tasks' modules, `lsst.ip.isr`), so no step pays their import.")
    bps_site: Literal["local", "slurm"] = Field(
        default="local", description="Where `bps` runs a step's quanta: `local` (Parsl threads beside bps) or "
        "`slurm` (ctrl_bps_parsl's Slurm site, one Slurm job per step; see `slurm`). Picks the shipped submit "
        "template.")
    slurm: BpsSlurmSite = Field(default_factory=BpsSlurmSite, description="The Slurm site (bps_site: slurm).")
    submit_template: Path | None = Field(
        default=None, description="bps submit YAML template; default: the shipped one of `bps_site` "
        "(autoproc's Parsl LocalThreads site, or ctrl_bps_parsl's Slurm site; docs/DEEP.md#bps-submission).")
    cores: int = Field(default=2, ge=1, description="Cores of the bps Parsl site.")
    clusters: dict[str, dict[str, Any]] | None = Field(
        default=None, description="bps `cluster:` entries ({name: {pipetasks, dimensions, equalDimensions}}), "
        "restricted to the labels of each step; unset: the submit template's (the shipped ones have none); "
        "{} = one job per quantum.")
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
