#!/usr/bin/env bash
# The Debian package on this machine, end to end: install it, run the
# INSTALLED ringbackd (started directly, as the unit's ExecStart says: PID 1
# here need not be systemd) with a backup plan on a loop device, back up
# through the installed ringback, then remove, reinstall and purge it.
#
#   bash packaging/install-test.sh [--deb FILE] [--scratch-path DIR] [--without-plan]
#
#   --deb FILE          test this package instead of building one
#                       (packaging/build-deb.sh, which also runs lintian)
#   --scratch-path DIR  the release build folder build-deb.sh uses
#   --without-plan      leave out the scheduled-plan check (for a tree without
#                       the plan scheduler; the test suite never passes it)
#
# Needs root, dpkg, losetup and qemu-img, and a machine where ringback is not
# installed and /etc/ringback and /var/lib/ringback do not exist (the test
# purges the package, which removes them). Every check prints
# "install-test: ok: NAME"; the first failure prints "install-test: FAIL: NAME:
# why" and exits 1. Whatever happens, the daemon, the loop device, the
# package and the files are removed on exit.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
# Children must not inherit blocked signals (a Swift test starts this one so).
rb_exec_with_signals_unblocked "$@"

deb=
scratch_args=()
with_plan=1
while (($# > 0)); do
    case $1 in
    --deb) deb=$(realpath -- "${2:?--deb needs a file}"); shift 2 ;;
    --scratch-path) scratch_args=(--scratch-path "$(realpath -m -- "${2:?--scratch-path needs a folder}")"); shift 2 ;;
    --without-plan) with_plan=0; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) rb_die "install-test.sh: unknown argument '$1' (see --help)" ;;
    esac
done
cd "$RB_ROOT" || exit 1

checks=0
ok() { checks=$((checks + 1)); rb_say "install-test: ok: $1"; }
fail() {
    rb_say "install-test: FAIL: $1: $2" >&2
    exit 1
}
step() { rb_say "install-test: $*"; }

# --- Preconditions ---------------------------------------------------------
((EUID == 0)) || fail preconditions "needs root (dpkg -i, loop devices)"
for tool in dpkg dpkg-deb dpkg-query losetup qemu-img truncate dd flock readelf ldd systemd-analyze man; do
    command -v "$tool" >/dev/null 2>&1 || fail preconditions "needs $tool (scripts/setup.sh installs it)"
done
[[ -x /usr/bin/python3 ]] || fail preconditions "needs /usr/bin/python3 (Debian's python3)"
[[ -e /dev/loop-control ]] || fail preconditions "needs /dev/loop-control (modprobe loop)"

# One install test per machine at a time: they share /etc, /var/lib and the package.
exec 9>/run/lock/ringback-install-test.lock
flock -w 1800 9 || fail preconditions "another install test holds /run/lock/ringback-install-test.lock"

status=$(dpkg-query -W -f='${db:Status-Abbrev}' ringback 2>/dev/null || true)
[[ -z $status || $status == un* || $status == pn* ]] ||
    fail preconditions "the package ringback is installed here (status '$status'); the test would replace and purge it"
for path in /etc/ringback /var/lib/ringback /run/ringback/qmp.sock; do
    [[ ! -e $path ]] || fail preconditions "$path exists: this machine has a ringback of its own, which the test's purge would remove"
done

