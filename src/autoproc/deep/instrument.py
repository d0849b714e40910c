"""What autoproc takes from the configured instrument class (`deep.instrument_class`), and
nothing more: see docs/DEEP.md#instrument-class.

- ``getName()`` and ``register(registry)`` (lsst.pipe.base's `Instrument`): `autoproc deep init`
  registers the instrument, its detectors and filters with them.
- ``getRawFormatter(data_id)`` (same): the formatter the headers backend ingests raws with, as
  obs_base's RawIngestTask does.
- ``detector_corners(ra, dec, detector)``, autoproc's own hook (`SkyGeometry`): the (RA, Dec)
  corners in degrees of a CCD for a pointing, from which the headers backend writes visit and
  visit-detector regions. lsst.pipe.base's `Instrument` has no camera (obs_base's ``getCamera()``
  needs afw), so an instrument without this hook gets a clear error at ingest, naming the
  ``obs_base`` backend (whose DefineVisitsTask takes regions from the camera and the raw WCS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from autoproc.errors import AutoprocError

if TYPE_CHECKING:
    from lsst.pipe.base import Instrument

__all__ = ["InstrumentError", "SkyGeometry", "instrument_type", "raw_formatter", "registered_instrument",
           "sky_geometry"]


class InstrumentError(AutoprocError):
    """The configured or registered instrument class cannot do what autoproc needs of it."""


@runtime_checkable
class SkyGeometry(Protocol):
    """An instrument that knows where its CCDs fall on the sky for a pointing."""

    def detector_corners(self, ra: float, dec: float, detector: int) -> Sequence[tuple[float, float]]: ...


def instrument_type(class_name: str) -> type[Instrument]:
    """The `Instrument` subclass named by `deep.instrument_class`, or a clear error."""
    from lsst.pipe.base import Instrument
    from lsst.utils import doImportType

    try:
        cls = doImportType(class_name)
    except (ImportError, TypeError, ValueError) as err:
        raise InstrumentError(f"deep.instrument_class: cannot import {class_name!r} ({err}); install the "
                              "package that provides it (obs_decam for lsst.obs.decam.DarkEnergyCamera) or "
                              "name another class") from None
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise InstrumentError(f"deep.instrument_class: {class_name!r} is not an lsst.pipe.base.Instrument")
    return cls


def registered_instrument(butler: Any, name: str) -> Instrument:
    """The instrument registered in the repository under `name` (its class from the registry)."""
    from lsst.pipe.base import Instrument

    try:
        return Instrument.fromName(name, butler.registry)
    except LookupError:
        raise InstrumentError(f"instrument {name} is not registered in this repository; run "
                              "`autoproc deep init` first") from None
    except (ImportError, TypeError) as err:
        raise InstrumentError(f"instrument {name}: its registered class cannot be loaded ({err})") from None


def raw_formatter(instrument: Instrument, data_id: Mapping[str, Any]) -> str:
    """The full name of the formatter the instrument reads a raw with (its ``getRawFormatter``)."""
    from lsst.utils.introspection import get_full_type_name

    return get_full_type_name(instrument.getRawFormatter(dict(data_id)))


def sky_geometry(instrument: Instrument) -> SkyGeometry:
    """The instrument as a `SkyGeometry`, or a clear error saying what is missing."""
    if isinstance(instrument, SkyGeometry):
        return instrument
    cls = f"{type(instrument).__module__}.{type(instrument).__qualname__}"
    raise InstrumentError(
        f"instrument class {cls} has no detector_corners(ra, dec, detector), so the headers ingest backend "
        "cannot write visit regions; give the class that method, or set deep.ingest_backend: obs_base "
        "(DefineVisitsTask takes the regions from the camera)")
