#!/usr/bin/env bash
# Builds the Debian package ringback_<version>_<arch>.deb from a release build
# linked with --static-swift-stdlib (no Swift runtime to install, no RUNPATH),
# and checks it with lintian. The last line printed is the .deb's path.
#
#   bash packaging/build-deb.sh [--scratch-path DIR] [--output DIR] [--no-lintian]
#
#   --scratch-path DIR  release build folder (default: ${RINGBACK_SCRATCH_PATH:-.build}-release,
#                       kept between runs: a second build is incremental)
#   --output DIR        where the .deb goes (default: the scratch folder)
#   --no-lintian        skip lintian (it then is the caller's business)
#
# The version has one source: RingbackVersion in Sources/ControlProtocol/Version.swift,
# read back from the built `ringback --version`. packaging/debian/changelog's
# newest entry must be that version plus a Debian revision (0.1.0-1); the
# build stops when they disagree. Depends: is computed by dpkg-shlibdeps.
#
# Layout (config-contract "Installed layout"): /usr/bin/ringback,
# /usr/sbin/ringbackd, /lib/systemd/system/ringbackd.service,
# /etc/ringback/ringback.toml (conffile), /etc/ringback/hooks.d/, manual pages
# generated from the argument parser (ringback and its subcommands in section
# 1, ringbackd in 8), bash and zsh completions, /usr/share/doc/ringback.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$RB_ROOT"
umask 022

scratch=${RINGBACK_SCRATCH_PATH:-.build}-release
output=
lintian=1
while (($# > 0)); do
    case $1 in
    --scratch-path) scratch=${2:?--scratch-path needs a folder}; shift 2 ;;
    --output) output=${2:?--output needs a folder}; shift 2 ;;
    --no-lintian) lintian=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) rb_die "build-deb.sh: unknown argument '$1' (see --help)" ;;
    esac
done
scratch=$(mkdir -p "$scratch" && cd "$scratch" && pwd)
output=${output:-$scratch}
mkdir -p "$output"
output=$(cd "$output" && pwd)

rb_find_swift || rb_die "swift not found (scripts/setup.sh says why)"
for tool in dpkg-deb dpkg-shlibdeps dpkg-gencontrol dpkg-parsechangelog readelf strip gzip; do
    command -v "$tool" >/dev/null 2>&1 ||
        rb_die "build-deb.sh needs $tool (apt-get install dpkg-dev binutils; scripts/setup.sh installs them)"
done
if ((lintian)) && ! command -v lintian >/dev/null 2>&1; then
    rb_die "build-deb.sh checks the package with lintian: apt-get install lintian (or pass --no-lintian)"
fi

pkg=packaging
debian=$pkg/debian

# --- Release build ----------------------------------------------------------
# --disable-local-rpath: no $ORIGIN RUNPATH; with the Swift libraries linked
# statically there is nothing beside the binary to find. -z relro -z now:
# the GOT is resolved at start and made read-only (Debian's "bindnow"
# hardening; ringbackd runs as root).
build=(swift build -c release --static-swift-stdlib --disable-local-rpath --scratch-path "$scratch"
       -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker now)
rb_say "build-deb: ${build[*]}" >&2
for product in ringback ringbackd; do
    "${build[@]}" --product "$product" >&2
done
bin=$("${build[@]}" --show-bin-path)

# Neither a Swift runtime library nor a RUNPATH may remain (readelf -d).
for exe in ringback ringbackd; do
    dynamic=$(readelf -d "$bin/$exe")
    if grep -E '\((RPATH|RUNPATH)\)' <<<"$dynamic" >&2; then
        rb_die "$bin/$exe has a RPATH/RUNPATH (above): the package must not depend on the build tree"
    fi
    if grep -E 'NEEDED.*\[lib(swift|Foundation|dispatch|BlocksRuntime|_Foundation)' <<<"$dynamic" >&2; then
        rb_die "$bin/$exe needs a Swift runtime library (above): it must be linked with --static-swift-stdlib"
    fi
done

# --- Version -----------------------------------------------------------------
upstream=$("$bin/ringback" --version)
[[ $upstream =~ ^[0-9]+(\.[0-9]+)*$ ]] || rb_die "ringback --version printed '$upstream', not a version"
version=$(dpkg-parsechangelog -l "$debian/changelog" -S Version)
[[ ${version%-*} == "$upstream" ]] ||
    rb_die "$debian/changelog's newest entry is $version, but ringback --version says $upstream: add a changelog entry for $upstream-1 (dch -v $upstream-1)"
arch=$(dpkg --print-architecture)
changelog_date=$(dpkg-parsechangelog -l "$debian/changelog" -S Date)
# Reproducible dates (manual pages, gzip, dpkg-deb): the changelog entry's.
SOURCE_DATE_EPOCH=$(date -u -d "$changelog_date" +%s)
export SOURCE_DATE_EPOCH

# --- The generate-manual tool of swift-argument-parser ------------------------
# The same checkout the binaries were built with, so that the format of
# --experimental-dump-help is one it reads; built once into the scratch folder.
parser=$scratch/checkouts/swift-argument-parser
[[ -f $parser/Package.swift ]] || rb_die "no swift-argument-parser checkout in $parser after the build"
tools=(swift build -c release --package-path "$parser" --scratch-path "$scratch/tools" --product generate-manual)
rb_say "build-deb: ${tools[*]}" >&2
"${tools[@]}" >&2
generate_manual=$("${tools[@]}" --show-bin-path)/generate-manual

# --- The tree ------------------------------------------------------------------
work=$scratch/deb
root=$work/root
rm -rf "$work"
mkdir -p "$root/DEBIAN" "$work/debian"

