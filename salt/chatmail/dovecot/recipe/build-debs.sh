#!/usr/bin/env bash
# Build the relay's Dovecot: Debian 12's own `dovecot` source package plus the
# patches in patches/ (the 500 ms IDLE notification delay removed), version
# <debian version>+chatmail<N>.  Runs as root on a Debian 12 system: a
# throwaway container (./cmsalt build-dovecot) or a build host (the
# chatmail.dovecot.build state); it installs the build dependencies itself.
#
#   build-debs.sh OUTDIR [--lto] [--allow-older-source] [--version VERSION]
#                 [--publish DIR] [--stateful]
#   build-debs.sh --query      # print "newest <v>" and "fetchable <v>", build nothing
#
# When OUTDIR already holds the build of that source version by this recipe
# (script, patches, options), nothing is built again.  --publish copies
# chatmail-dovecot.tar (+ .sha256, VERSION) into DIR, e.g. a file root's
# chatmail-dovecot/ directory.  --stateful ends with Salt's stateful line.
#
# OUTDIR receives (nothing else is written there):
#   chatmail-dovecot.tar   the archive the chatmail.dovecot state installs: a flat
#                          apt repository (the .debs below, Packages, Release,
#                          SHA256SUMS, VERSION); deterministic for a given build
#   *.deb                  dovecot-core, -imapd, -lmtpd, -auth-lua, -sieve (what a relay
#                          installs; -sieve is Pigeonhole, built from the same source)
#   dovecot_*.buildinfo    dpkg's record of the build environment
#   build-info             source versions, options, wall and CPU seconds
#
# The newest `dovecot` source apt knows is built.  When its files cannot be
# fetched (a mirror without the security archive's sources), the build fails
# unless --allow-older-source: then the newest version that can be fetched is
# built and build-info says which newer one exists (chatmail_status.report
# flags such a build on every relay that runs it).
#
# Debian's debian/rules turns on LTO (optimize=+lto), which roughly doubles the
# CPU time; without --lto it is switched off (hardening flags unchanged).
set -euo pipefail

# The recipe's own version, part of the package version <debian>+chatmail<N>:
# bump it with every change of the patches (tests/unit/test_dovecot_recipe.py
# insists) or of what this script builds, so that relays see a new version and
# install it.  Builds are cached by source version + patches + these two lines
# + options (dovecot/build.py).
RECIPE=3
SUFFIX="chatmail$RECIPE"
PACKAGES="dovecot-core dovecot-imapd dovecot-lmtpd dovecot-auth-lua dovecot-sieve"
ORIGIN=chatmail-salt
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCH_DIR="${DOVECOT_PATCH_DIR:-$HERE/patches}"

# Everything below is one function, read whole before it runs: editing this
# file during a (long) build cannot change the running build.
main() {
out="" lto=0 allow_older=0 want_version="" query=0 publish="" stateful=0
while (($#)); do
    case "$1" in
        --query) query=1; allow_older=1 ;;
        --lto) lto=1 ;;
        --allow-older-source) allow_older=1 ;;
        --version) want_version="$2"; shift ;;
        --publish) publish="$2"; shift ;;
        --stateful) stateful=1 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) out="$1" ;;
    esac
    shift
