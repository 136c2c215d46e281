#!/usr/bin/env bash
# Wheels our package needs on a GPU machine that has Python 3.12, PyTorch and transformers but no package registry
# (the device machine here): written to .whl/ for tests/gpu/run.sh. Run where pip reaches PyPI.
#
#   bash tests/gpu/wheels.sh && ls .whl
#   # there: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "tensordict==0.15.3" "pyvers==0.2.3" "omegaconf==2.3.1" "hydra-core==1.3.8" "dill==0.4.1" \
  "megatron-core==0.16.1"
# antlr4-python3-runtime 4.9.3 (hydra's parser) ships as an sdist only: build its pure-Python wheel here
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
du -sh .whl
