"""DEEP collection names and the idempotent collection primitives (docs/DEEP.md#collections).

Everything here talks to the Butler in-process (no CLI start-up cost). Names that may
later reach a command line are validated when they are built.

Naming, with the default prefix ``DEEP``::

    DECam/raw/all                                         RUN      all ingested raws
    DEEP/{night}/{proc}/raw                               TAGGED   per-night raws for a proc type
    DEEP/{night}/{proc}                                   CHAINED  processing chain
    {parent}/{pipeline}/{step}/{YYYYmmddTHHMMSSZ}         RUN      one attempt of one step
    DEEP/{night}/calib/{bias|flat}                        CALIB    certified per-night calibs
    DEEP/{subset}/{coadd_subset}/coadd/warps              TAGGED   warps for a coadd
    DEEP/{subset}/{coadd_subset}/{template_type}/coadd    CHAINED  coadd chain
    DEEP/{night}/{coadd_subset}/{template_type}/diff_drp  CHAINED  difference imaging

A RUN set aside by `set_aside_runs` (an operator reran the night from a state) stays in the
repo but is never put back into its chain: its documentation starts with `SET_ASIDE`, and
the chain's own documentation gives the time before which its RUNs are set aside, so a RUN
an older, superseded step registers later (its name carries its start time) stays out too.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_LOG = logging.getLogger(__name__)

NIGHT_RE = re.compile(r"^\d{8}$")
STEP_RE = re.compile(r"^[A-Za-z0-9_]+$")
# A collection path component: letters, digits, '_', '-', '.', but never '.' or '..' alone.
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
DATED_LEAF_RE = re.compile(r"^\d{8}T\d{6}Z$")

PROC_TYPES = ("bias", "flat", "science", "drp", "coadd", "diff_drp")
# proc type -> exposure.observation_type as obs_decam records it (the ECSV says "object").
OBS_TYPES = {"bias": "zero", "flat": "dome flat", "science": "science", "drp": "science"}
WARP_DATASET_TYPES = ("deepCoadd_directWarp", "deepCoadd_psfMatchedWarp")
SET_ASIDE = "autoproc: set aside"
_SET_ASIDE_BEFORE = re.compile(r"^autoproc: set aside before (\d{8}T\d{6}Z)")


class CollectionNameError(ValueError):
    """A name component that must not reach the registry or a command line."""


def check_night(night: int | str) -> str:
    s = str(night)
    if not NIGHT_RE.match(s):
        raise CollectionNameError(f"night must be 8 digits YYYYMMDD, got {night!r}")
    return s


def check_step(step: str) -> str:
    if not isinstance(step, str) or not STEP_RE.match(step):
        raise CollectionNameError(f"step must match {STEP_RE.pattern}, got {step!r}")
    return step


def check_component(value: str, what: str = "name") -> str:
    """A collection path of one or more safe components ('allSky', 'allSky/3')."""
    if not isinstance(value, str) or not value:
        raise CollectionNameError(f"{what} must be a non-empty string, got {value!r}")
    for part in value.split("/"):
        if not _COMPONENT_RE.match(part):
            raise CollectionNameError(f"{what} has an unsafe component {part!r}: {value!r}")
    return value


def check_collection(name: str) -> str:
    return check_component(name, "collection")


def _opt(value: str | None, what: str) -> str:
    return "" if value in (None, "") else check_component(value, what)


@dataclass(frozen=True)
class Names:
    """The collection naming scheme; the prefix and fixed collections are configurable."""

    prefix: str = "DEEP"
    raw_run: str = "DECam/raw/all"
    instrument: str = "DECam"
    instrument_calib: str = "DECam/calib"
    refcats: str = "refcats"
    skymaps: str = "skymaps"
    fakes: str | None = None  # default {prefix}/fakes
    defects_calib: str | None = None  # default {prefix}/calib

    def __post_init__(self) -> None:
        for attr in ("prefix", "raw_run", "instrument_calib", "refcats", "skymaps"):
            check_component(getattr(self, attr), attr)
        if not re.match(r"^[A-Za-z0-9_]+$", self.instrument):
            raise CollectionNameError(f"unsafe instrument name {self.instrument!r}")
        for attr in ("fakes", "defects_calib"):
            if getattr(self, attr) is not None:
                check_component(getattr(self, attr), attr)

    @property
    def fakes_collection(self) -> str:
        return self.fakes or f"{self.prefix}/fakes"

    @property
    def defects_collection(self) -> str:
        return self.defects_calib or f"{self.prefix}/calib"

    # --- names -----------------------------------------------------------------
    def parent(self, proc_type: str, subset: str | int, coadd_subset: str | None = None,
               template_type: str | None = None) -> str:
        """normpath("{prefix}/{subset}/{coadd_subset}/{template_type}/{proc_type}")."""
        if proc_type not in PROC_TYPES:
            raise CollectionNameError(f"unknown proc type {proc_type!r}")
        parts = [self.prefix, check_component(str(subset), "subset"), _opt(coadd_subset, "coadd_subset"),
                 _opt(template_type, "template_type"), proc_type]
        return posixpath.normpath("/".join(p for p in parts if p))

    def raw_tagged(self, night: int | str, proc_type: str) -> str:
        if proc_type not in OBS_TYPES:
            raise CollectionNameError(f"proc type {proc_type!r} has no raws")
        return f"{self.prefix}/{check_night(night)}/{proc_type}/raw"

    def calib(self, night: int | str, calib_type: str) -> str:
        if calib_type not in ("bias", "flat"):
            raise CollectionNameError(f"calib type must be bias or flat, got {calib_type!r}")
        return f"{self.prefix}/{check_night(night)}/calib/{calib_type}"

    def warps(self, subset: str, coadd_subset: str | None = None) -> str:
        parts = [self.prefix, check_component(str(subset), "subset"), _opt(coadd_subset, "coadd_subset"),
                 "coadd", "warps"]
        return "/".join(p for p in parts if p)

    def coadd(self, subset: str, coadd_subset: str | None = None, template_type: str | None = None) -> str:
        return self.parent("coadd", subset, coadd_subset, template_type)

    def diff(self, night: int | str, coadd_subset: str, template_type: str | None = None) -> str:
        return self.parent("diff_drp", check_night(night), coadd_subset, template_type)

    def fixed_inputs(self, proc_type: str, subset: str | int, coadd_subset: str | None = None,
                     template_type: str | None = None) -> list[str]:
        """The fixed (non-run) children of a processing chain, in order (collection.py `inputs`)."""
        s = check_component(str(subset), "subset")
        p = self.prefix
        science_common = [self.fakes_collection, self.refcats, self.skymaps, f"{p}/{s}/calib/flat",
                          f"{p}/{s}/calib/bias", self.defects_collection, self.instrument_calib]
        if proc_type == "bias":
            return [self.instrument_calib, f"{p}/{s}/bias/raw"]
        if proc_type == "flat":
            return [f"{p}/{s}/calib/bias", self.instrument_calib, f"{p}/{s}/flat/raw"]
        if proc_type == "science":
            return [*science_common, f"{p}/{s}/science/raw"]
        if proc_type == "drp":
            return [*science_common, f"{p}/{s}/drp/raw"]
        if proc_type == "coadd":
            return [self.warps(s, coadd_subset), self.skymaps]
        if proc_type == "diff_drp":
            if not coadd_subset:
                raise CollectionNameError("diff_drp needs a coadd_subset (the template)")
            return [self.coadd(coadd_subset, None, template_type), f"{p}/{s}/drp"]
        raise CollectionNameError(f"unknown proc type {proc_type!r}")


DEFAULT_NAMES = Names()


def new_run_name(parent: str, pipeline_name: str, step: str | None, now: dt.datetime | None = None) -> str:
    """`{parent}/{pipeline_name}/{step or '_'}/{YYYYmmddTHHMMSSZ}` (UTC)."""
    check_collection(parent)
    check_component(pipeline_name, "pipeline_name")
    step = "_" if not step else check_step(step)
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC)
    return f"{parent}/{pipeline_name}/{step}/{now:%Y%m%dT%H%M%SZ}"


def pipeline_name_of(pipeline_path: str) -> str:
    """`DEEP-DRP` for `/x/DEEP-DRP.yaml#step1`."""
    base = posixpath.basename(str(pipeline_path).split("#", 1)[0])
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return check_component(base, "pipeline_name")


# --- chain rebuild -----------------------------------------------------------------


@dataclass
class ChainResult:
    parent: str
    chain: list[str]
    created: bool = False
    changed: bool = False
    missing: list[str] = field(default_factory=list)
    would_drop: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"parent": self.parent, "chain": list(self.chain), "created": self.created,
                "changed": self.changed, "missing": list(self.missing), "would_drop": list(self.would_drop)}


def _sort_runs(parent: str, runs: Iterable[str]) -> list[str]:
    """Dated runs (leaf \\d{8}T\\d{6}Z) newest first, then the others alphabetically."""
    dated: list[str] = []
    other: list[str] = []
    for r in set(runs):
        leaf = r.rsplit("/", 1)[-1]
        (dated if DATED_LEAF_RE.match(leaf) else other).append(r)
    dated.sort(key=lambda r: (r.rsplit("/", 1)[-1], r), reverse=True)
    return dated + sorted(other)


def _cutoff(butler, parent: str) -> str:
    """The YYYYmmddTHHMMSSZ before which `parent`'s dated RUNs are set aside ("" if none)."""
    from lsst.daf.butler import MissingCollectionError

    try:
        m = _SET_ASIDE_BEFORE.match(butler.collections.get_info(parent).doc or "")
    except MissingCollectionError:
        return ""
    return m.group(1) if m else ""


