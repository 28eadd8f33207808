#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server) for the remote-backend tests, from the llama.cpp
# source that llama-cpp-python's source package on PyPI carries (vendor/llama.cpp): PyPI ships
# no llama-server binary, and nothing else can be downloaded here.
#
#   tests/support/build_llama_server.sh PYTHON VERSION OUT
#
# PYTHON runs pip; VERSION is llama-cpp-python's; OUT is where the static binary goes. Generic
# x86-64 (GGML_NATIVE=OFF): a native build crashed with "Illegal instruction" on machines whose
# CPU reports instructions their hypervisor does not run. No curl, TLS or web UI: the tests
# need none. About 7 minutes on 2 idle cores.
set -euo pipefail
python=$1 version=$2 out=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$work"
tar xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
source_dir="$work/llama_cpp_python-$version/vendor/llama.cpp"
if ! cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >"$work/configure.log" 2>&1 \
    || ! cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1; then
    tail -n 30 "$work"/configure.log "$work"/build.log 2>/dev/null >&2 || true
    exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$work/build/bin/llama-server" "$out.partial"
mv "$out.partial" "$out"  # whole or not at all: a build cut off leaves no half binary behind
