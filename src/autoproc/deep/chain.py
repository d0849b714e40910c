"""The DEEP chain as autoproc sees it (autoproc.chain): nights and template coadds on the
Rubin middleware. Named by the `autoproc.chains` entry point `deep`; kept light, since every
autoproc command reads it (the stages load with the machines)."""

from __future__ import annotations

from typing import Any

from autoproc.chain import Chain, KindView
from autoproc.config import DATA_DIR
from autoproc.deep.config import DeepConfig


def night_of(t: float) -> str:
    """YYYYMMDD of the observing night the epoch time `t` falls in, by the `night` rule a raw's
    DATE-OBS gets (deep.ingest.observing_night): the label changes at 12:00 TAI, local morning
    at CTIO, the "night rollover" after which the daemon rescans the watched roots."""
    from astropy.time import Time

    from autoproc.deep.ingest import observing_night

    return f"{observing_night(Time(t, format='unix', scale='utc')):08d}"


def night_summary(data: dict[str, Any]) -> list[str]:
    """A night's raws and missing calibrations, for the report's data column."""
    parts = []
    if isinstance(data.get("raws"), dict) and data["raws"]:
        parts.append("raws: " + ", ".join(f"{v} {k}" for k, v in data["raws"].items()))
    if isinstance(data.get("bad_raws"), dict) and data["bad_raws"]:
        parts.append(f"bad raws: {len(data['bad_raws'])}")
    if isinstance(data.get("missing_detectors"), dict) and data["missing_detectors"]:
        parts.append(f"exposures missing CCDs: {len(data['missing_detectors'])}")
    missing = data.get("missing_calibs")
    if isinstance(missing, dict):
        flat = missing.get("flat") or []
        what = (["bias"] if missing.get("bias") else []) + ([f"flat {' '.join(map(str, flat))}"] if flat else [])
        if what:
            parts.append("missing calibs: " + ", ".join(what))
    return parts


def _steps_on_slurm(section: DeepConfig) -> bool:
    return section.steps_on_slurm


_MEMBERS = ("nights", "members")

chain = Chain(
    name="deep",
    description="DEEP nights and template coadds on the Rubin middleware (`autoproc deep …`).",
    config=DeepConfig,
    cli="autoproc.deep.cli:deep",
    machines=(DATA_DIR / "statemachines" / "night.yaml", DATA_DIR / "statemachines" / "template.yaml"),
    plugins=("autoproc.deep.stages",),
    views={
        "night": KindView("Nights × stages", order=0, summary=night_summary, lists=_MEMBERS),
        "template": KindView("Template coadds", order=1, summary=night_summary, lists=_MEMBERS),
        "coadd": KindView("Template coadds", order=2, summary=night_summary, lists=_MEMBERS),
    },
    period=night_of,
    starts_slurm_jobs=_steps_on_slurm,
    distributions=("lsst-daf-butler", "lsst-pipe-base", "lsst-ctrl-mpexec", "lsst-ctrl-bps", "lsst-ctrl-bps-parsl"),
)
