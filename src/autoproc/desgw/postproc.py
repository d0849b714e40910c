"""Post-Processing inputs, resume point and launch: the ini, SKIPTO, PostProcStatus and the run command."""

from __future__ import annotations

import configparser
import io
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from autoproc.desgw.errors import DesgwInputError
from autoproc.desgw.exposures import format_expnum_list

# Every (section, key) run_postproc.py reads: a rendered ini missing one would crash it later.
REQUIRED_KEYS: tuple[tuple[str, str], ...] = (
    ("general", "season"), ("general", "ups"), ("general", "outdir"), ("general", "indir"),
    ("general", "exposures_listfile"), ("general", "rootdir"), ("general", "bands"),
    ("general", "env_setup_file"), ("general", "propid"), ("general", "triggermjd"),
    ("general", "db"), ("general", "schema"), ("general", "GoodSNIDs"),
    ("plots", "mlscore_cut"),
    ("masterlist", "blacklist"), ("masterlist", "filename_1"), ("masterlist", "filename_2"),
    ("checkoutputs", "logfile"), ("checkoutputs", "ccdfile"), ("checkoutputs", "goodfile"),
    ("checkoutputs", "steplist"),
    ("GWFORCE", "ncore"), ("GWFORCE", "numepochs_min"), ("GWFORCE", "writeDB"),
    ("HOSTMATCH", "version"),
    ("truthtable", "filename"), ("truthtable", "plusname"),
    ("GWmakeDataFiles", "format"), ("GWmakeDataFiles", "numepochs_min"), ("GWmakeDataFiles", "2nite_trigger"),
    ("GWmakeDataFiles-real", "outFile_stdout"), ("GWmakeDataFiles-real", "outDir_data"),
    ("GWmakeDataFiles-real", "combined_fits"),
    ("GWmakeDataFiles-fake", "outFile_stdout"), ("GWmakeDataFiles-fake", "outDir_data"),
    ("GWmakeDataFiles-fake", "version"),
)
_BAND = re.compile(r"^[A-Za-z]{1,2}$")
STATUS_SLOTS = 10


# ---------------------------------------------------------------- files

def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def exposure_list_name(season: int, when: datetime | None = None) -> str:
    """`complete_exposures_S{S}_{YYYYmmdd_HH-MM}.list`, the automation's name for the ready list."""
    when = when or datetime.now()
    return f"complete_exposures_S{season}_{when:%Y%m%d_%H-%M}.list"


def write_exposure_list(path: Path, expnums: Sequence[int]) -> Path:
    """Write one EXPNUM per line (atomically); an empty list is refused (run_postproc would stop at step 0)."""
    if not expnums:
        raise ValueError("no exposures to write: run_postproc needs at least one")
    atomic_write_text(Path(path), format_expnum_list(expnums))
    return Path(path)


# ---------------------------------------------------------------- ini

def _parser() -> configparser.RawConfigParser:
    # Post-Processing is Python 2: its ConfigParser strips " ;" comments. Strip them here so the
    # rendered file has clean values whatever parser reads it.
    p = configparser.RawConfigParser(inline_comment_prefixes=(";",), comment_prefixes=("#", ";"), strict=True)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    return p


def parse_ini(text: str, source: str) -> configparser.RawConfigParser:
    """Parse an ini with Post-Processing's rules; malformed text raises DesgwInputError with the line."""
    p = _parser()
    try:
        p.read_string(text, source=source)
    except configparser.MissingSectionHeaderError as err:
        raise DesgwInputError(source, err.lineno, f"text before the first [section]: {err.line.strip()!r}") from None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as err:
        raise DesgwInputError(source, err.lineno, err.message.splitlines()[0]) from None
    except configparser.ParsingError as err:
        lineno, line = err.errors[0]
        raise DesgwInputError(source, lineno, f"not a 'key = value' line: {line.strip()!r}") from None
    except configparser.Error as err:
        raise DesgwInputError(source, None, str(err)) from None
    return p


