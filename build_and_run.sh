#!/usr/bin/env bash
# Build the one-file `mgpu` binary (build-config/launcher.sh) and try it out: a single-host master in the foreground.
#
#   ./build_and_run.sh [EXTRA MASTER FLAGS...]      e.g. ./build_and_run.sh --policy spread
#
# On a fresh machine this makes its own build venv (.venv-build) from python3, installs the pinned
# requirements.txt there and builds dist/mgpu (`make build`, or the same steps when make is
# missing). Then it runs `dist/mgpu master` in the foreground (Ctrl-C stops it; running jobs carry
# on and are picked up by the next start). Without an NVIDIA GPU it declares two fake ones; run
# as root it lets root submit jobs, so the try-out works from a root shell.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

# --- build --------------------------------------------------------------------------------------
if command -v make >/dev/null 2>&1; then
    make build
else
    echo "make not found: building with the same steps by hand"
    command -v python3 >/dev/null 2>&1 || { echo "build_and_run.sh: python3 (3.11) is needed to build" >&2; exit 1; }
    for tool in strip objdump ldd; do
        command -v "$tool" >/dev/null 2>&1 || { echo "build_and_run.sh: PyInstaller needs '$tool' (on Debian: apt-get install binutils)" >&2; exit 1; }
    done
    if [[ ! -x .venv-build/bin/python ]]; then
        python3 -m venv .venv-build || { echo "build_and_run.sh: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
    fi
    if [[ ! -e .venv-build/.requirements-installed || requirements.txt -nt .venv-build/.requirements-installed ]]; then
        .venv-build/bin/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
        touch .venv-build/.requirements-installed
    fi
    PYTHONHASHSEED=0 .venv-build/bin/python -m PyInstaller --noconfirm --log-level WARN --distpath build/onedir --workpath build/work build-config/mgpu.spec
    .venv-build/bin/python build-config/assemble.py build/onedir/mgpu build-config/launcher.sh dist/mgpu
fi
dist/mgpu --version >/dev/null

# --- the master's flags ------------------------------------------------------------------------
flags=()
if { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; } && [[ ! -e /dev/nvidia0 ]]; then
    echo "No NVIDIA GPU found (nvidia-smi -L fails and no /dev/nvidia0): declaring 2 fake GPUs of 16 GB (--fake-gpus 2:16384)."
    flags+=(--fake-gpus 2:16384)
fi
if [[ $EUID -eq 0 ]]; then
    flags+=(--allow-root-jobs)
fi

# The socket the master will listen on, as it chooses it: --socket among the extra flags, else
# MGPU_SOCKET, else the system socket (as configured in /etc/mgpu/mgpu.yaml) for root, else the
# user's own socket. Clients find the default sockets by themselves.
socket=""
previous=""
for arg in "$@"; do
    [[ $previous == --socket ]] && socket=$arg
    [[ $arg == --socket=* ]] && socket=${arg#--socket=}
    previous=$arg
done
if [[ -z $socket && -n ${MGPU_SOCKET:-} ]]; then
    socket=$MGPU_SOCKET
fi
clients="dist/mgpu"
if [[ -n $socket ]]; then
    clients="MGPU_SOCKET=$socket dist/mgpu"
elif [[ $EUID -eq 0 ]]; then
    if [[ -r /etc/mgpu/mgpu.yaml ]]; then
        socket=$(sed -n 's/^socket:[[:space:]]*//p' /etc/mgpu/mgpu.yaml | head -n 1 |
                 sed "s/[[:space:]]#.*//; s/[[:space:]]*\$//; s/^[\"']//; s/[\"']\$//") || true
    fi
    socket=${socket:-/run/mgpu/mgpu.sock}
elif [[ -n ${XDG_RUNTIME_DIR:-} && -d $XDG_RUNTIME_DIR && -O $XDG_RUNTIME_DIR ]]; then
    socket=$XDG_RUNTIME_DIR/mgpu/mgpu.sock
else
    socket=/tmp/mgpu-$EUID/mgpu.sock
fi

echo "Clients use the socket $socket; in another terminal here ($(pwd)) try: $clients srun -i -- nvidia-smi -L || echo no-gpu; $clients queue"
exec dist/mgpu master "${flags[@]}" "$@"
