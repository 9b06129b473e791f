#!/usr/bin/env bash
# Issue 5's GPU figure in one short call on a lent GPU machine (the `device` tool's `run`):
# the training-throughput benchmark with every installed system on the GPU (dgm, the plain
# loop, Pyro; pythae's many dependencies are not carried), and what it ran on.
#
# That machine has its own python3 with a CUDA build of torch but none of pydantic or Pyro, and
# nothing can be fetched there: carry them as wheels. Here, once per session, in the repo root:
#
#   grep -qs '^/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
#       pyro-ppl==1.9.2 pyro-api==0.1.2
#
# then run `bash benchmarks/gpu.sh` there with `.whl` carried (about 5 minutes). Results go to
# $OUT (the device tool's) or runs/gpu: gpu.txt, throughput-cuda.json and throughput-cuda.log.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-runs/gpu}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

device="${DEVICE:-cuda}"  # DEVICE=cpu bash benchmarks/gpu.sh: a dry run of this script here
{
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    fi
    python3 -c "import torch, pydantic; print('torch', torch.__version__, torch.cuda.is_available())"
    echo "$(nproc) CPU cores"
} | tee "$out/gpu.txt"

python3 benchmarks/throughput.py --device "$device" --rounds "${ROUNDS:-5}" \
    --json "$out/throughput-$device.json" 2>&1 | tee "$out/throughput-$device.log"
