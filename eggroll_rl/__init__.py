"""eggroll_rl: EGGROLL low-rank evolution strategies for reinforcement learning on GPUs (PyTorch + Triton)."""

from .module import ESModule
from .strategy import EggrollStrategy, PerturbationContext

__all__ = ["EggrollStrategy", "PerturbationContext", "ESModule"]
__version__ = "0.1.0"
