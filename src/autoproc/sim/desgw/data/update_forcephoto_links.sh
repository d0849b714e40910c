#!/bin/bash
# Simulated Post-Processing update_forcephoto_links.sh [-n NITE]: refresh the forcephoto symlinks.
if [ -z "$SEASON" ]; then echo "Error: SEASON not set." ; exit 1; fi
if [ -z "$ROOTDIR" ]; then echo "Error: ROOTDIR not set." ; exit 1; fi
if [ -z "$TOPDIR_SNFORCEPHOTO_IMAGES" ]; then echo "Error: TOPDIR_SNFORCEPHOTO_IMAGES not set." ; exit 1; fi
NITE=""
while getopts "n:" opt; do
    case $opt in
        n) [[ $OPTARG =~ ^[0-9]+$ ]] || { echo "Error: Night must be an integer! You put $OPTARG" ; exit 1; }
           NITE=$OPTARG ;;
        *) exit 1 ;;
    esac
done
src="$ROOTDIR/forcephoto/images/dp${SEASON}"
[ -d "$src" ] || exit 0
for nite in $(ls "$src"); do
    if [ -z "$NITE" ] || [ "$nite" = "$NITE" ]; then
        mkdir -p "${TOPDIR_SNFORCEPHOTO_IMAGES}/$nite"
        for f in "$src/$nite"/*/*.fits "$src/$nite"/*/*.psf; do
            [ -e "$f" ] && ln -sf "$f" "${TOPDIR_SNFORCEPHOTO_IMAGES}/$nite/"
        done
    fi
done
echo "forcephoto links updated${NITE:+ for $NITE}"
