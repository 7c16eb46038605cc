#!/bin/sh
# Installs the image's Python packages from the lock, for one torch variant. Used by the Dockerfile.
#
#   docker/install-python-deps.sh cpu|cuda          install (as root, in the image)
#   docker/install-python-deps.sh cpu|cuda --print  only print the requirements it would install
#
# requirements.txt is the source of truth for every version. It pins torch/torchvision as the CUDA 13 build
# from PyPI (with its nvidia-*, cuda-* and triton packages, ~5.5 GB):
#   cpu:  drop those lines and install the same torch/torchvision versions as "+cpu" builds from the
#         PyTorch CPU index ($TORCH_CPU_INDEX). Same code, no CUDA libraries, a few GB smaller.
#   cuda: keep the lock's CUDA 13 build, and swap faiss-cpu for faiss-gpu (docker/requirements-gpu.txt,
#         which explains why it brings CUDA 12 runtime wheels along).
set -eu

variant="${1:?usage: $0 cpu|cuda [--print]}"
mode="${2:-install}"
here="$(cd "$(dirname "$0")" && pwd)"
lock="${LOCK_FILE:-$here/../requirements.txt}"
cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

case "$variant" in
  cpu)  drop='^(torch|torchvision|triton|nvidia-[A-Za-z0-9_.-]+|cuda-[A-Za-z0-9_.-]+)==' ;;
  cuda) drop='^faiss-cpu==' ;;
  *) echo "TORCH_VARIANT must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac

reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
grep -vE "$drop" "$lock" > "$reqs"
if [ "$variant" = cuda ]; then
  cat "$here/requirements-gpu.txt" >> "$reqs"
fi
torch_pin="$(grep -E '^torch==' "$lock")"
vision_pin="$(grep -E '^torchvision==' "$lock")"

if [ "$mode" = --print ]; then
  grep -E '^[A-Za-z0-9]' "$reqs"
  if [ "$variant" = cpu ]; then
    echo "$torch_pin+cpu"
    echo "$vision_pin+cpu"
  fi
  exit 0
fi

echo "Installing the locked packages for TORCH_VARIANT=$variant"
pip install --no-deps -r "$reqs"
if [ "$variant" = cpu ]; then
  echo "Installing $torch_pin+cpu and $vision_pin+cpu from $cpu_index"
  pip install --no-deps --index-url "$cpu_index" "$torch_pin+cpu" "$vision_pin+cpu"
fi
# --no-deps trusts the lock; this proves the installed set is consistent.
pip check
