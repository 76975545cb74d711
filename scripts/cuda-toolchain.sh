#!/usr/bin/env bash
# cuda-toolchain.sh: installs a CUDA 13.0 toolkit for `cargo build --features cuda` from PyPI's
#! NVIDIA wheels into a directory of your choosing, with no GPU and no system CUDA needed.
#
# Usage:   scripts/cuda-toolchain.sh <dir>          (run from the repo root; idempotent)
#          source <dir>/env.sh
#          cargo build --release --features cuda --bin editd
#
# What it does
#   1. a venv in <dir>/venv with `cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl,crt,nvvm]==13.0.2`
#      (the pins torch 2.11 cu130 uses). NEVER 13.1+: nvcc 13.1 and later emit PTX ISA >= 9.1, which
#      driver 580 (CUDA 13.0) cannot JIT (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); candle loads its
#      kernels as PTX, so nvcc must be 13.0.x (it emits `.version 9.0`).
#   2. lays the merged `nvidia/cu13` tree out as a CUDA_HOME in <dir>/cuda (bin, include, nvvm,
#      lib64 with unversioned .so links for the linker).
#   3. generates a link-time stub <dir>/cuda/lib64/stubs/libcuda.so (soname libcuda.so.1) from the
#      driver symbols in cudarc's bindings (`cargo fetch` is run first so they are on disk). The
#      wheels ship no libcuda stub, and candle's cudarc uses dynamic linking (-lcuda).
#   4. writes <dir>/env.sh: CUDA_HOME, CUDA_PATH, PATH, NVCC, CUDA_COMPUTE_CAP (default 90, keeps a
#      value already set), CUDARC_CUDA_VERSION=13000.
#
# Building for other GPUs
#   - Ampere/Ada (8.x): `CUDA_COMPUTE_CAP=80 source <dir>/env.sh` (A100), 86 (RTX 30xx, A10/A40),
#     89 (L4/L40/RTX 40xx). Use a separate CARGO_TARGET_DIR per arch, or `cargo clean -p
#     candle-kernels -p editd-kernels`, because the PTX is built into the binary.
#   - The default 90 is compiled by candle-kernels (cudaforge) as sm_90a/compute_90a: H100/H200 only.
#   - Portable PTX: candle embeds PTX (not SASS) for its elementwise/reduce kernels and so does
#     editd-kernels, and the driver JIT-compiles PTX for any GPU whose compute capability is >= the
#     PTX target. So a build with CUDA_COMPUTE_CAP=80 runs on sm_80, 86, 89, 90 and later (JIT on
#     first load, cached in ~/.nv/ComputeCache or $CUDA_CACHE_PATH). Limits: (a) candle-kernels'
#     moe/mmq kernels are SASS in libmoe.a and exist only for the chosen arch (editd does not use
#     them); (b) no sm_90a-only features (wgmma/TMA) in a compute_80 build, so Hopper runs slower
#     paths; (c) the first start pays the JIT; (d) the PTX ISA must be one the driver knows, i.e.
#     nvcc 13.0 with driver >= 580.
#
# What a GPU box needs at run time (the binary's NEEDED; BIND_NOW, so a miss fails at load):
#   libcuda.so.1 from the NVIDIA driver >= 580 (CUDA 13.0), libcudart.so.13, libcublas.so.13 and
#   libcublasLt.so.13, libcurand.so.10 (from a CUDA 13.0/13.x toolkit in /usr/local/cuda/lib64,
#   or the same pip wheels: `.../site-packages/nvidia/cu13/lib` on LD_LIBRARY_PATH), libstdc++.
#   NEVER put <dir>/cuda/lib64/stubs on LD_LIBRARY_PATH on the GPU machine: the stub's libcuda
#   returns 999 from every call and would shadow the driver's real libcuda.so.1.
set -euo pipefail

ROOT=${1:?usage: scripts/cuda-toolchain.sh <dir>}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIN="cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl,crt,nvvm]==13.0.2"
PY=${PYTHON:-python3}

