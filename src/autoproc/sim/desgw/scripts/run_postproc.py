"""Simulated Post-Processing `run_postproc.py` (standalone: make_site installs it with a shebang).

Same arguments, same artefacts in the same order, same status file, and the same crashes
when a skipped step's inputs are missing. Each step it runs is appended to
`{outdir}/steps_run.log`. `sim_postproc.json` next to it (or SIM_POSTPROC_STEP_SLEEP)
sets a sleep after each step so a test can kill it mid-run.
"""

import argparse
import configparser
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class EmptyPlotError(Exception):
    pass


def write(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_status(status_list, season):
    # Same bytes as Post-Processing's updateStatus.py: '1 \n' / '0 \n', then the bare state.
    text = "".join("1 \n" if s is True else "0 \n" if s is False else str(s) for s in status_list)
    write(f"PostProcStatus{season}.txt", text)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--expnums", type=int, nargs="+")
    ap.add_argument("--outputdir", type=str)
    ap.add_argument("--season", type=int)
    ap.add_argument("--mjdtrigger", type=float)
    ap.add_argument("--checkonly", type=bool)
    ap.add_argument("--schema", type=str, default="gw")
    ap.add_argument("--SKIPTO", default=0, type=int)
    ap.add_argument("--skip_lightcurves", action="store_true")
    args = ap.parse_args(argv)
    if args.SKIPTO > 7 or args.SKIPTO < 0:
        raise ValueError("NOT VALID SKIP TO ARGUMENT")
    season = str(args.season)
    conf = json.loads((HERE / "sim_postproc.json").read_text()) if (HERE / "sim_postproc.json").exists() else {}
    sleep = float(os.environ.get("SIM_POSTPROC_STEP_SLEEP", conf.get("step_sleep", 0.0)))

    ini = Path(f"postproc_{season}.ini")
    if not ini.is_file():
        # The real script silently carried on with an empty config; the sim refuses.
        print(f"ERROR: ./{ini} not found in {os.getcwd()}", file=sys.stderr)
        return 2
    config = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    config.optionxform = str
    config.read(ini)
    if config.get("general", "season") != season:
        print(f"ERROR: {ini} says season {config.get('general', 'season')}, not {season}", file=sys.stderr)
        return 2
    outdir = args.outputdir or config.get("general", "outdir")
    bands = config.get("general", "bands")
    if any(c.isspace() for c in bands):
        raise ValueError(f"bands must have no whitespace: {bands!r}")
    plusname = config.get("truthtable", "plusname")
    masterfile_1 = config.get("masterlist", "filename_1")
    masterfile_2 = config.get("masterlist", "filename_2")
    combined = config.get("GWmakeDataFiles-real", "combined_fits")
    lcdir = config.get("GWmakeDataFiles-real", "outDir_data")

    this_time = time.strftime("%Y%m%d_%H%M")
    write(f"seasonTime{season}.txt", f"{season}\n{this_time}")
    out = Path(outdir)
    for d in ("stamps", "plots/lightcurves", "pngs", "htmls"):
        (out / d).mkdir(parents=True, exist_ok=True)
    log = open(out / "steps_run.log", "a")

    def ran(step):
        log.write(f"{step}\n")
        log.flush()
        os.fsync(log.fileno())
        print(f"Run STEP {step}", flush=True)
        if sleep:
            time.sleep(sleep)

    status = [False] * 9 + ["incomplete"]
    update_status(status, season)

    # STEP -1
    if not os.environ.get("DIFFIMG_SETUP_DONE") or os.environ.get("SEASON") != season:
        print("ERROR: diffimg environment not set up (source diffimg_setup.sh in this shell)", file=sys.stderr)
        update_status(status, season)
        return 3
    status[0] = True
    update_status(status, season)
    ran(-1)

    # STEP 0
    if args.SKIPTO > 0:
        for name in ("masterlist/expniteband_df.csv", f"masterlist/{masterfile_1}", "checkoutputs/step0_expnums.txt"):
            open(out / name).close()  # FileNotFoundError, as pd.read_csv / open would raise
        expnums = [int(x) for x in (out / "checkoutputs/step0_expnums.txt").read_text().split()]
        if not (out / "checkoutputs/step0_a_blacklist.txt").exists():
            raise OSError("step 0 a_blacklist file missing")
    else:
        listfile = Path(config.get("general", "indir")) / config.get("general", "exposures_listfile")
        try:
            expnums = [int(x) for x in listfile.read_text().split()]
        except (OSError, ValueError):
            print("WARNING: List of exposures file not found or empty.")
            expnums = []
        if not expnums:
            raise RuntimeError("Need an exposures.list file or exposures in argument")
        write(out / "masterlist/expniteband_df.csv", "expnum,nite,band\n" + "".join(f"{e},,\n" for e in expnums))
        write(out / f"masterlist/{masterfile_1}", "SIMPLE  =                    T\n")
        write(out / "masterlist/blacklist.txt", "")
        write(out / "checkoutputs/checkoutputs.log", f"checked {len(expnums)} exposures\n")
        write(out / "checkoutputs/checkoutputs.csv", "expnum,successes\n" + "".join(f"{e},59\n" for e in expnums))
        write(out / "checkoutputs/goodchecked.list", "".join(f"{e}\n" for e in expnums))
        write(out / "checkoutputs/step0_expnums.txt", "".join(f"{e}\n" for e in expnums))
        write(out / "checkoutputs/step0_a_blacklist.txt", "")
        ran(0)

    # STEP 1 (always)
    write(out / f"masterlist/{masterfile_2}", "SIMPLE  =                    T\n")
    status[2] = True
    update_status(status, season)
    ran(1)

    # STEP 2
    if args.SKIPTO <= 2:
        images = Path(os.environ["TOPDIR_SNFORCEPHOTO_IMAGES"])
        n = sum(1 for _ in images.rglob("*.fits")) if images.is_dir() else 0
        write(Path("forcephoto") / "output" / f"dp{season}" / "forcephoto.log", f"{n} images\n")
        ran(2)

    # STEP 3
    if args.SKIPTO <= 3:
        write("hostmatchstatus.txt", "0")
    status[4] = open("hostmatchstatus.txt").read() == "0"  # read even when skipped, as the real one does
    update_status(status, season)
    if args.SKIPTO <= 3:
        ran(3)

    # STEP 4
    truthplus = out / f"truthtable{season}" / plusname
    if args.SKIPTO > 4:
        if not truthplus.exists():
            raise OSError("No truth table files found. Try running step 4")
    else:
        write(out / f"truthtable{season}" / config.get("truthtable", "filename"), "SNID EXPNUM\n")
        write(truthplus, "SNID EXPNUM BAND\n" + "".join(f"{k} {e} i\n" for k, e in enumerate(expnums)))
    status[5] = True
    update_status(status, season)
    if args.SKIPTO <= 4:
        ran(4)

    # STEP 5
    if args.SKIPTO <= 5:
        for k in range(3):
            write(out / "makedatafiles" / lcdir / f"des_real_{k:08d}.dat", f"SNID: {k}\n")
        if sleep:
            time.sleep(sleep / 2)  # a kill here leaves .dat files without mastertableinfo.npy
        write(out / "makedatafiles" / combined, "SIMPLE  =                    T\n")
        write(out / "mastertableinfo.npy", "NUMPY-SIM\n")
    else:
        open(out / "mastertableinfo.npy").close()
    status[6] = True
    update_status(status, season)
    if args.SKIPTO <= 5:
        ran(5)

    # STEP 6 (always)
    try:
        if conf.get("empty_plots"):
            raise EmptyPlotError("empty candidate dataframes")
        write(out / "plots" / "ml_score.png", "PNG\n")
    except EmptyPlotError as err:
        print(err)
        print("Step 6 failed due to empty candidate dfs. Ending PostProc.")
        return 0
    ran(6)

    # STEP 7 (always)
    write(out / "htmls" / f"season{season}.html", "<html></html>\n")
    write(out / "pngs" / "radec.png", "PNG\n")
    write(out / "stamps" / "stamps.txt", "\n")
    status[8] = True
    update_status(status, season)
    ran(7)
    status[9] = "complete"
    update_status(status, season)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
