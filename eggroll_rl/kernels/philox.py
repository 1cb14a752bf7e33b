"""The noise contract of ``eggroll_rl.noise`` in Triton: Philox4x32-10 (-7 for ``gaussian_fast``) and its
transforms, in registers.

Every helper here reproduces the pure-torch reference bit for bit on the raw 32-bit words and to float rounding on
the normals (``FAST_MATH`` uses the special-function unit's approximations; see ``_box_muller_uniform`` for the error
budget). Blocks of noise are produced for several noise indices at once: ``j`` is a ``(P,)`` tensor and the result is
``(P, NCOL)`` elements ``e0 .. e0 + NCOL - 1`` of one stream.

The other kernels call ``column_block`` (a factor column) and ``vector_block`` (the vector stream); kernels that
walk the rows of a Rademacher factor or vector use ``sign_words_next`` (one call per thread for up to 128 signs,
kept in registers across blocks) and ``quad_signs``; kernels that walk the rank columns of a ``gaussian_fast``
factor use ``fast_pair_block`` (one call per thread for a quad of rows of two columns). Whole streams
(``stream_words_triton``, ``noise_stream_triton``) are for tests and tools; their twins are ``noise.stream_words``
and ``noise_stream_reference`` (``noise.py``'s streams).
"""

from __future__ import annotations

import torch

from .. import noise as _noise
from ._launch import FAST_MATH, as_i32, check_ids, noise_code, tl, triton

# Philox4x32 constants (Salmon et al. 2011); literals in [2^31, 2^32) are typed uint32 by Triton.
_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)
SIGN_SPAN = tl.constexpr(_noise.SIGN_SPAN)
FACTOR_SPANS = tl.constexpr(_noise.SPANS_PER_CALL_FACTOR)  # spans a Rademacher call holds: factor column group
VECTOR_SPANS = tl.constexpr(_noise.SPANS_PER_CALL_VECTOR)  # ... vector noise
PHILOX_ROUNDS = _noise.PHILOX_ROUNDS  # the default of the ROUNDS meta-parameters below
FAST_ROUNDS = tl.constexpr(_noise.FAST_PHILOX_ROUNDS)  # gaussian_fast


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1, ROUNDS: tl.constexpr = PHILOX_ROUNDS):
    """``ROUNDS`` Philox rounds (the contract's 10; 7 for ``gaussian_fast``) on uint32 tensors (broadcastable);
    ``k0``/``k1`` uint32 scalars. Returns the 4 words."""
    for _ in tl.static_range(ROUNDS):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _uniform(x):
    # (2 * (x >> 9) + 1) * 2^-24, exactly: 1 + k 2^-23 built from bits, minus (1 - 2^-24); no int->float convert.
    f = ((x >> 9) | 0x3F800000).to(tl.float32, bitcast=True)
    return f - 0.99999994039535522