def _runs_under(butler, parent: str, set_aside: bool = False) -> list[str]:
    """The RUNs named `parent/...`: those in use, or (`set_aside`) those set aside."""
    from lsst.daf.butler import CollectionType

    prefix = parent + "/"
    cutoff = _cutoff(butler, parent)
    found = butler.collections.query_info(parent + "/*", collection_types={CollectionType.RUN}, include_doc=True)
    out = []
    for info in found:
        if not info.name.startswith(prefix):
            continue
        leaf = info.name.rsplit("/", 1)[-1]
        aside = (info.doc or "").startswith(SET_ASIDE) or bool(cutoff and DATED_LEAF_RE.match(leaf) and leaf < cutoff)
        if aside == set_aside:
            out.append(info.name)
    return out


def runs_in_use(butler, parent: str) -> list[str]:
    """The RUNs of a chain's steps that `rebuild_chain` puts into it, newest first."""
    return _sort_runs(check_collection(parent), _runs_under(butler, parent))


def set_aside_runs(butler, parent: str, note: str, before: dt.datetime) -> list[str]:
    """Take the RUNs of `parent`'s steps that started before `before` out of its chain for
    good (a rerun): each is kept in the repo, its documentation says why, and the chain's
    records the time. Returns the RUNs set aside (those that exist now). A chain that does
    not exist yet has nothing to set aside."""
    exists, current = _chain_children(butler, parent)
    if not exists:
        return []
    runs = runs_in_use(butler, parent)
    stamp = before.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    with butler.transaction():
        butler.registry.setCollectionDocumentation(parent, f"{SET_ASIDE} before {stamp}: {note}")
        for run in runs:
            butler.registry.setCollectionDocumentation(run, f"{SET_ASIDE}: {note}")
        if any(r in current for r in runs):
            butler.collections.remove_from_chain(parent, [r for r in runs if r in current])
    return runs


