#!/bin/bash
# The GPU figures of ../shared/GPU.md in one run, most important first, each step under its own time limit so
# a hang costs one step, not the lease. Run from the repository root on a CUDA machine whose python3 has torch;
# every log goes to $OUT (default gpu-out/). Usage: tools/gpu_check.sh [STEP ...] (default: all but `suite`).
#   steps: info gputests loader model train demo ddp suite
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=python3
CORPUS=/tmp/vc_corpus
steps=${*:-info gputests loader model train demo ddp}

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a limit, log to $OUT/NAME.log, print its wall time
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name rc=$rc $((SECONDS - t0)) s"
    tail -n 25 "$OUT/$name.log"
}

for s in $steps; do
    case $s in
    info) step info 60 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'" ;;
    gputests) step gputests 240 $PY -m pytest -q -x -m gpu tests/test_gpu.py ;;
    loader) step loader 150 $PY -m voxfast bench-loader --make-corpus $CORPUS --device cuda --batch 256 \
        --seconds 4 --rounds 2 --json ;;
    model) step model 150 $PY -m voxfast bench-model --modes fp32 autocast channels_last --device cuda \
        --seconds 1.5 ;;
    train) step train 300 $PY -m voxfast bench-train model.name=resnetse34v2 train.micro_batch=128 data.n_per_speaker=4 \
        train.global_batch=128 augment.enabled=true data.train_list=$CORPUS/train_list.txt \
        augment.noise_dir=$CORPUS augment.rir_dir=$CORPUS/rirs --steps 30 --warmup 5 ;;
    demo) step demo 240 $PY -m voxfast demo --data /tmp/demo_data --out /tmp/demo_run ;;
    ddp) step ddp 120 torchrun --nproc_per_node 1 -m voxfast train --config demo train.epochs=1 \
        data.train_list=/tmp/demo_data/train_list.txt eval.trials=/tmp/demo_data/trials.txt \
        train.out_dir=/tmp/ddp_run ;;
    suite) step suite 300 $PY -m pytest -q -x -n 12 --deselect tests/test_install.py -p no:cacheprovider ;;
    *) echo "unknown step $s (info gputests loader model train demo ddp suite)"; exit 2 ;;
    esac
done
