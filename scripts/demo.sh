#!/usr/bin/env bash
# The main job, end to end, on real devices: build ringback, make a loop device
# holding an ext4 filesystem with data, back it up to qcow2, check the image
# with qemu-img, restore it to a second loop device, prove the three identical
# (qemu-img compare, cmp, ringback verify, fsck and file checksums), print the
# throughput, and remove everything it made, also when a step fails.
#
#   sudo bash scripts/demo.sh
#
# Environment:
#   RINGBACK_BIN           use this ringback binary instead of building one
#   RINGBACK_SCRATCH_PATH  build folder other than .build (swift --scratch-path)
#   RINGBACK_DEMO_DIR      where the work folder goes (default /var/tmp)
#
# Exit status 0 only when every check passed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RB_ROOT"

size_mib=256
started=$SECONDS

# Everything the demo makes, so that cleanup can find it whatever failed.
workdir=""
mounts=()
current_step="starting"

step() {
    current_step=$1
    printf '\n==> %s\n' "$1"
}

# Detaches every loop device over a backing file of ours (found by file, so a
# device whose name we never got back from losetup is still found).
detach_loops() {
    local file dev
    for file in "$workdir"/*.img; do
        [[ -e $file ]] || continue
        while read -r dev; do
            [[ -n $dev ]] || continue
            losetup -d "$dev" 2>/dev/null || { sleep 0.5; losetup -d "$dev" || true; }
        done < <(losetup --noheadings --output NAME --associated "$file" 2>/dev/null)
    done
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    local m
    for m in "${mounts[@]}"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount --lazy "$m"
        fi
    done
    if [[ -n $workdir && -d $workdir ]]; then
        detach_loops
        rm -rf "$workdir"
    fi
    if ((status != 0)); then
        printf '\ndemo FAILED at step "%s" (exit status %d); everything it made was removed\n' \
            "$current_step" "$status" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

((EUID == 0)) || rb_die "the demo makes loop devices and mounts filesystems: run it as root (sudo bash scripts/demo.sh)"

step "installing what is needed"
bash scripts/setup.sh

if [[ -n ${RINGBACK_BIN:-} ]]; then
    ringback=$RINGBACK_BIN
    [[ -x $ringback ]] || rb_die "RINGBACK_BIN=$ringback is not an executable file"
else
    step "building ringback (swift build -c release)"
    rb_find_swift || rb_die "swift not found (scripts/setup.sh says why)"
    rb_scratch_args
    swift build -c release "${RB_SCRATCH[@]}"
    ringback="$(swift build -c release "${RB_SCRATCH[@]}" --show-bin-path)/ringback"
fi
rb_say "ringback: $ringback"

step "making a ${size_mib} MiB loop device with an ext4 filesystem and data"
workdir=$(mktemp -d "${RINGBACK_DEMO_DIR:-/var/tmp}/ringback-demo.XXXXXX")
truncate -s "${size_mib}M" "$workdir/source.img"
src=$(losetup --find --show "$workdir/source.img")
rb_say "source device: $src (over $workdir/source.img)"
# No lazy init: the kernel would otherwise zero the inode tables in the
# background while the filesystem is mounted, and the device would go on
# changing after we think it is done.
mkfs.ext4 -q -F -L ringback-demo -E lazy_itable_init=0,lazy_journal_init=0 "$src"
mkdir "$workdir/mnt"
mounts+=("$workdir/mnt")
mount "$src" "$workdir/mnt"
(
    cd "$workdir/mnt"
    mkdir random text zeros
    head -c 24M /dev/urandom >random/a.bin
    head -c 8M /dev/urandom >random/b.bin
    # A size that is no multiple of any block or cluster size.
    head -c $((3 * 1024 * 1024 + 4097)) /dev/urandom >random/odd.bin
    seq 1 300000 >text/numbers.txt
    for i in $(seq 1 40); do
        seq 1 $((i * 10)) | sed 's/.*/line & of a small text file written by the ringback demo/' >"text/note-$i.txt"
    done
    cp /etc/os-release text/
    # Written zeros: allocated blocks that hold nothing, which a backup skips.
    head -c 6M /dev/zero >zeros/six-mib.bin
    find . -type f -print0 | sort -z | xargs -0 sha256sum >"$workdir/files.sha256"
)
files=$(wc -l <"$workdir/files.sha256")
used=$(df --output=used -B1M "$workdir/mnt" | tail -n1 | tr -d ' ')
rb_say "wrote $files files, ${used} MiB in use on the filesystem"
umount "$workdir/mnt"
sync

