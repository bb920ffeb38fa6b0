#!/usr/bin/env bash
# The package under a real systemd, on a machine whose PID 1 is not systemd:
# boots this machine's own root (read-only, with a tmpfs overlay) with
# systemd as PID 1 in systemd-nspawn, installs the .deb there and checks what
# install-test.sh cannot: postinst starts the service, Type=notify (READY,
# STATUS, watchdog keep-alives), the unit's hardening still lets ringbackd
# track and back up a loop device through io_uring, with tracefs mounted by
# the system or by ringbackd itself, an upgrade restarts it, remove stops
# and masks it, purge removes its tracefs instances.
#
#   bash packaging/systemd-test.sh [--deb FILE] [--scratch-path DIR]
#
# Needs root, systemd-nspawn (apt-get install systemd-container), overlayfs,
# a kernel that allows nested containers, and a machine where ringback is not
# installed. Not part of the test suite (it needs the container tooling);
# run it when the unit or the maintainer scripts change. Each check prints
# "systemd-test: ok: NAME"; the first failure "systemd-test: FAIL: NAME: why".
# The container, the overlay, the loop device and the tracefs instance are
# removed on exit, whatever happens.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
# Children must not inherit blocked signals (a Swift test starts this one so).
rb_exec_with_signals_unblocked "$@"

deb=
scratch_args=()
while (($# > 0)); do
    case $1 in
    --deb) deb=$(realpath -- "${2:?--deb needs a file}"); shift 2 ;;
    --scratch-path) scratch_args=(--scratch-path "$(realpath -m -- "${2:?--scratch-path needs a folder}")"); shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) rb_die "systemd-test.sh: unknown argument '$1' (see --help)" ;;
    esac
done
cd "$RB_ROOT" || exit 1

checks=0
ok() { checks=$((checks + 1)); rb_say "systemd-test: ok: $1"; }
fail() {
    rb_say "systemd-test: FAIL: $1: $2" >&2
    exit 1
}
step() { rb_say "systemd-test: $*"; }

((EUID == 0)) || fail preconditions "needs root"
for tool in systemd-nspawn nsenter losetup mount umount qemu-img; do
    command -v "$tool" >/dev/null 2>&1 || fail preconditions "needs $tool (systemd-nspawn: apt-get install systemd-container)"
done
status=$(dpkg-query -W -f='${db:Status-Abbrev}' ringback 2>/dev/null || true)
[[ -z $status || $status == un* || $status == pn* ]] ||
    fail preconditions "ringback is installed here (status '$status'): the container would start from it"
exec 9>/run/lock/ringback-install-test.lock
flock -w 1800 9 || fail preconditions "an install test holds /run/lock/ringback-install-test.lock"

if [[ -z $deb ]]; then
    step "building the package (packaging/build-deb.sh ${scratch_args[*]})"
    deb=$(bash packaging/build-deb.sh "${scratch_args[@]}" | tail -n 1) || fail deb-built "packaging/build-deb.sh failed (above)"
fi
[[ -f $deb ]] || fail deb-built "no package at '$deb'"

# --- Clean-up -------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/ringback-systemd-test.XXXXXX") || fail preconditions "cannot make a folder"
root=$work/root
nspawn_pid=
init_pid=
loop=
had_nspawn_run=0
[[ -e /run/systemd/nspawn ]] && had_nspawn_run=1
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $init_pid ]] && kill -0 "$init_pid" 2>/dev/null; then
        nsenter -t "$init_pid" -a systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
    fi
    [[ -n $nspawn_pid ]] && kill -KILL "$nspawn_pid" 2>/dev/null && wait "$nspawn_pid" 2>/dev/null
    if [[ -n $loop ]]; then
        rmdir "/sys/kernel/tracing/instances/ringback-${loop##*/}" 2>/dev/null
        losetup -d "$loop" 2>/dev/null || rb_warn "clean-up: cannot detach $loop"
    fi
    mountpoint -q "$root" && umount "$root"
    mountpoint -q "$work" && umount "$work"
    rm -rf "$work"
    ((had_nspawn_run)) || rm -rf /run/systemd/nspawn
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The container: this machine's root, changes in a tmpfs ----------------------
# The tmpfs is a mount of its own, so the overlay's upper layer is not inside
# its lower one ("/": the root file system alone, without its submounts).
mount -t tmpfs -o mode=0700 ringback-systemd-test "$work" || fail container "cannot mount a tmpfs on $work"
mkdir -p "$work/upper" "$work/overlay-work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/overlay-work" "$root" ||
    fail container "cannot mount an overlay of / on $root"
