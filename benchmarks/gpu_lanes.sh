#!/usr/bin/env bash
# Leaderboard lanes for one device call (issue #13): one lane per GPU, each with its GPU and an equal share of the
# machine's cores (16 each on the lent H200 kinds), from one H200 up to eight.
#
#   git rev-parse HEAD > .board_sha     # before the call: no .git travels to the GPU machine
#   LANE0="--envs Ant --agents eggroll --only-seeds 1" LANE1="--envs Ant --agents eggroll --only-seeds 2" \
#     BASE=benchmarks/results/leaderboard/gpu_h200 RDIR=/tmp/lanes DEADLINE=545 bash benchmarks/gpu_lanes.sh
#
# Each lane runs `leaderboard.py --tier gpu --seeds 3 --gpus 1 --budget-s 480 --deadline-s $DEADLINE` with its own
# extra arguments (LANE0 ... LANE7, on GPUs 0 ... 7; an empty or unset one is not run) into $RDIR/laneN, resuming
# from $BASE's cells.jsonl and runs.jsonl (copied in first, so a finished cell is not rerun; not again into a lane
# folder an earlier call on the same machine left, whose records already include them). $OUT/lanes.tgz (the whole
# of $RDIR) is re-packed every 30 s and as each lane ends. Fold the lanes back with:
#   python benchmarks/leaderboard.py --merge <dir>/lane0 <dir>/lane1 ... --out benchmarks/results/leaderboard/gpu_h200
# Lanes that run the same env and agent must split its seeds with --only-seeds (each starts from the same board).
set -u
RDIR=${RDIR:-/tmp/lanes}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-540}; mkdir -p "$RDIR" "$OUT"
export LEADERBOARD_GIT_SHA=${LEADERBOARD_GIT_SHA:-$(cat .board_sha 2>/dev/null || echo unknown)}
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
pack() { tar czf "$OUT/.p$BASHPID" -C "$RDIR" . 2>/dev/null && mv "$OUT/.p$BASHPID" "$OUT/lanes.tgz"; }
nvidia-smi > "$RDIR/nvidia-smi.txt" 2>&1
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); [ "${GPUS:-0}" -gt 0 ] || GPUS=1
CORES=$(nproc); PER=$(( CORES / GPUS > 0 ? CORES / GPUS : 1 ))
lane() {
  local n=$1 cpus=$2; shift 2
  mkdir -p "$RDIR/lane$n"
  # a lane folder left by an earlier call on the same (still warm) machine keeps its cells: the last lanes.tgz then
  # holds every cell of the session, not only the last call's
  if [ -n "${BASE:-}" ] && [ ! -f "$RDIR/lane$n/cells.jsonl" ]; then
    cp "$BASE"/cells.jsonl "$BASE"/runs.jsonl "$RDIR/lane$n/" 2>/dev/null
  fi
  el "lane$n (GPU $n, cores $cpus): $*"
  CUDA_VISIBLE_DEVICES=$n taskset -c "$cpus" python3 benchmarks/leaderboard.py --tier gpu --seeds 3 --gpus 1 \
    --budget-s 480 --deadline-s "$DEADLINE" --no-plot --out "$RDIR/lane$n" "$@" > "$RDIR/lane$n.log" 2>&1
  el "lane$n exit $?"; grep -E "^\[|cells:" "$RDIR/lane$n.log" | tail -n 4; pack
}
# re-pack every 30 s too: if the machine is taken back mid-cell, the streamed evaluations still come back, and
# `leaderboard.py --merge` records such a cell (recover_killed_cells)
( while sleep 30; do pack; done ) >/dev/null 2>&1 & PACKER=$!
LANES=()
for n in 0 1 2 3 4 5 6 7; do
  var="LANE$n"; read -r -a ARGS <<< "${!var:-}"
  [ ${#ARGS[@]} -gt 0 ] || continue
  if [ "$n" -ge "$GPUS" ]; then el "lane$n: not run, this machine has $GPUS GPU(s)"; continue; fi
  lane "$n" "$(( n * PER ))-$(( n * PER + PER - 1 ))" "${ARGS[@]}" & LANES+=($!)
done
[ ${#LANES[@]} -gt 0 ] && wait "${LANES[@]}"
pkill -P "$PACKER" 2>/dev/null; kill "$PACKER" 2>/dev/null; pack; el done