# --- The installed daemon, started as its unit would start it -----------------
# The unit's own command line (exec_start, read after the install), and what
# systemd gives it: its runtime and state folders, umask 0077, $NOTIFY_SOCKET
# and $WATCHDOG_USEC (the empty signal mask is the script's own, above).
start_daemon() { # check
    : >"$tmp/notify.log"
    install -d -m 0755 /run/ringback
    install -d -m 0700 /var/lib/ringback
    (
        umask 0077
        export NOTIFY_SOCKET=$notify WATCHDOG_USEC=10000000
        exec "${exec_start[@]}"
    ) >>"$tmp/ringbackd.log" 2>&1 &
    daemon_pid=$!
    local deadline=$((SECONDS + 120))
    until grep -qx 'READY=1' "$tmp/notify.log"; do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            wait "$daemon_pid"
            local rc=$?
            daemon_pid=
            fail "$1" "ringbackd exited ($rc) before READY=1: $(tail -n 20 "$tmp/ringbackd.log")"
        fi
        ((SECONDS < deadline)) || fail "$1" "no READY=1 from ringbackd in 120 s: $(tail -n 20 "$tmp/ringbackd.log")"
        sleep 0.2
    done
    grep -q '^STATUS=' "$tmp/notify.log" || fail "$1" "READY=1 came without a STATUS= line"
}
stop_daemon() { # check | quietly
    [[ -n $daemon_pid ]] || return 0
    local pid=$daemon_pid
    daemon_pid=
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + 90)) # the unit's TimeoutStopSec
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        [[ $1 == quietly ]] || fail "$1" "ringbackd did not stop within 90 s of SIGTERM (killed)"
        return 0
    fi
    wait "$pid"
    local rc=$?
    [[ $1 == quietly ]] && return 0
    ((rc == 0)) || fail "$1" "ringbackd exited $rc after SIGTERM: $(tail -n 20 "$tmp/ringbackd.log")"
    grep -qx 'STOPPING=1' "$tmp/notify.log" || fail "$1" "no STOPPING=1 from ringbackd"
}

# --- Clean-up, whatever happens -------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringback-install-test.XXXXXX") || fail preconditions "cannot make a temporary folder"
loop=
daemon_pid=
listener_pid=
tracing=/sys/kernel/tracing
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_daemon quietly
    [[ -n $listener_pid ]] && kill -KILL "$listener_pid" 2>/dev/null && wait "$listener_pid" 2>/dev/null
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' ringback 2>/dev/null || true)
    if [[ -n $status && $status != un* && $status != pn* ]]; then
        dpkg -P ringback >/dev/null 2>&1 || rb_warn "clean-up: dpkg -P ringback failed"
    fi
    if [[ -n $loop ]]; then
        rmdir "$tracing/instances/ringback-${loop##*/}" 2>/dev/null
        losetup -d "$loop" 2>/dev/null || rb_warn "clean-up: cannot detach $loop"
    fi
    # They did not exist before the test (checked above).
    rm -rf /etc/ringback /var/lib/ringback /run/ringback "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The package -------------------------------------------------------------
if [[ -z $deb ]]; then
    step "building the package (packaging/build-deb.sh ${scratch_args[*]})"
    deb=$(bash packaging/build-deb.sh "${scratch_args[@]}" | tail -n 1) || fail deb-built "packaging/build-deb.sh failed (above)"
    built="built, lintian clean"
else
    built="given"
fi
[[ -f $deb ]] || fail deb-built "no package at '$deb'"
version=$(dpkg-deb -f "$deb" Version)
ok "deb-built ($deb, $built)"

install_package() { # what
    dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "$1" "dpkg -i $deb failed"; }
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' ringback) == "ii " ]] || fail "$1" "ringback is not installed after dpkg -i"
}

step "dpkg -i $deb"
install_package installed
ok installed

# The contract's "Installed layout".
for path in /usr/bin/ringback /usr/sbin/ringbackd /lib/systemd/system/ringbackd.service \
    /etc/ringback/ringback.toml /usr/share/man/man1/ringback.1.gz /usr/share/man/man8/ringbackd.8.gz \
    /usr/share/bash-completion/completions/ringback /usr/share/zsh/vendor-completions/_ringback \
    /usr/share/doc/ringback/copyright /usr/share/doc/ringback/changelog.Debian.gz; do
    [[ -f $path ]] || fail layout "$path is missing"
done
[[ -d /etc/ringback/hooks.d ]] || fail layout "/etc/ringback/hooks.d is missing"
ok layout