install -D -m 0755 "$bin/ringback" "$root/usr/bin/ringback"
install -D -m 0755 "$bin/ringbackd" "$root/usr/sbin/ringbackd"
# As dh_strip does: symbols and the compiler's notes out (the Swift metadata
# sections are allocated and stay).
strip --remove-section=.comment --remove-section=.note "$root/usr/bin/ringback" "$root/usr/sbin/ringbackd"

install -D -m 0644 "$pkg/ringbackd.service" "$root/lib/systemd/system/ringbackd.service"
install -D -m 0644 "$pkg/ringback.toml" "$root/etc/ringback/ringback.toml"
install -d -m 0755 "$root/etc/ringback/hooks.d"

# Manual pages from the argument parser, named as git's are: the page of
# `ringback backup` is ringback-backup(1), so that `man ringback backup`
# finds it (man-db's subpages) and whatis/apropos can parse its NAME line.
# generate-manual names it ringback.backup with NAME "ringback backup",
# which lexgrog cannot read; the fix-ups below are only of that kind, plus:
# blank lines of a discussion become paragraph breaks (a blank line is an
# error in mdoc), and the implicit `help` subcommand gets no page (ringback
# help is ringback --help; ringbackd has no subcommands at all).
man_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
pages=$work/man
mkdir -p "$pages"
"$generate_manual" "$root/usr/bin/ringback" --multi-page --section 1 --date "$man_date" --output-directory "$pages"
"$generate_manual" "$root/usr/sbin/ringbackd" --section 8 --date "$man_date" --output-directory "$pages"
rm -f "$pages/ringback.help.1"
for page in "$pages"/*.[18]; do
    file=${page##*/}
    section=${file##*.}
    dotted=${file%.*}                # ringback.bitmap
    name=${dotted//./-}              # ringback-bitmap
    command=${dotted//./ }           # ringback bitmap
    install -d -m 0755 "$root/usr/share/man/man$section"
    awk -v name="$name" -v command="$command" '
        /^\.Dt / { $2 = toupper(name) }
        /^\.Sh / { in_synopsis = ($2 == "SYNOPSIS") }
        /^\.Nm "/ && !named { print ".Nm " name; named = 1; next }
        /^\.Nm$/ && in_synopsis && name != command { print ".Nm \"" command "\""; next }
        /^\.Nd "/ { sub(/^\.Nd "/, ".Nd "); sub(/"$/, "") }
        /^\.Xr ringback[.a-z-]* / { if ($2 == "ringback.help") next; gsub(/\./, "-", $2) }
        /^\.Ar subcommand$/ && in_synopsis { next }
        /^\.It Em help$/ { skip = 1; next }
        skip { skip = 0; next }
        /^[[:space:]]*$/ { print ".Pp"; next }
        { print }
    ' "$page" | gzip -9n >"$root/usr/share/man/man$section/$name.$section.gz"
    chmod 0644 "$root/usr/share/man/man$section/$name.$section.gz"
done
[[ -f $root/usr/share/man/man1/ringback.1.gz && -f $root/usr/share/man/man8/ringbackd.8.gz ]] ||
    rb_die "generate-manual made no ringback.1 or ringbackd.8 (in $pages)"

install -d -m 0755 "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions"
# A completion file is sourced, not run: no "#!" line (lintian).
"$root/usr/bin/ringback" --generate-completion-script bash | sed '1{/^#!/d}' >"$root/usr/share/bash-completion/completions/ringback"
"$root/usr/bin/ringback" --generate-completion-script zsh >"$root/usr/share/zsh/vendor-completions/_ringback"
chmod 0644 "$root/usr/share/bash-completion/completions/ringback" "$root/usr/share/zsh/vendor-completions/_ringback"

install -D -m 0644 "$debian/copyright" "$root/usr/share/doc/ringback/copyright"
gzip -9n <"$debian/changelog" >"$root/usr/share/doc/ringback/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/ringback/changelog.Debian.gz"
if [[ -f $debian/lintian-overrides ]]; then
    install -D -m 0644 "$debian/lintian-overrides" "$root/usr/share/lintian/overrides/ringback"
fi

# --- Control files ---------------------------------------------------------
for script in postinst prerm postrm; do
    install -m 0755 "$debian/$script" "$root/DEBIAN/$script"
done
# Every file under /etc is a conffile (as dh_installdeb makes it).
(cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"

# dpkg-shlibdeps and dpkg-gencontrol work in a source tree: debian/control
# and debian/changelog, here copies in the scratch folder.
cp "$debian/control" "$debian/changelog" "$work/debian/"
(
    cd "$work"
    dpkg-shlibdeps -Tdebian/ringback.substvars "root/usr/bin/ringback" "root/usr/sbin/ringbackd"
    # No debhelper here: nothing adds to misc:Depends (init-system-helpers,
    # whose deb-systemd-helper the maintainer scripts call, is Essential).
    echo 'misc:Depends=' >>debian/ringback.substvars
    dpkg-gencontrol -pringback -Tdebian/ringback.substvars -Proot -fdebian/files
)

(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"
# Every file dated to the changelog entry: the same tree gives the same .deb.
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0 touch -h -d "@$SOURCE_DATE_EPOCH"

deb=$output/ringback_${version}_$arch.deb
rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2

if ((lintian)); then
    rb_say "build-deb: lintian $deb" >&2
    # --fail-on error,warning: the package must have neither (overrides, each
    # with its reason, in packaging/debian/lintian-overrides).
    lintian --fail-on error,warning "$deb" >&2 || rb_die "lintian found errors or warnings in $deb (above)"
fi

rb_say "build-deb: built $(dpkg-deb -f "$deb" Package) $version ($arch), Depends: $(dpkg-deb -f "$deb" Depends)" >&2
echo "$deb"
