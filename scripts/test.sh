#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, builds, and
# runs `swift test`. The last lines printed are swift test's own summary, and
# the exit status is swift test's.
#
#   bash scripts/test.sh [ARGS FOR swift test...]     e.g. --filter ImagesTests
#
# Environment:
#   RINGBACK_SCRATCH_PATH  build folder other than .build (swift --scratch-path)
#   CI=true (as root)      exports RINGBACK_REQUIRE_ROOT_TESTS=1: tests that
#                          need root, loop devices or io_uring fail instead of
#                          skipping when the facility is absent.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RB_ROOT" || exit 1

bash scripts/setup.sh || exit 1
rb_find_swift || rb_die "swift not found (scripts/setup.sh says why)"
rb_scratch_args

if [[ ${CI:-} == true ]] && ((EUID == 0)); then
    export RINGBACK_REQUIRE_ROOT_TESTS=1
fi

# What the tests could leave behind: loop devices over their backing files
# (TestSupport names them ringback-test.* and ringback-faultfs.*; the demo's and
# the benchmark's own devices are not the tests' business), faultfs mounts and
# ringback's tracefs instances.
leftovers() {
    losetup --list --noheadings --raw --output NAME,BACK-FILE 2>/dev/null |
        awk '$2 ~ /ringback/ && $2 !~ /ringback-(demo|bench)\./ {
                 gsub(/\\x20/, " ", $2); print "loop device " $1 " over " $2 }'
    awk '$3 == "fuse.faultfs" { print "faultfs mount " $2 }' /proc/mounts
    local dir
    for dir in /sys/kernel/tracing/instances /sys/kernel/debug/tracing/instances; do
        [[ -d $dir ]] || continue
        find "$dir" -mindepth 1 -maxdepth 1 -name 'ringback*' -printf 'tracefs instance %p\n' 2>/dev/null
    done
}
mapfile -t before < <(leftovers | sort)
if ((${#before[@]} > 0)); then
    rb_warn "left over from before this run (not counted against it):"
    printf '  %s\n' "${before[@]}" >&2
fi

rb_say "test: swift build --build-tests ${RB_SCRATCH[*]}"
swift build --build-tests "${RB_SCRATCH[@]}" || exit

log=$(mktemp "${TMPDIR:-/tmp}/ringback-swift-test.XXXXXX")
trap 'rm -f "$log"' EXIT
rb_say "test: swift test ${RB_SCRATCH[*]} $*"
swift test "${RB_SCRATCH[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

mapfile -t leaked < <(comm -13 <(printf '%s\n' "${before[@]}") <(leftovers | sort) | sed '/^$/d')
if ((${#leaked[@]} > 0)); then
    {
        echo
        rb_warn "the tests leaked these (remove them with losetup -d / umount / rmdir):"
        printf '  %s\n' "${leaked[@]}"
        echo
        echo "swift test summary, repeated:"
    } >&2
    # Keep swift test's summary as the last lines of the output.
    grep -E "^Test Suite 'All tests'|Executed [0-9]+ tests?, with" "$log" | tail -n 2
    grep -E 'Test run with [0-9]+ tests?' "$log" | tail -n 1
fi
exit "$status"
