"""Regenerate the bad-input corpus in tests/data/bad/ (deterministic: same bytes every run).

    python tests/data/make_bad.py

raws/   DECam raw look-alikes for the night 20240620: damaged ones (each rejected with a reason)
        and valid zeros with hostile names (each must be ingested, never reaching a shell).
desgw/  malformed exposures.list, expnum .list files, dagmaker.rc and post-processing templates.
deep/   malformed exposures.ecsv manifests.
config/ malformed autoproc.yaml files.

Not here, because git cannot hold them: a symlink loop and an unreadable file. The tests make
those at run time (tests/reliability/test_bad_input.py). `EXPECTED` below says, per file, what
autoproc must record; the tests check it.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

from astropy.io import fits
from astropy.time import TimeDelta

from autoproc.sim.deep.raws import plan_night

HERE = Path(__file__).resolve().parent / "bad"
NIGHT = 20240620
FIRST_EXPNUM = 990001  # far from the streamed night's exposure numbers

# Valid zeros whose names carry shell metacharacters, spaces, unicode, a leading dash.
HOSTILE_NAMES = ["with space.fits", "ünïcødé_ß.fits", "a;b.fits", "$(touch PWNED).fits", "`touch PWNED`.fits",
                 "-leading-dash.fits", "x'quote\"d&|>.fits"]
SCRIPT_DIR = "<script>alert(1)<"  # + "/script>.fits": the path reads <script>alert(1)</script>.fits
SCRIPT_NAME = f"{SCRIPT_DIR}/script>.fits"

# file → (substring of the recorded reason). "ingested" = a valid raw that must go through.
EXPECTED_RAWS = {
    "zero_byte.fits": "not a FITS file (no SIMPLE card at the start)",
    "not_fits.fits": "not a FITS file (no SIMPLE card at the start)",
    "headerless.fits": "not a FITS file (no SIMPLE card at the start)",
    "truncated_mid_block.fits": "truncated FITS file: 4000 bytes is not a multiple of 2880",
    # Ends on an HDU boundary, NEXTEND=2 but 1 extension: not damaged but incomplete. It waits
    # `deep.incomplete_grace_seconds`, then goes in with its missing CCD recorded.
    "truncated_at_block.fits": "ingested",
    # CCDNUM 3 labelled as DECam's N4 (CCDNUM 35): a mislabelled file.
    "detpos_mismatch.fits": "HDU 2: CCDNUM 3 but DETPOS 'N4' (DECam's CCDNUM 3 is S31; DECam's N4 is CCDNUM 35)",
    "missing_keys.fits": "missing header key(s): EXPNUM, DATE-OBS",
    "bad_value.fits": "bad header value:",
    "wrong_instrument.fits": "INSTRUME is 'Mosaic3', not DECam",
    "no_ccdnum.fits": "no image extension with CCDNUM",
    "unknown_filter.fits": "unknown physical filter 'Q bogus'",
    SCRIPT_NAME: "not a FITS file (no SIMPLE card at the start)",
    # The same EXPNUM twice with different content (DATE-OBS 3 min apart): one of the two is refused.
    "dup_expnum_a.fits": "dup",
    "dup_expnum_b.fits": "dup",
    "huge_header.fits": "ingested",  # 3000 extra cards: valid, must not choke intake
    **{name: "ingested" for name in HOSTILE_NAMES},
}


def _zero(expnum: int, minutes: float = 0.0):
    base = plan_night(NIGHT, n_bias=1, flats_per_band=0, science=())[0]
    return dataclasses.replace(base, expnum=expnum, date_obs=base.date_obs + TimeDelta(60 * minutes, format="sec"))


def _bytes(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def make_raws(out: Path) -> None:
    out.mkdir(parents=True)
    expnum = iter(range(FIRST_EXPNUM, FIRST_EXPNUM + 100))
    good = _bytes(_zero(next(expnum)).hdulist())
    (out / "zero_byte.fits").write_bytes(b"")
    (out / "not_fits.fits").write_text("this is a text file named .fits\n")
    (out / "headerless.fits").write_bytes(good[2880 * 3:2880 * 5])  # pixel blocks without any header
    (out / "truncated_mid_block.fits").write_bytes(good[:4000])

    # Every exposure its own DATE-OBS (so its own OBSID, unique in the Butler), from 17:00 local on:
    # the streamed night's zeros are at 16:00.
    minute = iter(range(60, 600, 3))

    def variant(name: str, edit, exp=None) -> None:
        hdul = (exp or _zero(next(expnum), next(minute))).hdulist()
        edit(hdul)
        (out / name).write_bytes(_bytes(hdul))

    variant("missing_keys.fits", lambda h: [h[0].header.remove(k) for k in ("EXPNUM", "DATE-OBS")])
    variant("bad_value.fits", lambda h: h[0].header.set("EXPTIME", "soon"))
    variant("wrong_instrument.fits", lambda h: h[0].header.set("INSTRUME", "Mosaic3"))
    variant("no_ccdnum.fits", lambda h: [hdu.header.remove("CCDNUM") for hdu in h[1:]])
    variant("unknown_filter.fits", lambda h: (h[0].header.set("OBSTYPE", "object"),
                                              h[0].header.set("FILTER", "Q bogus")))
    dup = next(expnum)
    variant("dup_expnum_a.fits", lambda h: None, _zero(dup, next(minute)))
    variant("dup_expnum_b.fits", lambda h: None, _zero(dup, next(minute)))

    def huge(h: fits.HDUList) -> None:
        for i in range(3000):
            h[0].header.append((f"HK{i:06d}", i, "padding card"), end=True)

    variant("huge_header.fits", huge)
    for name in HOSTILE_NAMES:
        variant(name, lambda h: None)
    variant("detpos_mismatch.fits", lambda h: h[2].header.set("DETPOS", "N4"))
    # A copy cut after its first CCD (its own EXPNUM and DATE-OBS: once complete enough, it is ingested).
    (out / "truncated_at_block.fits").write_bytes(_bytes(_zero(next(expnum), next(minute)).hdulist())[:2880 * 3])
    (out / SCRIPT_DIR).mkdir()
    (out / SCRIPT_NAME).write_text("<script>alert(1)</script>\n")


EXPOSURES_LIST_HEADER = "expnum nite mjd_obs radeg decdeg band exptime propid obstype teff\n"
GOOD_ROW = "941201 20190814 58709.1 10.0 -40.0 i 90.0 2019B-0001 object 0.5\n"

# name → text; EXPECTED_DESGW says what the parser must say.
EXPOSURES_LISTS = {
    "empty.exposures.list": "",
    "no_header.exposures.list": GOOD_ROW,
    "short_row.exposures.list": EXPOSURES_LIST_HEADER + "941201 20190814 58709.1\n",
    "bad_expnum.exposures.list": EXPOSURES_LIST_HEADER + GOOD_ROW.replace("941201", "$(touch PWNED)", 1),
    "bad_nite.exposures.list": EXPOSURES_LIST_HEADER + GOOD_ROW.replace("20190814", "2019-08-14"),
    "bad_band.exposures.list": EXPOSURES_LIST_HEADER + GOOD_ROW.replace(" i ", " q "),
    "dup_expnum.exposures.list": EXPOSURES_LIST_HEADER + GOOD_ROW + GOOD_ROW.replace("90.0", "60.0"),
    "nan_ra.exposures.list": EXPOSURES_LIST_HEADER + GOOD_ROW.replace("10.0", "nan"),
}
EXPNUM_LISTS = {  # season list files (intake kind desgw_exposure_list)
    "S2206_metachar.list": "941201\n$(touch PWNED)\n",
    "S2206_backtick.list": "941201\n`touch PWNED`\n",
    "S2206_dup.list": "941201\n941202\n941201\n",
    "S2206_empty.list": "\n",
    "S2206_binary.list": "\x00\x01\x02garbage\n",
    "no_season_in_name.list": "941201\n",
}
RC_FILES = {
    "unterminated_quote.dagmaker.rc": "SEASON=2206\nRNUM='4\n",
    "continuation.dagmaker.rc": "SEASON=2206\nRNUM=4\\\n",
    "no_season.dagmaker.rc": "RNUM=4\nPNUM=2\n",
    "season_not_int.dagmaker.rc": "SEASON=22a6\n",
    "command_substitution.dagmaker.rc": "SEASON=2206\nRNUM=$(touch PWNED)\n",
}
POSTPROC_TEMPLATES = {
    "no_section.postproc.ini": "season = 2206\n[general]\nexposures_listfile = x\n",
    "dup_option.postproc.ini": "[general]\nseason = 1\nseason = 2\n",
    "dup_section.postproc.ini": "[general]\na = 1\n[general]\nb = 2\n",
    "not_key_value.postproc.ini": "[general]\nseason = 1\nthis line has no equals sign\n",
}
MANIFESTS = {
    "not_ecsv.exposures.ecsv": "archive_filename,md5sum\nc4d_x.fits.fz,abc\n",
    "bad_yaml.exposures.ecsv": "# %ECSV 1.0\n# ---\n# datatype: [ {name: a\n",
    "missing_columns.exposures.ecsv": ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: archive_filename, datatype: string}\n"
                                       "# schema: astropy-2.0\narchive_filename\nc4d_x.fits\n"),
    "bad_number.exposures.ecsv": (
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: archive_filename, datatype: string}\n"
        "# - {name: md5sum, datatype: string}\n# - {name: EXPNUM, datatype: int64}\n"
        "# - {name: night, datatype: int64}\n# - {name: obs_type, datatype: string}\n"
        "# schema: astropy-2.0\narchive_filename md5sum EXPNUM night obs_type\n"
        "c4d_x.fits abc notanumber 20240620 zero\n"),
}
CONFIGS = {
    "not_yaml.autoproc.yaml": "root: /tmp/x\nwatch: [\n",
    "top_level_list.autoproc.yaml": "- root\n- /tmp/x\n",
    "unknown_key.autoproc.yaml": "root: /tmp/x\npoll_secs: 3\n",
    "wrong_type.autoproc.yaml": "root: /tmp/x\npoll_seconds: fast\n",
    "bad_watch.autoproc.yaml": "root: /tmp/x\nwatch:\n  - {name: raws, kind: raw}\n",
    "binary.autoproc.yaml": "\x00\x01root",
}


def main() -> None:
    if HERE.exists():
        shutil.rmtree(HERE)
    make_raws(HERE / "raws")
    for sub, files in (("desgw", {**EXPOSURES_LISTS, **EXPNUM_LISTS, **RC_FILES, **POSTPROC_TEMPLATES}),
                       ("deep", MANIFESTS), ("config", CONFIGS)):
        (HERE / sub).mkdir(parents=True)
        for name, text in files.items():
            (HERE / sub / name).write_text(text)
    print(f"wrote {sum(1 for p in HERE.rglob('*') if p.is_file())} files under {HERE}")


if __name__ == "__main__":
    main()
