"""What the simulated grid and Post-Processing do, per exposure; read from a small YAML file.

```yaml
seconds_per_batch: 0.5      # grid time scale: one batch of CCDs lands every this many seconds
batch_size: 20              # CCDs per batch
postproc_step_sleep: 0.0    # seconds run_postproc.py sleeps after each step
postproc_empty_plots: false # step 6 raises EmptyPlotError (run ends incomplete)
default:                    # behaviour of exposures not listed below
  failed: {}
exposures:
  941225:
    failed: {5: 3, 18: 1}   # step number -> CCDs failing there (RUNnn_*.FAIL + tarball)
    no_overlaps: 0          # CCDs with NOOVERLAPS.FAIL
    incomplete: 1           # RUN01 script present, no tarball (code -9)
    never_started: 1        # chip dir empty (code -1)
    missing: 0              # chip dir removed
    stale_fails: 2          # complete CCDs that also hold an old FAIL (older than the tarball)
    forcefiles_missing: 0   # complete CCDs without forcephoto files
    forcefiles_missing_psf: 0  # complete CCDs with a .fits but no .psf
    forcefiles_extra: 0     # extra *_{band}_* files (the "too many" case)
    templates: 3            # template exposures DAGMaker finds
    no_templates: false     # DAGMaker prints NO TEMPLATE IMAGES; a submitted DAG fails every CCD at RUN03
    dagmaker_fail: false    # DAGMaker exits 2 (missing credentials) before doing anything
    jobsub_fail: false      # jobsub_submit_dag exits 1 without a job id
```
Complete CCDs are whatever is left of the 59.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEARCH_CHIPS: tuple[int, ...] = tuple(c for c in range(1, 63) if c not in (2, 31, 61))


class ScenarioError(ValueError):
    """A scenario file or mapping that cannot be used."""


@dataclass(frozen=True)
class ExposureBehaviour:
    """How one exposure's grid run turns out (see the module docstring)."""

    failed: Mapping[int, int] = field(default_factory=dict)
    no_overlaps: int = 0
    incomplete: int = 0
    never_started: int = 0
    missing: int = 0
    stale_fails: int = 0
    forcefiles_missing: int = 0
    forcefiles_missing_psf: int = 0
    forcefiles_extra: int = 0
    templates: int = 3
    no_templates: bool = False
    dagmaker_fail: bool = False
    jobsub_fail: bool = False

    def plan(self, chips: Iterable[int] = SEARCH_CHIPS) -> dict[int, str]:
        """chip -> outcome: done, done_stale, failed:<r>, no_overlaps, incomplete, never_started, missing.

        Complete CCDs take the lowest chip numbers, then failures, then the rest, so a test
        can predict which chips are which.
        """
        chips = list(chips)
        if self.no_templates:
            return {c: "failed:3" for c in chips}
        tail: list[str] = []
        for step, count in sorted(self.failed.items()):
            tail += [f"failed:{step}"] * count
        tail += ["no_overlaps"] * self.no_overlaps
        tail += ["incomplete"] * self.incomplete
        tail += ["never_started"] * self.never_started
        tail += ["missing"] * self.missing
        if len(tail) > len(chips):
            raise ScenarioError(f"{len(tail)} non-complete CCDs requested but only {len(chips)} chips")
        n_done = len(chips) - len(tail)
        if self.stale_fails > n_done:
            raise ScenarioError(f"stale_fails={self.stale_fails} but only {n_done} complete CCDs")
        if self.forcefiles_missing + self.forcefiles_missing_psf > n_done:
            raise ScenarioError("more forcefile gaps than complete CCDs")
        outcomes = ["done_stale"] * self.stale_fails + ["done"] * (n_done - self.stale_fails) + tail
        return dict(zip(chips, outcomes, strict=True))

    def expected_counts(self, chips: Iterable[int] = SEARCH_CHIPS) -> dict[str, int]:
        """complete/failed/incomplete/missing as `autoproc.desgw.ccd` should find them once all landed."""
        plan = self.plan(chips)
        kinds = [o.split(":")[0] for o in plan.values()]
        return {
            "complete": sum(k in ("done", "done_stale") for k in kinds),
            "failed": sum(k in ("failed", "no_overlaps") for k in kinds),
            "incomplete": sum(k in ("incomplete", "never_started") for k in kinds),
            "missing": sum(k == "missing" for k in kinds),
            "stale": self.stale_fails if not self.no_templates else 0,
        }

    def forcefile_chips(self, chips: Iterable[int] = SEARCH_CHIPS) -> tuple[list[int], list[int]]:
        """(chips with .fits, chips with .psf): complete CCDs minus the configured gaps, from the top."""
        done = [c for c, o in self.plan(chips).items() if o.startswith("done")]
        no_files = set(done[len(done) - self.forcefiles_missing:]) if self.forcefiles_missing else set()
        rest = [c for c in done if c not in no_files]
        no_psf = set(rest[len(rest) - self.forcefiles_missing_psf:]) if self.forcefiles_missing_psf else set()
        return rest, [c for c in rest if c not in no_psf]


