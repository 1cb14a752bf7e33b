"""eggroll_rl: EGGROLL low-rank evolution strategies for reinforcement learning on GPUs (PyTorch + Triton)."""

from .module import ESModule
from .strategy import EggrollStrategy, PerturbationContext

__all__ = ["EggrollStrategy", "PerturbationContext", "ESModule", "EGGROLLTrainer", "eggroll_step"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The supervised trainer lives in the agents subpackage; import it on first use.
    if name in ("EGGROLLTrainer", "eggroll_step"):
        from .agents import supervised

        return getattr(supervised, name)
    raise AttributeError(f"module 'eggroll_rl' has no attribute {name!r}")