for exe in /usr/bin/ringback /usr/sbin/ringbackd; do
    ! readelf -d "$exe" | grep -E '\((RPATH|RUNPATH)\)' || fail no-runpath "$exe has a RPATH/RUNPATH"
    ! readelf -d "$exe" | grep -E 'NEEDED.*lib(swift|Foundation|dispatch)' || fail no-runpath "$exe needs a Swift runtime library"
done
ok no-runpath
for exe in /usr/bin/ringback /usr/sbin/ringbackd; do
    ! ldd "$exe" | grep 'not found' || fail libraries-resolve "$exe needs libraries that are not installed"
done
ok libraries-resolve

[[ $(/usr/bin/ringback --version) == "${version%-*}" && $(/usr/sbin/ringbackd --version) == "${version%-*}" ]] ||
    fail version "ringback/ringbackd --version ($(/usr/bin/ringback --version)) is not the package's ${version%-*}"
ok "version (${version%-*})"

dpkg-query -W -f='${Conffiles}\n' ringback | grep -q '^ /etc/ringback/ringback.toml ' ||
    fail conffile-registered "/etc/ringback/ringback.toml is not a conffile of the package"
ok conffile-registered

verify=$(systemd-analyze verify /lib/systemd/system/ringbackd.service 2>&1)
verify_rc=$?
[[ $verify_rc == 0 && -z $verify ]] || fail systemd-analyze-verify "exit $verify_rc: $verify"
ok "systemd-analyze-verify (no output)"

# deb-systemd-helper enabled it as on a systemd machine; it did not start it
# where systemd is not the init.
[[ -L /etc/systemd/system/multi-user.target.wants/ringbackd.service ]] ||
    fail service-enabled "no /etc/systemd/system/multi-user.target.wants/ringbackd.service"
ok service-enabled

[[ $(man -w ringback backup 2>/dev/null) == /usr/share/man/man1/ringback-backup.1.gz ]] ||
    fail manual-pages "man ringback backup does not find ringback-backup(1)"
man -w 8 ringbackd >/dev/null 2>&1 || fail manual-pages "man 8 ringbackd finds nothing"
ok manual-pages

# --- A device, a plan and the installed daemon ------------------------------
step "making a loop device"
truncate -s 64M "$tmp/disk.img" || fail loop-device "truncate failed"
dd if=/dev/urandom of="$tmp/disk.img" bs=1M seek=4 count=8 conv=notrunc status=none || fail loop-device "dd failed"
loop=$(losetup -f --show "$tmp/disk.img") || fail loop-device "losetup failed"

plan=installtest
repo=$tmp/repo
mkdir -p "$repo"
# What an operator does: edit the conffile. Schema: config-contract.md.
cat >/etc/ringback/ringback.toml <<EOF
# ringback install test ($0)
[plan.$plan]
devices = ["$loop"]
repository = "$repo"
schedule = "every 10s"
EOF
config_sum=$(md5sum </etc/ringback/ringback.toml)

# systemd's notification socket, for the installed daemon's READY=1.
notify=$tmp/notify.sock
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        out.write(s.recv(65536).decode() + "\n")
' "$notify" "$tmp/notify.log" &
listener_pid=$!
for _ in $(seq 100); do [[ -S $notify ]] && break; sleep 0.1; done
[[ -S $notify ]] || fail daemon-ready "the notification listener did not bind $notify"