@dataclass(frozen=True)
class Scenario:
    """Time scale and per-exposure behaviour of the simulated grid and Post-Processing."""

    seconds_per_batch: float = 0.0
    batch_size: int = 59
    postproc_step_sleep: float = 0.0
    postproc_empty_plots: bool = False
    default: ExposureBehaviour = field(default_factory=ExposureBehaviour)
    exposures: Mapping[int, ExposureBehaviour] = field(default_factory=dict)

    def for_exposure(self, expnum: int) -> ExposureBehaviour:
        return self.exposures.get(int(expnum), self.default)

    def to_dict(self) -> dict[str, Any]:
        def beh(b: ExposureBehaviour) -> dict[str, Any]:
            d = dataclasses.asdict(b)
            d["failed"] = {int(k): int(v) for k, v in b.failed.items()}
            return d

        return {
            "seconds_per_batch": self.seconds_per_batch,
            "batch_size": self.batch_size,
            "postproc_step_sleep": self.postproc_step_sleep,
            "postproc_empty_plots": self.postproc_empty_plots,
            "default": beh(self.default),
            "exposures": {int(k): beh(v) for k, v in self.exposures.items()},
        }

    def dump(self, path: Path) -> Path:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return Path(path)


_BEHAVIOUR_FIELDS = {f.name: f for f in dataclasses.fields(ExposureBehaviour)}


def _behaviour(data: Any, where: str) -> ExposureBehaviour:
    if data is None:
        return ExposureBehaviour()
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where}: must be a mapping")
    unknown = sorted(set(data) - set(_BEHAVIOUR_FIELDS))
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "failed":
            if not isinstance(value, Mapping):
                raise ScenarioError(f"{where}.failed: must map step number to count")
            failed: dict[int, int] = {}
            for step, count in value.items():
                if not (1 <= int(step) <= 28) or int(count) < 0:
                    raise ScenarioError(f"{where}.failed: step {step} must be 1..28, count >= 0")
                failed[int(step)] = int(count)
            kwargs[key] = failed
        elif key in ("no_templates", "dagmaker_fail", "jobsub_fail"):
            if not isinstance(value, bool):
                raise ScenarioError(f"{where}.{key}: must be true or false")
            kwargs[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScenarioError(f"{where}.{key}: must be a non-negative integer")
            kwargs[key] = value
    beh = ExposureBehaviour(**kwargs)
    beh.plan()  # validate the counts now, not when the grid meets them
    return beh


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Build a Scenario from parsed YAML; unknown keys and impossible counts are errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: top level must be a mapping")
    top = {"seconds_per_batch", "batch_size", "postproc_step_sleep", "postproc_empty_plots", "default", "exposures"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ScenarioError(f"{source}: unknown keys {unknown}")
    exposures = {}
    for expnum, beh in (data.get("exposures") or {}).items():
        try:
            key = int(expnum)
        except (TypeError, ValueError):
            raise ScenarioError(f"{source}: exposures: {expnum!r} is not an exposure number") from None
        exposures[key] = _behaviour(beh, f"{source}: exposures.{expnum}")
    batch = data.get("batch_size", 59)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ScenarioError(f"{source}: batch_size must be a positive integer")
    try:
        seconds = float(data.get("seconds_per_batch", 0.0))
        sleep = float(data.get("postproc_step_sleep", 0.0))
    except (TypeError, ValueError):
        raise ScenarioError(f"{source}: seconds_per_batch and postproc_step_sleep must be numbers") from None
    if seconds < 0 or sleep < 0:
        raise ScenarioError(f"{source}: times must be >= 0")
    return Scenario(
        seconds_per_batch=seconds,
        batch_size=batch,
        postproc_step_sleep=sleep,
        postproc_empty_plots=bool(data.get("postproc_empty_plots", False)),
        default=_behaviour(data.get("default"), f"{source}: default"),
        exposures=exposures,
    )


def load_scenario(path: Path) -> Scenario:
    """Read a scenario YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: not valid YAML: {err}") from None
    return parse_scenario(data, str(path))
