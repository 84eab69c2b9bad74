#!/usr/bin/env bash
# Prepare a checkout for running, testing and benchmarking Parallax. Idempotent and non-interactive.
#
#   1. system packages (only the missing ones, only as root or with sudo)
#   2. cargo build --release --locked            -> target/release/parallax
#   3. .venv (python3.11) with python/requirements.txt, reinstalled only when that file changes
#   4. the parallax kernelspec installed into .venv (`.venv/bin/jupyter kernelspec list` shows it)
#   5. the parallax Python package (python/, editable) and its Jupyter server extension (the
#      Clusters page at /parallax/) enabled in .venv
#   6. the binary linked as .venv/bin/parallax (what `parallax.Cluster` and users of the venv run)
#
# Environment: PYTHON (default python3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/python/requirements.txt"
STAMP="$VENV/.requirements.sha256"
BIN="$ROOT/target/release/parallax"

step() { echo "==> $*"; }
die() {
    echo "error: $*" >&2
    exit 1
}

# --- 1. system packages ------------------------------------------------------------------------
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (Python 3.11 is required)"
# Debian splits ensurepip (needed by `python -m venv`) into its own package.
"$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || missing+=("$(basename "$PYTHON")-venv")
# libzmq (with CURVE, through libsodium) and pkg-config to find it: the transport links to it.
pkg-config --exists libzmq 2>/dev/null || missing+=(libzmq3-dev pkg-config)
# Test hosts: network namespaces (iproute2) and a packet capture (tcpdump) for the cross-host tests.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
# Headless browser for the Clusters page tests (Playwright drives Debian's chromium; never
# `playwright install`).
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# SSH into test hosts (tests/python/sshd_hosts.py): a server in each namespace, and the client.
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
# MPI for the MPI launcher's tests (tests/python/test_mpi_launcher.py): Debian's MPICH and Open MPI,
# side by side as mpiexec.mpich and mpiexec.openmpi (installing openmpi-bin points the plain
# `mpiexec` at Open MPI, so the tests name each one). mpi4py comes from python/requirements.txt.
command -v mpiexec.mpich >/dev/null 2>&1 || missing+=(mpich)
command -v mpiexec.openmpi >/dev/null 2>&1 || missing+=(openmpi-bin)
if ((${#missing[@]})); then
    step "installing system packages: ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "missing system packages (${missing[*]}); install them or rerun as root"
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"

# --- 2. build --------------------------------------------------------------------------------------
step "building (cargo build --release --locked)"
cargo build --release --locked
[[ -x $BIN ]] || die "build did not produce $BIN"

# --- 3. python environment ---------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
    step "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ $want != "$have" ]]; then
    step "installing python/requirements.txt into .venv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want" >"$STAMP"
else
    step "python requirements up to date"
fi

# --- 4. kernelspec -------------------------------------------------------------------------------------
step "installing the parallax kernelspec into .venv"
"$BIN" kernel install --prefix "$VENV" --python "$VENV/bin/python"
"$VENV/bin/jupyter" kernelspec list | grep -qE '^ +parallax ' ||
    die "parallax kernelspec not visible to .venv/bin/jupyter"

# --- 5. python package and Jupyter server extension ----------------------------------------------
if ! "$VENV/bin/python" -c 'import parallax.jupyter' >/dev/null 2>&1; then
    step "installing the parallax python package (python/) into .venv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT/python"
fi
step "enabling the parallax Jupyter server extension (the Clusters page at /parallax/)"
# An editable install does not place data files: put the extension's config where a regular
# install would (jupyter_server only enables extensions its config already lists).
mkdir -p "$VENV/etc/jupyter/jupyter_server_config.d"
cp "$ROOT/python/jupyter-config/parallax.json" "$VENV/etc/jupyter/jupyter_server_config.d/parallax.json"
# Earlier set-ups also ran `jupyter server extension enable`, which wrote a second file enabling
# the same extension.
rm -f "$VENV/etc/jupyter/jupyter_server_config.d/parallax.jupyter.json"
# Capture first: `grep -q` stops reading early, and under pipefail the writer's SIGPIPE would fail
# the check.
extensions="$("$VENV/bin/jupyter" server extension list 2>&1)"
grep -q 'parallax.jupyter.*enabled' <<<"$extensions" ||
    die "the parallax server extension is not enabled in .venv"

# --- 6. the binary on the venv's PATH -----------------------------------------------------------------
step "linking $BIN as .venv/bin/parallax"
ln -sfn "$BIN" "$VENV/bin/parallax"

step "setup done"
