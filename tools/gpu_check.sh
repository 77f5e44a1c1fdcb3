#!/usr/bin/env bash
# One GPU check for the README's performance tables, in at most 8 minutes of device time and without a
# network. It prints ONE table (python -m bridges.bench.table): the date, the device and the versions first,
# then what each part measured, its status and its time:
#   nosync                  the CUDA no-host-sync test (tests/pretrain/test_no_sync.py -k "cuda and not compile")
#   detect                  lsmae detect: 20 iterations of the real ViTDet-B Mask R-CNN config (1024 px, AMP),
#                           one image per iteration, on generated COCO-format pictures, from random weights
#                           shaped as vit_base/coco/4000's; beside detectron2's published train time and memory
#   pretrain-b, pretrain-l  lsmae bench pretrain: ViT-B/L at 448 px, batch 64, bf16 eager and --compile,
#                           synthetic and fed by 12 loader workers decoding generated JPEGs
#   finetune-b, finetune-l  lsmae bench finetune (224 px, batch 128): MAE's step next to ours; ViT-B also
#                           --compile'd and fed by the command's default workers (generated ImageNet-like JPEGs)
#   segment-b, segment-l    lsmae bench segment (UperNet, 512 px, batch 8): transformers' stock BEiT modules next
#                           to ours; ViT-B also --compile'd and fed (generated ADE20K-like JPEGs, PNG masks)
# Each part runs under its budget (below: they add up to 480 s); the exit status is 0 only when every part
# ran and passed (a part the smoke run skips, and says why, counts as run).
#
#   bash tools/gpu_check.sh                 # on a GPU machine: .venv/bin/python where there is one, else python3
#   bash tools/gpu_check.sh --smoke         # CPU smoke run, the same table: demo architecture, tiny steps
#   PARTS="detect segment-b" bash tools/gpu_check.sh        # some parts only
#   PART_S=300 WORK=/tmp/check bash tools/gpu_check.sh      # every part's budget 300 s; its files kept in WORK
#   DETECT_DEVICE=cpu DETECT_ITERS=4 PART_S=1200 PARTS=detect bash tools/gpu_check.sh   # detection on a CPU (slow)
#
# Where detectron2 does not import, the detection part takes it from the carried folders that
# tools/gpu_carry.sh prepares: .carry/detectron2 (its Python sources: ViTDet runs without the compiled _C) on
# PYTHONPATH, and the Python 3.12 wheels of .whl/ (WHEELS=DIR: another Python's) installed into WORK/site. The
# smoke run uses detectron2 only where it imports, and says so where it does not.
set -euo pipefail
cd "$(dirname "$0")/.."

case "$*" in
    "") smoke=0 ;;
    --smoke) smoke=1 ;;
    *) echo "usage: [PARTS=... PART_S=N WORK=DIR PYTHON=...] bash tools/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
carry=.carry wheels=${WHEELS:-.whl}
vit_b=mae_vit_base_patch16_dec384d12h8b vit_l=mae_vit_large_patch16_dec512d16h8b micro=mae_vit_micro_patch8_dec64d4h2b

# seconds each part may take (a part cut short keeps the rows it printed). On one H200 the cold compile warm-ups
# dominate (pretraining: 53 s ViT-B, 71 s ViT-L), then process starts, generated data and loader workers.
if [ "$smoke" = 1 ]; then
    declare -A budget=([nosync]=120 [detect]=240 [pretrain]=120 [finetune]=120 [segment]=120)
else
    declare -A budget=([nosync]=70 [detect]=80 [pretrain-b]=75 [pretrain-l]=95 [finetune-b]=50 [finetune-l]=25
                       [segment-b]=55 [segment-l]=30)
fi
for name in ${PARTS:-}; do
    [ -n "${budget[$name]:-}" ] || { echo "gpu_check: PARTS: no part $name (${!budget[*]})" >&2; exit 2; }
done

if [ -n "${WORK:-}" ]; then
    work=$WORK
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
: >"$work/parts.tsv"
status=0

selected() { [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" $1 "* ]]; }

begin() {  # NAME KIND LABEL SUBJECT; fails where PARTS leaves the part out
    selected "$1" || return 1
    part=$1 kind=$2 label=$3 subject=$4 outcome=0 started=$SECONDS part_budget=${PART_S:-${budget[$1]}}
    rm -rf "${work:?}/$part" "$work/$part".*
    echo "gpu_check: $part: $label (budget $part_budget s)" >&2
}

step() {  # COMMAND...: runs it in what is left of the part's budget (timeout ends its whole process group)
    local left=$((started + part_budget - SECONDS))
    outcome=0
    if [ "$left" -le 0 ]; then outcome=124; return 124; fi
    timeout -k 10 "$left" "$@" >>"$work/$part.out" 2>>"$work/$part.err" || outcome=$?
    return "$outcome"
}

finish() {  # [skipped: REASON]
    local result=${1:-$outcome} seconds=$((SECONDS - started))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$kind" "$label" "$subject" "$part_budget" "$result" "$seconds" \
        >>"$work/parts.tsv"
    echo "gpu_check: $part: $([ "$result" = 0 ] && echo ok || echo "$result") after $seconds s" >&2
    [ "$result" = 0 ] || [[ $result == skipped* ]] || status=1
}

