#!/usr/bin/env bash
# One prepared GPU session (issue 17): `amt bench --device cuda` for vitl14 / vitb14 / vits14 at
# batch 1 and 256 with the training step, next to the bare backbone; `amt train` of the demo's
# model on the device; the CUDA-only test.
#
#   bash benchmarks/gpu_session.sh prepare   # here (`make gpu-wheels`): wheels the GPU machine
#                                            # lacks -> .gpu/wheels, a training cache -> .gpu/data
#   bash benchmarks/gpu_session.sh           # there, from the repo root, with its own python3
#
# The GPU machine has its own python3 with torch + CUDA but no network, and lacks hydra-core,
# omegaconf, antlr4, roma and trimesh (tabulate, imageio: not known to be there, pure Python, so
# they travel too); its transformers predates the DINOv2 attention names the backbone uses
# (>= 5.18). TensorBoard is not known to be there either: the training phase logs to it only when
# it imports. `prepare` builds wheels of the versions this venv has; the session
# installs them with --no-deps into .gpu/site, first on PYTHONPATH. Every phase writes its log (and
# JSON) to $OUT as it ends, so a run cut short still leaves what it measured; the script exits 1
# when a phase failed.
# Environment: OUT (default runs/gpu), PYTHON (default python3), DEVICE (default cuda),
# PRESETS (default "vitl14 vitb14 vits14"), BATCH (default 1,256), PHASE_LIMIT_S (default 160),
# TRAIN_STEPS (default 300), RUN_TESTS=0 to skip the test, COMPILE=1 to time the compiled
# training step too (minutes of compilation), GPU_WHEELS / GPU_SITE / GPU_DATA for other folders.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu/wheels}
SITE=${GPU_SITE:-.gpu/site}
DATA=${GPU_DATA:-.gpu/data}
CARRIED="transformers hydra-core omegaconf antlr4-python3-runtime roma trimesh tabulate imageio"

if [ "${1:-}" = prepare ]; then
  VENV_PY=${VENV_PYTHON:-.venv/bin/python}
  specs=$("$VENV_PY" -c "
import importlib.metadata as m
print(' '.join(f'{p}=={m.version(p)}' for p in '$CARRIED'.split()))") || { echo "prepare: $VENV_PY cannot read the installed versions (make install first)"; exit 2; }
  if [ -n "$(find "$WHEELS" -mindepth 1 ! -name '*.whl' 2>/dev/null | head -1)" ]; then
    echo "prepare: $WHEELS holds files other than wheels; not replacing it"; exit 2
  fi
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # `pip wheel` also builds the pure-Python sdists (antlr4-python3-runtime ships no wheel)
  "$VENV_PY" -m pip wheel -q --no-deps -w "$WHEELS" $specs || exit 2
  # a small training cache (the demo's 96-px crops) for the GPU training phase: the synthetic
  # generator needs EGL / moderngl, which that machine lacks, so the cache travels, not the images
  if [ -n "$(ls -A "$DATA" 2>/dev/null)" ] && [ ! -d "$DATA/cache" ]; then
    echo "prepare: $DATA holds files this script did not write; not replacing it"; exit 2
  fi
  rm -rf "$DATA" && "$VENV_PY" -m amt synth "$DATA" --frames 400 --seed 0 > /dev/null \
    && "$VENV_PY" -m amt cache "$DATA" --split s0_train --size 96 --margin 2.0 --workers 2 > /dev/null || exit 2
  find "$DATA" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
  du -sh "$WHEELS" "$DATA"
  exit 0
fi

OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
PRESETS=${PRESETS:-vitl14 vitb14 vits14}
BATCH=${BATCH:-1,256}
LIMIT=${PHASE_LIMIT_S:-160}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl > "$OUT/wheels.log" 2>&1 \
    || echo "wheels: install failed (see wheels.log)" >> "$SUMMARY"
fi
export PYTHONPATH="$SITE:src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

FAILED=0
phase() {  # phase NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, note rc
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  [ $rc = 0 ] || FAILED=1
  echo "$name rc=$rc $(( $(date +%s) - start ))s $(date -u +%H:%M:%S)" | tee -a "$SUMMARY"
}

phase env 60 bash -c "date -u; nvidia-smi 2>&1 | head -15; $PY -c '
import sys, torch, transformers, hydra, roma
print(sys.version.split()[0], \"torch\", torch.__version__, \"transformers\", transformers.__version__,
      \"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\")
import importlib.util as u
print(\"missing:\", [m for m in \"scipy safetensors huggingface_hub yaml PIL imageio tqdm tensorboard matplotlib trimesh tabulate\".split() if u.find_spec(m) is None])'"

for preset in $PRESETS; do
  phase "bench_$preset" "$LIMIT" "$PY" -m amt bench --device "$DEVICE" --preset "$preset" --batch "$BATCH" --train \
    --json "$OUT/bench_$preset.json"
done

# the trainer on the device: GPU-resident cache, bf16 autocast (precision=auto), the demo's model;
# run twice: the second run finds the finished run and resumes it (nothing left to do). A new
# folder per session, so that nothing earlier is deleted and a rerun still trains from scratch.
CACHE="$DATA/cache/s0_train_96"
TRAIN_RUN="runs/gpu_train_$(date -u +%Y%m%d_%H%M%S)"
TENSORBOARD=$("$PY" -c "import tensorboard" > /dev/null 2>&1 && echo true || echo false)
if [ -d "$CACHE" ]; then
  train=(--config-name tiny model=tiny_conv "data.root=$DATA" "data.cache_dir=$CACHE" data.val_split=null
         data.image_size=96 model.image_size=96 model.num_queries=3 training.batch_size=32 "training.max_steps=${TRAIN_STEPS:-300}"
         training.precision=auto "training.device=$DEVICE" "training.output_dir=$TRAIN_RUN" training.log_every_steps=50 "logging.tensorboard=$TENSORBOARD")
  phase train 150 "$PY" -m amt train "${train[@]}"
  phase train_resume 60 "$PY" -m amt train "${train[@]}"
  phase bench_demo_model 120 "$PY" -m amt bench --device "$DEVICE" --checkpoint "$TRAIN_RUN/checkpoints/last" \
    --batch "$BATCH" --train --cache "$CACHE" --json "$OUT/bench_demo_model.json"
fi

# the test that skips without CUDA (the fast path's CUDA graphs against eager), with its module
if [ "${RUN_TESTS:-1}" = 1 ]; then
  phase cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -rs tests/inference/test_fastpath.py
fi

if [ "${COMPILE:-0}" = 1 ]; then
  first=${PRESETS%% *}
  phase "compiled_$first" 400 "$PY" -m amt bench --device "$DEVICE" --preset "$first" --batch "${BATCH##*,}" --train \
    --train-variants default,compiled --json "$OUT/compiled_$first.json"
fi
cat "$SUMMARY"
exit $FAILED
