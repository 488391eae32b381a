#!/usr/bin/env bash
# Project-local setup: Debian peers (DCMTK, dicom3tools, Orthanc, GDCM, cmake, strace, Chromium and
# its WebDriver for the console test) and a Python virtual environment under .tools/venv with
# dcm2niix, ONNX Runtime (for libonnxruntime.so) and the independent readers the tests use
# (pydicom, highdicom, fhir.resources 6.1.0 = FHIR R4 4.0.1, which needs pydantic 1) and
# kubernetes-validate (with the Kubernetes schemas, for the manifests in deploy/).
# Idempotent: returns in a second when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dcmtk dicom3tools orthanc libgdcm-tools cmake python3-venv openssl strace jing systemd chromium chromium-driver fonts-dejavu-core xz-utils)
PY_PACKAGES=("dcm2niix==1.0.20260724" "onnxruntime==1.31.1" "onnx==1.23.2" "pydicom==3.0.2" "highdicom==0.28.2" "fhir.resources==6.1.0" "pydantic==1.10.27" "kubernetes-validate==1.37.0")
VENV=.tools/venv

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.fcdnode-setup"
want="${PY_PACKAGES[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: creating $VENV with ${PY_PACKAGES[*]}"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "$want" > "$stamp"
fi

ort=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | head -n1 || true)
[ -n "$ort" ] || { echo "setup: libonnxruntime.so not found in $VENV" >&2; exit 1; }
ln -sf "$(realpath "$ort")" .tools/libonnxruntime.so
ln -sf "$(realpath "$VENV/bin/dcm2niix")" .tools/dcm2niix
for tool in storescu storescp dcmdump dciodvfy gdcmconv Orthanc cmake strace chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "setup: $tool missing after install" >&2; exit 1; }
done
echo "setup: ok (.tools/dcm2niix, .tools/libonnxruntime.so)"
