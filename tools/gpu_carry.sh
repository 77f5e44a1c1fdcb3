#!/usr/bin/env bash
# What tools/gpu_check.sh's detection part takes along to a GPU machine whose Python has no detectron2 and no
# network (this workplace's: python3 3.12 with torch and torchvision). Run it here, where git and pip reach the
# network; both folders are ignored by git, and `run` carries them (carry: [".carry", ".whl"]):
#   .carry/detectron2  detectron2's Python package from a clone of facebookresearch/detectron2. ViTDet runs
#                      without the compiled _C: ROIAlign and NMS are torchvision's, deform_conv and the rotated
#                      ops become stubs that fail only when called, and the COCO evaluator falls back from its
#                      C++ COCOeval to pycocotools' own.
#   .whl/              Python 3.12 x86-64 wheels of what detectron2 needs there and the machine lacks, pinned as
#                      detectron2's setup.py asks (fvcore < 0.1.6, iopath < 0.1.10; omegaconf pins antlr4 4.9);
#                      shapely for fvcore's crop of polygon masks (the configs' FixedSizeCrop).
#
#   bash tools/gpu_carry.sh DETECTRON2_GIT        # a clone (or bare repository) of facebookresearch/detectron2
set -euo pipefail
src=${1:?usage: bash tools/gpu_carry.sh DETECTRON2_GIT (a clone of facebookresearch/detectron2)}
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi

WHEELS=(omegaconf==2.3.0 hydra-core==1.3.2 iopath==0.1.9 yacs==0.1.8 termcolor==3.3.0 pycocotools==2.0.11
        shapely==2.2.0)
SOURCES_ONLY=(antlr4-python3-runtime==4.9.3 fvcore==0.1.5.post20221221)  # pure Python, published as sdists only
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

rm -rf .carry/detectron2 .whl
mkdir -p .carry .whl
git -C "$src" archive HEAD detectron2 | tar -x -C .carry
echo "detectron2 $(git -C "$src" rev-parse HEAD) (Python sources) in .carry/detectron2"
platforms=()
for platform in "${PLATFORMS[@]}"; do platforms+=(--platform "$platform"); done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "${WHEELS[@]}"
"$py" -m pip wheel -q --no-deps -w .whl "${SOURCES_ONLY[@]}"
du -sh .carry .whl