done
[ -n "$out" ] || [ "$query" = 1 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
if [ "$query" = 0 ]; then
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
fi
log() { printf '[build-debs %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 TZ=UTC

# --- sources -----------------------------------------------------------------
# deb-src lines for the archives this system's apt uses (same URIs and suites
# as its deb lines), unless it already has them.
src_list=/etc/apt/sources.list.d/chatmail-dovecot-build-src.list
if ! apt-cache showsrc dovecot 2>/dev/null | grep -q '^Package: dovecot'; then
    {
        cat /etc/apt/sources.list 2>/dev/null || true
        cat /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | sed -n 's/^deb \(\[[^]]*\] \)\?\(http[^ ]*\/debian\(-security\)\?\/\?\) \([^ ]*\) .*main.*/deb-src \2 \4 main/p' \
        | sort -u >"$src_list.new"
    # deb822 .sources files (Debian 12's default): URIs + Suites
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) s[i]=$i; n=NF}
             /^$/ || /^Components:/{ if(u!="" && n>1 && $0 ~ /main/){for(i=2;i<=n;i++) print "deb-src " u " " s[i] " main"; u=""; n=0} }' "$f"
    done | grep -E '/debian(-security)?/? ' >>"$src_list.new" || true
    sort -u "$src_list.new" >"$src_list"
    rm -f "$src_list.new"
    log "added deb-src lines: $(tr '\n' ';' <"$src_list")"
fi
apt-get update -qq
if [ "$query" = 0 ]; then
    apt-get install -y -qq --no-install-recommends dpkg-dev build-essential fakeroot >/dev/null
fi

# Source versions apt knows, newest first (ordered by dpkg's rules).
versions=()
while read -r v; do
    i=${#versions[@]}
    while ((i > 0)) && dpkg --compare-versions "$v" gt "${versions[i - 1]}"; do
        versions[i]="${versions[i - 1]}"
        i=$((i - 1))
    done
    versions[i]="$v"
done < <(apt-cache showsrc dovecot | awk '/^Package: /{p=$2} /^Version: /{if (p == "dovecot") print $2}' | sort -u)
((${#versions[@]})) || { echo "apt knows no dovecot source package" >&2; exit 1; }
newest="${versions[0]}"
[ -z "$want_version" ] || versions=("$want_version")
log "dovecot sources known to apt: ${versions[*]}"

# BUILD_DIR: a fixed path (the container uses /build) keeps even paths that
# dpkg-buildflags does not map away identical between builds.
if [ -n "${BUILD_DIR:-}" ]; then
    work="$BUILD_DIR"
    rm -rf "$work" && mkdir -p "$work"
else
    work="$(mktemp -d /tmp/chatmail-dovecot-build.XXXXXX)"
fi
trap 'rm -rf "$work"' EXIT
cd "$work"
version=""
for v in "${versions[@]}"; do
    if apt-get source -qq --download-only "dovecot=$v" >"$work/fetch-$v.log" 2>&1; then
        version="$v"
        break
    fi
    log "could not fetch dovecot $v: $(grep -E '^(E|Err):' "$work/fetch-$v.log" | head -1)"
    rm -f ./*.dsc ./*.debian.tar.* 2>/dev/null || true
    if [ "$allow_older" = 0 ]; then
        echo "the newest dovecot source ($v) could not be fetched; refusing to build an older" \
             "one without --allow-older-source" >&2
        exit 1
    fi
done
[ -n "$version" ] || { echo "no dovecot source could be fetched" >&2; exit 1; }
if [ "$query" = 1 ]; then
    printf 'newest %s\nfetchable %s\n' "$newest" "$version"
    exit 0
fi
[ "$version" = "$newest" ] || log "WARNING: building $version, older than the newest source $newest"

recipe="$( (cat "$PATCH_DIR"/*.patch; echo "suffix=$SUFFIX recipe=$RECIPE lto=$lto") | sha256sum | cut -c1-16)"
publish_archive() {
    [ -n "$publish" ] || return 0
    local sha
    sha="$(sha256sum <"$out/chatmail-dovecot.tar" | cut -c1-64)"
    if [ "$(cut -c1-64 "$publish/chatmail-dovecot.tar.sha256" 2>/dev/null)" = "$sha" ]; then
        return 0
    fi
    mkdir -p "$publish"
    cp "$out/chatmail-dovecot.tar" "$publish/.chatmail-dovecot.tar.new"
    mv "$publish/.chatmail-dovecot.tar.new" "$publish/chatmail-dovecot.tar"
    printf '%s  chatmail-dovecot.tar\n' "$sha" >"$publish/chatmail-dovecot.tar.sha256"
    sed -n 's/^version: //p' "$out/build-info" >"$publish/VERSION"
    published=1
}
published=0
if [ -f "$out/chatmail-dovecot.tar" ] && grep -qx "source: $version" "$out/build-info" 2>/dev/null \
    && grep -qx "recipe: $recipe" "$out/build-info"; then
    log "already built: $(sed -n 's/^version: //p' "$out/build-info") in $out"
    publish_archive
    if [ "$stateful" = 1 ]; then
        if [ "$published" = 1 ]; then
            echo "changed=yes comment='published the existing build to $publish'"
        else
            echo "changed=no comment='dovecot $version+$SUFFIX is built and published'"
        fi
    fi
    exit 0
fi

# A fixed directory name: the build path ends up in nothing that is shipped
# (dpkg-buildflags maps it away), but keep it stable anyway.
dpkg-source -x "$(ls ./dovecot_*.dsc)" src >/dev/null
cd src

# --- patches, version ------------------------------------------------------------
for p in "$PATCH_DIR"/*.patch; do
    cp "$p" debian/patches/
    echo "$(basename "$p")" >>debian/patches/series
done
dpkg-source --before-build . >/dev/null
if grep -q NOTIFY_DELAY_MSECS src/lib-storage/mailbox-watch.c; then
    echo "the patch did not remove the notify delay" >&2
    exit 1
fi
date="$(dpkg-parsechangelog -S Date)"
new_version="$version+$SUFFIX"
{
    printf 'dovecot (%s) bookworm; urgency=medium\n\n' "$new_version"
    printf '  * chatmail-salt: IMAP IDLE hears of new mail without the 500 ms delay\n'
    printf '    (%s).\n' "$(cd "$PATCH_DIR" && ls ./*.patch | sed 's|^\./||' | paste -sd' ')"
    [ "$lto" = 1 ] || printf '  * chatmail-salt: built without LTO (debian/rules optimize=-lto).\n'
    printf '\n -- chatmail-salt <noreply@chatmail-salt.invalid>  %s\n\n' "$date"
    cat debian/changelog
} >debian/changelog.new
mv debian/changelog.new debian/changelog
if [ "$lto" = 0 ]; then
    grep -q 'optimize=+lto' debian/rules || { echo "debian/rules has no optimize=+lto" >&2; exit 1; }
    sed -i 's/optimize=+lto/optimize=-lto/' debian/rules
fi

# --- build -------------------------------------------------------------------------
log "installing build dependencies"
apt-get build-dep -y -qq --no-install-recommends . >/dev/null
log "building dovecot $new_version (lto=$lto, $(nproc) jobs)"
start=$(date +%s)
# CPU seconds of this shell's finished children, before and after the build
# (`times` in this shell itself: a subshell would start counting at zero)
times >"$work/times.before"
export DEB_BUILD_OPTIONS="nocheck noautodbgsym parallel=$(nproc)"
nice -n 10 dpkg-buildpackage -b -uc -us >"$work/build.log" 2>&1 || {
    tail -50 "$work/build.log" >&2
    exit 1
}
wall=$(($(date +%s) - start))
times >"$work/times.after"
read -r cpu_user cpu_sys < <(tail -qn1 "$work/times.before" "$work/times.after" | awk '
    { split($1, u, /m|s/); split($2, s, /m|s/); us[NR] = u[1] * 60 + u[2]; ss[NR] = s[1] * 60 + s[2] }
    END { printf "%.0f %.0f\n", us[2] - us[1], ss[2] - ss[1] }')
cd "$work"

# --- the archive ---------------------------------------------------------------------
repo="$work/repo"
mkdir -p "$repo"
upstream_version="${new_version#*:}"
for pkg in $PACKAGES; do
    cp "$work/${pkg}_${upstream_version}_"*.deb "$repo/"
done
epoch="$(cd src && dpkg-parsechangelog -S Timestamp)"
(
    cd "$repo"
    dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages
    printf '%s\n' "$new_version" >VERSION
    {
        printf 'Origin: %s\nLabel: %s\nSuite: chatmail-dovecot\nCodename: chatmail-dovecot\n' "$ORIGIN" "$ORIGIN"
        printf 'Date: %s\n' "$(date -u -R -d "@$epoch")"
        printf 'Description: Dovecot %s for chatmail relays\nSHA256:\n' "$new_version"
        printf ' %s %s Packages\n' "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)"
    } >Release
    sha256sum ./*.deb Packages Release VERSION | sed 's| \./| |' >SHA256SUMS
)
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$repo" -cf "$out/chatmail-dovecot.tar" .
rm -f "$out"/*.deb "$out"/*.buildinfo
cp "$repo"/*.deb "$out/"
cp "$work"/dovecot_*.buildinfo "$out/" 2>/dev/null || true
{
    echo "version: $new_version"
    echo "source: $version"
    echo "newest_source: $newest"
    echo "lto: $lto"
    echo "patches: $(cd "$PATCH_DIR" && sha256sum ./*.patch | sed 's| \./| |' | paste -sd',')"
    echo "wall_seconds: $wall"
    echo "cpu_user_seconds: $cpu_user"
    echo "cpu_sys_seconds: $cpu_sys"
    echo "jobs: $(nproc)"
    echo "archive_sha256: $(sha256sum "$out/chatmail-dovecot.tar" | cut -d' ' -f1)"
    echo "recipe: $recipe"
} >"$out/build-info"
log "done: $new_version in ${wall}s wall, ${cpu_user}s user + ${cpu_sys}s system CPU"
publish_archive
if [ "$stateful" = 1 ]; then
    echo "changed=yes comment='built dovecot $new_version${publish:+, published to $publish}'"
else
    cat "$out/build-info"
fi
}

main "$@"
