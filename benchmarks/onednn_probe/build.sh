#!/usr/bin/env bash
# Builds the oneDNN convolution probe (benchmarks/onednn_probe/probe.py reads it): fetches
# oneDNN 3.2 (the GNU OpenMP build and its headers, Python wheels from PyPI) into
# .onednn/ here and compiles onednn_conv.cc against them and jaxlib's XLA FFI headers.
# Needs g++ and pip's index; nothing in jaxseg itself uses it.
set -eu
cd "$(dirname "$0")"
PY=${PY:-../../.venv/bin/python}
mkdir -p .onednn
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .onednn \
  onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
for w in .onednn/*.whl; do (cd .onednn && unzip -q -o "$(basename "$w")"); done
INC=$(echo .onednn/onednn_devel_cpu_gomp-*.data/data/include)
LIB=$(cd .onednn/onednn_cpu_gomp-*.data/data/lib && pwd)
JAXINC=$("$PY" -c "import jax.ffi; print(jax.ffi.include_dir())")
g++ -O2 -std=c++17 -shared -fPIC -w -I"$JAXINC" -I"$INC" onednn_conv.cc -L"$LIB" -ldnnl \
  -Wl,-rpath,"$LIB" -o .onednn/libonednn_conv.so
echo "built $(pwd)/.onednn/libonednn_conv.so"
