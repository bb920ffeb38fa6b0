#!/usr/bin/env bash
# Runs a command as root inside a small QEMU VM that has real device-mapper and
# LVM (dm-snapshot, dm-thin-pool, thin_delta), for hosts whose kernel has none.
# The LVM tests (Tests/LVMTests) boot it once and run the guest suites of the
# host-built test bundle in it.
#
#   bash scripts/lvm-vm.sh CMD [ARGS...]   run CMD in the guest, in the caller's
#                                          working directory; exit with its status
#   bash scripts/lvm-vm.sh                 self-test: classic snapshot, thin pool,
#                                          thin_delta, tracefs; prints PASS or FAIL
#
# The guest: Debian's generic kernel (downloaded once with `apt-get download`,
# never installed on the host) under qemu-system-x86_64 with TCG, a busybox
# initramfs, the host's root filesystem shared read-only over virtio-9p with a
# RAM overlay on top (so the guest runs the host's lvm2, e2fsprogs, qemu-img,
# python3 and Swift runtime, and sees the host-built binaries at their paths),
# two blank sparse disks as /dev/vda and /dev/vdb, tracefs at
# /sys/kernel/tracing, a tmpfs /run, and $LVMVM_OUT, a folder shared writable
# with the host at the same path. The kernel command line carries
# `ringback.lvmvm=1`, which is how a test knows for certain that it is in the
# guest (the host's own root disk may be /dev/vda too).
#
# Exit status: the command's; 125 when the VM died or timed out before the
# command finished (the console's tail says why); 126 on a host-side problem
# (missing packages, no kernel).
#
# Environment:
#   LVMVM_CACHE    where the kernel and initramfs are kept between runs
#                  (default /var/cache/ringback-lvmvm when writable, else
#                  ${TMPDIR:-/tmp}/ringback-lvmvm-cache-$UID)
#   LVMVM_OUT      the folder shared writable with the guest (default: a
#                  fresh temporary folder, removed afterwards)
#   LVMVM_ENV      names of host variables to pass into the guest, e.g.
#                  "RINGBACK_BIN FOO"; the guest otherwise starts from an empty
#                  environment (PATH, HOME, LANG, LVMVM_OUT)
#   LVMVM_MEM      guest memory in MiB (1024); the RAM overlay (/tmp writes)
#                  gets half of it
#   LVMVM_SMP      guest CPUs (1)
#   LVMVM_DISK     size of each blank disk (2G; sparse on the host)
#   LVMVM_DISKS    number of blank disks (2: /dev/vda, /dev/vdb)
#   LVMVM_TIMEOUT  seconds before the VM is killed (1200)
#   LVMVM_ACCEL    qemu accelerator (default tcg; kvm only where it can boot
#                  a stock kernel, see below)
#   LVMVM_APPEND   extra kernel command line
#
# Traps already found (keep them in mind when changing this file):
# - This host's /dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel:
#   TCG it is. Guest CPU work is 10-20x slower than the host (more while the
#   host builds), so keep guest data in MiB and build everything on the host.
# - The uncompressed ELF vmlinux inside the bzImage boots through PVH: no
#   BIOS, no real mode, no XZ decompression under TCG (~5 s less per boot).
# - No udev in the guest: lvm.conf gets udev_sync=0, udev_rules=0, and lvm
#   creates /dev/mapper/* and /dev/VG/LV itself; no dmeventd (monitoring=0).
# - Foundation's Process needs the loopback interface up.
# - Modules come from the kernel .deb with their dependencies resolved by
#   `modprobe --show-depends` against a depmod of the unpacked tree;
#   crc32c-intel is left out (it does not load under TCG's CPU model).
# - Processes spawned by Swift tests inherit a blocked SIGTERM, so the VM is
#   stopped with SIGKILL.
set -uo pipefail

MEM=${LVMVM_MEM:-1024}
SMP=${LVMVM_SMP:-1}
DISK=${LVMVM_DISK:-2G}
NDISKS=${LVMVM_DISKS:-2}
TIMEOUT=${LVMVM_TIMEOUT:-1200}
CALLER_PWD=$PWD
T0=$EPOCHREALTIME

vm_die() { printf 'lvm-vm: error: %s\n' "$*" >&2; exit 126; }
vm_say() { local t; elapsed t; printf '[%s] lvm-vm: %s\n' "$t" "$*"; }
# Sets the variable named $1 to the seconds since the script started, "  12.34"
# (without a fork: it runs for every console line).
elapsed() {
    local d=$((${EPOCHREALTIME/./} - ${T0/./}))
    printf -v "$1" '%4d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
}

# --- Host requirements (scripts/setup.sh installs them) --------------------------

