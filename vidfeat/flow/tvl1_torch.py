"""Dual TV-L1 optical flow in PyTorch: a batched port of OpenCV's ``DualTVL1OpticalFlow``, and
``--method tvl1-torch`` (:class:`TVL1Torch`), the flow method that runs it.

The algorithm, its parameters (:class:`vidfeat.flow.TVL1Params`, OpenCV's defaults) and the
numerical details that decide agreement with OpenCV follow ``modules/optflow/src/tvl1flow.cpp``
of opencv_contrib (CPU path), written anew here for batches of frame pairs ``[B, H, W]`` on any
torch device:

* input: 8-bit grey levels converted to float *without* scaling (OpenCV's ``calc`` converts
  ``CV_8U`` with scale 1 and ``CV_32F`` with scale 255, so both reach the solver as 0..255);
* pyramid: each level is OpenCV's ``resize(INTER_LINEAR)`` of the previous one at exactly
  ``scale_step`` (pixel-centre convention ``src = (dst + 0.5) / scale_step - 0.5``, edge
  replication, no antialiasing or blur), down to the first level narrower or lower than 16 px,
  which is dropped. ``cv2.resize`` of float images runs Intel IPP in the opencv-python wheels:
  the tap fraction is taken in double, ``a + f (b - a)`` is one fused multiply-add, and past
  the last pixel a down-sampling takes the last interval at fraction 1; done the same way here
  (identical bits; not for ``scale_step = 0.5``, which OpenCV resizes as an area average);
* per scale: the centred gradient of the *unwarped* second image (one-sided half differences on
  the border), computed once and warped with the image; the dual variables reset to zero once;
* per warp: the image and its gradient remapped by cubic convolution (A = -0.75) with a zero
  border, at the exact map positions (OpenCV 5.0's remap of float maps does not round them to
  1/32 px, 4.x did; see ``tests/test_tvl1.py``), then ``grad = |∇I1w|²`` and the constant part
  of rho; the weights and the order of the fused multiply-adds are those of OpenCV's
  vectorised remap (found by probing it), so the warped images are OpenCV's bits;
* iterations: up to ``outer_iterations`` × ``inner_iterations`` steps (thresholding, divergence
  of p, u update, forward gradient of u, projection of p), a 5×5 (or 3×3) median of u1 and u2
  with replicated border before each group of ``inner_iterations``; the warp ends at the first
  step whose summed squared update of u is <= ``epsilon² · H · W`` (the error is carried across
  the outer loop, exactly as OpenCV's loop conditions do; where it matters, summed in float in
  OpenCV's order), and restarts the count at the next warp;
* ``gamma > 0`` adds OpenCV's illumination term u3 (its own dual variables, not median-filtered,
  carried to the finer scale unscaled);
* the flow is carried to the finer scale by linear resize and multiplied by ``1 / scale_step``.

Every float operation is OpenCV's, in OpenCV's order (its association at the first column of
the divergence, its three tests of the thresholding on its rounded products, hypot for |∇u| in
double), and the flow is OpenCV's, bit for bit. That matters: one rounding difference anywhere
grows, as any 1e-4 grey-level change of OpenCV's input does, through the stopping rule and the
median into 0.05-0.17 px differences at the 95th percentile of the final flow. The cost is the
double-precision parts (hypot, fused multiply-adds): about 1.6x the time of a float-only port.

Batching: all pairs of a chunk run together; a pair whose warp has converged is written back and
dropped from the working set, so a batch costs the sum of its pairs' iterations, not the slowest
pair's count times the batch size, and each pair gets exactly the iterations OpenCV gives it
(its result does not depend on the rest of the batch). ``chunk`` bounds the memory.

The method, :class:`TVL1Torch`, is OpenCV's ``tvl1`` with this solver in place of OpenCV's:
same parameters, defaults and fields, every pair of a video in one batch, on ``--device``.

Imports: numpy, and torch on first use (:class:`_LazyTorch`): :mod:`vidfeat.flow` imports this
module to register ``tvl1-torch``, and ``vidfeat --help`` must not import torch. OpenCV is used
in the tests and the benchmark, never here.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfeat.flow.base import FlowMethod
from vidfeat.flow.opencv import TVL1, TVL1Params

__all__ = ["TVL1Torch", "tvl1_flow", "tvl1_pairs", "default_chunk", "MIN_LEVEL_SIZE"]


class _LazyTorch:
    """Stands in for the ``torch`` module until the solver first runs. The first attribute read
    imports torch and puts the module itself in this name's place, so from then on the solver
    looks torch up directly, at no cost."""

    def __getattr__(self, name: str) -> Any:
        global torch
        import torch as module

        torch = module
        return getattr(module, name)


if TYPE_CHECKING:
    import torch
else:
    torch = _LazyTorch()

MIN_LEVEL_SIZE = 16  # OpenCV stops the pyramid at the first level narrower or lower than this
_CUBIC_A = -0.75  # OpenCV's cubic convolution constant (interpolateCubic)
_FLT_EPSILON = float(np.finfo(np.float32).eps)
# float32 values held per pixel and pair while solving (pyramids, warped images, u, v, p,
# divergence, gradients, temporaries), for the default chunk size
_FLOATS_PER_PIXEL = 64


# --------------------------------------------------------------------------- building blocks


def _resize_axis_coeffs(
    dst: int, src: int, scale: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear-resize taps along one axis as the installed OpenCV computes them (its Intel IPP
    path, which ``cv2.resize`` takes for float images): source position ``(d + 0.5) * scale -
    0.5`` and its fraction in double, the fraction stored as float; outside the image both taps
    are the edge pixel (replication), except past the last pixel when down-sampling, where IPP
    takes the last interval at fraction 1 (``a + 1 · (b - a)``, which may differ from ``b`` by an
    ulp; found by probing it)."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    low = i0 < 0
    frac[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    if scale > 1 and src > 1:
        frac[high], i0[high] = 1.0, src - 2
    else:
        frac[high], i0[high] = 0.0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    t = [torch.from_numpy(a).to(device) for a in (i0, i1, frac)]
    return t[0], t[1], t[2]


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """``a * b + c`` of floats rounded once (a fused multiply-add, as OpenCV's SIMD kernels do),
    emulated in double, where the product of two floats is exact."""
    b = b.to(torch.float64) if isinstance(b, torch.Tensor) else b
    c = c.to(torch.float64) if isinstance(c, torch.Tensor) else c
    return (a.to(torch.float64) * b + c).to(torch.float32)


def _lerp_fma(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``a + f * (b - a)`` with the product and sum rounded once (a fused multiply-add, as the
    IPP resize does): the difference in float, the FMA emulated in double (the product of two
    floats is exact there)."""
    return _fma(b - a, f, a)


def _resize_linear(
    x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None
) -> torch.Tensor:
    """``cv2.resize(x, (w, h), interpolation=INTER_LINEAR)`` of each float ``[B, H, W]`` image:
    horizontal pass then vertical, pixel-centre convention, no antialiasing. ``scale`` (y, x):
    the source step per destination pixel; by default ``src / dst`` (OpenCV given a size); for a
    factor ``f`` OpenCV uses ``1 / f``."""
    _, h, w = x.shape
    dh, dw = size
    sy, sx = scale if scale is not None else (h / dh, w / dw)
    x0, x1, fx = _resize_axis_coeffs(dw, w, sx, x.device)
    y0, y1, fy = _resize_axis_coeffs(dh, h, sy, x.device)
    rows = _lerp_fma(x[:, :, x0], x[:, :, x1], fx)  # [B, H, dw]
    return _lerp_fma(rows[:, y0, :], rows[:, y1, :], fy[:, None])


def _centered_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half central differences; on the border the one-sided half difference (OpenCV's
    ``centeredGradient``, i.e. central differences of the edge-replicated image)."""
    dx = torch.empty_like(x)
    dy = torch.empty_like(x)
    dx[:, :, 1:-1] = 0.5 * (x[:, :, 2:] - x[:, :, :-2])
    dx[:, :, 0] = 0.5 * (x[:, :, 1] - x[:, :, 0])
    dx[:, :, -1] = 0.5 * (x[:, :, -1] - x[:, :, -2])
    dy[:, 1:-1] = 0.5 * (x[:, 2:] - x[:, :-2])
    dy[:, 0] = 0.5 * (x[:, 1] - x[:, 0])
    dy[:, -1] = 0.5 * (x[:, -1] - x[:, -2])
    return dx, dy


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Weights of the taps at -1, 0, +1, +2 for the fraction t, as the installed OpenCV's
    vectorised remap computes them (found by probing it with unit impulses, identical bits):
    the outer taps as ``A t (1-t)²`` and ``A (1-t) t²``, the tap at 0 by fused multiply-adds,
    and the tap at +1 as what makes the four sum to one."""
    a = _CUBIC_A
    s = 1.0 - t
    c0 = a * (t * (s * s))
    c1 = _fma(_fma(t, a + 2.0, -(a + 3.0)), t * t, 1.0)
    c3 = a * (s * (t * t))
    c2 = ((1.0 - c0) - c1) - c3
    return [c0, c1, c2, c3]


def _remap_cubic(images: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """``cv2.remap(img, x + u1, y + u2, INTER_CUBIC)`` (constant zero border) of the ``C``
    images ``[B, C, H, W]`` that share one map (``u1``, ``u2``: ``[B, H, W]``). Positions are
    used exactly (no 1/32 px rounding), as the installed OpenCV does for float maps."""
    b, c, h, w = images.shape
    dev = images.device
    gx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    gy = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    # positions beyond 3 px outside read only border zeros: clamping keeps the int cast sane
    mx = (gx + u1).clamp_(-3.0, w + 2.0)
    my = (gy + u2).clamp_(-3.0, h + 2.0)
    fx0 = torch.floor(mx)
    fy0 = torch.floor(my)
    wx = _cubic_weights(mx - fx0)
    wy = _cubic_weights(my - fy0)
    # a zero-padded copy (1 px all round): every tap outside the image reads a zero
    pw = w + 2
    table = torch.nn.functional.pad(images, (1, 1, 1, 1)).reshape(b, c, (h + 2) * pw)
    cols = [(fx0.to(torch.int64) + k).clamp_(0, w + 1) for k in range(4)]  # padded coords
    # OpenCV's order: each row of 4 taps, then the 4 rows, each a chain of fused multiply-adds;
    # in double, where the products of floats are exact, rounded to float after each step
    f64 = torch.float64
    table = table.to(f64)
    wx = [x.view(b, 1, h * w).to(f64) for x in wx]
    wy = [y.view(b, 1, h * w).to(f64) for y in wy]
    out = None
    for i in range(4):
        row = (fy0.to(torch.int64) + i).clamp_(0, h + 1) * pw
        acc = None
        for k in range(4):
            idx = (row + cols[k]).view(b, 1, h * w).expand(b, c, h * w)
            px = torch.gather(table, 2, idx).mul_(wx[k])
            acc = _to_float(px if acc is None else px.add_(acc))
        acc = acc.mul_(wy[i])
        out = _to_float(acc if out is None else acc.add_(out))
    assert out is not None
    return out.to(torch.float32).view(b, c, h, w)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """Double ``x`` rounded to float, kept in double."""
    return x.to(torch.float32).to(torch.float64)


def _batcher(n: int) -> list[tuple[int, int]]:
    """Comparators (i < j) of Batcher's odd-even merge sort of ``n`` values; a power of two
    above ``n`` is sorted with +inf padding, whose comparators are dropped."""
    m = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(i, j) for i, j in pairs if j < n]


@functools.cache
def _median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """The sorting network's comparators that the middle value depends on, each with whether its
    min and its max are used afterwards."""
    needed = {n // 2}
    kept = []
    for i, j in reversed(_batcher(n)):
        if i in needed or j in needed:
            kept.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return tuple(reversed(kept))


def _median(x: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.medianBlur`` of float images ``[B, H, W]`` (k = 3 or 5): the exact median of the
    k×k window, border replicated; a selection network of min/max over shifted views."""
    b, h, w = x.shape
    r = k // 2
    p = torch.nn.functional.pad(x.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    vals: list[torch.Tensor | None] = [
        p[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)
    ]
    for i, j, need_min, need_max in _median_network(k * k):
        a, c = vals[i], vals[j]
        assert a is not None and c is not None
        vals[i] = torch.minimum(a, c) if need_min else None
        vals[j] = torch.maximum(a, c) if need_max else None
    out = vals[(k * k) // 2]
    assert out is not None
    return out.contiguous()


# --------------------------------------------------------------------------- the solver
#
# Inside a warp every array is a flat [b, H*W] view. Two facts make the neighbour terms plain
# shifts of the flat arrays: the x component of each dual variable is zero on the last column
# and its y component zero on the last row (their forward-gradient parts are zero there and they
# start at zero), so rolling by 1 (resp. W) brings exactly OpenCV's "p = 0 outside" into the
# first column (resp. row) of the backward differences.


class _Consts:
    """Per-warp constants of the working set: the warped gradient, -|∇I1w|² (-inf where
    |∇I1w|² <= FLT_EPSILON, see :func:`_step`), ∓λθ|∇I1w|² and rho_c, each ``[b, N]``."""

    __slots__ = ("ix", "iy", "neg_grad", "lo", "hi", "rho_c")

    def __init__(self, *arrays: torch.Tensor) -> None:
        for name, a in zip(self.__slots__, arrays, strict=True):
            setattr(self, name, a)

    def select(self, keep: torch.Tensor) -> _Consts:
        return _Consts(*(getattr(self, n)[keep] for n in self.__slots__))


def _f32(x: float) -> float:
    """A double constant as OpenCV passes it to its float kernels."""
    return float(np.float32(x))


def _divergence(pa: torch.Tensor, pb: torch.Tensor, w: int) -> torch.Tensor:
    """OpenCV's ``divergence`` (backward differences, p = 0 before the first row/column) of flat
    dual variables whose x part is zero on the last column and y part on the last row."""
    dx = pa - torch.roll(pa, 1, dims=1)
    dy = pb - torch.roll(pb, w, dims=1)
    div = dx.add_(dy)
    # OpenCV sums the first column as (p1 + p2) - p2[y - 1]: same value, its own rounding
    b = pa.shape[0]
    a3, b3 = pa.view(b, -1, w), pb.view(b, -1, w)
    div.view(b, -1, w)[:, 1:, 0] = (a3[:, 1:, 0] + b3[:, 1:, 0]) - b3[:, :-1, 0]
    return div


def _forward_gradient(u: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of flat ``u``, zero on the last column (x) and the last row (y)."""
    b, n = u.shape
    ux = torch.empty_like(u)
    torch.sub(u[:, 1:], u[:, :-1], out=ux[:, :-1])
    ux.view(b, h, w)[:, :, -1] = 0.0
    uy = torch.empty_like(u)
    torch.sub(u[:, w:], u[:, :-w], out=uy[:, : n - w])
    uy[:, n - w :] = 0.0
    return ux, uy


def _hypot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(float) hypot(x, y)`` as OpenCV calls it on floats: in double, rounded to float once
    (torch's float ``hypot`` may be off by an ulp)."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    return x64.mul_(x64).addcmul_(y64, y64).sqrt_().to(torch.float32)


def _step(
    st: list[torch.Tensor], k: _Consts, hw: tuple[int, int], c: tuple[float, float, float, float]
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One inner iteration (estimateV, divergence, estimateU, forwardGradient,
    estimateDualVariables) on the flat working set ``st`` = [u1, u2, p11, p12, p21, p22]
    (+ [u3, p31, p32]). Returns the new state, each pair's summed squared update of u (in
    float64, so that it does not depend on the batch's layout) and the float terms of that sum."""
    h, w = hw
    l_t, theta, taut, gamma = c
    u1, u2, p11, p12, p21, p22 = st[:6]
    use_gamma = len(st) > 6
    # thresholding: rho = rho_c + ∇I1w·u (+ γ u3); the step along ∇I1w is λθ if rho < -λθ|∇I1w|²,
    # -λθ if rho > λθ|∇I1w|², else -rho/|∇I1w|² (0 if |∇I1w|² <= FLT_EPSILON): OpenCV's three
    # tests, on its rounded products (clamping the quotient would differ by an ulp at the edges)
    rho = k.ix * u1
    rho.add_(k.iy * u2).add_(k.rho_c)
    if use_gamma:
        u3, p31, p32 = st[6:]
        rho.add_(u3 * gamma)
    # branch-free: s = -1, 0, 1 for the three cases (rho - clamp(rho) is exact, and 0 only
    # inside), and 0 · (the finite quotient) + λθ or - λθ is exactly ±λθ
    inside = torch.clamp(rho, k.lo, k.hi)
    s = torch.sub(rho, inside).sign_()
    coef = inside.div_(k.neg_grad).mul_(1.0 - s.abs()).sub_(s.mul_(l_t))
    new = [
        (coef * k.ix).add_(u1).add_(_divergence(p11, p12, w).mul_(theta)),
        (coef * k.iy).add_(u2).add_(_divergence(p21, p22, w).mul_(theta)),
    ]
    olds = [u1, u2]
    duals = [(p11, p12), (p21, p22)]
    if use_gamma:
        new.append((coef * gamma).add_(u3).add_(_divergence(p31, p32, w).mul_(theta)))
        olds.append(u3)
        duals.append((p31, p32))
    e = None
    for n, o in zip(new, olds, strict=True):
        d = n - o
        e = d.mul_(d) if e is None else e.add_(d.mul_(d))
    assert e is not None
    err = e.sum(dim=1, dtype=torch.float64)
    # dual variables: p = (p + τ/θ ∇u) / (1 + τ/θ |∇u|)
    out = list(new[:2])
    dual: list[torch.Tensor] = []
    for n, (pa, pb) in zip(new, duals, strict=True):
        ux, uy = _forward_gradient(n, h, w)
        ng = _hypot(ux, uy).mul_(taut).add_(1.0)
        dual += [(ux * taut).add_(pa).div_(ng), (uy * taut).add_(pb).div_(ng)]
    out += dual[:4]
    if use_gamma:
        out += [new[2], *dual[4:]]
    return out, err, e


def _converged(err: torch.Tensor, e: torch.Tensor, seps: float) -> torch.Tensor:
    """OpenCV's test ``error <= epsilon² H W``, where its error adds the float terms ``e`` one by
    one in float. The float64 sum ``err`` decides wherever that float sum cannot fall on the
    other side of the threshold (its error is below n · 2⁻²⁴ · err, as the terms are >= 0);
    the rare pairs within that margin get the float sum itself, in OpenCV's order."""
    n = e.shape[1]
    near = (err - seps).abs() <= err * (1.01 * n * 2.0**-24)
    if bool(near.any()):
        rows = near.nonzero()[:, 0]
        serial = np.add.accumulate(e[rows].cpu().numpy(), axis=1)[:, -1]
        err = err.index_put((rows,), torch.from_numpy(serial.astype(np.float64)).to(err.device))
    return err <= seps


def _one_scale(
    i0: torch.Tensor,
    i1: torch.Tensor,
    u: list[torch.Tensor],
    prm: TVL1Params,
    iters: torch.Tensor,
) -> list[torch.Tensor]:
    """OpenCV's ``procOneScale`` on a batch ``[B, H, W]``; ``u`` = [u1, u2] (+ [u3]); returns
    the new u. ``iters`` (int64 [B]) counts each pair's inner iterations."""
    b, h, w = i0.shape
    n = h * w
    dev = i0.device
    use_gamma = len(u) == 3
    seps = float(np.float32(prm.epsilon * prm.epsilon * n))
    c = (
        _f32(prm.lambda_ * prm.theta),
        _f32(prm.theta),
        _f32(prm.tau / prm.theta),
        _f32(prm.gamma),
    )
    inner, outer, med = prm.inner_iterations, prm.outer_iterations, prm.median_filtering

    i1x, i1y = _centered_gradient(i1)  # of the unwarped image, once per scale
    images = torch.stack([i1, i1x, i1y], dim=1)
    zeros = torch.zeros((b, n), dtype=torch.float32, device=dev)
    # flat state: u1, u2, p11, p12, p21, p22 (+ u3, p31, p32); p reset once per scale
    state = [u[0].reshape(b, n), u[1].reshape(b, n), zeros, zeros, zeros, zeros]
    if use_gamma:
        state += [u[2].reshape(b, n), zeros, zeros]
    for _ in range(prm.warps):
        u1, u2 = state[0].view(b, h, w), state[1].view(b, h, w)
        warped = _remap_cubic(images, u1, u2)
        i1w, ix, iy = warped[:, 0], warped[:, 1], warped[:, 2]
        grad = ix * ix + iy * iy
        rho_c = i1w - ix * u1 - iy * u2 - i0
        # see _step: -grad, and -inf (a zero step) where OpenCV's grad <= FLT_EPSILON branch is
        neg_grad = torch.where(grad > _FLT_EPSILON, -grad, -torch.inf)
        lg = grad * c[0]
        consts = _Consts(*(t.reshape(b, n) for t in (ix, iy, neg_grad, -lg, lg, rho_c)))
        idx = torch.arange(b, device=dev)  # the pairs of the working set
        work = state
        for it in range(outer * inner):
            if med > 1 and it % inner == 0:
                m = len(idx)
                work = [
                    _median(work[0].view(m, h, w), med).view(m, n),
                    _median(work[1].view(m, h, w), med).view(m, n),
                    *work[2:],
                ]
            work, err, e = _step(work, consts, (h, w), c)
            iters.index_add_(0, idx, torch.ones_like(idx))
            done = _converged(err, e, seps)
            if bool(done.any()):
                state = _write_back(state, work, idx, b)
                keep = ~done
                if not bool(keep.any()):
                    work = []
                    break
                idx, work, consts = idx[keep], [t[keep] for t in work], consts.select(keep)
        if work:
            state = _write_back(state, work, idx, b)
    return [s.view(b, h, w) for s in ([state[0], state[1]] + ([state[6]] if use_gamma else []))]


def _write_back(
    state: list[torch.Tensor], work: list[torch.Tensor], idx: torch.Tensor, b: int
) -> list[torch.Tensor]:
    """The full-batch state with the working set's rows ``idx`` replaced by ``work``."""
    if len(idx) == b:
        return work
    return [s.index_copy(0, idx, w) for s, w in zip(state, work, strict=True)]


def _pyramid(x: torch.Tensor, levels: int, step: float) -> list[torch.Tensor]:
    """Level s+1 = resize(level s, factor ``step``), until ``levels`` levels or a level smaller
    than 16 px (dropped, as OpenCV does)."""
    out = [x]
    for _ in range(1, levels):
        _, h, w = out[-1].shape
        size = (int(round(h * step)), int(round(w * step)))
        if min(size) < MIN_LEVEL_SIZE:
            break
        out.append(_resize_linear(out[-1], size, (1.0 / step, 1.0 / step)))
    return out


def _solve(
    i0: torch.Tensor, i1: torch.Tensor, prm: TVL1Params
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow ``[B, H, W, 2]`` of one chunk and each pair's total inner iterations."""
    b = i0.shape[0]
    p0 = _pyramid(i0, prm.nscales, prm.scale_step)
    p1 = _pyramid(i1, len(p0), prm.scale_step)
    iters = torch.zeros(b, dtype=torch.int64, device=i0.device)
    ncomp = 3 if prm.gamma != 0 else 2
    u = [torch.zeros_like(p0[-1]) for _ in range(ncomp)]
    up = _f32(1.0 / prm.scale_step)
    for s in range(len(p0) - 1, -1, -1):
        u = _one_scale(p0[s], p1[s], u, prm, iters)
        if s == 0:
            break
        size = tuple(p0[s - 1].shape[1:])
        u = [_resize_linear(c, size) for c in u]  # type: ignore[arg-type]
        u[0] = u[0] * up
        u[1] = u[1] * up  # u3 is not scaled
    return torch.stack([u[0], u[1]], dim=-1), iters


def _check(prm: TVL1Params) -> None:
    """Reject what would crash, hang or silently mean something else than in OpenCV."""
    for name in ("tau", "lambda_", "theta"):
        if not getattr(prm, name) > 0:
            raise ValueError(f"TV-L1 {name} must be > 0 (got {getattr(prm, name)})")
    for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
        if getattr(prm, name) < 1:
            raise ValueError(f"TV-L1 {name} must be >= 1 (got {getattr(prm, name)})")
    if prm.epsilon < 0 or prm.gamma < 0:
        raise ValueError(f"TV-L1 epsilon and gamma must be >= 0 ({prm.epsilon}, {prm.gamma})")
    if not 0 < prm.scale_step < 1:
        raise ValueError(f"TV-L1 scale_step must be in (0, 1) (got {prm.scale_step})")
    if prm.median_filtering not in (0, 1, 3, 5):
        raise ValueError(
            f"TV-L1 median_filtering must be 0/1 (off), 3 or 5 (got {prm.median_filtering})"
        )


def default_chunk(height: int, width: int, device: torch.device | str = "cpu") -> int:
    """Pairs solved at once by default: what fits a memory budget (1 GiB on CPU, half the free
    memory of a CUDA device), at most 256."""
    dev = torch.device(device)
    budget = 1 << 30
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free // 2
    per_pair = _FLOATS_PER_PIXEL * 4 * height * width
    return int(max(1, min(256, budget // per_pair)))


def tvl1_flow(
    prev: torch.Tensor,
    next: torch.Tensor,  # noqa: A002 - the issue's name, mirrors OpenCV's I0/I1 pair
    params: TVL1Params = TVL1Params(),
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Dual TV-L1 flow of each pair ``prev[i] → next[i]``, as OpenCV's ``DualTVL1OpticalFlow``.

    ``prev``, ``next``: ``[B, H, W]`` grey levels 0..255 (uint8 frames converted to float, no
    scaling), any device. Returns float32 ``[B, H, W, 2]`` (x, y) on the same device, such that
    ``prev[y, x] ≈ next[y + dy, x + dx]``. ``chunk``: pairs solved at once (default
    :func:`default_chunk`); the result of a pair does not depend on it.
    """
    _check(params)
    if prev.dim() != 3 or prev.shape != next.shape:
        raise ValueError(
            f"tvl1_flow needs two [B, H, W] batches of one shape, got {tuple(prev.shape)} and "
            f"{tuple(next.shape)}"
        )
    if prev.device != next.device:
        raise ValueError(f"prev and next on different devices ({prev.device}, {next.device})")
    b, h, w = prev.shape
    if h < 3 or w < 3:
        raise ValueError(f"tvl1_flow needs frames of at least 3×3 px, got {h}×{w}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    n = chunk or default_chunk(h, w, prev.device)
    out = torch.empty((b, h, w, 2), dtype=torch.float32, device=prev.device)
    with torch.inference_mode():
        for i in range(0, b, n):
            a = prev[i : i + n].to(torch.float32).contiguous()
            c = next[i : i + n].to(torch.float32).contiguous()
            out[i : i + n] = _solve(a, c, params)[0]
    return out


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def tvl1_pairs(
    frames_a: np.ndarray,
    frames_b: np.ndarray,
    params: TVL1Params = TVL1Params(),
    device: str | torch.device = "auto",
    batch: int | None = None,
) -> np.ndarray:
    """:func:`tvl1_flow` on uint8 gray frames ``[B, H, W]`` (numpy) → float32 ``[B, H, W, 2]``.

    ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or a torch device.
    ``batch``: pairs sent to the device and solved at once (default :func:`default_chunk`).
    """
    a = np.asarray(frames_a)
    b = np.asarray(frames_b)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"tvl1_pairs needs uint8 frames, got {a.dtype} and {b.dtype}")
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"tvl1_pairs needs two [B, H, W] arrays, got {a.shape}, {b.shape}")
    dev = _device(device)
    n, h, w = a.shape
    step = batch or default_chunk(h, w, dev)
    out = np.empty((n, h, w, 2), dtype=np.float32)
    for i in range(0, n, step):
        ta = torch.from_numpy(a[i : i + step]).to(dev)
        tb = torch.from_numpy(b[i : i + step]).to(dev)
        out[i : i + step] = tvl1_flow(ta, tb, params, chunk=step).cpu().numpy()
    return out


# --------------------------------------------------------------------------- the method


class TVL1Torch(TVL1):
    """The same Dual TV-L1, in PyTorch (:func:`tvl1_pairs`): every pair of a video in one
    batch, on CUDA when present (``--device``), converged pairs leaving the batch. Same
    parameters, defaults and fields as ``tvl1``; agrees with OpenCV's to ~0.02 px mean."""

    name = "tvl1-torch"
    uses_torch = True
    out_buffer = False
    precisions = ("auto", "fp32")  # auto: fp32
    precision_note = "tvl1-torch keeps float32: its agreement with OpenCV's TV-L1 needs it"

    def default_batch(self, height: int, width: int) -> int:
        return default_chunk(height, width, _device(self.device))

    def calc_batch(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 gray ``(B, H, W)`` × 2 → float32 ``(B, H, W, 2)`` (dx, dy)."""
        self._check_frames(prev, nxt, batch=True)
        return tvl1_pairs(prev, nxt, self.params, device=self.device, batch=self.batch_size)

    _calc = FlowMethod._calc  # one pair: a batch of one (not TVL1's OpenCV call)
