"""Optimizer steps in one pass over a parameter: plain ascent ``p = beta p + alpha g`` and Adam/AdamW.

``step()`` of the strategy hands each parameter's ES gradient here instead of to ``torch.optim`` when the optimizer
is one it knows (plain ascent, SGD without momentum, Adam, AdamW; see ``EggrollStrategy._own_rule``): torch's step
makes several passes over the parameter and its state (and the strategy made more: the negated gradient, a copy of
the weights to measure the change, the rounded copy of a float32 master). Each kernel here reads the gradient, the
parameter and the state once and writes them once, and in the same pass

* applies a gradient scale read from device memory (the ``grad_clip`` factor: no host sync to decide it);
* writes the result rounded to a second tensor (a bf16/fp16 model's parameter, from its float32 master copy);
* sums ``(p_new - p_old)^2`` per program, so ``update_norm`` is the measured change at no extra pass.

The math is torch's, operation for operation (``torch.optim.Adam``'s ``lerp_``, ``mul_``/``addcmul_``, ``sqrt``,
division by the bias correction, ``add_(eps)``, ``addcdiv_``); results match ``torch.optim`` to float32 rounding
(the kernel may contract a multiply-add into one FMA). ``adam_math`` is also the epilogue of
``update.lowrank_adam_kernel`` (Adam fused into the update's GEMM). Each op has a Triton version (``*_triton``,
contiguous CUDA tensors) and a pure-torch twin (``*_reference``, any device and layout) with the same arguments.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._launch import FLOAT_DTYPES, tl, triton
from .rounding import ROUNDING_DTYPES, stochastic_round_reference

# Elements per program and warps: a streaming kernel (4 to 5 tensors in, 3 to 4 out), 8 elements per thread.
STEP_BLOCK = 1024
STEP_WARPS = 4
# Adam's weight decay, the kernels' WEIGHT_DECAY meta-parameter.
WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2


class AdamStep(NamedTuple):
    """One Adam step's hyperparameters, as ``torch.optim.Adam`` holds them in a param group and its state.

    ``step`` is the count after this step (torch's ``state["step"]``, already incremented); ``grad_sign`` turns the
    ES gradient (ascent direction) into the ``p.grad`` of a loss (``-1``; ``+1`` is torch's ``maximize=True`` flip
    of that ``p.grad``); ``decoupled`` is AdamW's weight decay.
    """

    step: float
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    grad_sign: float = -1.0

    @property
    def weight_decay_mode(self) -> int:
        return WD_NONE if self.weight_decay == 0 else (WD_DECOUPLED if self.decoupled else WD_L2)

    def scalars(self) -> tuple[float, ...]:
        """The kernels' scalar arguments, computed on the host in double precision as torch does."""
        bias_correction1 = 1 - self.beta1**self.step
        bias_correction2 = 1 - self.beta2**self.step
        values = (
            self.grad_sign, 1 - self.beta1, self.beta2, 1 - self.beta2, self.eps, self.weight_decay,
            1 - self.lr * self.weight_decay, -(self.lr / bias_correction1), bias_correction2**0.5,
        )  # fmt: skip
        return tuple(float(v) for v in values)  # float kernel arguments (an int would compile as i32)


@triton.jit
def adam_math(
    p,
    g,
    m,
    v,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    decay,
    neg_step_size,
    bias_correction2_sqrt,
    WEIGHT_DECAY: tl.constexpr,
):
    """torch.optim.Adam's step on float32 blocks: ``g`` is the loss gradient; returns ``(p, m, v)`` updated."""
    if WEIGHT_DECAY == 1:
        g = g + weight_decay * p
    if WEIGHT_DECAY == 2:
        p = p * decay
    # torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2
    v = v + one_minus_beta2 * g * g
    # torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps); param.addcdiv_(exp_avg, denom, -step)
    denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
    p = p + neg_step_size * tl.div_rn(m, denom)
    return p, m, v


@triton.jit
def ascent_step_kernel(
    # pointers
    p_ptr,  # (NUMEL,) parameter, updated in place
    g_ptr,  # (NUMEL,) gradient (ascent direction)
    copy_ptr,  # (NUMEL,) the new parameter rounded to this tensor's dtype (HAS_COPY)
    scale_ptr,  # () float32 gradient scale (HAS_SCALE)
    sq_ptr,  # (programs,) float32 out: sum of (p_new - p_old)^2 per program
    # dimensions
    NUMEL,
    # scalars
    alpha,
    beta,
    # meta-parameters
    HAS_SCALE: tl.constexpr,
    HAS_COPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    p = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr)
    new = beta * p + alpha * g
    stored = new.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, stored, mask=ok)
    if HAS_COPY:
        tl.store(copy_ptr + offs, new.to(copy_ptr.dtype.element_ty), mask=ok)
    d = tl.where(ok, stored.to(tl.float32) - p, 0.0)
    tl.store(sq_ptr + pid, tl.sum(d * d, axis=0))


