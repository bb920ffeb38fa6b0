# shellcheck shell=bash
# Shared by scripts/*.sh: where the repository is, finding Swift, and one
# style of progress and error messages. Sourced, never run.
# The RB_* variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034

# The repository root (this file lives in scripts/).
RB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian's Swift toolchain is not packaged; the machines this project runs on
# keep it here, outside PATH for some shells.
RB_SWIFT_HOME=/opt/swift/usr/bin

rb_say() { printf '%s\n' "$*"; }
rb_warn() { printf 'warning: %s\n' "$*" >&2; }
rb_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Puts `swift` on PATH if it is only in $RB_SWIFT_HOME (and sets
# RB_SWIFT_ADDED=1); fails when it is in neither place.
rb_find_swift() {
    if command -v swift >/dev/null 2>&1; then
        return 0
    fi
    if [[ -x $RB_SWIFT_HOME/swift ]]; then
        RB_SWIFT_ADDED=1
        PATH="$PATH:$RB_SWIFT_HOME"
        export PATH
        return 0
    fi
    return 1
}

# Extra arguments for every `swift build`/`swift test`: a separate build folder
# when RINGBACK_SCRATCH_PATH names one (so that two builds of the same tree do
# not fight over .build).
rb_scratch_args() {
    RB_SCRATCH=()
    if [[ -n ${RINGBACK_SCRATCH_PATH:-} ]]; then
        RB_SCRATCH=(--scratch-path "$RINGBACK_SCRATCH_PATH")
    fi
}

# Starts the calling script over with an empty signal mask. A test runner may
# start it with signals blocked (Swift tests block SIGTERM in the processes
# they spawn) and every child would inherit that: SIGTERM would stop neither a
# daemon nor a helper. Call it first thing, with the script's own arguments.
rb_exec_with_signals_unblocked() {
    grep -Eq '^SigBlk:[[:space:]]+0+$' /proc/$$/status && return 0
    [[ -n ${RB_SIGNALS_UNBLOCKED:-} ]] && return 0
    export RB_SIGNALS_UNBLOCKED=1
    exec /usr/bin/python3 -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, [])
os.execv(sys.argv[1], sys.argv[1:])' /bin/bash "$0" "$@"
}