def render_postproc_ini(
    template_text: str,
    *,
    season: int,
    exposures_listfile: str,
    bands: Iterable[str],
    outdir: str | os.PathLike[str],
    propid: str | None = None,
    ligoid: str | None = None,
    triggerid: str | None = None,
    triggermjd: float | None = None,
    extra: Mapping[tuple[str, str], str] | None = None,
    source: str = "template_postproc.ini",
) -> str:
    """`postproc_{S}.ini` text from the template, with clean values and no comments.

    Sets [general] season, exposures_listfile, bands (comma list, no blanks), outdir and,
    when given, propid/ligoid/triggerid/triggermjd. Every key run_postproc reads must be
    present afterwards, else DesgwInputError naming the missing key.
    """
    p = parse_ini(template_text, source)
    band_list = sorted(set(bands), key=lambda b: "ugrizYVR".find(b[0]) if b else 99)
    if not band_list:
        raise ValueError("bands must not be empty")
    for b in band_list:
        if not _BAND.match(b):
            raise ValueError(f"invalid band {b!r}")
    values: dict[tuple[str, str], str] = {
        ("general", "season"): str(int(season)),
        ("general", "exposures_listfile"): str(exposures_listfile),
        ("general", "bands"): ",".join(band_list),
        ("general", "outdir"): os.fspath(outdir),
    }
    for key, value in (("propid", propid), ("ligoid", ligoid), ("triggerid", triggerid)):
        if value is not None:
            values[("general", key)] = str(value)
    if triggermjd is not None:
        values[("general", "triggermjd")] = repr(float(triggermjd))
    values.update(extra or {})
    for (section, key), value in values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"[{section}] {key}: value must not contain a newline")
        if value != value.strip() or value.startswith(";"):
            raise ValueError(f"[{section}] {key}: value {value!r} has surrounding blanks or starts with ';'")
        if not p.has_section(section):
            p.add_section(section)
        p.set(section, key, value)
    for section, key in REQUIRED_KEYS:
        if not p.has_option(section, key):
            raise DesgwInputError(source, None, f"missing [{section}] {key} (run_postproc.py reads it)")
    out = io.StringIO()
    p.write(out)
    return out.getvalue()


# ---------------------------------------------------------------- SKIPTO

@dataclass(frozen=True)
class SkiptoDecision:
    """The SKIPTO to use and the evidence behind it (artefact -> exists)."""

    skipto: int
    reason: str
    evidence: tuple[tuple[str, bool], ...]

    @property
    def found(self) -> tuple[str, ...]:
        return tuple(name for name, ok in self.evidence if ok)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(name for name, ok in self.evidence if not ok)

    def argv(self) -> list[str]:
        """The flag for run_postproc (`[]` for a run from scratch)."""
        return ["--SKIPTO", str(self.skipto)] if self.skipto > 0 else []


def _resolve(outdir: str | os.PathLike[str], cwd: Path) -> Path:
    out = Path(outdir)
    return out if out.is_absolute() else Path(cwd) / out


def step0_artefacts(masterfile_1: str = "MasterExposureList_prelim.fits") -> tuple[str, ...]:
    """What run_postproc loads instead of running step 0 (relative to outdir)."""
    return (
        "masterlist/expniteband_df.csv",
        f"masterlist/{masterfile_1}",
        "checkoutputs/step0_expnums.txt",
        "checkoutputs/step0_a_blacklist.txt",
    )