def _existing(butler, names: Sequence[str]) -> set[str]:
    from lsst.daf.butler import MissingCollectionError

    have = set()
    for n in names:
        try:
            butler.collections.get_info(n)
            have.add(n)
        except MissingCollectionError:
            pass
    return have


def _chain_children(butler, parent: str):
    """(exists, children) for a CHAINED collection; raises if parent is another type."""
    from lsst.daf.butler import CollectionType, MissingCollectionError

    try:
        info = butler.collections.get_info(parent)
    except MissingCollectionError:
        return False, []
    if info.type is not CollectionType.CHAINED:
        raise ValueError(f"{parent} exists and is {info.type.name}, not CHAINED")
    return True, list(info.children)


def rebuild_chain(butler, parent: str, fixed_inputs: Sequence[str], overwrite: bool = False) -> ChainResult:
    """collection.py, exactly (docs/DEEP.md#collections).

    Candidate = RUNs matching ``parent/*`` (dated leaf newest first, others alphabetical)
    + fixed inputs; children that do not exist are dropped with a warning. A missing
    parent is registered CHAINED. An existing parent is redefined unless the candidate
    would drop one of its children, in which case only a warning is logged (unless
    `overwrite`). Idempotent. RUNs set aside (`set_aside_runs`) are never candidates, and
    dropping one is not refused.
    """
    from lsst.daf.butler import CollectionType

    check_collection(parent)
    for c in fixed_inputs:
        check_collection(c)
    candidate: list[str] = []
    for c in [*_sort_runs(parent, _runs_under(butler, parent)), *fixed_inputs]:
        if c not in candidate:
            candidate.append(c)
    have = _existing(butler, candidate)
    missing = [c for c in candidate if c not in have]
    for c in missing:
        _LOG.warning("%s: missing child %s, left out of the chain", parent, c)
    candidate = [c for c in candidate if c in have]
    exists, current = _chain_children(butler, parent)
    result = ChainResult(parent=parent, chain=candidate, missing=missing)
    if not exists:
        with butler.transaction():
            butler.collections.register(parent, CollectionType.CHAINED)
            butler.collections.redefine_chain(parent, candidate)
        result.created = result.changed = True
        return result
    aside = set(_runs_under(butler, parent, set_aside=True))
    dropped = [c for c in current if c not in candidate and c not in aside]
    if dropped and not overwrite:
        _LOG.warning("%s: rebuilding would drop %s; chain left as it is (use overwrite)", parent, dropped)
        result.chain, result.would_drop = [c for c in current if c not in aside], dropped
        if result.chain != current:
            butler.collections.redefine_chain(parent, result.chain)
            result.changed = True
        return result
    if current != candidate:
        butler.collections.redefine_chain(parent, candidate)
        result.changed = True
    return result


