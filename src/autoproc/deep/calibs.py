"""Certified per-night calibrations and the missing-calibration rule (docs/DEEP.md#steps, docs/DEEP.md#missing-calibrations).

`certify` is decertify.py followed by `butler certify-calibrations --search-all-inputs`,
in-process (one transaction, tens of milliseconds against ~2 s for each CLI).
`borrow_calibration` certifies a neighbouring night's product into a night that has
none, previous night first, then next, then further out.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from autoproc.deep.collections import DEFAULT_NAMES, Names, check_collection, check_night

_LOG = logging.getLogger(__name__)

DECERTIFY_BEGIN = "1970-01-01T00:00:00"
DECERTIFY_END = "2100-01-01T00:00:00"
CERTIFY_BEGIN = "2000-01-01T00:00:00"
CERTIFY_END = "2050-01-01T00:00:00"
CALIB_TYPES = ("bias", "flat")


def _timespan(begin: str | None, end: str | None):
    import astropy.time
    from lsst.daf.butler import Timespan

    return Timespan(
        begin=astropy.time.Time(begin, scale="tai") if begin else None,
        end=astropy.time.Time(end, scale="tai") if end else None,
    )


@dataclass
class CertifyResult:
    calib_collection: str
    dataset_type: str
    source: str
    begin: str
    end: str
    datasets: list[dict] = field(default_factory=list)  # {"id", "run", "data_id"}
    decertified: bool = True
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.datasets)

    def to_json(self) -> dict:
        return {"calib_collection": self.calib_collection, "dataset_type": self.dataset_type,
                "source": self.source, "begin": self.begin, "end": self.end, "count": self.count,
                "datasets": list(self.datasets), "decertified": self.decertified,
                "seconds": round(self.seconds, 3)}


def _decertify(butler, calib_collection: str, dataset_type: str, data_ids=None) -> None:
    """decertify.py over 1970–2100. Skipped when nothing is certified: daf_butler
    30.2026.4300 raises an AssertionError ("Calibration primary key for internal use
    only") when decertifying in an empty CALIBRATION collection."""
    if not certified(butler, calib_collection, dataset_type):
        return
    butler.registry.decertify(calib_collection, dataset_type, _timespan(DECERTIFY_BEGIN, DECERTIFY_END),
                              dataIds=data_ids)


def decertify_all(butler, calib_collection: str, dataset_type: str) -> None:
    """Take every `dataset_type` out of `calib_collection` (a rerun redoing it); the datasets stay."""
    check_collection(calib_collection)
    with butler.transaction():
        _decertify(butler, calib_collection, dataset_type)


def _connect(butler_or_repo):
    from lsst.daf.butler import Butler

    if isinstance(butler_or_repo, Butler):
        return butler_or_repo
    return Butler.from_config(str(butler_or_repo), writeable=True)


def _find_refs(butler, source: str, dataset_type: str, search_all_inputs: bool, where: str = "") -> list:
    """certify-calibrations' input lookup: find-first over the source chain (or only its
    first child). CALIBRATION and TAGGED children are left out: they hold no product of
    this chain and a calibration collection cannot be searched without a time."""
    from lsst.daf.butler import CollectionType, MissingCollectionError

    try:
        info = butler.collections.get_info(source)
    except MissingCollectionError:
        return []
    if info.type is CollectionType.CHAINED and not search_all_inputs:
        source = info.children[0] if info.children else source
    runs = list(butler.collections.query(source, flatten_chains=True, collection_types={CollectionType.RUN}))
    if not runs:
        return []
    from lsst.daf.butler import MissingDatasetTypeError

    try:
        return list(butler.query_datasets(dataset_type, collections=runs, where=where, find_first=True,
                                          explain=False))
    except MissingDatasetTypeError:
        return []


def _describe(refs) -> list[dict]:
    return sorted(({"id": str(r.id), "run": r.run, "data_id": dict(r.dataId.required)} for r in refs),
                  key=lambda d: sorted(d["data_id"].items()))


def certify(butler_or_repo, from_chain: str, calib_collection: str, dataset_type: str,
            begin: str | None = CERTIFY_BEGIN, end: str | None = CERTIFY_END,
            search_all_inputs: bool = True, where: str = "", decertify_first: bool = True) -> CertifyResult:
    """Decertify `dataset_type` in `calib_collection` over 1970–2100, then certify the
    newest datasets found through `from_chain` over [begin, end) — one transaction.
    With `where`, only the matching data IDs are decertified and certified (used when
    borrowing a flat for one band). Raises LookupError when the chain holds none."""
    from lsst.daf.butler import CollectionType

    t0 = time.perf_counter()
    check_collection(from_chain)
    check_collection(calib_collection)
    butler = _connect(butler_or_repo)
    refs = _find_refs(butler, from_chain, dataset_type, search_all_inputs, where)
    if not refs:
        raise LookupError(f"no {dataset_type} found in {from_chain}" + (f" where {where}" if where else ""))
    with butler.transaction():
        butler.collections.register(calib_collection, CollectionType.CALIBRATION)
        if decertify_first:
            _decertify(butler, calib_collection, dataset_type, [r.dataId for r in refs] if where else None)
        butler.registry.certify(calib_collection, refs, _timespan(begin, end))
    return CertifyResult(calib_collection=calib_collection, dataset_type=dataset_type, source=from_chain,
                         begin=begin or "", end=end or "", datasets=_describe(refs),
                         decertified=decertify_first, seconds=time.perf_counter() - t0)


def certify_night(butler_or_repo, night: int | str, calib_type: str, names: Names = DEFAULT_NAMES,
                  begin: str | None = CERTIFY_BEGIN, end: str | None = CERTIFY_END) -> CertifyResult:
    """night.py after bias/flat: certify `{prefix}/{night}/{type}` into `{prefix}/{night}/calib/{type}`."""
    n = check_night(night)
    return certify(butler_or_repo, names.parent(calib_type, n), names.calib(n, calib_type), calib_type,
                   begin=begin, end=end)


# --- what is missing -------------------------------------------------------------------


@dataclass
class MissingCalibs:
    bias_nights: list[int] = field(default_factory=list)
    flat: list[tuple[int, str]] = field(default_factory=list)  # (night, band)

    def to_json(self) -> dict:
        return {"bias": list(self.bias_nights), "flat": [list(x) for x in self.flat]}


def _night_exposures(butler, instrument: str, nights: Iterable[int | str] | None):
    where = f"instrument = '{instrument}'"
    bind = {}
    if nights is not None:
        nights = sorted({int(check_night(n)) for n in nights})
        if not nights:
            return []
        where += " AND exposure.day_obs IN (nights)"
        bind["nights"] = nights
    return butler.query_dimension_records("exposure", where=where, bind=bind, explain=False)


def band_of_filters(butler, instrument: str) -> dict[str, str]:
    return {r.name: r.band for r in butler.query_dimension_records(
        "physical_filter", where=f"instrument = '{instrument}'", explain=False)}


def find_missing_calibs(butler, nights: Iterable[int | str] | None = None,
                        names: Names = DEFAULT_NAMES) -> MissingCalibs:
    """From the exposures in the registry (exposures.py's missing_data): nights with
    science exposures but no zero (bias) exposure, and (night, band) pairs with science
    in a band but no dome flat in that band."""
    bands = band_of_filters(butler, names.instrument)
    science: dict[int, set[str]] = {}
    zeros: set[int] = set()
    flats: dict[int, set[str]] = {}
    for rec in _night_exposures(butler, names.instrument, None if nights is None else list(nights)):
        n = int(rec.day_obs)
        band = bands.get(rec.physical_filter, rec.physical_filter)
        if rec.observation_type == "science":
            science.setdefault(n, set()).add(band)
        elif rec.observation_type == "zero":
            zeros.add(n)
        elif rec.observation_type == "dome flat":
            flats.setdefault(n, set()).add(band)
    out = MissingCalibs()
    for n in sorted(science):
        if n not in zeros:
            out.bias_nights.append(n)
        for b in sorted(science[n] - flats.get(n, set())):
            out.flat.append((n, b))
    return out


# --- borrowing --------------------------------------------------------------------------


@dataclass
class Substitution:
    """Journal record: `night` got `calib_type` (for `band`) from `source_night`."""

    night: int
    calib_type: str
    band: str | None
    source_night: int
    source_chain: str
    calib_collection: str
    distance: int  # signed, days: -1 = the night before
    datasets: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"night": self.night, "calib_type": self.calib_type, "band": self.band,
                "source_night": self.source_night, "source_chain": self.source_chain,
                "calib_collection": self.calib_collection, "distance": self.distance,
                "datasets": list(self.datasets)}


