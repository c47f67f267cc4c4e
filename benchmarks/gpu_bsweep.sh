#!/usr/bin/env bash
# b-sweep on one GPU: full-width VGG-16 and ResNet-56 (CIFAR-style) on the complete Fashion-MNIST, with the
# protocol of the CPU sweep (benchmarks/RESULTS.md): RLPruneCallback with its defaults against the L1-uniform
# frontier (six MACs targets) and, at each RL run's MACs, L1-uniform, random and global magnitude. The two
# baselines train side by side; then
# one process per (model, b) runs seeds 0, 1, 2 one after another, all eight sharing the GPU. Each finished run is
# saved to WORK/<model>/b<b>.json as it completes (bsweep.py skips it on a rerun); WORK/progress logs each one;
# at the end each model's runs are merged into WORK/<model>.json (`bsweep.py --merge`, by hand if cut short).
#
#   bash benchmarks/gpu_bsweep.sh WORK [DATA]     # from the repository root; DATA: the Fashion-MNIST IDX files
set -u
WORK=${1:?usage: bash benchmarks/gpu_bsweep.sh WORK [DATA]}
DATA=${2:-../shared/data/fashion-mnist}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
COMMON=(--dataset fashion-mnist --data-dir "$DATA" --baseline-epochs 15 --finetune-epochs 16
  --limit-train-batches 0.25 --methods l1_uniform random magnitude_global)
declare -A MODEL=(
  [vgg]="--model vgg16 --width 1"
  [res]="--model resnet56 --width 1"
)

sweep() {  # LOG MODEL ARGS...: one bsweep.py process, its failure recorded in WORK/failed
  local log=$1 m=$2
  shift 2
  # shellcheck disable=SC2086
  $PYTHON benchmarks/bsweep.py "${COMMON[@]}" ${MODEL[$m]} --work "$WORK/$m" "$@" > "$WORK/$log.log" 2>&1 \
    || echo "FAILED $log" >> "$WORK/failed"
}

for m in vgg res; do sweep "${m}_base" $m --b --output "$WORK/$m/base.json" & done
wait
for m in vgg res; do
  sweep "${m}_frontier" $m --b --methods l1_uniform --macs-targets 0.3 0.45 0.6 0.7 0.8 0.9 \
    --output "$WORK/$m/frontier.json" &
done
wait
echo "baselines done $(date -u)" >> "$WORK/progress"
for b in 1 2 3 0.5; do
  for m in vgg res; do
    (
      for s in 0 1 2; do
        sweep "${m}_b${b}_s$s" $m --b $b --seed $s --output "$WORK/$m/b$b.json"
        echo "$m b$b s$s done $(date -u)" >> "$WORK/progress"
      done
    ) &
  done
done
wait
for m in vgg res; do
  $PYTHON benchmarks/bsweep.py --merge "$WORK/$m"/b*.json "$WORK/$m/frontier.json" --output "$WORK/$m.json"
done
echo "all done $(date -u)" >> "$WORK/progress"