@triton.jit
def adam_step_kernel(
    # pointers
    p_ptr,  # (NUMEL,) parameter, updated in place
    g_ptr,  # (NUMEL,) ES gradient (ascent direction); the loss gradient is grad_sign * scale * g
    m_ptr,  # (NUMEL,) exp_avg, updated in place
    v_ptr,  # (NUMEL,) exp_avg_sq, updated in place
    copy_ptr,  # (NUMEL,) the new parameter rounded to this tensor's dtype (HAS_COPY)
    scale_ptr,  # () float32 gradient scale (HAS_SCALE)
    sq_ptr,  # (programs,) float32 out: sum of (p_new - p_old)^2 per program
    # dimensions
    NUMEL,
    # scalars: AdamStep.scalars()
    grad_sign,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    decay,
    neg_step_size,
    bias_correction2_sqrt,
    # meta-parameters
    WEIGHT_DECAY: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_COPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    p0 = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32) * grad_sign
    m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr)
    p, m, v = adam_math(
        p0, g, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, neg_step_size,
        bias_correction2_sqrt, WEIGHT_DECAY,
    )  # fmt: skip
    stored = p.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, stored, mask=ok)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=ok)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=ok)
    if HAS_COPY:
        tl.store(copy_ptr + offs, p.to(copy_ptr.dtype.element_ty), mask=ok)
    d = tl.where(ok, stored.to(tl.float32) - p0, 0.0)
    tl.store(sq_ptr + pid, tl.sum(d * d, axis=0))


# --- launchers ---------------------------------------------------------------------------------------------------


def check_step_args(param: torch.Tensor, grad: torch.Tensor | None, copy: torch.Tensor | None, scale, *state):
    """Every tensor has ``param``'s shape and device; ``scale`` is None or one element."""
    for name, t in (("grad", grad), ("copy", copy), *((f"state[{i}]", s) for i, s in enumerate(state))):
        if t is not None and (t.shape != param.shape or t.device != param.device):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} on {t.device}; expected the parameter's {tuple(param.shape)} "
                f"on {param.device}"
            )
    if scale is not None and (not isinstance(scale, torch.Tensor) or scale.numel() != 1):
        raise ValueError(f"scale must be a one-element tensor or None, got {scale!r}")


def steppable(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton steps can take these tensors: contiguous (the kernels walk memory in order) and of a dtype
    they compute in float32 (a float64 parameter takes the twin, which steps it in float64 as torch.optim does)."""
    return all(t is None or (t.is_contiguous() and t.dtype in FLOAT_DTYPES) for t in tensors)


def _compute_dtype(param: torch.Tensor) -> torch.dtype:
    """The twins' arithmetic dtype: float32, or float64 for a float64 parameter (torch.optim's, never narrower)."""
    return torch.promote_types(param.dtype, torch.float32)


def _launch_step(kernel, param, tensors, scale, copy, scalars, **meta) -> torch.Tensor:
    numel = param.numel()
    programs = max(1, triton.cdiv(numel, STEP_BLOCK))
    sq = torch.zeros(programs, dtype=torch.float32, device=param.device)
    if numel == 0:
        return sq.sum()
    scale_arg = scale.reshape(()).to(torch.float32) if scale is not None else sq  # sq: an unread stand-in
    kernel[(programs,)](
        param, *tensors, copy if copy is not None else param, scale_arg, sq, numel, *scalars,
        HAS_SCALE=scale is not None, HAS_COPY=copy is not None, BLOCK=STEP_BLOCK, num_warps=STEP_WARPS, **meta,
    )  # fmt: skip
    return sq.sum()


def ascent_step_triton(
    param: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: float,
    beta: float = 1.0,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of ``ascent_step_reference`` (contiguous tensors)."""
    check_step_args(param, grad, copy, scale)
    if not steppable(param, grad, copy):
        raise ValueError("ascent_step_triton needs contiguous float32/bf16/fp16 tensors; use ascent_step_reference")
    return _launch_step(ascent_step_kernel, param, (grad,), scale, copy, (float(alpha), float(beta)))


