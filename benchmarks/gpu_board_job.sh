#!/usr/bin/env bash
# Partial GPU leaderboard (first run 2026-11-30) (issue #13) on 2 GPUs, within $WALL seconds (default 540) of this script's start.
#
# Env HalfCheetah (Brax spring physics, episode length 1000), seed 0, budget 480 s per cell: the budget that
# docs/leaderboard.md fixes for the full GPU board, so every cell finished here is a cell of that board (resume
# keeps it). Two lanes, one GPU each, each writing its own folder; the end merges them into $R/board:
#   GPU A: eggroll (defaults)                                  ~490 s
#   GPU B: brax_ppo (Brax's halfcheetah recipe; it stops itself at its 50M env steps, ~200 s), then openes (full-rank
#          ES) until the lane's deadline. openes is killed there (~280 s into its 480 s budget): its evaluations up
#          to then are kept and the row is marked "killed"; the next GPU run reruns that cell in full.
#   alongside: evosax, recorded as skipped (not installed on this machine), in seconds, no GPU work.
# brax_es is left for the next run (marked missing): it is the peer with hand-measured numbers already (issue #13).
#
# Inputs (env): R (results folder, default /tmp/lb), OUT (folder that comes back), GPU_A / GPU_B (default 0 / 1),
# WALL (default 540), CPUS_A / CPUS_B (cores of each lane, default 0-15 / 16-31), LB_EXTRA (more harness flags,
# appended last, e.g. a CPU plumbing test: LB_EXTRA="--device cpu --backend torch --envs CartPole --budget-s 5").
# Put the tree's SHA in .board_sha before the run (no .git travels): git rev-parse HEAD > .board_sha
# Output: $OUT/board.tgz (tar of $R: gpu0/, gpu1/, evosax/, board/ with compare.md/.csv, runs.jsonl, cells.jsonl,
# board.json, HalfCheetah.png, and the logs), re-packed after every stage.
set -u
R=${R:-/tmp/lb}
OUT=${OUT:-/tmp/out}
GPU_A=${GPU_A:-0}
GPU_B=${GPU_B:-1}
WALL=${WALL:-540}
CPUS_A=${CPUS_A:-0-15}
CPUS_B=${CPUS_B:-16-31}
MERGE_S=20  # kept back at the end for the merge, the plot and the last tar
mkdir -p "$R" "$OUT"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( WALL - MERGE_S - ($(date +%s) - T0) )); }  # seconds a lane may still use
# lanes pack at once: each through its own temporary file
pack() { tar czf "$OUT/.board.$BASHPID" -C "$R" . 2>/dev/null && mv "$OUT/.board.$BASHPID" "$OUT/board.tgz"; }
export LEADERBOARD_GIT_SHA=${LEADERBOARD_GIT_SHA:-$(cat .board_sha 2>/dev/null || echo unknown)}
LB=(python3 benchmarks/leaderboard.py --tier gpu --envs HalfCheetah --seeds 1 --budget-s 480 --gpus 1 --no-plot)
read -r -a EXTRA <<< "${LB_EXTRA:-}"  # appended after the agent, so they win
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv > "$R/nvidia-smi.csv" 2>&1
nproc > "$R/nproc.txt"

# run_cells LANE AGENT CPUS: one harness invocation, its cell killed 15 s before the lane's deadline and the
# harness itself 10 s after that (so it still writes the cell's record).
run_cells() {
  local lane=$1 agent=$2 cpus=$3 t
  t=$(left)
  if [ "$t" -lt 60 ]; then el "$lane: no time left for $agent"; return; fi
  el "$lane: $agent (cell limit $((t - 15)) s)"
  timeout $((t - 5)) taskset -c "$cpus" "${LB[@]}" --agents "$agent" "${EXTRA[@]}" --timeout-s $((t - 15)) \
    --out "$R/$lane" \
    > "$R/${lane}_$agent.log" 2>&1
  el "$lane: $agent exit $?"; grep -E "^\[|cells:" "$R/${lane}_$agent.log" | tail -n 3
  pack
}

( export CUDA_VISIBLE_DEVICES=$GPU_A; run_cells gpu0 eggroll "$CPUS_A" ) &
( export CUDA_VISIBLE_DEVICES=$GPU_B; run_cells gpu1 brax_ppo "$CPUS_B"; run_cells gpu1 openes "$CPUS_B" ) &
( export CUDA_VISIBLE_DEVICES=$GPU_B; timeout 120 taskset -c "${CPUS_B##*-}" "${LB[@]}" --agents evosax \
    "${EXTRA[@]}" --out "$R/evosax" > "$R/evosax.log" 2>&1; el "evosax exit $?" ) &
wait

el merge
PARTS=()
for d in gpu0 gpu1 evosax; do [ -f "$R/$d/cells.jsonl" ] && PARTS+=("$R/$d"); done
if [ ${#PARTS[@]} -gt 0 ]; then
  timeout $((MERGE_S - 5)) python3 benchmarks/leaderboard.py --tier gpu --envs HalfCheetah --merge "${PARTS[@]}" \
    --out "$R/board" > "$R/merge.log" 2>&1
  el "merge exit $?"
fi
sed -n '/^| env/,/^## Curves/p' "$R/board/compare.md"
pack
el done
