"""The counter-based noise contract, and its pure-torch reference implementation.

Every random number EGGROLL uses is a pure function of integers, so that the forward pass, the update and any
other device or process can regenerate it instead of storing it. This module is the reference; the Triton kernels
in ``eggroll_rl.kernels`` reproduce it bit for bit (raw 32-bit words) and to float rounding (normals).

Spec
----
Generator: Philox4x32-10 (Salmon et al., 2011), as in Random123, cuRAND and Triton:

* constants ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57``, ``W0 = 0x9E3779B9``, ``W1 = 0xBB67AE85``;
* one round maps counter ``(c0, c1, c2, c3)`` and key ``(k0, k1)`` to
  ``(hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))``, then ``k0 += W0``, ``k1 += W1``
  (all mod 2^32; ``hi``/``lo`` are the upper/lower 32 bits of the 64-bit product); ten rounds; output the counter.

Key and counter of one call (all uint32, taken mod 2^32):

* key     ``k0 = seed``, ``k1 = param_index`` (``k``: the parameter's position in discovery order);
* counter ``c0 = block`` (position inside the stream, below), ``c1 = j`` (noise index: the antithetic pair, or the
  member when antithetic sampling is off), ``c2 = t_eff`` (effective epoch), ``c3 = (stream << 16) | column``.

Streams (``stream`` in ``c3``): ``0`` = factor ``A`` (output side, ``m x r``), ``1`` = factor ``B`` (input side,
``n x r``), ``2`` = full-rank noise of a non-matrix parameter (flattened, ``column = 0``). For a factor, ``column``
is the rank index ``c`` and the element index along the stream is the row ``a``; so every rank column of every
factor is its own contiguous stream, and a kernel tile of consecutive rows needs consecutive counters.

Gaussian noise (default): element ``e`` of a stream comes from the call with ``c0 = e // 4``, output word
``x_{e % 4}``: all four words of every call are used. Words become uniforms on (0, 1), never 0 or 1::

    u(x) = (2 * (x >> 9) + 1) * 2^-24            # exact in float32

and each pair of words becomes two normals by Box-Muller, with the angle centred on zero::

    rad   = sqrt(-2 * ln u(x0));   theta = pi * (2 * u(x1) - 1)
    z0 = rad * cos(theta);          z1 = rad * sin(theta)          # same for (x2, x3) -> (z2, z3)

Rademacher noise (``noise="rademacher"``): every bit of a call is one sign, a set bit ``+1``, a clear bit ``-1``;
one call gives 128 signs. A stream is cut into spans of ``SIGN_SPAN = 512`` consecutive elements (rows, for a
factor) and each span into quads of 4; element ``e`` is element ``l = e % 4`` of quad ``q = (e % SIGN_SPAN) // 4``
of span ``i = e // SIGN_SPAN``. One call holds the same quad ``q`` of several consecutive spans:

* Factors (streams ``0`` and ``1``): the rank columns come in groups of four (``column = c // 4`` in ``c3``); a call
  holds quad ``q`` of 8 consecutive spans of the group's 4 columns. Entry ``[a, c]`` is bit ``4 (i % 8) + l`` of
  word ``x_{c % 4}`` of the call with ``c0 = (i // 8) * 128 + q``, ``c3 = (stream << 16) | (c // 4)``. (At rank 1
  to 3 the words of the missing columns go unused.)
* Vector noise (stream ``2``, ``column = 0``): a call holds quad ``q`` of 32 consecutive spans. Element ``e`` is
  bit ``4 (i % 8) + l`` of word ``x_{(i % 32) // 8}`` of the call with ``c0 = (i // 32) * 128 + q``.

Why this layout: a kernel thread holds one quad of a block of rows (the layout of its vector loads) for every rank
column, and walks the blocks in order; a block of ``SIGN_SPAN`` rows or more gives each thread the same quad of
every span, so one call gives a thread its signs of up to four columns for 8 spans (32 for vector noise) and the
thread keeps its four words in registers meanwhile: up to 128 signs per call, where the Gaussian path needs a call
per 4 values. Blocks narrower than a span recompute the call per block (same signs, more calls).
Behaviour change (branch ``rademacher``, 2026-11): each factor column and the vector stream used to hold element
``e`` at bit ``e % 32`` of word ``(e // 32) % 4`` of call ``e // 128``; the Rademacher noise of a given seed
changed (same distribution); the Gaussian noise did not.

Fast Gaussian noise (``noise="gaussian_fast"``): Philox4x32-7 (the rounds above, ``FAST_PHILOX_ROUNDS = 7`` of
them; same key and counter fields) and Box-Muller on the 16-bit halves of each word, so a call gives 8 normals
instead of 4. Word ``x`` gives one pair: its low half ``lo = x & 0xFFFF`` the radius, its high half ``hi = x >> 16``
the angle, each half ``h`` a uniform on (0, 1), never 0 or 1::

    u16(h) = (2 h + 1) * 2^-17                   # exact in float32
    rad = sqrt(-2 * ln u16(lo));  theta = pi * (2 * u16(hi) - 1)
    z_{2w} = rad * cos(theta);    z_{2w+1} = rad * sin(theta)      # from word x_w, w = 0..3: z_0 .. z_7

* Factors (streams ``0`` and ``1``): the rank columns come in pairs (``column = c // 2`` in ``c3``); the call with
  ``c0 = a // 4`` holds rows ``4 (a // 4) .. + 3`` of both columns of the pair: entry ``[a, c]`` is
  ``z_{4 (c % 2) + a % 4}`` of the call with ``c0 = a // 4``, ``c3 = (stream << 16) | (c // 2)`` (words ``x_0, x_1``
  hold column ``2g``, ``x_2, x_3`` column ``2g + 1``; at odd ranks the last call's ``z_4 .. z_7`` go unused).
* Vector noise (stream ``2``, ``column = 0``): element ``e`` is ``z_{e % 4}`` of the call with ``c0 = e // 4``
  (words ``x_0, x_1``; ``x_2, x_3`` go unused): the layout of factor column 0, in stream 2.

Why this layout: a kernel thread holds a quad of 4 consecutive rows of a block for every rank column, as for
Gaussian noise; pairing the columns, not the rows, gives it all 8 normals of a call for its own quad (4 rows x 2
columns) whatever the block size or the number of warps, with no state kept across blocks (a pairing of two blocks
or spans of rows would tie the contract to one block size: blocks narrower or wider than the span would compute the
call twice). Its cost: rank 1 and the last column of odd ranks use half a call. The vector stream has no second
column: a call holds 4 consecutive elements, half a call, so that a thread's quad comes from its own call in the
factors' layout. (Until session 6 a call held 8 consecutive elements; generated 8 to a thread, they had to move
through shared memory into the 4-a-thread layout, which made the rank-1 forward 17 % slower than ``gaussian``'s on an
H200, `benchmarks/NOTES_kernels.md`. The vector is the smaller share of the normals: ``m`` a layer against
``r (m + n)``.)
Statistical cost (``benchmarks/results/noise_options.md``, option ``philox7_bm16``: 8 consecutive elements a call;
a factor column pair here is a fixed permutation of the study's stream ``column = g``, and the vector stream the
first 4 normals of each of its calls; row pairs ``(a, a + 1)``, ``a`` even, still Box-Muller pairs): on 2^24
normals no moment, tail mass, Kolmogorov-Smirnov distance or correlation differs from the Gaussian noise's beyond
its standard error, and 7 rounds pass the avalanche test with one round of margin (10 keep four). The radius is
quantized to 16 bits, so ``|z| <= sqrt(34 ln 2) = 4.855`` (``FAST_Z_MAX``; 5.768 for the Gaussian noise): the
mass beyond radius 4.71, ``2^-16`` a pair, sits on one radius. Speed on an H200: ``benchmarks/NOTES_kernels.md``.

The two factors of a matrix parameter have i.i.d. entries, N(0, 1) (+-1, or the capped normals of
``gaussian_fast``); scaling by ``sigma * s_i / sqrt(r)`` happens outside the generator.

Members and noise indices (``member_noise_and_sign``): with antithetic sampling members ``2j`` and ``2j + 1`` share
noise index ``j`` with signs ``+1`` and ``-1``; without it member ``i`` has noise index ``i`` and sign ``+1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .choices import NoiseKind, options
from .validation import invalid

__all__ = [
    "NOISE_TYPES",
    "STREAM_A",
    "STREAM_B",
    "STREAM_VECTOR",
    "SIGN_SPAN",
    "philox4x32",
    "stream_words",
    "uniform_from_bits",
    "normal_stream",
    "rademacher_stream",
    "fast_normal_stream",
    "uniform_from_half",
    "stream_generator",
    "FAST_PHILOX_ROUNDS",
    "FAST_Z_MAX",
    "sign_position",
    "factor_noise",
    "vector_noise",
    "member_noise_and_sign",
    "unique_noise_ids",
]

NOISE_TYPES = options(NoiseKind)
STREAM_A, STREAM_B, STREAM_VECTOR = 0, 1, 2
SIGN_SPAN = 512  # Rademacher: elements per span (see the spec); a call holds one quad of 8 (32) spans
SPANS_PER_CALL_FACTOR, SPANS_PER_CALL_VECTOR = 8, 32

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10  # the contract's Philox4x32-10
FAST_PHILOX_ROUNDS = 7  # gaussian_fast: Philox4x32-7
FAST_Z_MAX = math.sqrt(34 * math.log(2))  # gaussian_fast: largest |z| (16-bit radius: u >= 2^-17), 4.855


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``m * x`` for uint32 values held in int64, without int64 overflow."""
    x_lo = x & 0xFFFF
    x_hi = x >> 16
    p_lo = m * x_lo  # < 2^48
    p_hi = m * x_hi  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int,
    k1: int,
    *,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on uint32 values stored in int64 tensors (broadcastable). Returns the four output words.
    Another ``rounds`` is not the contract (``benchmarks/noise_options.py`` studies fewer rounds)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0 &= _MASK32
    k1 &= _MASK32
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _as_index_tensor(values, device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64, device=device).reshape(-1)


