#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.py needs on a GPU machine without network (Python 3.12, x86_64,
# with torch, triton, Lightning, timm, scipy already installed): the project's pure-Python
# dependencies that such an image lacks, and the transformers 4.57 reference with the tokenizers /
# huggingface-hub versions it accepts (newer ones fail its import-time version check).
#
#   bash benchmarks/gpu_check_wheels.sh [DIR]      # here, with network; DIR defaults to .whl
#
# Then, on the GPU machine, from the checkout (DIR carried along with it):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/src:$PWD
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .   # detrlab + detrlab_ops
#   python3 benchmarks/gpu_check.py
set -euo pipefail
DIR=${1:-.whl}
mkdir -p "$DIR"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DIR" \
    "hydra-core==1.3.2" "omegaconf==2.3.0" "faster-coco-eval>=1.6" "pycocotools>=2.0.7" \
    "transformers==4.57.*" "tokenizers>=0.22,<0.23" "huggingface-hub>=0.34,<1.0" "deformops==3.0.1"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only:
# build its pure-Python wheel here.
pip wheel --no-deps -w "$DIR" "antlr4-python3-runtime==4.9.3"
ls -la "$DIR"