# 1. the wheels (skip when this pin is already installed)
if [ ! -x "$ROOT/venv/bin/pip" ]; then
  "$PY" -m venv "$ROOT/venv"
fi
if ! "$ROOT/venv/bin/pip" show cuda-toolkit 2>/dev/null | grep -q '^Version: 13.0.2$' \
  || ! ls "$ROOT"/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  echo "installing $PIN into $ROOT/venv" >&2
  "$ROOT/venv/bin/pip" install -q "$PIN"
fi
NV=$(echo "$ROOT"/venv/lib/python3*/site-packages/nvidia/cu13)
[ -x "$NV/bin/nvcc" ] || { echo "nvcc not found under $NV" >&2; exit 1; }
if ! "$NV/bin/nvcc" --version | grep -q 'release 13\.0,'; then
  echo "nvcc is not 13.0.x; refusing (driver 580 cannot load newer PTX)" >&2
  exit 1
fi

# 2. the CUDA_HOME layout (symlinks; re-created each run)
C="$ROOT/cuda"
mkdir -p "$C/bin" "$C/lib64/stubs" "$ROOT/stub"
for f in "$NV"/bin/*; do ln -sfn "$f" "$C/bin/"; done
ln -sfn "$NV/include" "$C/include"
ln -sfn "$NV/nvvm" "$C/nvvm"
for f in "$NV"/lib/*.so* "$NV"/lib/*.a; do
  [ -e "$f" ] && ln -sfn "$f" "$C/lib64/"
done
(
  cd "$C/lib64"
  for s in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
    ln -sfn "lib${s%%:*}.so.${s##*:}" "lib${s%%:*}.so"
  done
)

# 3. the libcuda.so link-time stub, from cudarc's driver bindings
(cd "$REPO" && cargo fetch -q)
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)
[ -n "$CUDARC" ] || { echo "cudarc 0.19 sources not found after cargo fetch" >&2; exit 1; }
grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$CUDARC/src/driver/sys/mod.rs" \
  | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u > "$ROOT/stub/cuda_syms.txt.new"
if ! cmp -s "$ROOT/stub/cuda_syms.txt.new" "$ROOT/stub/cuda_syms.txt" \
  || [ ! -f "$C/lib64/stubs/libcuda.so" ]; then
  mv "$ROOT/stub/cuda_syms.txt.new" "$ROOT/stub/cuda_syms.txt"
  while read -r s; do echo "int $s(void){return 999;}"; done \
    < "$ROOT/stub/cuda_syms.txt" > "$ROOT/stub/libcuda_stub.c"
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 \
    -o "$C/lib64/stubs/libcuda.so" "$ROOT/stub/libcuda_stub.c"
else
  rm -f "$ROOT/stub/cuda_syms.txt.new"
fi

# 4. the environment
cat > "$ROOT/env.sh" <<EOT
# generated by scripts/cuda-toolchain.sh; source it before \`cargo build --features cuda\`
export CUDA_HOME=$C
export CUDA_PATH=\$CUDA_HOME
case ":\$PATH:" in *":\$CUDA_HOME/bin:"*) ;; *) export PATH=\$CUDA_HOME/bin:\$PATH ;; esac
export NVCC=\$CUDA_HOME/bin/nvcc
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
EOT

cat <<EOT
CUDA 13.0 toolkit ready in $C ($("$NV/bin/nvcc" --version | grep -o 'V13[0-9.]*'),
$(wc -l < "$ROOT/stub/cuda_syms.txt") driver symbols in the libcuda stub).

  source $ROOT/env.sh                      # CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
  cargo build --release --features cuda --bin editd

Other GPUs: CUDA_COMPUTE_CAP=80|86|89 source $ROOT/env.sh (8.x PTX also JITs on 9.0).
On the GPU box: driver >= 580, libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
libcurand.so.10 on the loader path; never $C/lib64/stubs.
EOT