@triton.jit
def _lg2(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        return tl.inline_asm_elementwise(
            "lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.log2(x)


@triton.jit
def _sin(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        return tl.inline_asm_elementwise(
            "sin.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.sin(x)


@triton.jit
def _cos(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        return tl.inline_asm_elementwise(
            "cos.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.cos(x)


@triton.jit
def _uniform16_lo(x):
    # gaussian_fast: the low half h as (2 h + 1) * 2^-17, exactly: 1 + h 2^-16 from bits, minus (1 - 2^-17)
    f = (((x & 0xFFFF) << 7) | 0x3F800000).to(tl.float32, bitcast=True)
    return f - 0.99999237060546875


@triton.jit
def _uniform16_hi(x):
    # ... the high half: bits 16..31 moved to the mantissa's top 16 bits (x >> 9, low 7 bits cleared)
    f = (((x >> 9) & 0x7FFF80) | 0x3F800000).to(tl.float32, bitcast=True)
    return f - 0.99999237060546875


@triton.jit
def _box_muller(xa, xb, FAST_MATH: tl.constexpr):
    """Two normals from two words, per noise.py: ``sqrt(-2 ln u_a) * (cos, sin)(pi (2 u_b - 1))``."""
    return _box_muller_uniform(_uniform(xa), _uniform(xb), FAST_MATH)


@triton.jit
def _box_muller16(x, FAST_MATH: tl.constexpr):
    """``gaussian_fast``: two normals from one word, the radius from its low half, the angle from its high half."""
    return _box_muller_uniform(_uniform16_lo(x), _uniform16_hi(x), FAST_MATH)


@triton.jit
def _box_muller_uniform(ua, ub, FAST_MATH: tl.constexpr):
    """Two normals from two uniforms on (0, 1) of the form ``(2k+1) 2^-24`` or ``(2k+1) 2^-17``.

    Error budget with FAST_MATH: lg2.approx has an *absolute* error near 2^-22.6 on (0.5, 1), ruinous when
    ``u_a -> 1`` (the log is tiny). There, ``v = 1 - u_a`` is exact and ``-2 ln(1 - v) = 2v + v^2 + 2v^3/3 + ...``
    is cut after ``v^2`` for ``v < 2^-8`` (relative error < v^2/3 < 6e-6 on the squared radius, < 2e-7 on a normal).
    For ``v >= 2^-8`` the log's error is < 2.2e-7 on ``rad^2 >= 2^-7``: < 2e-6 on a normal. sin/cos.approx add
    < 2^-20.5 * 5.8 (largest radius) < 4e-6. The ``.ftz`` forms skip denormal handling: no input here is denormal.
    The 16-bit uniforms of ``gaussian_fast`` are among these values (``v >= 2^-17``): the same budget holds.
    """
    v = 1.0 - ua  # exact: ua = (2k+1) 2^-24 or (2k+1) 2^-17
    series = v * (2.0 + v)
    minus2ln = -1.3862943611198906 * _lg2(ua, FAST_MATH)  # -2 ln(2) log2(u)
    rad = tl.sqrt(tl.where(v < 0.00390625, series, minus2ln))
    theta = 3.1415926535897931 * (2.0 * ub - 1.0)
    return rad * _cos(theta, FAST_MATH), rad * _sin(theta, FAST_MATH)


@triton.jit
def stream_words(k0, k1, j, t_eff, c3, e0, P: tl.constexpr, NB: tl.constexpr, ROUNDS: tl.constexpr = PHILOX_ROUNDS):
    """Words of calls ``c0 = e0 + 0..NB-1`` for ``P`` noise indices ``j``: four ``(P, NB)`` uint32 tensors."""
    blk = (e0 + tl.arange(0, NB)).to(tl.uint32)
    c0 = tl.zeros([P, NB], dtype=tl.uint32) + blk[None, :]
    c1 = tl.zeros([P, NB], dtype=tl.uint32) + j.to(tl.uint32)[:, None]
    c2 = tl.zeros([P, NB], dtype=tl.uint32) + t_eff
    c3b = tl.zeros([P, NB], dtype=tl.uint32) + c3
    return philox4x32(c0, c1, c2, c3b, k0, k1, ROUNDS)


@triton.jit
def gaussian_block(k0, k1, j, t_eff, c3, e0, P: tl.constexpr, NCOL: tl.constexpr, FAST_MATH: tl.constexpr):
    """Normals ``e0 .. e0+NCOL-1`` (``e0 % 4 == 0``) of stream ``c3`` for each of ``P`` noise indices: (P, NCOL)."""
    x0, x1, x2, x3 = stream_words(k0, k1, j, t_eff, c3, e0 // 4, P, NCOL // 4)
    z0, z1 = _box_muller(x0, x1, FAST_MATH)
    z2, z3 = _box_muller(x2, x3, FAST_MATH)
    # element 4b + w is z_w of call b; join adds a trailing axis, so (P, NCOL/4, 2, 2)[..., q, p] = z_{2q+p}
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    return tl.reshape(z, [P, NCOL])


@triton.jit
def fast_pair_block(
    k0, k1, j, t_eff, stream, g, e0, P: tl.constexpr, NCOL: tl.constexpr, FAST_MATH: tl.constexpr
):  # fmt: skip
    """``gaussian_fast``: rows ``e0 .. e0+NCOL-1`` (``e0 % 4 == 0``) of factor columns ``2g`` and ``2g+1`` of
    ``stream`` (0: A, 1: B) for ``P`` noise indices, two ``(P, NCOL)`` float32: one call per quad of rows, its words
    ``x_0, x_1`` for the first column, ``x_2, x_3`` for the second (``noise.fast_normal_stream``)."""
    x0, x1, x2, x3 = stream_words(k0, k1, j, t_eff, (stream << 16) | g, e0 // 4, P, NCOL // 4, FAST_ROUNDS)
    z0, z1 = _box_muller16(x0, FAST_MATH)
    z2, z3 = _box_muller16(x1, FAST_MATH)
    z4, z5 = _box_muller16(x2, FAST_MATH)
    z6, z7 = _box_muller16(x3, FAST_MATH)
    # as gaussian_block: (P, NCOL/4, 2, 2)[..., q, p] = the quad's element 2q + p
    za = tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [P, NCOL])
    zb = tl.reshape(tl.join(tl.join(z4, z6), tl.join(z5, z7)), [P, NCOL])
    return za, zb


@triton.jit
def fast_vector_block(k0, k1, j, t_eff, e0, P: tl.constexpr, NCOL: tl.constexpr, FAST_MATH: tl.constexpr):
    """``gaussian_fast``: elements ``e0 .. e0+NCOL-1`` (``e0 % 4 == 0``) of the vector stream for ``P`` noise indices,
    ``(P, NCOL)`` float32: one call per 4 consecutive elements, from its words ``x_0, x_1`` (``x_2, x_3`` unused), in
    the 4-a-thread layout of the factor blocks (no shuffle): factor column 0 of stream 2 (the compiler drops the
    unused column 1)."""
    z, _ = fast_pair_block(k0, k1, j, t_eff, 2, 0, e0, P, NCOL, FAST_MATH)
    return z


@triton.jit
def sign_words(k0, k1, j, t_eff, c3, e0, P: tl.constexpr, NQ: tl.constexpr, SPANS: tl.constexpr):
    """The call that holds each quad of elements ``e0 .. e0 + 4 NQ - 1`` (``e0 % 4 == 0``) of a Rademacher stream
    whose calls hold ``SPANS`` spans (8: a factor's column group, 32: vector noise), for ``P`` noise indices: its
    four words, ``(P, NQ)`` uint32 each (``noise.sign_position``)."""
    e = (e0 + 4 * tl.arange(0, NQ)).to(tl.uint32)  # unsigned: the powers of two divide by shifting
    blk = (e // (SPANS * SIGN_SPAN)) * (SIGN_SPAN // 4) + (e % SIGN_SPAN) // 4
    c0 = tl.zeros([P, NQ], dtype=tl.uint32) + blk[None, :]
    c1 = tl.zeros([P, NQ], dtype=tl.uint32) + j.to(tl.uint32)[:, None]
    c2 = tl.zeros([P, NQ], dtype=tl.uint32) + t_eff
    c3b = tl.zeros([P, NQ], dtype=tl.uint32) + c3
    return philox4x32(c0, c1, c2, c3b, k0, k1)


@triton.jit
def sign_words_next(
    x0, x1, x2, x3, k0, k1, j, t_eff, c3, e0, P: tl.constexpr, NQ: tl.constexpr, SPANS: tl.constexpr
):  # fmt: skip
    """``sign_words`` for block ``e0`` of a loop over consecutive blocks of ``4 NQ`` elements from element 0, given
    the previous block's words ``x0 .. x3``. A block of a span or more holds the same quads of every span it
    covers, so the words change only where a new run of ``SPANS`` spans starts: one call per thread per
    ``SPANS * SIGN_SPAN`` elements instead of one per block."""
    if 4 * NQ < SIGN_SPAN:
        x0, x1, x2, x3 = sign_words(k0, k1, j, t_eff, c3, e0, P, NQ, SPANS)
    else:
        if e0 == (e0 // (SPANS * SIGN_SPAN)) * (SPANS * SIGN_SPAN):  # (no int % constexpr in the interpreter)
            x0, x1, x2, x3 = sign_words(k0, k1, j, t_eff, c3, e0, P, NQ, SPANS)
    return x0, x1, x2, x3


@triton.jit
def sign_spans(e0, NQ: tl.constexpr):
    """The span of each quad of elements ``e0 .. e0 + 4 NQ - 1``: ``(NQ,)`` uint32."""
    return (e0 + 4 * tl.arange(0, NQ)).to(tl.uint32) // SIGN_SPAN


@triton.jit
def quad_signs(word, span, P: tl.constexpr, NQ: tl.constexpr):
    """Signs of the quads whose words are ``word`` ``(P, NQ)`` and whose spans are ``span`` ``(NQ,)``: bits
    ``4 (span % 8) .. + 3``, float32 ``(P, 4 NQ)``; element ``4 q + l`` is ``+1`` if its bit is set, else ``-1``."""
    b = word >> (4 * (span % 8))[None, :]  # a word holds a quad of 8 spans
    # bit l moved to the float's sign bit: 0x3F800000 (+1.0) if set, 0xBF800000 (-1.0) if clear
    s0 = (((b << 31) & 0x80000000) ^ 0xBF800000).to(tl.float32, bitcast=True)
    s1 = (((b << 30) & 0x80000000) ^ 0xBF800000).to(tl.float32, bitcast=True)
    s2 = (((b << 29) & 0x80000000) ^ 0xBF800000).to(tl.float32, bitcast=True)
    s3 = (((b << 28) & 0x80000000) ^ 0xBF800000).to(tl.float32, bitcast=True)
    # join adds a trailing axis: (P, NQ, 2, 2)[..., h, l] = s_{2h+l}, as in gaussian_block
    z = tl.join(tl.join(s0, s2), tl.join(s1, s3))
    return tl.reshape(z, [P, 4 * NQ])


@triton.jit
def vector_word(x0, x1, x2, x3, span):
    """The word of vector noise among a call's four (``x_{(span % 32) // 8}``), per quad (``span``: ``(NQ,)``)."""
    w = ((span % 32) // 8)[None, :]
    return tl.where(w == 0, x0, tl.where(w == 1, x1, tl.where(w == 2, x2, x3)))


@triton.jit
def pick_word(x0, x1, x2, x3, W: tl.constexpr):
    """Word ``x_W`` for a compile-time ``W`` (a factor's column ``c`` is ``x_{c % 4}``)."""
    w = x3
    if W == 0:
        w = x0
    if W == 1:
        w = x1
    if W == 2:
        w = x2
    return w


@triton.jit
def pick_pair(za, zb, H: tl.constexpr):
    """Column ``2g + H`` of a ``fast_pair_block`` pair for a compile-time ``H``."""
    z = zb
    if H == 0:
        z = za
    return z


@triton.jit
def column_block(
    k0, k1, j, t_eff, stream, c, e0, P: tl.constexpr, NCOL: tl.constexpr, NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
):  # fmt: skip
    """Rows ``e0 .. e0+NCOL-1`` of factor column ``c`` of ``stream`` (0: A, 1: B) for ``P`` noise indices, float32
    ``(P, NCOL)`` (``NOISE``: 0 Gaussian, 1 Rademacher, 2 Gaussian-fast; ``e0 % 4 == 0``). Kernels that walk the
    rows of up to four Rademacher columns use ``sign_words_next`` and ``quad_signs`` instead (one call for the
    group's columns, kept for 8 spans); kernels that walk Gaussian-fast columns take both columns of a pair from
    ``fast_pair_block`` (this helper uses half of each call)."""
    if NOISE == 0:
        return gaussian_block(k0, k1, j, t_eff, (stream << 16) | c, e0, P, NCOL, FAST_MATH)
    elif NOISE == 2:
        x0, x1, x2, x3 = stream_words(k0, k1, j, t_eff, (stream << 16) | (c // 2), e0 // 4, P, NCOL // 4, FAST_ROUNDS)
        first = c % 2 == 0  # words x0, x1 hold column 2g, x2, x3 column 2g + 1
        z0, z1 = _box_muller16(tl.where(first, x0, x2), FAST_MATH)
        z2, z3 = _box_muller16(tl.where(first, x1, x3), FAST_MATH)
        return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [P, NCOL])
    else:
        x0, x1, x2, x3 = sign_words(k0, k1, j, t_eff, (stream << 16) | (c // 4), e0, P, NCOL // 4, FACTOR_SPANS)
        w = c % 4
        word = tl.where(w == 0, x0, tl.where(w == 1, x1, tl.where(w == 2, x2, x3)))
        return quad_signs(word, sign_spans(e0, NCOL // 4), P, NCOL // 4)


@triton.jit
def vector_block(
    k0, k1, j, t_eff, e0, P: tl.constexpr, NCOL: tl.constexpr, NOISE: tl.constexpr, FAST_MATH: tl.constexpr
):
    """Elements ``e0 .. e0+NCOL-1`` (``e0 % 4 == 0``) of the vector stream (full-rank noise of a non-matrix
    parameter) for ``P`` noise indices: ``(P, NCOL)`` float32."""
    if NOISE == 0:
        return gaussian_block(k0, k1, j, t_eff, 2 << 16, e0, P, NCOL, FAST_MATH)
    elif NOISE == 2:
        return fast_vector_block(k0, k1, j, t_eff, e0, P, NCOL, FAST_MATH)
    else:
        x0, x1, x2, x3 = sign_words(k0, k1, j, t_eff, 2 << 16, e0, P, NCOL // 4, VECTOR_SPANS)
        span = sign_spans(e0, NCOL // 4)
        return quad_signs(vector_word(x0, x1, x2, x3, span), span, P, NCOL // 4)


# --- whole streams (tests and tools) -------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed", "param_index", "t_eff"])
def _words_kernel(
    out_ptr,  # (J, NUM_BLOCKS, 4) int64
    ids_ptr,
    J,
    num_blocks,
    seed,
    param_index,
    t_eff,
    c3,
    P: tl.constexpr,
    NB: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    pid_j = tl.program_id(0)
    pid_b = tl.program_id(1)
    jj = pid_j * P + tl.arange(0, P)
    j = tl.load(ids_ptr + jj, mask=jj < J, other=0)
    k0 = seed.to(tl.uint32, bitcast=True)
    k1 = param_index.to(tl.uint32, bitcast=True)
    b0 = pid_b * NB
    x0, x1, x2, x3 = stream_words(k0, k1, j, t_eff.to(tl.uint32, bitcast=True), c3, b0, P, NB, ROUNDS)
    bb = b0 + tl.arange(0, NB)
    base = out_ptr + jj[:, None] * (num_blocks * 4) + bb[None, :] * 4
    mask = (jj[:, None] < J) & (bb[None, :] < num_blocks)
    tl.store(base + 0, x0.to(tl.int64), mask=mask)
    tl.store(base + 1, x1.to(tl.int64), mask=mask)
    tl.store(base + 2, x2.to(tl.int64), mask=mask)
    tl.store(base + 3, x3.to(tl.int64), mask=mask)


@triton.jit(do_not_specialize=["seed", "param_index", "t_eff"])
def _stream_kernel(
    out_ptr,  # (J, length) float32
    ids_ptr,
    J,
    length,
    seed,
    param_index,
    t_eff,
    stream,
    column,
    P: tl.constexpr,
    NCOL: tl.constexpr,
    VECTOR: tl.constexpr,  # the vector stream (else column `column` of factor stream `stream`)
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    pid_j = tl.program_id(0)
    pid_e = tl.program_id(1)
    jj = pid_j * P + tl.arange(0, P)
    j = tl.load(ids_ptr + jj, mask=jj < J, other=0)
    k0 = seed.to(tl.uint32, bitcast=True)
    k1 = param_index.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    e0 = pid_e * NCOL
    if VECTOR:
        z = vector_block(k0, k1, j, t, e0, P, NCOL, NOISE, FAST_MATH)
    else:
        z = column_block(k0, k1, j, t, stream, column, e0, P, NCOL, NOISE, FAST_MATH)
    ee = e0 + tl.arange(0, NCOL)
    mask = (jj[:, None] < J) & (ee[None, :] < length)
    tl.store(out_ptr + jj[:, None] * length + ee[None, :], z, mask=mask)


def stream_words_triton(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column: int,
    num_blocks: int,
    *,
    rounds: int = PHILOX_ROUNDS,
) -> torch.Tensor:
    """Triton twin of ``noise.stream_words``: ``(J, num_blocks, 4)`` int64 words (``rounds``: 10, or 7 for
    ``gaussian_fast``)."""
    ids = check_ids("noise_ids", noise_ids, None, noise_ids.device)
    out = torch.empty(ids.numel(), num_blocks, 4, dtype=torch.int64, device=ids.device)
    if out.numel():
        p, nb = 4, 64
        _words_kernel[(triton.cdiv(ids.numel(), p), triton.cdiv(num_blocks, nb))](
            out, ids, ids.numel(), num_blocks, as_i32(seed), as_i32(param_index), as_i32(t_eff),
            ((stream << 16) | column) & 0x7FFFFFFF, P=p, NB=nb, ROUNDS=rounds,
        )  # fmt: skip
    return out


def noise_stream_triton(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column: int,
    length: int,
    noise: str = "gaussian",
    fast_math: bool = FAST_MATH,
) -> torch.Tensor:
    """Elements ``0 .. length-1`` of one stream for each noise index: ``(J, length)`` float32: rows of factor
    column ``column`` (``stream`` 0 or 1), or the vector stream (``stream`` 2, ``column`` 0).

    ``fast_math``: the special-function unit's ``lg2/sin/cos`` approximations (default off under the interpreter).
    """
    ids = check_ids("noise_ids", noise_ids, None, noise_ids.device)
    if stream == _noise.STREAM_VECTOR and column != 0:
        raise ValueError(f"column={column!r} is invalid: expected 0 for the vector stream (stream=2)")
    code = noise_code(noise)
    out = torch.empty(ids.numel(), length, dtype=torch.float32, device=ids.device)
    if out.numel():
        p, ncol = 4, 512
        _stream_kernel[(triton.cdiv(ids.numel(), p), triton.cdiv(length, ncol))](
            out, ids, ids.numel(), length, as_i32(seed), as_i32(param_index), as_i32(t_eff), stream, column,
            P=p, NCOL=ncol, VECTOR=stream == _noise.STREAM_VECTOR, NOISE=code, FAST_MATH=fast_math,
        )  # fmt: skip
    return out


def noise_stream_reference(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column: int,
    length: int,
    noise: str = "gaussian",
    fast_math: bool = FAST_MATH,
) -> torch.Tensor:
    """Pure-torch twin of ``noise_stream_triton`` (``noise.stream_generator(noise)``; exact math, so ``fast_math``
    is ignored)."""
    return _noise.stream_generator(noise)(seed, param_index, t_eff, noise_ids, stream, column, length)