def derive_skipto(
    outdir: str | os.PathLike[str],
    season: int,
    cwd: str | os.PathLike[str],
    plusname: str = "truthplus.tab",
    combined_fits: str = "datafiles_combined.fits",
    masterfile_1: str = "MasterExposureList_prelim.fits",
) -> SkiptoDecision:
    """Where a rerun may resume, by the strict rule (docs/DESGW.md#skipto) — never past an artefact it would load.

    6: step-0 artefacts, hostmatchstatus.txt (cwd), truthtable{S}/{plusname},
       mastertableinfo.npy and makedatafiles/{combined_fits};
    5: step-0 artefacts, hostmatchstatus.txt and the truth table;
    1: step-0 artefacts (step 1 always runs, so 1 and 2 are the same run);
    0: otherwise. `outdir` relative to `cwd` (the Post-Processing directory) as run_postproc sees it.
    run_postproc loads the truth table and hostmatchstatus.txt whenever SKIPTO > 4, so 6 requires
    them too.
    """
    cwd = Path(cwd)
    out = _resolve(outdir, cwd)
    step0 = [(name, (out / name).is_file()) for name in step0_artefacts(masterfile_1)]
    hostmatch = ("hostmatchstatus.txt (cwd)", (cwd / "hostmatchstatus.txt").is_file())
    truth = (f"truthtable{season}/{plusname}", (out / f"truthtable{season}" / plusname).is_file())
    npy = ("mastertableinfo.npy", (out / "mastertableinfo.npy").is_file())
    comb = (f"makedatafiles/{combined_fits}", (out / "makedatafiles" / combined_fits).is_file())
    evidence = tuple(step0 + [hostmatch, truth, npy, comb])
    step0_ok = all(ok for _, ok in step0)
    if step0_ok and hostmatch[1] and truth[1] and npy[1] and comb[1]:
        return SkiptoDecision(6, "step 5 outputs present: resume at plots", evidence)
    if step0_ok and hostmatch[1] and truth[1]:
        return SkiptoDecision(5, "truth table present: resume at makedatafiles", evidence)
    if step0_ok:
        return SkiptoDecision(1, "step 0 outputs present: skip masterlist/checkoutputs", evidence)
    return SkiptoDecision(0, "no complete step 0 outputs: run from scratch", evidence)


# ---------------------------------------------------------------- status

@dataclass(frozen=True)
class PostProcStatus:
    """`PostProcStatus{S}.txt`: nine 0/1 slots and the run state."""

    flags: tuple[bool, ...]
    state: str

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def env_ok(self) -> bool:
        return self.flags[0]

    @property
    def step1_ok(self) -> bool:
        return self.flags[2]

    @property
    def hostmatch_ok(self) -> bool:
        return self.flags[4]

    @property
    def truthtable_ok(self) -> bool:
        return self.flags[5]

    @property
    def datafiles_ok(self) -> bool:
        return self.flags[6]

    @property
    def html_ok(self) -> bool:
        return self.flags[8]


def parse_postproc_status(text: str, source: str = "PostProcStatus") -> PostProcStatus:
    """Parse the status file: nine lines `0 `/`1 `, then `complete` or `incomplete` (no newline)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != STATUS_SLOTS:
        raise DesgwInputError(source, None, f"expected {STATUS_SLOTS} entries, found {len(lines)}")
    flags: list[bool] = []
    for i, raw in enumerate(lines[:-1], start=1):
        value = raw.strip()
        if value not in ("0", "1"):
            raise DesgwInputError(source, i, f"expected 0 or 1, got {raw!r}")
        flags.append(value == "1")
    state = lines[-1].strip()
    if state not in ("complete", "incomplete"):
        raise DesgwInputError(source, STATUS_SLOTS, f"expected 'complete' or 'incomplete', got {state!r}")
    return PostProcStatus(tuple(flags), state)


def read_postproc_status(postproc_dir: str | os.PathLike[str], season: int) -> PostProcStatus | None:
    """The status file in the Post-Processing directory, or None if it does not exist yet."""
    path = Path(postproc_dir) / f"PostProcStatus{season}.txt"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_postproc_status(text, str(path))


def step7_outputs_exist(outdir: str | os.PathLike[str], cwd: str | os.PathLike[str] = ".") -> bool:
    """Step 7 (WholeHTML) left pages: `htmls/` holds an .html and `pngs/`, `stamps/` exist.

    run_postproc creates the three directories at start, so their existence alone proves nothing.
    """
    out = _resolve(outdir, Path(cwd))
    htmls = out / "htmls"
    if not ((out / "pngs").is_dir() and (out / "stamps").is_dir() and htmls.is_dir()):
        return False
    with os.scandir(htmls) as it:
        return any(e.name.endswith(".html") for e in it)


# ---------------------------------------------------------------- launch

# Constant: all data arrives as positional arguments. Exit codes 90-93 are ours.
LAUNCH_SCRIPT = r"""# autoproc: start Post-Processing (docs/DESGW.md#post-processing-status)
pp_dir=$1 pp_outdir=$2 pp_season=$3 pp_skipto=$4 pp_links=$5 pp_nite=$6 pp_python=$7
set --
cd -- "$pp_dir" || { echo "autoproc: cannot cd to $pp_dir" >&2; exit 90; }
if [ ! -f ./diffimg_setup.sh ]; then echo "autoproc: no diffimg_setup.sh in $pp_dir" >&2; exit 91; fi
source ./diffimg_setup.sh
cd -- "$pp_dir" || exit 90
if [ "${SEASON:-}" != "$pp_season" ]; then
    echo "autoproc: diffimg_setup.sh set SEASON='${SEASON:-}', expected $pp_season (another postproc_*.ini in $pp_dir?)" >&2
    exit 92