read -r -a exec_start < <(sed -n 's/^ExecStart=//p' /lib/systemd/system/ringbackd.service)
((${#exec_start[@]} > 0)) || fail daemon-ready "no ExecStart= in the installed unit"
step "starting the installed daemon: ${exec_start[*]}"
start_daemon daemon-ready
ok "daemon-ready ($(grep -m1 '^STATUS=' "$tmp/notify.log"))"

ringback() { /usr/bin/ringback "$@"; }
# The newest image of a chain folder (names start with a sequence number).
newest_image() { find "$1" -name '*.qcow2' -printf '%P\n' | sort | tail -n 1 | sed "s|^|$1/|"; }
check_images() { # check folder
    local image n=0
    while IFS= read -r image; do
        qemu-img check -q "$image" || fail "$1" "qemu-img check $image failed"
        n=$((n + 1))
    done < <(find "$2" -name '*.qcow2')
    ((n > 0)) || fail "$1" "no qcow2 image under $2"
}

if ((with_plan)); then
    step "waiting for plan '$plan' (every 10s) to succeed"
    deadline=$((SECONDS + 600))
    while :; do
        listing=$(ringback plan list --json 2>"$tmp/plan.err") ||
            fail plan-success "ringback plan list --json failed: $(cat "$tmp/plan.err")"
        result=$(/usr/bin/python3 -c '
import json, sys
plans = [p for p in json.loads(sys.argv[1]) if p.get("name") == sys.argv[2]]
if not plans: print("missing")
else: print(plans[0].get("last-result") or "none", plans[0].get("last-error") or "")' "$listing" "$plan") ||
            fail plan-success "cannot read ringback plan list --json: $listing"
        case $result in
        success*) break ;;
        missing*) fail plan-success "plan '$plan' is not in ringback plan list --json: $listing" ;;
        failed*) fail plan-success "plan '$plan' failed: ${result#failed }" ;;
        esac
        ((SECONDS < deadline)) || fail plan-success "plan '$plan' did not succeed within 600 s: $listing"
        sleep 2
    done
    ok "plan-success"
    # Nothing writes to the device: the newest restore point equals it.
    check_images plan-images "$repo"
    image=$(newest_image "$repo")
    qemu-img compare -q "$image" "$loop" || fail plan-images "qemu-img compare: $image differs from $loop"
    ok "plan-images ($image)"
else
    step "SKIPPED: plan-success, plan-images (--without-plan)"
fi

# Through the daemon: a persistent bitmap, a full backup, a write, an incremental.
step "daemon backups of $loop"
chain=$tmp/chain
mkdir -p "$chain"   # a chain folder must exist
ringback bitmap add "$loop" installtest --persistent >/dev/null || fail daemon-backup "ringback bitmap add failed"
ringback backup "$loop" --sync full --bitmap installtest --bitmap-mode on-success --to "$chain" >"$tmp/backup.log" 2>&1 ||
    fail daemon-backup "full backup failed: $(cat "$tmp/backup.log")"
dd if=/dev/urandom of="$loop" bs=64K seek=700 count=16 oflag=direct conv=notrunc status=none || fail daemon-backup "write to $loop failed"
ringback backup "$loop" --sync incremental --bitmap installtest --to "$chain" >"$tmp/backup.log" 2>&1 ||
    fail daemon-backup "incremental backup failed: $(cat "$tmp/backup.log")"
check_images daemon-backup "$chain"
image=$(newest_image "$chain")
qemu-img compare -q "$image" "$loop" || fail daemon-backup "qemu-img compare: $image differs from $loop"
ok "daemon-backup (full + incremental, $image)"

step "ringback backup $loop (in the CLI)"
ringback backup "$loop" --to "$tmp/direct.qcow2" >"$tmp/backup.log" 2>&1 || fail cli-backup "ringback backup failed: $(cat "$tmp/backup.log")"
qemu-img check -q "$tmp/direct.qcow2" || fail cli-backup "qemu-img check $tmp/direct.qcow2 failed"
qemu-img compare -q "$tmp/direct.qcow2" "$loop" || fail cli-backup "qemu-img compare: $tmp/direct.qcow2 differs from $loop"
ringback verify "$tmp/direct.qcow2" >/dev/null || fail cli-backup "ringback verify $tmp/direct.qcow2 failed"
ok cli-backup

stop_daemon daemon-stopped
instance=$tracing/instances/ringback-${loop##*/}
[[ -d $instance ]] || fail daemon-stopped "$instance is gone: a clean stop leaves it recording"
ok "daemon-stopped (STOPPING=1, exit 0, $instance kept)"

# --- dpkg -r: the configuration and the state stay ------------------------------
step "dpkg -r ringback"
dpkg -r ringback >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail remove-keeps-config "dpkg -r failed"; }
[[ $(dpkg-query -W -f='${db:Status-Abbrev}' ringback) == "rc " ]] || fail remove-keeps-config "the package is not in state config-files"
for path in /usr/bin/ringback /usr/sbin/ringbackd /lib/systemd/system/ringbackd.service; do
    [[ ! -e $path ]] || fail remove-keeps-config "$path is still there"
done
[[ $(md5sum </etc/ringback/ringback.toml 2>/dev/null) == "$config_sum" ]] ||
    fail remove-keeps-config "/etc/ringback/ringback.toml is gone or changed"
[[ -f /var/lib/ringback/tracked.json && -d $instance ]] || fail remove-keeps-config "the daemon's state or $instance is gone"
[[ $(readlink /etc/systemd/system/ringbackd.service) == /dev/null ]] || fail remove-keeps-config "the unit is not masked"
ok remove-keeps-config

# --- Reinstall over the kept configuration: the bitmap resumes ----------------
step "dpkg -i $deb (over the kept configuration)"
install_package reinstall-keeps-config
[[ $(md5sum </etc/ringback/ringback.toml) == "$config_sum" ]] || fail reinstall-keeps-config "the administrator's ringback.toml was replaced"
[[ ! -L /etc/systemd/system/ringbackd.service ]] || fail reinstall-keeps-config "the unit is still masked"
ok reinstall-keeps-config
start_daemon state-resumed
bitmap=$(ringback bitmap list "$loop" --json) || fail state-resumed "ringback bitmap list failed"
/usr/bin/python3 -c '
import json, sys
b = [x for x in json.loads(sys.argv[1]) if x.get("name") == "installtest"]
sys.exit(0 if b and b[0].get("inconsistent") is False and b[0].get("persistent") is True else 1)' "$bitmap" ||
    fail state-resumed "bitmap 'installtest' is not back, persistent and consistent: $bitmap"
if ((with_plan)); then
    ringback plan list --json | grep -q "\"$plan\"" || fail state-resumed "plan '$plan' is not listed after the reinstall"
fi
stop_daemon state-resumed
ok "state-resumed (bitmap 'installtest' consistent after remove and reinstall)"

# --- dpkg -P: configuration, state and tracefs instance go; backups stay --------
step "dpkg -P ringback"
dpkg -P ringback >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail purge-removes-config "dpkg -P failed"; }
status=$(dpkg-query -W -f='${db:Status-Abbrev}' ringback 2>/dev/null || true)
[[ -z $status || $status == un* || $status == pn* ]] || fail purge-removes-config "package state '$status' after purge"
for path in /etc/ringback /var/lib/ringback "$instance" /etc/systemd/system/multi-user.target.wants/ringbackd.service \
    /etc/systemd/system/ringbackd.service /var/lib/systemd/deb-systemd-helper-enabled/ringbackd.service.dsh-also; do
    [[ ! -e $path && ! -L $path ]] || fail purge-removes-config "$path is still there"
done
[[ -n $(newest_image "$chain") ]] || fail purge-removes-config "the backups in $chain are gone"
ok purge-removes-config

# --- A fresh install after the purge ------------------------------------------
step "dpkg -i $deb (fresh)"
install_package fresh-install
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/ringback/ringback.toml | cmp -s - /etc/ringback/ringback.toml ||
    fail fresh-install "/etc/ringback/ringback.toml is not the packaged one"
start_daemon fresh-install
stop_daemon fresh-install
ok fresh-install

step "dpkg -P ringback (final)"
dpkg -P ringback >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail final-purge "dpkg -P failed"; }
for path in /usr/bin/ringback /usr/sbin/ringbackd /etc/ringback /var/lib/ringback; do
    [[ ! -e $path ]] || fail final-purge "$path is still there"
done
ok final-purge

rb_say "install-test: passed: $checks checks"
