"""Simulated gw_workflow `DAGMaker.sh EXPNUM` (standalone: make_site installs it with a shebang).

Behaves like the real script where autoproc can see it: exit 1 for a non-numeric EXPNUM,
exit 2 for missing credentials (scenario `dagmaker_fail`), the band from an exact match of
column 1 in exposures.list, dagmaker.rc sourced by bash (so bad quoting fails here as it
would there), the DAG with the real block structure, the per-CCD directories on "dCache",
`mytemp_{EXP}/DAGMaker.DONE` with the submit command appended, and the submit command
as the last line of stdout.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHIPS = [c for c in range(1, 63) if c not in (2, 31, 61)]
RC_KEYS = ("SEASON", "RNUM", "PNUM", "DESTCACHE", "SCHEMA", "JOBSUB_OPTS", "RESOURCES",
           "SEARCH_OPTS", "TEMP_OPTS", "DIFFIMG_EUPS_VERSION", "RM_MYTEMP")
RC_DEFAULTS = (
    'RNUM="2"; PNUM="01"; SEASON="11"; DESTCACHE="persistent"; SCHEMA="gw"; SEARCH_OPTS=""; '
    'TEMP_OPTS=""; JOBSUB_OPTS="--memory=3000MB"; RESOURCES="DEDICATED,OPPORTUNISTIC,OFFSITE"; '
    'DIFFIMG_EUPS_VERSION="gwdevel10"; RM_MYTEMP="false"; '
)


def atomic_write(path, data):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def read_rc():
    script = RC_DEFAULTS + 'if [ -f ./dagmaker.rc ]; then source ./dagmaker.rc >/dev/null || exit 3; fi; ' + \
        'printf "%s\\0" ' + " ".join(f'"${k}"' for k in RC_KEYS)
    proc = subprocess.run(["bash", "-c", script], capture_output=True)  # noqa: S603,S607
    if proc.returncode != 0:
        print(f"Error reading dagmaker.rc: {proc.stderr.decode(errors='replace').strip()}")
        sys.exit(1)
    values = proc.stdout.decode().split("\0")[: len(RC_KEYS)]
    return dict(zip(RC_KEYS, values, strict=True))


def find_band(expnum):
    """awk '($1==EXPNUM){print $6}' exposures.list"""
    try:
        lines = Path("exposures.list").read_text().splitlines()
    except FileNotFoundError:
        return "", None
    for line in lines[1:]:
        f = line.split()
        if len(f) >= 6 and f[0] == expnum:
            return f[5], f
    return "", None


def main(argv):
    if len(argv) < 1:
        print("Error, an exposure number must be supplied")
        return 1
    expnum = argv[0]
    if not expnum.isdigit():
        print(f"Error, exposure number must be a number; you entered {expnum}.")
        return 1
    print(f"EXPNUM = {expnum}")
    site = json.loads((HERE / "sim_site.json").read_text())
    beh = site.get("exposures", {}).get(expnum, site.get("default", {}))
    if beh.get("dagmaker_fail"):
        print("Error: /home/desgw/.pgpass not found.")
        return 2
    rc = read_rc()
    season, destcache, schema = rc["SEASON"], rc["DESTCACHE"], rc["SCHEMA"]
    procnum, rpnum = f"dp{season}", f"r{rc['RNUM']}p{rc['PNUM']}"
    print("----------------")
    print(f"SEASON = {season} => DIFFIMG proc. version is {procnum}")
    print(f"RNUM = {rc['RNUM']} , PNUM = {rc['PNUM']}  => SE proc. version is {rpnum}")
    print(f"JOBSUB_OPTS = {rc['JOBSUB_OPTS']}")
    print(f"DESTCACHE = {destcache}")
    print(f"SCHEMA = {schema}")
    print("----------------")
    mytemp = Path(f"mytemp_{expnum}")
    if mytemp.is_dir():
        print(f"RM_MYTEMP flag was set, so we are deleting the pre-existing mytemp_{expnum} dir")
        shutil.rmtree(mytemp)
    band, fields = find_band(expnum)
    if not band:
        print("Error with setting band. Check exposures.list to see if there is a problem with this exposure. Exiting...")
        return 1
    nite = fields[1]
    mytemp.mkdir()
    ntemp = 0 if beh.get("no_templates") else int(beh.get("templates", 3))
    templates = [(int(expnum) - 1000 * (k + 1), f"{int(nite) - 10000 * (k + 1)}") for k in range(ntemp)]
    (mytemp / "KH_diff.list1").write_text(
        " ".join([str(1 + ntemp), expnum] + [str(t) for t, _ in templates]) + "\n")
    (mytemp / "KH_diff.list2").write_text(
        "".join(f"{e} {n}\n" for e, n in [(int(expnum), nite)] + templates))
    print("start composing the dag")
    jopts, res = rc["JOBSUB_OPTS"], rc["RESOURCES"]
    cond = "--append_condor_requirements='(TARGET.GLIDEIN_Site==\\\"FermiGrid\\\")'"
    lines = ["<parallel>",
             f"jobsub -n --group=des --OS=SL6  --resource-provides=usage_model={res} --memory=500MB "
             "--disk=100MB --expected-lifetime=600s file://dummyjob.sh"]
    for t, tnite in templates:
        lines.append(
            f"jobsub -n --group=des --OS=SL6 --resource-provides=usage_model={res} {jopts} -N 60 {cond} "
            f"file://SEdiff.sh -r {rc['RNUM']} -p {rc['PNUM']} -E {t} -v {rc['DIFFIMG_EUPS_VERSION']} "
            f"-b {band} -n {tnite} -d {destcache} -m {schema} -c 0 -t {rc['TEMP_OPTS']} -S {procnum}")
    lines += ["</parallel>", "<parallel>"]
    for chip in CHIPS:
        lines.append(
            f"jobsub -n --group=des --OS=SL6 --resource-provides=usage_model={res} {jopts} {cond} "
            f"file://SEdiff.sh -r {rc['RNUM']} -p {rc['PNUM']} -E {expnum} -v {rc['DIFFIMG_EUPS_VERSION']} "
            f"-b {band} -n {nite} -d {destcache} -m {schema} {rc['SEARCH_OPTS']} -c {chip} -S {procnum}")
    lines.append("</parallel>")
    if ntemp:
        lines += ["<serial>",
                  f"jobsub -n --group=des --OS=SL6  --resource-provides=usage_model={res} {jopts} "
                  f"--expected-lifetime=7200s {cond} file://RUNMON.sh -r {rpnum} -p {procnum} -E {expnum} "
                  f"-n {nite} -f WS1234+56 -d {destcache} -m {schema}",
                  "</serial>"]
    dag = f"desgw_pipeline_{expnum}.dag"
    atomic_write(dag, "\n".join(lines) + "\n")
    # Output area on "dCache", as DAGMaker makes it before any job runs.
    pnfs = Path(site["pnfs"])
    expdir = pnfs / destcache / schema / "exp" / nite / expnum
    dp = expdir / procnum
    for chip in CHIPS:
        cdir = dp / f"{band}_{chip:02d}"
        (cdir / "ingest").mkdir(parents=True, exist_ok=True)
        (cdir / f"stamps_{nite}_WS1234+56_{band}_{chip:02d}").mkdir(exist_ok=True)
    (dp / "input_files").mkdir(exist_ok=True)
    atomic_write(dp / f"{expnum}_run_inputs.tar.gz", b"")
    atomic_write(expdir / "WS_diff.list", (mytemp / "KH_diff.list1").read_text())
    (pnfs / destcache / schema / "forcephoto" / "images" / procnum / nite).mkdir(parents=True, exist_ok=True)
    submit = (f"jobsub_submit_dag -G des --role=desgw --need-storage-modify /des/persistent/gw/exp "
              f"--need-storage-modify /des/persistent/gw/forcephoto file://{dag}")
    if ntemp == 0:
        print(f"There appear to be no templates for this exposure {expnum}. Diffimg will fail.")
        print("NO TEMPLATE IMAGES, DIFFIMG WILL FAIL")
    print("To submit this DAG do")
    with open(mytemp / "DAGMaker.DONE", "a") as f:
        f.write(submit + "\n")
    print(submit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
