#!/usr/bin/env bash
# Installs what building and testing ringback needs on Debian 12, and checks
# that a Swift 6 toolchain is there. Idempotent: when every package is already
# installed it changes nothing and does not touch the network.
#
#   bash scripts/setup.sh
#
# Exit status 0 when everything needed is present afterwards, 1 otherwise (the
# message says what is missing).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Build: the C libraries behind the CLiburing/CBlkid/CXXHash/CZstd/CZlib/CSQLite
# targets and pkg-config to find them. Tests and demo: the oracles and the tools
# that make real devices and filesystems (DESIGN.md §13); the sqlite3 shell
# reads the catalog files the tests write.
# The control-protocol tests: python3-venv for the venv of the stock QMP
# client (qemu.qmp, below), qemu-system-common for qemu-storage-daemon (QEMU
# itself, the oracle of that client's checks), passwd and util-linux's setpriv
# for the access tests' unprivileged users.
# The metrics tests: prometheus for promtool, Prometheus' own check of the
# exposition ringbackd serves (the server it also ships is not started here).
# The LVM tests' VM (scripts/lvm-vm.sh): qemu-system-x86 boots it; busybox-static,
# kmod (depmod, modprobe) and xz-utils build its initramfs from Debian's kernel
# package (downloaded, not installed); lvm2 and thin-provisioning-tools are
# what the guest runs, from the host's root filesystem.
# The Debian package (packaging/build-deb.sh, packaging/install-test.sh):
# dpkg-dev for dpkg-shlibdeps/dpkg-gencontrol, binutils for readelf/strip,
# lintian, systemd for systemd-analyze verify (it need not be the running
# init), man-db for the manual-page checks.
packages=(
    liburing-dev libblkid-dev libxxhash-dev libzstd-dev zlib1g-dev libsqlite3-dev pkg-config
    qemu-utils fio e2fsprogs util-linux fdisk xfsprogs python3 sqlite3
    fuse3 python3-fusepy
    python3-venv qemu-system-common passwd
    prometheus
    qemu-system-x86 busybox-static kmod xz-utils lvm2 thin-provisioning-tools
    dpkg-dev binutils lintian systemd man-db
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    rb_die "setup.sh installs with apt-get on Debian 12; install by hand: ${packages[*]}"
fi

missing=()
for p in "${packages[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
        missing+=("$p")
    fi
done

sudo=()
if ((EUID != 0)) && command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
fi

if ((${#missing[@]} > 0)); then
    rb_say "setup: installing ${missing[*]}"
    if ((EUID != 0)) && ((${#sudo[@]} == 0)); then
        rb_die "not root and no sudo: as root, run apt-get install ${missing[*]}"
    fi
    # Another apt may be running (unattended-upgrades, a second session): wait
    # for its lock rather than fail.
    apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    "${sudo[@]}" apt-get "${apt_opts[@]}" update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stock QMP client the protocol tests drive ringbackd with: QEMU's
# qemu.qmp from PyPI, in a venv of Debian's python3 that every checkout on
# the machine shares. Made only when importing it fails.
test_venv=${RINGBACK_TEST_VENV:-/opt/ringback-test-venv}
qemu_qmp_version=0.0.6
if ! "$test_venv/bin/python" -c 'from qemu.qmp import QMPClient' >/dev/null 2>&1; then
    rb_say "setup: installing qemu.qmp $qemu_qmp_version into $test_venv"
    if "${sudo[@]}" /usr/bin/python3 -m venv "$test_venv"; then
        "${sudo[@]}" "$test_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "qemu.qmp==$qemu_qmp_version" || rb_warn "pip could not install qemu.qmp into $test_venv"
    else
        rb_warn "could not make the venv $test_venv"
    fi
fi

# What the packages are for, checked by use rather than by name.
problems=()
for module in liburing blkid libxxhash libzstd zlib sqlite3; do
    pkg-config --exists "$module" || problems+=("pkg-config module $module")
done
for tool in qemu-img qemu-storage-daemon qemu-system-x86_64 xz fio losetup mkfs.ext4 mkfs.xfs sfdisk partx python3 sqlite3 setpriv \
    dpkg-deb dpkg-shlibdeps dpkg-gencontrol readelf strip lintian systemd-analyze man; do
    command -v "$tool" >/dev/null 2>&1 || problems+=("command $tool")
done
# faultfs (Tests/tools/faultfs.py) runs under Debian's interpreter, the one
# python3-fusepy installs its module (`fusepy`) for.
command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 ||
    problems+=("command fusermount3 or fusermount")
/usr/bin/python3 -c 'import fusepy' >/dev/null 2>&1 ||
    problems+=("python module fusepy for /usr/bin/python3 (faultfs)")
# Not on a user's PATH, so by their place.
for tool in /usr/sbin/useradd /usr/sbin/userdel /usr/sbin/groupadd /usr/sbin/groupdel \
    /usr/sbin/lvm /usr/sbin/thin_delta /usr/sbin/depmod /bin/busybox; do
    [[ -x $tool ]] || problems+=("command $tool")
done
"$test_venv/bin/python" -c 'from qemu.qmp import QMPClient' >/dev/null 2>&1 ||
    problems+=("qemu.qmp in $test_venv (python3 -m venv $test_venv; $test_venv/bin/pip install qemu.qmp)")

if ! rb_find_swift; then
    problems+=("swift (not on PATH and not in $RB_SWIFT_HOME; install a Swift 6 toolchain for Linux and put its usr/bin on PATH)")
else
    swift_version=$(swift --version 2>&1 | sed -n 's/.*Swift version \([0-9][0-9.]*\).*/\1/p' | head -n1)
    if [[ -z $swift_version ]]; then
        problems+=("swift (\`swift --version\` did not print a version)")
    elif ((${swift_version%%.*} < 6)); then
        problems+=("Swift 6.x (found $swift_version at $(command -v swift))")
    fi
fi

if ((${#problems[@]} > 0)); then
    for p in "${problems[@]}"; do
        printf 'setup: missing: %s\n' "$p" >&2
    done
    exit 1
fi

# Facilities that the root tests use; their absence is reported, not fatal,
# because building and the unprivileged tests work without them.
notes=()
((EUID == 0)) || notes+=("not root: loop-device tests will skip")
if [[ ! -e /dev/loop-control ]] && ((EUID == 0)); then
    modprobe loop 2>/dev/null || true
fi
[[ -e /dev/loop-control ]] || notes+=("no /dev/loop-control: loop-device tests will skip")
if [[ ! -e /dev/fuse ]] && ((EUID == 0)); then
    modprobe fuse 2>/dev/null || true
fi
[[ -e /dev/fuse ]] || notes+=("no /dev/fuse: the faulty-device tests will fail (modprobe fuse)")
if [[ -r /proc/sys/kernel/io_uring_disabled ]] && [[ $(</proc/sys/kernel/io_uring_disabled) != 0 ]]; then
    notes+=("io_uring is disabled (kernel.io_uring_disabled=$(</proc/sys/kernel/io_uring_disabled)): the pread/pwrite fallback will be used")
fi

swift_dir=$(dirname "$(command -v swift)")
rb_say "setup: ok (Swift $swift_version in $swift_dir, ${#packages[@]} Debian packages present)"
if [[ ${RB_SWIFT_ADDED:-0} == 1 ]]; then
    notes+=("swift is not on your PATH; the scripts add $RB_SWIFT_HOME themselves (for your shell: export PATH=\"\$PATH:$RB_SWIFT_HOME\")")
fi
for n in "${notes[@]}"; do
    rb_say "setup: note: $n"
done
