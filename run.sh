#!/usr/bin/env bash
# lnnode quick start. Each command creates .venv and installs lnnode (pinned, see requirements.lock)
# the first time, then:
#   ./run.sh demo   writes demo studies (CT and 2D ultrasound phantoms) to demo/studies and starts the MONAI Label
#                   server with apps/lnnode on http://127.0.0.1:8000 (CPU; PORT=... to change)
#   ./run.sh test   runs ruff and the whole test suite (what CI runs; also installs slicer-core,
#                   Slicer's MRML libraries, about 1 GB, for the Slicer module's scene tests, and
#                   Debian's Orthanc packages for the PACS tests; the suite runs in a network
#                   namespace with only loopback)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${LNNODE_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

setup() {
    # $1: the extras to install (test: pytest, ruff...; slicer: slicer-core for the Slicer module's scene tests)
    local extras="$1"
    local stamp="$VENV/.lnnode-installed-${extras//,/-}"
    local want
    want="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    echo "== installing lnnode into $VENV (first run takes a few minutes)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[$extras]"
    echo "$want" > "$stamp"
}

pacs_server() {
    # tests/pacs talk to a real Orthanc with its DICOMweb and GDCM plugins (Debian's packages)
    if command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
        && [ -f /usr/share/orthanc/plugins/libOrthancGdcm.so ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Orthanc (orthanc, orthanc-dicomweb, orthanc-gdcm) for the PACS tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            orthanc orthanc-dicomweb orthanc-gdcm >/dev/null
    else
        echo "== Orthanc is not installed and this user cannot install it: tests/pacs will skip" >&2
    fi
}

cmd="${1:-}"
case "$cmd" in
    demo)
        setup test
        # the monailabel CLI runs the `python` on PATH: use the venv's
        export PATH="$PWD/$VENV/bin:$PATH"
        studies="${LNNODE_DEMO_STUDIES:-demo/studies}"
        if [ ! -f "$studies/synth_manifest.json" ]; then
            lnnode synth --out "$studies" --cases 6 --modality ct --seed 2026 --shape 192 192 64 --spacing 1 1 2 \
                --label-tag ground_truth
        fi
        if [ ! -f "$studies/synth_manifest_us.json" ]; then  # a few 2D cases: ultrasound phantoms (PNG)
            lnnode synth --out "$studies" --cases 3 --modality us --seed 2026 --label-tag ground_truth
        fi
        exec monailabel start_server --app apps/lnnode --studies "$studies" \
            --host 127.0.0.1 --port "${PORT:-8000}" --conf device cpu
        ;;
    test)
        setup test,slicer,ray
        pacs_server
        export PATH="$PWD/$VENV/bin:$PATH"
        ruff check .
        # Orthanc 1.10 listens on every interface: the suite runs in a network namespace with nothing but
        # loopback where one can be made (tests/pacs skip, saying why, where not)
        if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
            exec unshare -n sh -c 'ip link set lo up && exec python -m pytest -q "$@"' sh "${@:2}"
        fi
        exec python -m pytest -q "${@:2}"
        ;;
    *)
        echo "usage: ./run.sh demo | ./run.sh test [pytest args]" >&2
        exit 2
        ;;
esac