# Package → a file it provides that this script or the guest uses.
declare -A needs=(
    [qemu-system-x86]=/usr/bin/qemu-system-x86_64
    [busybox-static]=/bin/busybox          # static: it runs before any library is there
    [kmod]=/usr/sbin/depmod
    [xz-utils]=/usr/bin/xz
    [lvm2]=/usr/sbin/lvm                    # run by the guest from the host root
    [thin-provisioning-tools]=/usr/sbin/thin_delta
    [e2fsprogs]=/usr/sbin/mkfs.ext4
)
missing=()
for pkg in "${!needs[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) != installed ]] || [[ ! -x ${needs[$pkg]} ]]; then
        missing+=("$pkg")
    fi
done
((${#missing[@]} == 0)) || vm_die "missing Debian packages: ${missing[*]} (bash scripts/setup.sh installs them)"
((EUID == 0)) || vm_die "must run as root (the guest's host-root share and the kernel download need it)"

# --- The kernel and initramfs, built once per cache key --------------------------

if [[ -n ${LVMVM_CACHE:-} ]]; then
    CACHE=$LVMVM_CACHE
elif mkdir -p /var/cache/ringback-lvmvm 2>/dev/null && [[ -w /var/cache/ringback-lvmvm ]]; then
    CACHE=/var/cache/ringback-lvmvm
else
    CACHE=${TMPDIR:-/tmp}/ringback-lvmvm-cache-$EUID
fi
mkdir -p "$CACHE" || vm_die "cannot make the cache folder $CACHE"

# What the guest kernel loads, with their dependencies: virtio disks and 9p for
# the host root, overlay for the RAM layer, the dm targets LVM uses, ext4.
modules=(virtio_pci virtio_blk 9pnet_virtio 9p overlay dm_mod dm_snapshot dm_thin_pool
    dm_bufio crc32c_generic ext4)

# The initramfs's /init. Everything the guest does before the command runs.
read -r -d '' INIT <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
ip link set lo up
echo "LVMVM: init at $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /mod/list); do insmod /mod/$m || echo "LVMVM: insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=512000
R=/newroot
mount -t 9p -o $o,ro,cache=loose hostroot /lower || { echo "LVMVM: cannot mount the host root"; poweroff -f; }
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work /rw/lvm
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $R ||
    { echo "LVMVM: no overlay, the guest root is read-only"; mount --bind /lower $R; }
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t tracefs tracefs $R/sys/kernel/tracing || echo "LVMVM: cannot mount tracefs"
mount -t devtmpfs dev $R/dev
ln -sf /proc/self/fd $R/dev/fd
ln -sf fd/0 $R/dev/stdin; ln -sf fd/1 $R/dev/stdout; ln -sf fd/2 $R/dev/stderr
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs -o mode=755 run $R/run
mkdir -p $R/run/lock $R/run/lvm
# lvm.conf for a guest without udev or dmeventd, on a writable copy of /etc/lvm;
# no metadata archives (the VG lives as long as the VM).
cp -a $R/etc/lvm/. /rw/lvm/
mount --bind /rw/lvm $R/etc/lvm
cat >> $R/etc/lvm/lvm.conf <<'CONF'
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    use_devicesfile = 0
}
backup {
    backup = 0
    archive = 0
}
CONF
OUT=$(sed -n 's/.*LVMVM_OUT=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p $R$OUT
mount -t 9p -o $o out $R$OUT || { echo "LVMVM: cannot mount the shared folder"; poweroff -f; }
echo "LVMVM: command starts at $(cut -d' ' -f1 /proc/uptime)s"
chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 LVMVM_OUT=$OUT /bin/sh $OUT/.lvmvm-cmd
rc=$?
echo $rc > $R$OUT/.lvmvm-exit-code
echo "LVMVM-EXIT-CODE=$rc at $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
EOF

key=$(printf '%s\n' "$INIT" "${modules[*]}" | sha256sum | cut -c1-16)
BOOT=$CACHE/boot-$key

# The versioned package linux-image-amd64 depends on (linux-image-6.1.0-NN-amd64).
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# Builds $BOOT/{vmlinux,initrd.img,kernel-version} in the scratch folder $1.
build_boot() {
    local tmp=$1 kpkg kver k off ird ko
    kpkg=$(kernel_package)
    if [[ -z $kpkg ]]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq || return 1
        kpkg=$(kernel_package)
    fi
    # The generic flavour: the cloud one lacks 9p.
    [[ -n $kpkg ]] || { echo "lvm-vm: apt knows no linux-image-amd64" >&2; return 1; }
    mkdir -p "$CACHE/debs"
    if ! compgen -G "$CACHE/debs/${kpkg}_*.deb" >/dev/null; then
        vm_say "downloading $kpkg (once)"
        rm -f "$CACHE"/debs/*.deb
        (cd "$CACHE/debs" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg") || return 1
    fi
    dpkg-deb -x "$(compgen -G "$CACHE/debs/${kpkg}_*.deb" | head -n1)" "$tmp/kx" || return 1
    kver=$(ls "$tmp/kx/lib/modules")
    depmod -b "$tmp/kx" "$kver" || return 1
    k=$tmp/kx/boot/vmlinuz-$kver
    off=$(grep -abo $'\xfd7zXZ\x00' "$k" | head -n1 | cut -d: -f1)
    if [[ -n $off ]]; then tail -c +$((off + 1)) "$k" | xz -dc 2>/dev/null >"$tmp/vmlinux"; fi
    [[ $(head -c4 "$tmp/vmlinux" 2>/dev/null | tail -c3) == ELF ]] || cp "$k" "$tmp/vmlinux"
    ird=$tmp/ird
    mkdir -p "$ird"/{bin,dev,proc,sys,lower,rw,newroot,mod}
    cp /bin/busybox "$ird/bin/"
    modprobe -a -d "$tmp/kx" -S "$kver" --show-depends "${modules[@]}" |
        awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | grep -v crc32c-intel |
        while read -r ko; do
            cp "$ko" "$ird/mod/" && basename "$ko" >>"$ird/mod/list"
        done
    [[ -s $ird/mod/list ]] || { echo "lvm-vm: no modules found in $kpkg" >&2; return 1; }
    printf '%s\n' "$INIT" >"$ird/init"
    chmod +x "$ird/init"
    (cd "$ird" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$tmp/initrd.img" || return 1
    mkdir -p "$tmp/boot"
    mv "$tmp/vmlinux" "$tmp/initrd.img" "$tmp/boot/"
    echo "$kver" >"$tmp/boot/kernel-version"
    mv -T "$tmp/boot" "$BOOT"
}

if [[ ! -f $BOOT/kernel-version ]]; then
    # One builder at a time; the others wait and then find it built.
    exec 9>"$CACHE/.lock"
    flock 9
    if [[ ! -f $BOOT/kernel-version ]]; then
        vm_say "building the guest kernel and initramfs in $BOOT"
        scratch=$(mktemp -d "$CACHE/.build.XXXXXX") || vm_die "cannot make a folder in $CACHE"
        build_boot "$scratch"
        built=$?
        rm -rf "$scratch"
        ((built == 0)) || vm_die "could not build the guest kernel and initramfs"
        # Boot folders of other versions of this script, unused for a week.
        find "$CACHE" -mindepth 1 -maxdepth 1 -name 'boot-*' ! -name "boot-$key" -mtime +7 \
            -exec rm -rf {} + 2>/dev/null
    fi
    flock -u 9
    exec 9>&-
fi
touch "$BOOT"

# --- The run ---------------------------------------------------------------------

RUN=$(mktemp -d "${TMPDIR:-/tmp}/ringback-lvmvm-run.XXXXXX") || vm_die "cannot make a run folder"
# shellcheck disable=SC2064  # $RUN is fixed from here on
trap "rm -rf '$RUN'" EXIT
if [[ -n ${LVMVM_OUT:-} ]]; then
    OUT=$(cd "$LVMVM_OUT" && pwd) || vm_die "LVMVM_OUT=$LVMVM_OUT is not a folder"
else
    OUT=$RUN/out
    mkdir -p "$OUT"
fi
[[ $OUT != *' '* ]] || vm_die "the shared folder's path must not contain spaces: $OUT"
rm -f "$OUT/.lvmvm-exit-code"

self_test=0
if (($# == 0)); then
    self_test=1
    set -- /bin/bash "$RUN/self-test.sh"
    cat >"$RUN/self-test.sh" <<'EOF'
set -euo pipefail
fail() { echo "CHECK FAILED: $*"; exit 1; }
grep -qw ringback.lvmvm=1 /proc/cmdline || fail "no ringback.lvmvm=1 on the kernel command line"
[[ -e /sys/kernel/tracing/events/block/block_rq_complete ]] || fail "no tracefs block events"
[[ -e /sys/kernel/tracing/events/block/block_bio_complete ]] || fail "no block_bio_complete event"
pvcreate -q /dev/vda /dev/vdb
vgcreate -q vg /dev/vda /dev/vdb
lvcreate -q -y -L64M -n lv0 vg
head -c 4M /dev/urandom >/tmp/old; head -c 4M /dev/urandom >/tmp/new
dd if=/tmp/old of=/dev/vg/lv0 bs=1M oflag=direct status=none
lvcreate -q -s -L16M -n snap0 vg/lv0
dd if=/tmp/new of=/dev/vg/lv0 bs=1M oflag=direct status=none
cmp <(head -c 4M /dev/vg/snap0) /tmp/old || fail "the snapshot lost the old data"
cmp <(head -c 4M /dev/vg/lv0) /tmp/new || fail "the origin lacks the new data"
echo "CHECK ok: classic snapshot"
lvcreate -q -y -L128M -T vg/pool --chunksize 64k
lvcreate -q -V64M -T vg/pool -n thin0
dd if=/dev/urandom of=/dev/vg/thin0 bs=1M count=2 oflag=direct status=none
lvcreate -q -s -n tsnap1 vg/thin0
dd if=/dev/urandom of=/dev/vg/thin0 bs=64k seek=100 count=3 oflag=direct status=none
lvcreate -q -s -n tsnap2 vg/thin0 2>/dev/null
id1=$(lvs --noheadings -o thin_id vg/tsnap1 | tr -d ' ')
id2=$(lvs --noheadings -o thin_id vg/tsnap2 | tr -d ' ')
dmsetup message vg-pool-tpool 0 reserve_metadata_snap
thin_delta -m --snap1 "$id1" --snap2 "$id2" /dev/mapper/vg-pool_tmeta >/tmp/delta
dmsetup message vg-pool-tpool 0 release_metadata_snap
grep -Eq '<(different|right_only) begin="100" length="3"' /tmp/delta || { cat /tmp/delta; fail "thin_delta"; }
echo "CHECK ok: thin_delta reports exactly the changed chunks"
echo "ALL GUEST CHECKS PASSED"
EOF
fi

{
    printf 'cd %q || exit 99\n' "$CALLER_PWD"
    for name in ${LVMVM_ENV:-}; do
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || vm_die "LVMVM_ENV: not a variable name: $name"
        [[ -v $name ]] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$OUT/.lvmvm-cmd"

drives=()
for ((i = 0; i < NDISKS; i++)); do
    truncate -s "$DISK" "$RUN/disk$i.img" || vm_die "cannot make a $DISK disk in $RUN"
    drives+=(-drive "file=$RUN/disk$i.img,if=virtio,format=raw,cache=unsafe")
done

accel=${LVMVM_ACCEL:-tcg}
cpu=max
if [[ -z ${LVMVM_ACCEL:-} && -w /dev/kvm && ! -d /sys/module/kvm_pvm ]] &&
    [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]; then
    accel=kvm
    cpu=host
fi
[[ $accel == tcg && $SMP -gt 1 ]] && accel=tcg,thread=multi

vm_say "booting $(cat "$BOOT/kernel-version") (-accel $accel, ${MEM} MiB, $SMP CPU); command: $*"
# Lines as they come, each with the seconds since the start; the console is
# kept for the exit code's fallback. `timeout --foreground` keeps qemu in this
# script's process group, so that whoever kills the group stops the VM too.
timeout --foreground -s KILL "$TIMEOUT" qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp "$SMP" -m "$MEM" \
    -nodefaults -no-user-config -display none -no-reboot -serial stdio \
    -kernel "$BOOT/vmlinux" -initrd "$BOOT/initrd.img" \
    -append "console=ttyS0 loglevel=3 panic=-1 ringback.lvmvm=1 ${LVMVM_APPEND:-} LVMVM_OUT=$OUT" \
    "${drives[@]}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$OUT,mount_tag=out,security_model=none" </dev/null 2>&1 |
    while IFS= read -r line; do elapsed t; printf '[%s] %s\n' "$t" "${line%$'\r'}"; done | tee "$RUN/console.log"
qemu_status=${PIPESTATUS[0]}

rc=
[[ -f $OUT/.lvmvm-exit-code ]] && rc=$(<"$OUT/.lvmvm-exit-code")
[[ -n $rc ]] || rc=$(sed -n 's/.*LVMVM-EXIT-CODE=\([0-9]*\).*/\1/p' "$RUN/console.log" | tail -n1)
rm -f "$OUT/.lvmvm-cmd" "$OUT/.lvmvm-exit-code"
if [[ -z $rc ]]; then
    if ((qemu_status == 137)); then
        vm_say "the VM did not finish within $TIMEOUT s (LVMVM_TIMEOUT) and was killed"
    else
        vm_say "the VM stopped before the command finished (qemu exit status $qemu_status)"
    fi
    elapsed t
    vm_say "FAIL after $t s"
    exit 125
fi
elapsed t
vm_say "guest command exited $rc; wall time $t s"
if ((self_test)); then
    if ((rc == 0)); then echo PASS; else echo FAIL; fi
fi
exit "$rc"