def neighbour_nights(night: int | str, max_days: int) -> list[tuple[int, int]]:
    """[(night-1, -1), (night+1, +1), (night-2, -2), ...] as calendar nights."""
    d = dt.datetime.strptime(check_night(night), "%Y%m%d").date()
    out = []
    for k in range(1, max_days + 1):
        for s in (-k, k):
            out.append((int((d + dt.timedelta(days=s)).strftime("%Y%m%d")), s))
    return out


def _filter_where(butler, instrument: str, band: str | None, physical_filters: Sequence[str] | None):
    if physical_filters is None and band is None:
        return "", ()
    if physical_filters is None:
        physical_filters = sorted(pf for pf, b in band_of_filters(butler, instrument).items() if b == band)
    return f"instrument = '{instrument}' AND physical_filter IN (pfs)", tuple(physical_filters)


def borrow_calibration(butler_or_repo, night: int | str, calib_type: str, band: str | None = None,
                       max_days: int = 14, names: Names = DEFAULT_NAMES,
                       begin: str | None = CERTIFY_BEGIN, end: str | None = CERTIFY_END,
                       candidates: Iterable[int | str] | None = None) -> Substitution | None:
    """docs/DEEP.md#missing-calibrations: the nearest night (−1, +1, −2, +2, … up to `max_days`; or only the
    `candidates` given, in the same order of preference) whose `{prefix}/{n}/{type}`
    chain holds the product — for a flat, one in `band`'s physical filter(s) — is
    certified into `{prefix}/{night}/calib/{type}`. Only the borrowed data IDs are
    decertified first, so a night's own flats in other bands stay. Returns the
    substitution to journal, or None when no neighbour has it (yet)."""
    if calib_type not in CALIB_TYPES:
        raise ValueError(f"calib_type must be one of {CALIB_TYPES}")
    if calib_type == "flat" and not band:
        raise ValueError("borrowing a flat needs the band")
    butler = _connect(butler_or_repo)
    n = int(check_night(night))
    order = neighbour_nights(n, max_days)
    if candidates is not None:
        allowed = {int(check_night(c)) for c in candidates}
        order = [(m, s) for m, s in order if m in allowed]
    where, pfs = _filter_where(butler, names.instrument, band if calib_type == "flat" else None, None)
    if calib_type == "flat" and not pfs:
        raise ValueError(f"unknown band {band!r}")
    for m, s in order:
        chain = names.parent(calib_type, m)
        refs = _find_refs_bound(butler, chain, calib_type, where, pfs)
        if not refs:
            continue
        calib = names.calib(n, calib_type)
        res = _certify_refs(butler, refs, calib, calib_type, begin, end, by_data_id=True)
        _LOG.info("%s: borrowed %d %s from %s (night %+d)", calib, res, calib_type, chain, s)
        return Substitution(night=n, calib_type=calib_type, band=band if calib_type == "flat" else None,
                            source_night=m, source_chain=chain, calib_collection=calib, distance=s,
                            datasets=_describe(refs))
    return None