systemd-id128 new >"$root/etc/machine-id"
# A container image's policy-rc.d forbids starting services: not in this one.
rm -f "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/root/ringback.deb"

step "booting systemd in systemd-nspawn"
systemd-nspawn -D "$root" --boot --register=no --keep-unit -M ringback-systemd-test --console=pipe \
    >"$work/console.log" 2>&1 &
nspawn_pid=$!
deadline=$((SECONDS + 180))
while :; do
    init_pid=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1)
    if [[ -n $init_pid ]]; then
        state=$(nsenter -t "$init_pid" -a systemctl is-system-running 2>/dev/null)
        [[ $state == running || $state == degraded ]] && break
    fi
    kill -0 "$nspawn_pid" 2>/dev/null || fail container "systemd-nspawn exited: $(tail -n 5 "$work/console.log")"
    ((SECONDS < deadline)) || fail container "systemd did not finish booting in 180 s (state '${state:-}')"
    sleep 1
done
inside() { nsenter -t "$init_pid" -a "$@"; }
ok "container (systemd $(inside systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1, state $state)"

# A loop device of the host, its node made in the container.
{ truncate -s 64M "$work/disk.img" && dd if=/dev/urandom of="$work/disk.img" bs=1M seek=4 count=8 conv=notrunc status=none; } ||
    fail loop-device "cannot write $work/disk.img"
loop=$(losetup -f --show "$work/disk.img") || fail loop-device "losetup failed"
inside mknod "$loop" b 7 "${loop#/dev/loop}" || fail loop-device "cannot make $loop in the container"

# The system's own tracefs, as sys-kernel-tracing.mount mounts it on a host
# (its condition CAP_SYS_RAWIO is false in a container).
inside mount -t tracefs nodev /sys/kernel/tracing || fail tracefs "cannot mount tracefs in the container"

prop() { inside systemctl show ringbackd -p "$1" --value; }
prop_is() { [[ $(prop "$1") == "$2" ]]; }
prop_is_not() { [[ $(prop "$1") != "$2" ]]; }
wait_for() { # seconds command...
    local seconds=$1
    shift
    local until=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < until)) || return 1
        sleep 0.5
    done
}

step "dpkg -i in the container"
inside dpkg -i /root/ringback.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail postinst-starts "dpkg -i failed"; }
wait_for 60 prop_is ActiveState active || fail postinst-starts "ringbackd.service is $(prop ActiveState): $(inside journalctl -u ringbackd --no-pager -n 20)"
[[ $(inside systemctl is-enabled ringbackd) == enabled ]] || fail postinst-starts "ringbackd.service is not enabled"
ok "postinst-starts (active, enabled)"

[[ $(prop StatusText) == "tracking 0 devices (0 bitmaps), 0 jobs running" ]] || fail notify "STATUS is '$(prop StatusText)'"
wait_for 30 prop_is_not WatchdogTimestampMonotonic 0 || fail notify "no watchdog keep-alive arrived"
ok "notify (READY, STATUS '$(prop StatusText)', watchdog keep-alive)"

