#!/usr/bin/env bash
# Set up everything tcpclose needs on a Debian/Ubuntu host (root): bcc from the
# distribution, kernel headers bcc can compile against, tracefs, and the venv
# at .venv with the package installed editable.  Used by `make setup` (and so
# by `make demo` and `make test`) and by vagrant/Vagrantfile.  A second run
# skips what is done.  --test also installs what only the tests use (`make test`
# passes it; `make demo` does not need it): Debian's chromium, which report.html is
# opened in, and the real servers, clients and packet capture of the live tests
# (nginx, redis, tcpdump, prometheus; their services are not started: the tests run their own).
set -euo pipefail
for_tests=
[ "${1:-}" = "--test" ] && for_tests=1

repo=$(cd "$(dirname "$0")/.." && pwd)
release=$(uname -r)
say() { echo "provision: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "provision: needs root: run 'sudo make setup'" >&2
    exit 3
fi

apt_updated=
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
have_package() {  # is there an installable package of this name?
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    [ -n "$(apt-cache policy "$1" 2>/dev/null | sed -n 's/ *Candidate: //p' | grep -v '(none)')" ]
}

# 1. bcc (python3-bpfcc, bpfcc-tools), a venv-capable python3, iproute2 for the tests' namespaces
apt_install python3-bpfcc bpfcc-tools python3-venv python3-pip iproute2 gcc libc6-dev
[ -n "$for_tests" ] && apt_install chromium nginx-light redis-server redis-tools tcpdump curl prometheus

# 2. kernel headers: the running kernel's own where the distribution has them;
#    otherwise the nearest distribution headers, linked where bcc looks.  The
#    BPF program reads tracepoint arguments only, so headers of another kernel
#    release are enough for it (struct offsets are never used).
build=/lib/modules/$release/build
if [ ! -e "$build" ]; then
    if have_package "linux-headers-$release"; then
        apt_install "linux-headers-$release"
    else
        if have_package linux-headers-amd64; then meta=linux-headers-amd64; else meta=linux-headers-generic; fi
        apt_install "$meta"
        nearest=$(ls -d /usr/src/linux-headers-*/ 2>/dev/null | grep -v -- '-common/$' | sort -V | tail -n 1)
        nearest=${nearest%/}
        [ -n "$nearest" ] || { echo "provision: no kernel headers could be installed" >&2; exit 5; }
        mkdir -p "/lib/modules/$release"
        ln -sfn "$nearest" "$build"
        # Debian splits headers into -ARCH and -common; bcc finds the second via source
        common=$(ls -d "${nearest%-*}"-common 2>/dev/null || true)
        [ -n "$common" ] && ln -sfn "$common" "/lib/modules/$release/source"
        say "no headers for kernel $release in the distribution: using $(basename "$nearest") (enough for tracepoint programs)"
    fi
fi

# 3. tracefs, where bcc finds tracepoints
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing
    say "mounted tracefs on /sys/kernel/tracing"
fi

# 4. the venv, from the distribution's python so that bcc is importable
if [ ! -x "$repo/.venv/bin/python" ] || ! "$repo/.venv/bin/python" -c 'import bcc' 2>/dev/null; then
    rm -rf "$repo/.venv"
    /usr/bin/python3 -m venv --system-site-packages "$repo/.venv"
    say "made .venv from /usr/bin/python3 --system-site-packages"
fi
stamp="$repo/.venv/.installed"
if [ ! -e "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    # pip's output only if it fails: a first set-up would print pages of warnings otherwise
    # (a package index's location that is absent, dependency notes of system packages)
    log=$(mktemp)
    if ! "$repo/.venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test]" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "provision: pip could not install tcpclose into .venv (its output is above)" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
    say "installed tcpclose into .venv"
fi
say "ready: $repo/.venv/bin/tcpclose"