def stream_words(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column,
    num_blocks: int,
    device: torch.device | str | None = None,
    *,
    rounds: int = PHILOX_ROUNDS,
) -> torch.Tensor:
    """Raw Philox words of ``num_blocks`` consecutive calls of one or several streams, for each noise index
    (``rounds``: see ``philox4x32``).

    Args:
        noise_ids: ``(J,)`` noise indices ``j`` (the ``c1`` word).
        column: an int, or a ``(C,)`` sequence of columns (rank indices) generated together.
    Returns:
        ``(J, num_blocks, 4)`` int64 tensor of uint32 words (``(J, C, num_blocks, 4)`` for several columns);
        word ``w`` of block ``b`` is ``x_w`` of the call with ``c0 = b``.
    """
    if device is None:
        device = noise_ids.device if isinstance(noise_ids, torch.Tensor) else None
    j = _as_index_tensor(noise_ids, device).view(-1, 1, 1)
    single = isinstance(column, int)
    cols = _as_index_tensor([column] if single else column, device).view(1, -1, 1)
    blocks = torch.arange(num_blocks, dtype=torch.int64, device=device).view(1, 1, -1)
    c2 = torch.tensor(t_eff & _MASK32, dtype=torch.int64, device=device)
    c3 = ((stream << 16) | cols) & _MASK32
    x = torch.stack(philox4x32(blocks, j, c2, c3, seed, param_index, rounds=rounds), dim=-1)  # (J, C, blocks, 4)
    return x[:, 0] if single else x


