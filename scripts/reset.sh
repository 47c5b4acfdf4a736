#!/usr/bin/env bash
# Wipes socp's local state in one folder: the folder a node or a client ran
# in (the current one by default, or --dir DIR, e.g. the README's m, l1, l2,
# alice, bob). Removed: databases (data/ and *.sqlite with their -wal/-shm
# files), client journals (*.shown), downloads/, and the keys in keys/. Kept:
# config (*.toml, admit files), and the master's identity (keys/master.pem,
# keys/master.id) unless --nuke-master, so locals that pinned it keep
# working. A user's key removed here is that user's identity: the master
# refuses a new key for the name (BAD_KEY) until its operator runs
# `socp admin reset-key` (the script says so). Stop the nodes and clients
# first: this script never kills processes.
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

if [ ! -d "$dir" ]; then
    echo "reset.sh: $dir is not a folder" >&2
    exit 2
fi
cd "$dir"
removed=0
users=()
remove() {
    for path in "$@"; do
        if [ -e "$path" ] || [ -L "$path" ]; then
            rm -rf -- "$path"
            echo "removed $dir/$path"
            removed=$((removed + 1))
        fi
    done
}

shopt -s nullglob
remove data downloads
remove ./*.sqlite ./*.sqlite-wal ./*.sqlite-shm ./*.shown
if [ -d keys ]; then
    for path in keys/* keys/.[!.]*; do
        [ -e "$path" ] || continue
        name=$(basename "$path")
        case "$name" in
            .gitkeep) continue ;;
            master.pem|master.id) [ "$nuke_master" = 1 ] || continue ;;
            local.pem|local.id|master.*|local.*) ;;
            *.pem) users+=("${name%.pem}") ;;
        esac
        remove "$path"
    done
fi
if [ "$nuke_master" = 0 ] && [ -e keys/master.pem ]; then
    echo "kept the master identity ($dir/keys/master.pem, keys/master.id); --nuke-master deletes it"
fi
for user in "${users[@]}"; do
    echo "note: $user's key is gone. The master keeps the old key for $user and refuses a new one (BAD_KEY)"
    echo "      until its operator runs: socp admin reset-key --db MASTER_DB $user"
done
echo "reset done in $dir ($removed removed)"