image="$workdir/demo.qcow2"
if [[ -t 1 ]]; then
    step "ringback backup $src --to $workdir/progress.qcow2   (to show the progress bar)"
    "$ringback" backup "$src" --to "$workdir/progress.qcow2"
    rm -f "$workdir/progress.qcow2" "$workdir/progress.qcow2.digests"
fi

step "ringback backup $src --to $image --json"
json=$("$ringback" backup "$src" --to "$image" --json)
rb_say "$json"
# One JSON object (the CLI's contract); read the fields the summary needs.
read -r engine mbps seconds bytes_read bytes_written zero_bytes < <(
    python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
def get(k):
    v = d.get(k, "?")
    prec = 3 if k == "seconds" else 1
    return f"{v:.{prec}f}" if isinstance(v, float) else str(v)
print(*(get(k) for k in ("engine", "mb_per_s", "seconds", "bytes_read", "bytes_written", "zero_bytes")))
' <<<"$json"
) || rb_die "ringback backup --json did not print one JSON object"
[[ -s $image ]] || rb_die "ringback backup reported success but $image is missing or empty"
[[ -e $image.digests ]] || rb_warn "no digest file $image.digests beside the image"

step "qemu-img check $image"
qemu-img check "$image"

step "restoring to a second ${size_mib} MiB loop device"
truncate -s "${size_mib}M" "$workdir/restore.img"
dst=$(losetup --find --show "$workdir/restore.img")
rb_say "restore device: $dst (over $workdir/restore.img)"
"$ringback" restore "$image" --to "$dst" --force

step "proving the source, the image and the restored device identical"
rb_say "\$ qemu-img compare -f qcow2 -F raw $image $src"
qemu-img compare -f qcow2 -F raw "$image" "$src"
rb_say "\$ qemu-img compare -f qcow2 -F raw $image $dst"
qemu-img compare -f qcow2 -F raw "$image" "$dst"
rb_say "\$ cmp $src $dst"
cmp "$src" "$dst"
rb_say "cmp: identical"
rb_say "\$ ringback verify $image"
"$ringback" verify "$image"
rb_say "\$ ringback verify $image --against $src"
"$ringback" verify "$image" --against "$src"
rb_say "\$ e2fsck -fn $dst"
e2fsck -fn "$dst"
mkdir "$workdir/restored"
mounts+=("$workdir/restored")
mount -o ro "$dst" "$workdir/restored"
rb_say "\$ sha256sum -c (the $files files written before the backup, read from the restored device)"
(cd "$workdir/restored" && sha256sum --quiet -c "$workdir/files.sha256")
rb_say "sha256sum: all $files files match"
umount "$workdir/restored"

# Bytes as MiB with one decimal; anything else (a field the JSON lacked) as is.
mib() {
    if [[ $1 =~ ^[0-9]+$ ]]; then
        awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
    else
        printf '%s' "$1"
    fi
}
allocated=$(du -B1 "$image" | cut -f1)
virtual=$(qemu-img info --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
cat <<EOF

==> demo passed in $((SECONDS - started)) s
  source          $src, ${size_mib} MiB, ext4 with $files files (${used} MiB in use)
  image           $image: qcow2, $((virtual / 1048576)) MiB virtual, $((allocated / 1048576)) MiB on disk
  backup          $(mib "$bytes_read") read, $(mib "$bytes_written") written, $(mib "$zero_bytes") of zeros skipped
  throughput      $mbps MB/s in $seconds s (engine: $engine)
  checks passed   qemu-img check; qemu-img compare image = source, image = restored;
                  cmp source = restored; ringback verify (digests, against source);
                  e2fsck and sha256 of every file on the restored device
EOF