def _find_refs_bound(butler, chain: str, dataset_type: str, where: str, pfs: tuple) -> list:
    from lsst.daf.butler import CollectionType, MissingCollectionError, MissingDatasetTypeError

    try:
        runs = list(butler.collections.query(chain, flatten_chains=True, collection_types={CollectionType.RUN}))
    except MissingCollectionError:
        return []
    if not runs:
        return []
    try:
        return list(butler.query_datasets(dataset_type, collections=runs, where=where,
                                          bind={"pfs": pfs} if pfs else None, find_first=True, explain=False))
    except MissingDatasetTypeError:
        return []


def _certify_refs(butler, refs, calib: str, dataset_type: str, begin, end, by_data_id: bool) -> int:
    from lsst.daf.butler import CollectionType

    with butler.transaction():
        butler.collections.register(calib, CollectionType.CALIBRATION)
        _decertify(butler, calib, dataset_type, [r.dataId for r in refs] if by_data_id else None)
        butler.registry.certify(calib, refs, _timespan(begin, end))
    return len(refs)


def _iso(t) -> str | None:
    return None if t is None else t.tai.isot


def certified(butler, calib_collection: str, dataset_type: str) -> list[dict]:
    """What a CALIBRATION collection holds: [{"id", "run", "data_id", "begin", "end"}]."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    try:
        assoc = butler.registry.queryDatasetAssociations(dataset_type, collections=calib_collection)
        out = []
        for a in assoc:
            out.append({"id": str(a.ref.id), "run": a.ref.run, "data_id": dict(a.ref.dataId.required),
                        "begin": _iso(a.timespan.begin if a.timespan else None),
                        "end": _iso(a.timespan.end if a.timespan else None)})
        return out
    except (MissingCollectionError, MissingDatasetTypeError):
        return []