last_error() { tail -n 1 "$work/$part.err" | tr '\t' ' '; }

pytest_part() {  # NAME LABEL PYTEST-ARGS...
    local name=$1 label=$2
    shift 2
    begin "$name" pytest "$label" - || return 0
    step "$py" -m pytest -q -p no:cacheprovider --junitxml="$work/$name.xml" "$@" || true
    finish
}

bench_part() {  # NAME LABEL BENCH OPTIONS...
    local name=$1 label=$2
    shift 2
    begin "$name" bench "$label" - || return 0
    step "$py" -m bridges bench "$@" --json || true
    finish
}

detect_part() {  # NAME LABEL CONFIG [detection_inputs OPTIONS...] -- [lsmae detect OPTIONS...]
    local name=$1 label=$2 config=$3 inputs=() options=()
    shift 3
    while [ "$1" != -- ]; do inputs+=("$1"); shift; done
    shift
    options=("$@")
    begin "$name" detect "$label" "$config" || return 0
    local data=$work/$name.inputs source=demo
    step "$py" -m bridges.bench.detection_inputs "$data" "${inputs[@]}" || { finish; return; }
    [ -f "$data/source.pth" ] && source=$data/source.pth
    local args=("$source" --config "$config" --train "$data/train.json:$data/train" --val "$data/val.json:$data/val"
                "${options[@]}" "train.output_dir=$work/$name")
    if ! step "$py" -m bridges detect "${args[@]}" --dry-run; then  # the plan, and whether detectron2 imports
        grep -q "needs detectron2" "$work/$name.err" || { finish; return; }
        if [ "$smoke" = 1 ]; then finish "skipped: $(last_error)"; return; fi
        if [ ! -d "$carry/detectron2" ]; then
            echo "no $carry/detectron2 to take detectron2 from: run tools/gpu_carry.sh, carry $carry and $wheels" \
                >>"$work/$name.err"
            finish
            return
        fi
        step "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
            "$wheels"/*.whl || { finish; return; }
        export PYTHONPATH="$PWD/$carry:$work/site${PYTHONPATH:+:$PYTHONPATH}"
        step "$py" -m bridges detect "${args[@]}" --dry-run || { finish; return; }
    fi
    step "$py" -m bridges detect "${args[@]}" || true
    finish
}

if [ "$smoke" = 1 ]; then
    tiny=(--device cpu --model "$micro" --steps 1 --rounds 1 --warmup 1 --threads 1 --workers 1)
    pytest_part nosync "no-host-sync test (CUDA)" tests/pretrain/test_no_sync.py -k cuda
    detect_part detect "lsmae detect: ViTDet demo config, CPU" mask_rcnn_vitdet_demo \
        --width 160 --height 128 --train-images 8 --val-images 2 --
    bench_part pretrain "lsmae bench pretrain: demo architecture, 64 px, batch 4" \
        pretrain "${tiny[@]}" --input-size 64 --batch-size 4 --configs fp32 --images 8
    bench_part finetune "lsmae bench finetune: demo architecture, 64 px, batch 4" \
        finetune "${tiny[@]}" --input-size 64 --batch-size 4 --configs fp32 --images 8
    bench_part segment "lsmae bench segment: demo architecture, 64 px crops, batch 2" \
        segment "${tiny[@]}" --batch-size 2 --configs fp32 --images 4
else
    iters=${DETECT_ITERS:-20}
    # the compiled steps' variants (-k cuda alone) add two inductor compilations: run them apart when time allows
    pytest_part nosync "no-host-sync test (CUDA, eager steps)" tests/pretrain/test_no_sync.py -k "cuda and not compile"
    detect_part detect "lsmae detect: ViTDet-B Mask R-CNN, 1024 px, AMP, 1 image per iteration" \
        mask_rcnn_vitdet_b_100ep --checkpoint-like vit_base/coco/4000 -- \
        --batch-size 1 "train.max_iter=$iters" train.log_period=1 "train.device=${DETECT_DEVICE:-cuda}"
    for size in b l; do
        arch=vit_$size
        bench_part "pretrain-$size" "lsmae bench pretrain: ViT-${size^^}, 448 px, batch 64" \
            pretrain --device cuda --model "${!arch}" --input-size 448 --batch-size 64 --configs bf16 --compile \
            --workers 12
    done
    bench_part finetune-b "lsmae bench finetune: ViT-B, 224 px, batch 128" finetune --device cuda --model "$vit_b" \
        --compile
    bench_part finetune-l "lsmae bench finetune: ViT-L, 224 px, batch 128, synthetic" \
        finetune --device cuda --model "$vit_l" --data synthetic --steps 5
    bench_part segment-b "lsmae bench segment: UperNet ViT-B, 512 px, batch 8" segment --device cuda --model "$vit_b" \
        --compile
    bench_part segment-l "lsmae bench segment: UperNet ViT-L, 512 px, batch 8, synthetic" \
        segment --device cuda --model "$vit_l" --data synthetic --steps 5
fi

"$py" -m bridges.bench.table "$work"
exit "$status"
