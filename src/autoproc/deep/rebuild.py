"""How `autoproc store rebuild` finds DEEP nights and templates again (autoproc.rebuild).

The Butler is the evidence: a night is every `{prefix}/{YYYYMMDD}/…` collection, a template
every `deep.templates` entry (its coadd chain says whether it was built). Both come back in
their machine's first state: each state's action checks the Butler before it runs a step
(skip-existing in the chain, `quanta.check_step`), so the steps that ran are not run again
and the certified calibrations are found, not remade; the night walks to where it was in
one action per step. A rebuilt subject has no step memory (docs/DEEP.md#step-memory), so
every step is checked. A night whose raws are in a watched root but not yet in the Butler is
found by the daemon's rescan at start, as any new file is.
"""

from __future__ import annotations

import re

from autoproc.actions import Rebuilt, rebuild_hook
from autoproc.config import Config


def _collections(config: Config) -> list[str] | None:
    """Every collection under the DEEP prefix, or None when there is no repository yet."""
    from autoproc.deep.stages import existing_butler

    butler = existing_butler(config, writeable=False)
    if butler is None:
        return None
    try:
        return sorted(butler.collections.query(f"{config.deep.prefix}/*"))
    finally:
        butler.close()


@rebuild_hook("night")
def rebuild_nights(config: Config) -> list[Rebuilt]:
    """A night for each night the Butler has collections of, in `ingesting`."""
    found = _collections(config) or []
    night = re.compile(re.escape(config.deep.prefix) + r"/(\d{8})/")
    by_night: dict[str, list[str]] = {}
    for c in found:
        if (m := night.match(c)) is not None:
            by_night.setdefault(m.group(1), []).append(c)
    return [Rebuilt(key, "ingesting", f"{len(colls)} Butler collections ({colls[0]} …); its steps find their "
                    "outputs there", evidence={"collections": colls[:50]})
            for key, colls in sorted(by_night.items())]


@rebuild_hook("template")
def rebuild_templates(config: Config) -> list[Rebuilt]:
    """A template for each `deep.templates` entry, in `gathering`."""
    from autoproc.deep.stages import names

    if not config.deep.templates:
        return []
    found = set(_collections(config) or [])
    n = names(config.deep)
    out = []
    for name in sorted(config.deep.templates):
        chain = n.coadd(name)
        built = "its coadd chain exists, the coadd step finds its outputs" if chain in found else "no coadd yet"
        out.append(Rebuilt(name, "gathering", f"deep.templates; {chain}: {built}",
                           evidence={"coadd_chain": chain if chain in found else None}))
    return out