def fixup_chain(butler, parent: str) -> ChainResult:
    """execute.py's fixup_chain: dated runs ``parent/.*/\\d{8}T\\d{6}Z`` newest first, then
    every other existing child in its current order. Never drops a child; the parent
    must exist."""
    check_collection(parent)
    exists, current = _chain_children(butler, parent)
    if not exists:
        raise ValueError(f"{parent} does not exist; run rebuild_chain first")
    rx = re.compile(re.escape(parent) + r"/.*/\d{8}T\d{6}Z$")
    dated = [r for r in _sort_runs(parent, _runs_under(butler, parent)) if rx.match(r)]
    chain = dated + [c for c in current if c not in dated]
    result = ChainResult(parent=parent, chain=chain)
    if chain != current:
        butler.collections.redefine_chain(parent, chain)
        result.changed = True
    return result


# --- tagging --------------------------------------------------------------------------


@dataclass
class TagResult:
    collection: str
    associated: int  # newly associated
    total: int  # in the collection afterwards (for these data)
    removed: int = 0  # replaced refs (same data ID, different dataset)

    def to_json(self) -> dict:
        return {"collection": self.collection, "associated": self.associated, "total": self.total,
                "removed": self.removed}


def _associate_replacing(butler, collection: str, refs: Sequence) -> tuple[int, int]:
    """Associate refs into a TAGGED collection; a ref already tagged for the same
    (dataset type, data ID) but a different dataset is replaced. Returns (new, removed)."""
    from lsst.daf.butler import CollectionType

    butler.collections.register(collection, CollectionType.TAGGED)
    by_type: dict[str, list] = {}
    for r in refs:
        by_type.setdefault(r.datasetType.name, []).append(r)
    new = removed = 0
    with butler.transaction():
        for dtype, trefs in by_type.items():
            current = {(r.dataId): r for r in butler.query_datasets(
                dtype, collections=collection, find_first=False, explain=False)}
            stale = []
            add = []
            for r in trefs:
                old = current.get(r.dataId)
                if old is None:
                    add.append(r)
                elif old.id != r.id:
                    stale.append(old)
                    add.append(r)
            if stale:
                butler.registry.disassociate(collection, stale)
                removed += len(stale)
            if add:
                butler.registry.associate(collection, add)
                new += len(add)
    return new, removed


