"""Dual TV-L1 optical flow in PyTorch: a batched port of OpenCV's ``DualTVL1OpticalFlow``.

The algorithm, its parameters (:class:`vidfeat.flow.TVL1Params`, OpenCV's defaults) and the
numerical details that decide agreement with OpenCV follow ``modules/optflow/src/tvl1flow.cpp``
of opencv_contrib (CPU path), written anew here for batches of frame pairs ``[B, H, W]`` on any
torch device:

* input: 8-bit grey levels converted to float *without* scaling (OpenCV's ``calc`` converts
  ``CV_8U`` with scale 1 and ``CV_32F`` with scale 255, so both reach the solver as 0..255);
* pyramid: each level is OpenCV's ``resize(INTER_LINEAR)`` of the previous one at exactly
  ``scale_step`` (pixel-centre convention ``src = (dst + 0.5) / scale_step - 0.5``, edge
  replication, no antialiasing or blur), down to the first level narrower or lower than 16 px,
  which is dropped;
* per scale: the centred gradient of the *unwarped* second image (one-sided half differences on
  the border), computed once and warped with the image; the dual variables reset to zero once;
* per warp: the image and its gradient remapped by cubic convolution (A = -0.75) with a zero
  border, at the exact map positions (this OpenCV's remap of float maps does not round them to
  1/32 px; see ``tests/test_tvl1.py``), then ``grad = |∇I1w|²`` and the constant part of rho;
* iterations: up to ``outer_iterations`` × ``inner_iterations`` steps (thresholding, divergence
  of p, u update, forward gradient of u, projection of p), a 5×5 (or 3×3) median of u1 and u2
  with replicated border before each group of ``inner_iterations``; the warp ends at the first
  step whose summed squared update of u is <= ``epsilon² · H · W`` (the error is carried across
  the outer loop, exactly as OpenCV's loop conditions do), and restarts the count at the next
  warp;
* ``gamma > 0`` adds OpenCV's illumination term u3 (its own dual variables, not median-filtered,
  carried to the finer scale unscaled);
* the flow is carried to the finer scale by linear resize and multiplied by ``1 / scale_step``.

Batching: all pairs of a chunk run together; a pair whose warp has converged is written back and
dropped from the working set, so a batch costs the sum of its pairs' iterations, not the slowest
pair's count times the batch size, and each pair gets exactly the iterations OpenCV gives it
(its result does not depend on the rest of the batch). ``chunk`` bounds the memory.

Imports: torch and numpy only (OpenCV is used in the tests and the benchmark, never here).
"""

from __future__ import annotations

import numpy as np
import torch

from vidfeat.flow import TVL1Params

__all__ = ["tvl1_flow", "tvl1_pairs", "default_chunk", "MIN_LEVEL_SIZE"]

MIN_LEVEL_SIZE = 16  # OpenCV stops the pyramid at the first level narrower or lower than this
_CUBIC_A = -0.75  # OpenCV's cubic convolution constant (interpolateCubic)
_FLT_EPSILON = float(np.finfo(np.float32).eps)
# float32 values held per pixel and pair while solving (pyramids, warped images, u, v, p,
# divergence, gradients, temporaries), for the default chunk size
_FLOATS_PER_PIXEL = 64


# --------------------------------------------------------------------------- building blocks


def _resize_axis_coeffs(
    dst: int, src: int, scale: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's INTER_LINEAR taps along one axis: source ``(d + 0.5) * scale - 0.5`` (computed
    in double, stored as float), the weight of the upper tap zeroed and the index clamped
    outside the image (edge replication)."""
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    w1 = (f - i0.astype(np.float32)).astype(np.float32)
    low = i0 < 0
    w1[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    w1[high], i0[high] = 0.0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    t = [torch.from_numpy(a).to(device) for a in (i0, i1, w0, w1)]
    return t[0], t[1], t[2], t[3]


def _resize_linear(
    x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None
) -> torch.Tensor:
    """``cv2.resize(x, (w, h), interpolation=INTER_LINEAR)`` of each ``[B, H, W]`` image:
    horizontal pass then vertical, float weights. ``scale`` (y, x): the source step per
    destination pixel; by default ``1 / (dst / src)`` as OpenCV computes it for a given size
    (for a given factor ``f`` OpenCV uses ``1 / f``)."""
    _, h, w = x.shape
    dh, dw = size
    sy, sx = scale if scale is not None else (1.0 / (dh / h), 1.0 / (dw / w))
    x0, x1, a0, a1 = _resize_axis_coeffs(dw, w, sx, x.device)
    y0, y1, b0, b1 = _resize_axis_coeffs(dh, h, sy, x.device)
    rows = x[:, :, x0] * a0 + x[:, :, x1] * a1  # [B, H, dw]
    return rows[:, y0, :] * b0[:, None] + rows[:, y1, :] * b1[:, None]


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
    """OpenCV's ``interpolateCubic``: weights of the taps at -1, 0, +1, +2 for the fraction t."""
    a = _CUBIC_A
    t1 = t + 1.0
    s = 1.0 - t
    c0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
    c1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    c2 = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
    c3 = 1.0 - c0 - c1 - c2
    return [c0, c1, c2, c3]