fi
export SEASON
if [ "$pp_links" = 1 ]; then
    if [ -n "$pp_nite" ]; then
        bash ./update_forcephoto_links.sh -n "$pp_nite" || exit 93
    else
        bash ./update_forcephoto_links.sh || exit 93
    fi
fi
args=(--outputdir "$pp_outdir" --season "$pp_season")
if [ -n "$pp_skipto" ]; then args+=(--SKIPTO "$pp_skipto"); fi
exec "$pp_python" run_postproc.py "${args[@]}"
"""
LAUNCH_EXIT_CODES = {
    90: "cannot cd to the Post-Processing directory",
    91: "diffimg_setup.sh missing",
    92: "diffimg_setup.sh did not set SEASON to this season",
    93: "update_forcephoto_links.sh failed",
}


@dataclass(frozen=True)
class PostprocLaunch:
    """How to start run_postproc: `argv` (bash -c, constant script, data as arguments) in `cwd`."""

    argv: tuple[str, ...]
    cwd: Path
    season: int
    outdir: Path
    skipto: int


def build_postproc_launch(
    postproc_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    season: int,
    skipto: int = 0,
    update_links: bool = False,
    nite: str | None = None,
    python: str = "python",
    bash: str = "bash",
) -> PostprocLaunch:
    """`cd postproc_dir; source diffimg_setup.sh; [update_forcephoto_links.sh [-n NITE]];
    exec python run_postproc.py --outputdir OUTDIR --season S [--SKIPTO k]`.

    The real outdir path is passed (the original passed the literal string "outdir"), the
    setup is sourced in the same shell (the original's os.system('source …') did nothing),
    and SKIPTO 0 means no flag.
    """
    if not 0 <= int(skipto) <= 7:
        raise ValueError(f"SKIPTO must be 0..7, got {skipto}")
    if nite is not None and not re.fullmatch(r"\d{8}", str(nite)):
        raise ValueError(f"nite must be YYYYMMDD, got {nite!r}")
    pp_dir = Path(postproc_dir).resolve()
    out = _resolve(outdir, pp_dir)
    argv = (
        bash, "-c", LAUNCH_SCRIPT, "autoproc-postproc",
        str(pp_dir), str(out), str(int(season)), str(skipto) if skipto else "",
        "1" if update_links else "0", str(nite or ""), python,
    )
    return PostprocLaunch(argv, pp_dir, int(season), out, int(skipto))


@dataclass(frozen=True)
class StagedInputs:
    """The files written into the Post-Processing directory for one run."""

    ini: Path
    exposure_list: Path


def stage_postproc_inputs(
    postproc_dir: str | os.PathLike[str],
    season: int,
    ini_text: str,
    expnums: Sequence[int],
    list_name: str,
) -> StagedInputs:
    """Write `postproc_{S}.ini` and the exposure list into the Post-Processing directory (atomically).

    `list_name` must be what the ini's exposures_listfile says (read relative to indir `./`).
    """
    pp = Path(postproc_dir)
    if "/" in list_name or list_name.startswith("."):
        raise ValueError(f"list_name must be a plain file name, got {list_name!r}")
    rendered = parse_ini(ini_text, f"postproc_{season}.ini")
    if rendered.get("general", "exposures_listfile", fallback=None) != list_name:
        raise ValueError(f"the ini's exposures_listfile is not {list_name!r}")
    if rendered.get("general", "season", fallback=None) != str(season):
        raise ValueError(f"the ini's season is not {season}")
    lst = write_exposure_list(pp / list_name, expnums)
    ini = pp / f"postproc_{season}.ini"
    atomic_write_text(ini, ini_text)
    return StagedInputs(ini, lst)