step "backups through the service"
inside ringback bitmap add "$loop" systemdtest --persistent >/dev/null || fail service-backup "bitmap add failed: $(inside journalctl -u ringbackd --no-pager -n 5)"
inside mkdir -p /root/chain
inside ringback backup "$loop" --sync full --bitmap systemdtest --bitmap-mode on-success --to /root/chain >/dev/null ||
    fail service-backup "full backup failed"
inside dd if=/dev/urandom of="$loop" bs=64K seek=700 count=16 oflag=direct status=none || fail service-backup "write failed"
summary=$(inside ringback backup "$loop" --sync incremental --bitmap systemdtest --to /root/chain --json) ||
    fail service-backup "incremental backup failed"
[[ $summary == *'"engine":"io_uring"'* ]] || fail service-backup "the copy did not use io_uring: $summary"
newest=$(inside sh -c 'ls /root/chain/*.qcow2 | sort | tail -n 1')
inside qemu-img compare -q "$newest" "$loop" || fail service-backup "qemu-img compare: $newest differs from $loop"
wait_for 30 prop_is StatusText "tracking 1 device (1 bitmap), 0 jobs running" ||
    fail service-backup "STATUS did not follow: '$(prop StatusText)'"
ok "service-backup (tracefs, io_uring, full + incremental identical to the device, STATUS follows)"

pid=$(prop MainPID)
inside dpkg -i /root/ringback.deb >"$work/dpkg.log" 2>&1 || fail upgrade-restarts "dpkg -i (again) failed"
wait_for 60 prop_is ActiveState active || fail upgrade-restarts "not active after the upgrade"
[[ $(prop MainPID) != "$pid" ]] || fail upgrade-restarts "the daemon was not restarted (pid $pid)"
ok upgrade-restarts

inside systemctl stop ringbackd
[[ $(prop Result) == success && $(prop ExecMainStatus) == 0 ]] ||
    fail clean-stop "Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
ok clean-stop

# From here on ringbackd mounts tracefs itself, inside its namespace.
inside umount /sys/kernel/tracing || fail tracefs "cannot unmount tracefs in the container"
inside systemctl start ringbackd || fail own-tracefs "start failed"
inside ringback bitmap list "$loop" --json | grep -q '"inconsistent":false' || fail own-tracefs "the persistent bitmap is not back consistent"
inside ringback bitmap add "$loop" second >/dev/null || fail own-tracefs "bitmap add failed with ringbackd's own tracefs"
ok "own-tracefs (bitmap resumed consistent; tracking with ringbackd's own tracefs mount)"

inside dpkg -r ringback >"$work/dpkg.log" 2>&1 || fail remove-stops "dpkg -r failed"
[[ $(prop ActiveState) == inactive && $(inside systemctl is-enabled ringbackd 2>&1) == masked ]] ||
    fail remove-stops "after dpkg -r: $(prop ActiveState), $(inside systemctl is-enabled ringbackd 2>&1)"
inside test -f /etc/ringback/ringback.toml || fail remove-stops "the configuration is gone"
ok "remove-stops (inactive, masked, configuration kept)"

inside dpkg -i /root/ringback.deb >"$work/dpkg.log" 2>&1 || fail reinstall-starts "dpkg -i failed"
wait_for 60 prop_is ActiveState active || fail reinstall-starts "not active after the reinstall"
[[ $(inside systemctl is-enabled ringbackd) == enabled ]] || fail reinstall-starts "not enabled after the reinstall"
ok reinstall-starts

instance=/sys/kernel/tracing/instances/ringback-${loop##*/}
inside dpkg -P ringback >"$work/dpkg.log" 2>&1 || fail purge "dpkg -P failed"
inside test ! -e /etc/ringback || fail purge "/etc/ringback is still there"
inside test ! -e /var/lib/ringback || fail purge "/var/lib/ringback is still there"
if [[ -d /sys/kernel/tracing/instances ]]; then
    [[ ! -e $instance ]] || fail purge "$instance is still there"
fi
ok "purge (configuration, state and the tracefs instance removed)"

rb_say "systemd-test: passed: $checks checks"
