"""A ``torchrun`` worker for tests/agents/test_distributed_training.py: ``train()`` on every rank, with a fault.

    torchrun --standalone --nproc-per-node 2 distributed_worker.py MODE OUT_DIR

MODE ``raise``: rank 1 raises after generation 2 (the others must end too). MODE ``mismatch``: rank 1 starts with
another seed (every rank must refuse). Each rank writes the error it ended with to ``OUT_DIR/rank<R>.txt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from eggroll_rl.agents import TrainConfig
from eggroll_rl.agents.trainer import train


class InjectedFault(RuntimeError):
    pass


def main() -> int:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    config = TrainConfig.for_env(
        "CartPole", device="cpu", population=8, hidden_sizes=(8,), generations=50, eval_every=0, eval_episodes=2,
        seed=1 if (mode == "mismatch" and rank == 1) else 0, tensorboard=False,
    )  # fmt: skip

    def fault(record: dict) -> None:
        if mode == "raise" and rank == 1 and record["generation"] == 2:
            raise InjectedFault("injected fault on rank 1 at generation 2")

    try:
        train(config, progress_fn=fault)
    except Exception as exc:
        (out / f"rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise
    (out / f"rank{rank}.txt").write_text("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