def adam_step_triton(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    hyper: AdamStep,
    *,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of ``adam_step_reference`` (contiguous tensors)."""
    check_step_args(param, grad, copy, scale, exp_avg, exp_avg_sq)
    if not steppable(param, grad, exp_avg, exp_avg_sq, copy):
        raise ValueError("adam_step_triton needs contiguous float32/bf16/fp16 tensors; use adam_step_reference")
    return _launch_step(
        adam_step_kernel, param, (grad, exp_avg, exp_avg_sq), scale, copy, hyper.scalars(),
        WEIGHT_DECAY=hyper.weight_decay_mode,
    )  # fmt: skip


# --- pure-torch twins --------------------------------------------------------------------------------------------


def _finish(param: torch.Tensor, new: torch.Tensor, copy: torch.Tensor | None) -> torch.Tensor:
    """Write ``new`` (``_compute_dtype``) into ``param`` and ``copy``; return the measured ``sum (p_new - p_old)^2``
    (float32)."""
    dtype = _compute_dtype(param)
    old = param.detach().to(dtype, copy=True)
    param.copy_(new)
    if copy is not None:
        copy.copy_(new)
    return (param.to(dtype) - old).square().sum().float()


def ascent_step_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: float,
    beta: float = 1.0,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
    round_keys: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``param = beta * param + alpha * scale * grad`` in place (float32 arithmetic, float64 for a float64
    ``param``; one rounding to ``param``'s dtype: to nearest, or stochastically into a bf16 ``param`` with
    ``round_keys``, ``rounding.stochastic_round_reference``).

    Args:
        param: any float tensor; grad: its shape (float32 in practice).
        alpha, beta: ``lr`` and ``1 - lr * weight_decay`` for plain ascent / SGD without momentum.
        scale: optional one-element float32 tensor (e.g. the ``grad_clip`` factor), read on the device.
        copy: optional tensor of ``param``'s shape that receives the result rounded to its own dtype.
    Returns:
        ``sum((param_new - param_old)^2)``, 0-d float32 (the measured change).
    """
    check_step_args(param, grad, copy, scale)
    dtype = _compute_dtype(param)
    g = grad.to(dtype) if scale is None else grad.to(dtype) * scale.reshape(()).to(dtype)
    new = param.to(dtype) * beta + g * alpha if beta != 1 else param.to(dtype) + g * alpha
    if round_keys is not None:
        check_stochastic_target(param, copy)
        new = stochastic_round_reference(new, round_keys)
    return _finish(param, new, copy)


def check_stochastic_target(param: torch.Tensor, copy: torch.Tensor | None) -> None:
    """Stochastic rounding writes a bf16 parameter in place, with no copy beside it."""
    if param.dtype not in ROUNDING_DTYPES:
        raise ValueError(
            f"stochastic rounding (round_keys) writes bfloat16 parameters; got param of dtype {param.dtype}"
        )
    if copy is not None:
        raise ValueError("stochastic rounding (round_keys) updates the parameter in place; copy must be None")


def adam_step_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    hyper: AdamStep,
    *,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``torch.optim.Adam`` step (AdamW with ``hyper.decoupled``) of ``param`` given the ES gradient ``grad``,
    with ``p.grad = hyper.grad_sign * scale * grad``.

    Args:
        param: the float32 (or float64) tensor Adam updates (a master copy, or the parameter); ``exp_avg``,
            ``exp_avg_sq``: its state, updated in place.
        grad: the ES gradient (ascent direction).
        hyper: the step count and the param group's values.
        scale, copy: as in ``ascent_step_reference``.
    Returns:
        ``sum((param_new - param_old)^2)``, 0-d float32.
    """
    check_step_args(param, grad, copy, scale, exp_avg, exp_avg_sq)
    dtype = _compute_dtype(param)
    g = grad.to(dtype) * hyper.grad_sign
    if scale is not None:
        g = g * scale.reshape(()).to(dtype)
    p = param.detach().to(dtype).clone()
    if hyper.weight_decay != 0:
        if hyper.decoupled:
            p.mul_(1 - hyper.lr * hyper.weight_decay)
        else:
            g = g.add(p, alpha=hyper.weight_decay)
    exp_avg.lerp_(g, 1 - hyper.beta1)
    exp_avg_sq.mul_(hyper.beta2).addcmul_(g, g, value=1 - hyper.beta2)
    denom = (exp_avg_sq.sqrt() / (1 - hyper.beta2**hyper.step) ** 0.5).add_(hyper.eps)
    p.addcdiv_(exp_avg, denom, value=-(hyper.lr / (1 - hyper.beta1**hyper.step)))
    return _finish(param, p, copy)
