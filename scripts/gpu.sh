#!/usr/bin/env bash
# The GPU measurements of issue 16, in two halves, for a CUDA 13 machine that has no Rust, no
# ONNX Runtime and no network (the one this project is sometimes lent):
#
#   scripts/gpu.sh pack   here: downloads onnxruntime-gpu (the CUDA provider) and the Vulkan
#                         loader, builds fcdnode and fcdtrain --features vulkan, strips them and
#                         packs everything into .gpu/ (ignored) in four parts, one per call
#   scripts/gpu.sh run    there, in a copy of this tree holding .gpu/part-* (a call that carries one
#                         part replaces .gpu/ there: copy each to /tmp and back before the run),
#                         unpacks, then prints the card, `fcdnode bench node` on CUDA (one series
#                         and 8 studies at once), `fcdnode bench infer` on CUDA (with I/O binding;
#                         2 mm and 1 mm), one training step in burn (Vulkan) against PyTorch eager
#                         (trainer/bench/torch_step.py), and whether TensorRT is there
#
# Prints figures, asserts nothing. The log also goes to $OUT/gpu.log when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
PACK=.gpu

pack() {
  set -e
  scripts/setup.sh
  rm -rf "$PACK/bin" "$PACK/lib" "$PACK"/part-*
  mkdir -p "$PACK/bin" "$PACK/lib"
  local wheel
  wheel=$(ls "$PACK"/onnxruntime_gpu-"$ORT_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    .tools/venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 -d "$PACK" "onnxruntime-gpu==$ORT_VERSION"
    wheel=$(ls "$PACK"/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -n1)
  fi
  .tools/venv/bin/python - "$wheel" "$PACK/lib" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in wheel.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime"):
            with open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as f:
                f.write(wheel.read(name))
EOF
  # The Vulkan loader and the GL vendor-neutral dispatch the NVIDIA driver's Vulkan ICD needs
  # (burn's GPU backend here; the machine has the driver, not these).
  mkdir -p "$PACK/lib/gl"
  (cd "$PACK/lib/gl" && apt-get download -q libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  cargo build --release --bin fcdnode
  # burn's `cuda` backend cannot be built without a download from GitHub (cubecl-llvm's LLVM).
  cargo build --release -p fcdnode-trainer --features vulkan --target-dir target/gpu
  strip -o "$PACK/bin/fcdnode" target/release/fcdnode
  strip -o "$PACK/bin/fcdtrain" target/gpu/release/fcdtrain
  # One archive, sent in parts small enough for one call each (with this tree beside them).
  tar -C "$PACK" -cf - bin lib | xz -6 -T0 > "$PACK/all.tar.xz"
  split -n 4 "$PACK/all.tar.xz" "$PACK/part-"
  rm "$PACK/all.tar.xz"
  ls -l "$PACK"/part-*
  echo "send each $PACK/part-* (carry), then: scripts/gpu.sh run"
}

run() {
  local log=/dev/null
  [ -n "${OUT:-}" ] && log="$OUT/gpu.log"
  {
    set -x
    local dir=/tmp/fcdnode-gpu
    mkdir -p "$dir"
    cat "$PACK"/part-* | xz -d | tar -C "$dir" -xf - || exit 1
    # The CUDA libraries (cuBLAS, cuDNN, cuFFT, cuRAND, NVRTC…) of the machine's Python wheels.
    local cuda_libs
    cuda_libs=$(python3 -c '
import glob, os, site
dirs = set()
for root in site.getsitepackages():
    for so in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))')
    for deb in "$dir"/lib/gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
    export LD_LIBRARY_PATH="$dir/lib:$cuda_libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export ORT_DYLIB_PATH="$dir/lib/libonnxruntime.so.$ORT_VERSION" ORT_DISABLE_TELEMETRY=1
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    ldd "$dir/lib/libonnxruntime_providers_cuda.so" | grep -i "not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nproc
    local fcdnode=$dir/bin/fcdnode fcdtrain=$dir/bin/fcdtrain
    timeout 200 "$fcdnode" bench node --device cuda --skip-ingest --runs 5 --studies 8 --senders 4
    timeout 120 "$fcdnode" bench infer --device cuda --runs 10 --io-binding
    timeout 60 python3 trainer/bench/torch_step.py --arch resnet18 --size 128 --batch 2 --device cuda
    timeout 150 "$fcdtrain" bench step --arch resnet18 --size 128 --batch 2 --device vulkan
    # TensorRT: the provider library is in the wheel; it needs TensorRT itself (libnvinfer).
    ldconfig -p | grep -ci nvinfer
    python3 -c 'import tensorrt; print("tensorrt", tensorrt.__version__)'
    timeout 60 "$fcdnode" bench infer --device cuda --runs 5 --voxel-mm 1
    set +x
  } 2>&1 | tee "$log"
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: scripts/gpu.sh pack|run" >&2; exit 2 ;;
esac
