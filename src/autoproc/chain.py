"""The plugin interface of a processing chain (see docs/CHAINS.md).

The core (engine, store, machines, watch, intake, config, report, CLI) knows no chain by
name. A chain is a `Chain` object that an installed package names in the `autoproc.chains`
entry-point group, e.g. in its pyproject.toml:

    [project.entry-points."autoproc.chains"]
    deep = "autoproc.deep.chain:chain"

The core asks each chain, by the fields below, for what it used to hard-wire: the config
section's model, the CLI group, the state machines and the modules registering their
actions, the report's view of each kind, a time hook, and whether its actions start Slurm
jobs of their own. Discovery only imports each chain's `chain` module, so that module must
stay light (pydantic models, no middleware): heavy modules are named, not imported.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoproc.errors import AutoprocError

ENTRY_POINT_GROUP = "autoproc.chains"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ChainError(AutoprocError):
    """An installed chain that cannot be used; the message names its entry point."""


@dataclass(frozen=True)
class KindView:
    """How the report shows the subjects of one kind.

    `title`: the section heading; `order`: sections are sorted by it, then by kind (kinds no
    chain describes come last); `template`: a Jinja template, `<chain>/<file>` from the
    chain's `templates` directory, that renders the section's body instead of the generic
    subjects × stages grid (a body template); `context`: called with the kind's rows and every kind's (the
    page's `kinds`), returns the extra names that template uses; `summary`: called with a
    subject's data, returns the leading parts of the grid's short data column; `lists`: data
    keys whose list values the grid shows on a line of their own.
    """

    title: str
    order: int = 100
    template: str | None = None
    context: Callable[[dict[str, Any], dict[str, dict[str, Any]]], dict[str, Any]] | None = None
    summary: Callable[[dict[str, Any]], list[str]] | None = None
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chain:
    """What a chain declares. Only `name` is required.

    - `config`: the pydantic model of its `autoproc.yaml` section, named `name` (e.g. `deep:`).
    - `cli`: `"module:attribute"` of its click group, added to `autoproc` as `autoproc <name> …`
      (named, not imported: it imports the core CLI, which discovers the chains).
    - `machines`: its state machine YAML files, loaded when `machines_dir` is not configured.
    - `plugins`: modules that register its actions, conditions, callbacks, file kinds,
      environment checks, rerun hooks and control-socket verbs (imported by the daemon and the
      CLI before any machine is loaded).
    - `templates`: directory of its report templates (Jinja2), found as `<name>/<file>`.
    - `views`: kind → how the report shows it.
    - `period`: epoch seconds → label of the period it falls in (DEEP: the observing night);
      when the label changes, the daemon rescans every watched root once.
    - `starts_slurm_jobs`: its config section → whether its actions start Slurm jobs of their
      own (each tagged with its attempt, autoproc.slurm): the daemon then watches them and
      cancels an attempt's jobs when the attempt ends.
    - `distributions`: the installed distributions whose versions decide how it behaves
      (shown by `autoproc --version`).
    """

    name: str
    description: str = ""
    config: type[BaseModel] | None = None
    cli: str | None = None
    machines: tuple[Path, ...] = ()
    plugins: tuple[str, ...] = ()
    templates: Path | None = None
    views: Mapping[str, KindView] = field(default_factory=dict)
    period: Callable[[float], str] | None = None
    starts_slurm_jobs: Callable[[Any], bool] | None = None
    distributions: tuple[str, ...] = ()

    def section(self, config: BaseModel) -> BaseModel | None:
        """This chain's section of a loaded configuration (None if it has no section)."""
        return getattr(config, self.name, None) if self.config is not None else None

    def command(self) -> Any:
        """The click group named by `cli` (imported now)."""
        if self.cli is None:
            return None
        module, _, attribute = self.cli.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as err:
            raise ChainError(f"chain {self.name}: cli {self.cli!r} cannot be loaded: {err}") from None


@functools.cache
def chains() -> tuple[Chain, ...]:
    """The installed chains (entry-point group `autoproc.chains`), sorted by name; read once."""
    found: dict[str, Chain] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            chain = ep.load()
        except Exception as err:
            raise ChainError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) cannot be loaded: "
                             f"{type(err).__name__}: {err}") from None
        if not isinstance(chain, Chain):
            raise ChainError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is a "
                             f"{type(chain).__name__}, not an autoproc.chain.Chain")
        if not _NAME.match(chain.name) or chain.name != ep.name:
            raise ChainError(f"entry point {ep.name} = {ep.value}: chain name {chain.name!r} must match "
                             f"{_NAME.pattern} and the entry point's name")
        if chain.name in found and found[chain.name] is not chain:
            raise ChainError(f"chain {chain.name!r} is installed twice ({ep.value})")
        found[chain.name] = chain
    return tuple(found[name] for name in sorted(found))


def kind_views() -> dict[str, KindView]:
    """Every chain's report views, by kind."""
    return {kind: view for c in chains() for kind, view in c.views.items()}


__all__ = ["ENTRY_POINT_GROUP", "Chain", "ChainError", "KindView", "chains", "kind_views"]