def uniform_from_bits(x: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64 tensor) -> float32 uniforms on (0, 1): ``(2 * (x >> 9) + 1) * 2^-24``."""
    return ((x >> 9) * 2 + 1).to(torch.float32) * (2.0**-24)


def _box_muller(x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return box_muller_uniform(uniform_from_bits(x_a), uniform_from_bits(x_b))


def box_muller_uniform(u_a: torch.Tensor, u_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals from two uniforms on (0, 1): radius from ``u_a``, angle from ``u_b``."""
    rad = torch.sqrt(-2.0 * torch.log(u_a))
    theta = math.pi * (2.0 * u_b - 1.0)
    return rad * torch.cos(theta), rad * torch.sin(theta)


def normal_stream(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column: int,
    length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The first ``length`` standard normals of a stream, ``(J, length)`` float32 (``(J, C, length)`` when
    ``column`` is a sequence of ``C`` columns)."""
    words = stream_words(seed, param_index, t_eff, noise_ids, stream, column, (length + 3) // 4, device)
    z0, z1 = _box_muller(words[..., 0], words[..., 1])
    z2, z3 = _box_muller(words[..., 2], words[..., 3])
    z = torch.stack((z0, z1, z2, z3), dim=-1).flatten(-2)  # (..., blocks * 4)
    return z[..., :length]


def sign_position(e: torch.Tensor, spans_per_call: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where Rademacher element ``e`` lives: its call ``c0``, and for a factor (``spans_per_call = 8``) its bit
    inside word ``x_{c % 4}``, for the vector stream (``32``) its word and bit. Returns ``(c0, word, bit)``, the
    word being 0 for a factor (the column picks it). Tensors of ``e``'s shape (int64)."""
    span, quad, lane = e // SIGN_SPAN, (e % SIGN_SPAN) // 4, e % 4
    c0 = (span // spans_per_call) * (SIGN_SPAN // 4) + quad
    word = (span % spans_per_call) // 8
    return c0, word, 4 * (span % 8) + lane


def _stream_columns(stream: int, column) -> tuple[bool, list[int]]:
    """``(single, columns)`` of a stream function's ``column`` argument (an int, or a sequence of columns); the vector
    stream has column 0 only (a ValueError naming ``column`` otherwise)."""
    single = isinstance(column, int)
    cols = [column] if single else [int(c) for c in column]
    if stream == STREAM_VECTOR and any(c != 0 for c in cols):
        raise invalid("column", column, "0 for the vector stream")
    return single, cols


def rademacher_stream(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column,
    length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The first ``length`` +-1 values of a factor column (``STREAM_A``, ``STREAM_B``: rows ``0 .. length-1`` of
    column ``column``) or of the vector stream (``STREAM_VECTOR``, ``column=0``): ``(J, length)`` float32
    (``(J, C, length)`` when ``column`` is a sequence of ``C`` columns). Each call is made once for all the
    columns of its group."""
    single, cols = _stream_columns(stream, column)
    if device is None:
        device = noise_ids.device if isinstance(noise_ids, torch.Tensor) else None
    e = torch.arange(length, dtype=torch.int64, device=device)
    if stream == STREAM_VECTOR:
        c0, word, bit = sign_position(e, SPANS_PER_CALL_VECTOR)
        groups, group_of, word_of = [0], [0], None
    else:
        c0, word, bit = sign_position(e, SPANS_PER_CALL_FACTOR)
        groups = sorted({c // 4 for c in cols})
        group_of, word_of = [groups.index(c // 4) for c in cols], torch.tensor([c % 4 for c in cols], device=device)
    num_blocks = int(c0.max()) + 1 if length else 0
    words = stream_words(seed, param_index, t_eff, noise_ids, stream, groups, num_blocks, device)  # (J, G, calls, 4)
    words = words.flatten(-2)[:, group_of]  # (J, C, calls * 4): word w of call b at 4 b + w
    index = 4 * c0 + (word if word_of is None else word_of[:, None])  # (C or 1, length)
    w = words.gather(-1, index.expand(len(cols), length).expand(words.shape[0], -1, -1))  # (J, C, length)
    signs = ((w >> bit) & 1).to(torch.float32) * 2.0 - 1.0
    return signs[:, 0] if single else signs


def uniform_from_half(h: torch.Tensor) -> torch.Tensor:
    """16-bit halves (int64 tensor) -> float32 uniforms on (0, 1): ``(2 h + 1) * 2^-17``, exact."""
    return (h * 2 + 1).to(torch.float32) * (2.0**-17)


def _fast_normals(words: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` words of calls -> ``(..., 8)`` normals ``z_0 .. z_7`` of ``gaussian_fast`` (the spec)."""
    zc, zs = box_muller_uniform(uniform_from_half(words & 0xFFFF), uniform_from_half(words >> 16))
    return torch.stack((zc, zs), dim=-1).flatten(-2)  # z_{2w} = cos, z_{2w+1} = sin of word w


def fast_normal_stream(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column,
    length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The first ``length`` ``gaussian_fast`` normals of a factor column (``STREAM_A``, ``STREAM_B``: rows
    ``0 .. length-1`` of column ``column``) or of the vector stream (``STREAM_VECTOR``, ``column=0``): ``(J, length)``
    float32 (``(J, C, length)`` when ``column`` is a sequence of ``C`` columns). Each call is made once for both
    columns of its pair; the vector stream is laid out as factor column 0 of its own stream."""
    single, cols = _stream_columns(stream, column)
    pairs = sorted({c // 2 for c in cols})
    words = stream_words(seed, param_index, t_eff, noise_ids, stream, pairs, -(-length // 4), device,
                         rounds=FAST_PHILOX_ROUNDS)  # fmt: skip
    J, G, B = words.shape[:3]
    # [j, g, b, h, l] = z_{4h + l} of call b, i.e. row 4b + l of column 2g + h; permuted to [j, g, h, b, l]
    z = _fast_normals(words).view(J, G, B, 2, 4).permute(0, 1, 3, 2, 4).reshape(J, 2 * G, 4 * B)
    z = z[:, [2 * pairs.index(c // 2) + c % 2 for c in cols], :length]
    return z[:, 0] if single else z


def stream_generator(noise: str) -> Callable[..., torch.Tensor]:
    """The stream function of a noise kind (``normal_stream``, ``rademacher_stream``, ``fast_normal_stream``: one
    signature), or a ValueError naming ``noise``."""
    if noise == "gaussian":
        return normal_stream
    if noise == "rademacher":
        return rademacher_stream
    if noise == "gaussian_fast":
        return fast_normal_stream
    raise invalid("noise", noise, f"one of {list(NOISE_TYPES)}")


def factor_noise(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    num_rows: int,
    rank: int,
    stream: int,
    noise: str = "gaussian",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unscaled low-rank factor ``A`` (``stream=STREAM_A``) or ``B`` (``STREAM_B``) for each noise index.

    Returns:
        ``(J, num_rows, rank)`` float32; entry ``[j, a, c]`` is element ``a`` of stream ``(stream, column=c)``.
    """
    z = stream_generator(noise)(seed, param_index, t_eff, noise_ids, stream, list(range(rank)), num_rows, device)
    return z.transpose(1, 2)  # (J, rank, rows) -> (J, rows, rank)


def vector_noise(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    numel: int,
    noise: str = "gaussian",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Full-rank noise of a non-matrix parameter, flattened: ``(J, numel)`` float32."""
    return stream_generator(noise)(seed, param_index, t_eff, noise_ids, STREAM_VECTOR, 0, numel, device)


def member_noise_and_sign(member_ids: torch.Tensor, antithetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise index ``j`` and sign ``s`` (+1/-1, float32) of each member id: two tensors of ``member_ids``' shape."""
    if antithetic:
        return member_ids // 2, 1.0 - 2.0 * (member_ids % 2).to(torch.float32)
    return member_ids, torch.ones(member_ids.shape, dtype=torch.float32, device=member_ids.device)


def unique_noise_ids(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct noise indices of ``j`` ``(R,)`` (ascending) and each row's position among them.

    Rows sorted by noise index (a batch repeated per member, ``arange(N).repeat_interleave(B)``) take an O(R)
    scan instead of ``torch.unique``'s sort, which dominates a CPU forward of that many rows.
    """
    if j.numel() > 1 and bool((j[1:] >= j[:-1]).all()):
        return torch.unique_consecutive(j, return_inverse=True)
    return torch.unique(j, return_inverse=True)