def _remap_cubic(
    images: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, base: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """``cv2.remap(img, x + u1, y + u2, INTER_CUBIC)`` (constant zero border) of the ``C``
    images ``[B, C, H, W]`` that share one map. Positions are used exactly (no 1/32 px
    rounding), as the installed OpenCV does for float maps."""
    b, c, h, w = images.shape
    gx, gy = base
    # positions beyond 3 px outside read only border zeros: clamping keeps the int cast sane
    mx = (gx + u1).clamp_(-3.0, w + 2.0)
    my = (gy + u2).clamp_(-3.0, h + 2.0)
    fx0 = torch.floor(mx)
    fy0 = torch.floor(my)
    wx = _cubic_weights(mx - fx0)
    wy = _cubic_weights(my - fy0)
    x0 = fx0.to(torch.int64)
    y0 = fy0.to(torch.int64)
    # zero-padded copy (1 px all round): every tap outside the image reads a zero
    padded = torch.zeros((b, h + 2, w + 2, c), dtype=images.dtype, device=images.device)
    padded[:, 1:-1, 1:-1, :] = images.permute(0, 2, 3, 1)
    table = padded.reshape(b * (h + 2) * (w + 2), c)
    offs = (torch.arange(b, device=images.device) * ((h + 2) * (w + 2))).view(b, 1, 1)
    cols = [(x0 + (k - 1)).clamp_(-1, w) + 1 for k in range(4)]
    out = None
    for i in range(4):
        row = ((y0 + (i - 1)).clamp_(-1, h) + 1) * (w + 2) + offs
        for k in range(4):
            term = table[(row + cols[k]).reshape(-1)].view(b, h, w, c) * (wy[i] * wx[k]).unsqueeze(
                -1
            )
            out = term if out is None else out.add_(term)
    assert out is not None
    return out.permute(0, 3, 1, 2)


def _median(x: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.medianBlur`` of float images (k = 3 or 5): median of the k×k window, border
    replicated."""
    r = k // 2
    p = torch.nn.functional.pad(x.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    win = p.unfold(1, k, 1).unfold(2, k, 1)  # [B, H, W, k, k] view
    return win.reshape(*x.shape, k * k).median(dim=-1).values


def _divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence with p = 0 before the first row/column (OpenCV's
    ``divergence``)."""
    d = p1.clone()
    d[:, :, 1:] -= p1[:, :, :-1]
    dy = p2.clone()
    dy[:, 1:] -= p2[:, :-1]
    return d.add_(dy)


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, zero on the last column (x) and the last row (y)."""
    ux = torch.zeros_like(u)
    uy = torch.zeros_like(u)
    ux[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    uy[:, :-1] = u[:, 1:] - u[:, :-1]
    return ux, uy


# --------------------------------------------------------------------------- the solver


class _Consts:
    """Per-warp constants of the working set: the warped gradient, |∇I1w|², λθ|∇I1w|², rho_c."""

    __slots__ = ("ix", "iy", "grad", "lg", "rho_c")

    def __init__(
        self,
        ix: torch.Tensor,
        iy: torch.Tensor,
        grad: torch.Tensor,
        lg: torch.Tensor,
        rho_c: torch.Tensor,
    ) -> None:
        self.ix, self.iy, self.grad, self.lg, self.rho_c = ix, iy, grad, lg, rho_c

    def select(self, keep: torch.Tensor) -> _Consts:
        return _Consts(*(getattr(self, n)[keep] for n in self.__slots__))


def _f32(x: float) -> float:
    """A double constant as OpenCV passes it to its float kernels."""
    return float(np.float32(x))


def _step(
    st: list[torch.Tensor], k: _Consts, l_t: float, theta: float, taut: float, gamma: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One inner iteration on the working set; returns the new state and each pair's summed
    squared update of u (float64, so its value does not depend on the batch's layout)."""
    u1, u2, p11, p12, p21, p22 = st[:6]
    use_gamma = len(st) > 6
    # estimateV: thresholding of rho = rho_c + ∇I1w·u (+ γ u3)
    rho = k.rho_c + (k.ix * u1 + k.iy * u2)
    if use_gamma:
        u3, p31, p32 = st[6:]
        rho = rho + gamma * u3
    coef = torch.where(k.grad > _FLT_EPSILON, -rho / k.grad, 0.0)
    coef = torch.where(rho > k.lg, -l_t, coef)
    coef = torch.where(rho < -k.lg, l_t, coef)
    v1 = u1 + coef * k.ix
    v2 = u2 + coef * k.iy
    # estimateU: u = v + θ div p, and the squared update
    n1 = v1 + theta * _divergence(p11, p12)
    n2 = v2 + theta * _divergence(p21, p22)
    d1 = n1 - u1
    d2 = n2 - u2
    e = d1 * d1 + d2 * d2
    new = [n1, n2]
    if use_gamma:
        n3 = (u3 + coef * gamma) + theta * _divergence(p31, p32)
        d3 = n3 - u3
        e = e + d3 * d3
    err = e.sum(dim=(1, 2), dtype=torch.float64)
    # estimateDualVariables: p = (p + τ/θ ∇u) / (1 + τ/θ |∇u|)
    ps = [(p11, p12), (p21, p22)] + ([(p31, p32)] if use_gamma else [])
    dual: list[torch.Tensor] = []
    for u, (pa, pb) in zip(new, ps, strict=True):
        ux, uy = _forward_gradient(u)
        ng = 1.0 + taut * torch.hypot(ux, uy)
        dual += [(pa + taut * ux) / ng, (pb + taut * uy) / ng]
    if use_gamma:
        return [n1, n2, *dual[:4], n3, *dual[4:]], err
    return [n1, n2, *dual], err


def _one_scale(
    i0: torch.Tensor,
    i1: torch.Tensor,
    u: list[torch.Tensor],
    prm: TVL1Params,
    iters: torch.Tensor,
) -> list[torch.Tensor]:
    """OpenCV's ``procOneScale`` on a batch; ``u`` = [u1, u2] (+ [u3]); returns the new u.
    ``iters`` (int64 [B]) counts each pair's inner iterations."""
    b, h, w = i0.shape
    dev = i0.device
    use_gamma = len(u) == 3
    seps = float(np.float32(prm.epsilon * prm.epsilon * h * w))
    l_t = _f32(prm.lambda_ * prm.theta)
    taut = _f32(prm.tau / prm.theta)
    theta = _f32(prm.theta)
    gamma = _f32(prm.gamma)
    inner, outer, med = prm.inner_iterations, prm.outer_iterations, prm.median_filtering

    i1x, i1y = _centered_gradient(i1)  # of the unwarped image, once per scale
    images = torch.stack([i1, i1x, i1y], dim=1)
    base = (
        torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w),
        torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1),
    )
    zeros = torch.zeros_like(i0)
    # state: u1, u2, p11, p12, p21, p22 (+ u3, p31, p32); p reset once per scale
    state = [u[0], u[1], zeros, zeros, zeros, zeros]
    if use_gamma:
        state += [u[2], zeros, zeros]
    for _ in range(prm.warps):
        warped = _remap_cubic(images, state[0], state[1], base)
        i1w, ix, iy = warped[:, 0], warped[:, 1], warped[:, 2]
        grad = ix * ix + iy * iy
        rho_c = i1w - ix * state[0] - iy * state[1] - i0
        consts = _Consts(ix, iy, grad, l_t * grad, rho_c)
        idx = torch.arange(b, device=dev)  # the pairs of the working set
        work = state
        for n in range(outer * inner):
            if n % inner == 0 and med > 1:
                work = [_median(work[0], med), _median(work[1], med), *work[2:]]
            work, err = _step(work, consts, l_t, theta, taut, gamma)
            iters.index_add_(0, idx, torch.ones_like(idx))
            done = err <= seps
            if bool(done.any()):
                state = _write_back(state, work, idx, b)
                keep = ~done
                if not bool(keep.any()):
                    work = []
                    break
                idx, work, consts = idx[keep], [t[keep] for t in work], consts.select(keep)
        if work:
            state = _write_back(state, work, idx, b)
    return [state[0], state[1]] + ([state[6]] if use_gamma else [])


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
