#!/usr/bin/env bash
# Wipes socp's local state in this folder: databases (data/), downloads and
# the user and local-server keys in keys/. The master's identity
# (keys/master.pem, keys/master.id) is kept, so locals that pinned it keep
# working, unless --nuke-master is given. Stop the nodes first: this script
# never kills processes.
set -euo pipefail

usage() {
    echo "usage: scripts/reset.sh [--nuke-master] [--dir DIR]" >&2
    echo "  --nuke-master  also delete the master identity (keys/master.*)" >&2
    echo "  --dir DIR      the folder socp ran in (default: the current folder)" >&2
}

nuke_master=0
dir=.
while [ $# -gt 0 ]; do
    case "$1" in
        --nuke-master) nuke_master=1 ;;
        --dir) shift; dir=${1:?--dir needs a folder} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "reset.sh: unknown option $1" >&2; usage; exit 2 ;;
    esac
    shift
done

cd "$dir"
removed=0
remove() {
    for path in "$@"; do
        if [ -e "$path" ]; then
            rm -rf -- "$path"
            echo "removed $path"
            removed=$((removed + 1))
        fi
    done
}

remove data downloads
if [ -d keys ]; then
    for path in keys/* keys/.[!.]*; do
        [ -e "$path" ] || continue
        case "$(basename "$path")" in
            .gitkeep) continue ;;
            master.pem|master.id) [ "$nuke_master" = 1 ] || continue ;;
        esac
        remove "$path"
    done
fi
if [ "$nuke_master" = 0 ] && [ -e keys/master.pem ]; then
    echo "kept the master identity (keys/master.pem, keys/master.id); --nuke-master deletes it"
fi
echo "reset done ($removed removed)"