def tag_raws(butler, night: int | str, proc_type: str, raw_run: str | None = None,
             names: Names = DEFAULT_NAMES) -> TagResult:
    """raw.py: associate the night's raws of the proc type's observation type
    (bias→zero, flat→dome flat, drp/science→science) from `raw_run` into the TAGGED
    `{prefix}/{night}/{proc}/raw`. Idempotent; the collection is registered even if empty."""
    n = check_night(night)
    coll = names.raw_tagged(n, proc_type)
    raw_run = check_collection(raw_run or names.raw_run)
    where = (f"instrument = '{names.instrument}' AND exposure.day_obs = {int(n)} "
             f"AND exposure.observation_type = '{OBS_TYPES[proc_type]}'")
    refs = butler.query_datasets("raw", collections=raw_run, where=where, find_first=True, explain=False)
    new, removed = _associate_replacing(butler, coll, refs)
    if not refs:
        _LOG.info("%s: no raws for night %s with observation type %s", coll, n, OBS_TYPES[proc_type])
    return TagResult(collection=coll, associated=new, total=len(refs), removed=removed)


def tag_warps(butler, nights: Iterable[int | str], subset: str, coadd_subset: str | None = None,
              where: str = "", names: Names = DEFAULT_NAMES,
              dataset_types: Sequence[str] = WARP_DATASET_TYPES) -> TagResult:
    """warps.py: TAGGED `{prefix}/{subset}[/{coadd_subset}]/coadd/warps` holding the
    find-first direct and psf-matched warps of each member night's `{prefix}/{night}/drp`.
    Nights whose drp chain does not exist are skipped with a warning."""
    from lsst.daf.butler import MissingDatasetTypeError

    coll = names.warps(subset, coadd_subset)
    sources = [names.parent("drp", check_night(n)) for n in nights]
    have = _existing(butler, sources)
    for s in sources:
        if s not in have:
            _LOG.warning("%s: source %s does not exist, skipped", coll, s)
    sources = [s for s in sources if s in have]
    refs = []
    for dtype in dataset_types:
        if not sources:
            break
        try:
            refs.extend(butler.query_datasets(dtype, collections=sources, where=where, find_first=True,
                                              explain=False))
        except MissingDatasetTypeError:
            pass
    new, removed = _associate_replacing(butler, coll, refs)
    return TagResult(collection=coll, associated=new, total=len(refs), removed=removed)


def coadd_chain(butler, subset: str, coadd_subset: str | None = None, template_type: str | None = None,
                names: Names = DEFAULT_NAMES, overwrite: bool = False) -> ChainResult:
    """The coadd chain `{prefix}/{subset}[/{coadd_subset}][/{T}]/coadd` over its runs,
    the warps TAGGED collection and skymaps."""
    parent = names.coadd(subset, coadd_subset, template_type)
    fixed = names.fixed_inputs("coadd", subset, coadd_subset, template_type)
    return rebuild_chain(butler, parent, fixed, overwrite=overwrite)


def ensure_chain(butler, proc_type: str, subset: str | int, coadd_subset: str | None = None,
                 template_type: str | None = None, names: Names = DEFAULT_NAMES,
                 overwrite: bool = False) -> ChainResult:
    """rebuild_chain for a proc type with its fixed inputs (collection.py's CLI)."""
    parent = names.parent(proc_type, subset, coadd_subset, template_type)
    fixed = names.fixed_inputs(proc_type, subset, coadd_subset, template_type)
    return rebuild_chain(butler, parent, fixed, overwrite=overwrite)
