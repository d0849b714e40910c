"""The DESGW chain as autoproc sees it (autoproc.chain): seasons and exposures on the grid and
post-processing. Named by the `autoproc.chains` entry point `desgw`; kept light, since every
autoproc command reads it (the stages load with the machines)."""

from __future__ import annotations

from pathlib import Path

from autoproc.chain import Chain, KindView
from autoproc.config import DATA_DIR
from autoproc.desgw.config import DesgwConfig
from autoproc.desgw.report import exposures_context, seasons_context

chain = Chain(
    name="desgw",
    description="DESGW seasons and exposures: gw_workflow, the grid, post-processing (`autoproc desgw …`).",
    config=DesgwConfig,
    cli="autoproc.desgw.cli:desgw",
    machines=(DATA_DIR / "statemachines" / "season.yaml", DATA_DIR / "statemachines" / "exposure.yaml"),
    plugins=("autoproc.desgw.stages", "autoproc.desgw.requests"),
    templates=Path(__file__).resolve().parent / "templates",
    views={
        "season": KindView("Seasons", order=3, template="desgw/seasons.html.j2", context=seasons_context),
        "exposure": KindView("Seasons × exposures (CCD completeness)", order=4,
                             template="desgw/exposures.html.j2", context=exposures_context),
    },
)
