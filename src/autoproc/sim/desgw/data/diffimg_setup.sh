# Simulated Post-Processing diffimg_setup.sh. It must be sourced from the Post-Processing
# directory, in the shell that then runs run_postproc.py.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "diffimg_setup.sh must be sourced, not executed" >&2
    exit 1
fi
export ROOTDIR=@ROOTDIR@
export ROOTDIR2=$(pwd)
export DES_DB_SECTION=db-sn-test
export DIFFIMG_HOST=FNAL
export EXPERIMENT=des
echo "EUPS setup complete"
for INI in postproc_*.ini; do
    [ -e "$INI" ] || continue
    SEASON=$(./getSeason.py --ini "$INI") || { echo "getSeason.py failed on $INI" >&2; return 1; }
    export SEASON
    export TOPDIR_SNFORCEPHOTO_IMAGES=${ROOTDIR2}/forcephoto/images/dp${SEASON}
    export TOPDIR_SNFORCEPHOTO_OUTPUT=${ROOTDIR2}/forcephoto/output/dp${SEASON}
    mkdir -p "$TOPDIR_SNFORCEPHOTO_OUTPUT"
    if [ ! -d "$TOPDIR_SNFORCEPHOTO_IMAGES" ]; then
        mkdir -p "$TOPDIR_SNFORCEPHOTO_IMAGES"
        if [ -d "$ROOTDIR/forcephoto/images/dp${SEASON}" ]; then
            for nite in $(ls "$ROOTDIR/forcephoto/images/dp${SEASON}"); do
                mkdir -p "${TOPDIR_SNFORCEPHOTO_IMAGES}/$nite"
                for f in "$ROOTDIR/forcephoto/images/dp${SEASON}/$nite"/*/*.fits "$ROOTDIR/forcephoto/images/dp${SEASON}/$nite"/*/*.psf; do
                    [ -e "$f" ] && ln -sf "$f" "${TOPDIR_SNFORCEPHOTO_IMAGES}/$nite/"
                done
            done
        fi
    fi
done
export DIFFIMG_SETUP_DONE=1
