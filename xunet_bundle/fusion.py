"""
Exact fast computation of a 3x3 (3x3x3) convolution applied to a nearest-upsampled feature map.

With an integer upsampling factor ``s``, output position ``o = s * p + phase`` of
``conv(nearest_upsample(x, s), w, padding=1)`` only reads source positions ``p - 1``, ``p`` and ``p + 1``, and the
kernel taps that land on the same source position add up. Along each dimension there are three kinds of phase:

- the first phase (``phase == 0``) reads ``p - 1`` with ``w[0]`` and ``p`` with ``w[1] + w[2]``;
- the last phase (``phase == s - 1``) reads ``p`` with ``w[0] + w[1]`` and ``p + 1`` with ``w[2]``;
- the middle phases (only when ``s >= 3``) read ``p`` alone with ``w[0] + w[1] + w[2]``.

So the whole result is a handful of small convolutions at the source's resolution with folded kernels, interleaved
into the output along phase axes, instead of a 3x3 convolution over an ``s**spatial_dims`` times larger copy.
Zero padding agrees on both sides: a tap outside the upsampled map is a tap outside the source.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = [
    "add_conv_nearest_upsampled",
    "conv_nd",
    "fold_kernels",
    "integer_scale",
    "nearest_resized_mean",
    "nearest_subsampled",
    "reference_conv_nearest_upsampled",
]

FIRST, MIDDLE, LAST = 0, 1, 2

# fold[kind] maps the three kernel taps (columns) onto the taps of the folded kernel (rows), for each phase class
_EDGE_FOLD = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # first, last: 2 taps each
_MIDDLE_FOLD = (((1.0, 1.0, 1.0),),)  # middle: 1 tap

Classes = tuple[int, ...]  # the phase class (FIRST, MIDDLE or LAST) along each spatial dimension


def conv_nd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0) -> torch.Tensor:
    """A convolution in 1D, 2D or 3D, following the input's number of dimensions."""
    if x.dim() == 4:
        return F.conv2d(x, weight, bias, padding=padding)
    if x.dim() == 5:
        return F.conv3d(x, weight, bias, padding=padding)
    return F.conv1d(x, weight, bias, padding=padding)


def integer_scale(size: list[int], source_size: list[int]) -> int:
    """The upsampling factor from ``source_size`` to ``size`` if it is one integer >= 2 for every dimension, else 0."""
    scale = size[0] // source_size[0]
    if scale < 2 or any(t != scale * s for t, s in zip(size, source_size)):
        return 0
    return scale


def nearest_resized_mean(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """
    Per-channel mean ``(batch, channels)`` of ``x`` resized to ``size`` by nearest interpolation; for an integer
    upsampling factor every source voxel is repeated equally often, so this is the mean of ``x`` itself.
    """
    if not integer_scale(size, list(x.shape[2:])):
        x = F.interpolate(x, size=size, mode="nearest")
    return x.mean(dim=list(range(2, x.dim())))


def nearest_subsampled(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """
    ``x`` resized to ``size`` by nearest interpolation, as a strided view when ``size`` divides the spatial size of
    ``x`` by one integer factor (nearest then reads source index ``factor * i``), else by ``F.interpolate``.
    """
    source_size = list(x.shape[2:])
    if source_size == size:
        return x
    factor = integer_scale(source_size, size)
    if not factor:
        return F.interpolate(x, size=size, mode="nearest")
    if x.dim() == 4:
        return x[:, :, ::factor, ::factor]
    if x.dim() == 5:
        return x[:, :, ::factor, ::factor, ::factor]
    return x[:, :, ::factor]


def reference_conv_nearest_upsampled(x: torch.Tensor, weight: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The straightforward form: resize ``x`` to ``size`` by nearest interpolation, then convolve (padding 1)."""
    return conv_nd(F.interpolate(x, size=size, mode="nearest"), weight, padding=1)


def _fold_weight(weight: torch.Tensor, middle_dims: tuple[bool, ...]) -> torch.Tensor:
    """
    Fold a ``(out, in, 3, ..., 3)`` kernel for one combination of edge / middle dimensions.

    Returns ``(classes, out, in, *taps)``, classes in row-major order over the edge dimensions (first, last).
    """
    folded = weight
    # fold in the parameters' precision; under autocast the convolution itself then casts the folded kernel
    with torch.autocast(weight.device.type, enabled=False):
        for dim, middle in enumerate(middle_dims):
            fold = torch.tensor(_MIDDLE_FOLD if middle else _EDGE_FOLD, dtype=weight.dtype, device=weight.device)
            # contract kernel axis 2 + 2 * dim (already folded axes come as (class, tap) pairs before it)
            axis = 2 + 2 * dim
            folded = torch.tensordot(folded, fold, dims=([axis], [2]))  # appends (class, tap) at the end
            folded = folded.movedim((-2, -1), (axis, axis + 1))
    out_chns, in_chns = weight.shape[:2]
    n = len(middle_dims)
    class_axes = [2 + 2 * d for d in range(n)]
    tap_axes = [3 + 2 * d for d in range(n)]
    folded = folded.permute(*class_axes, 0, 1, *tap_axes)
    return folded.reshape(-1, out_chns, in_chns, *folded.shape[-n:])


def _middle_combinations(scale: int, spatial_dims: int) -> list[tuple[bool, ...]]:
    """Whether each dimension is a middle one, for every combination that has phases at upsampling factor ``scale``."""
    return list(itertools.product((False, True) if scale > 2 else (False,), repeat=spatial_dims))


def fold_kernels(weight: torch.Tensor, scale: int) -> list[torch.Tensor]:
    """
    The kernels of the convolutions at the source's resolution that :func:`add_conv_nearest_upsampled` runs for the
    upsampling factor ``scale``: one per combination of edge / middle dimensions, each ``(classes * out, in, *taps)``.
    They depend on the weights only, so inference can fold them once.

    Args:
        weight: kernel ``(out, in, 3, ..., 3)``.
        scale: integer upsampling factor, at least 2.
    """
    combinations = _middle_combinations(scale, weight.dim() - 2)
    return [_fold_weight(weight, middle_dims).flatten(0, 1) for middle_dims in combinations]


def _phase_results(
    x: torch.Tensor, kernels: list[torch.Tensor], out_chns: int, scale: int
) -> list[tuple[torch.Tensor, list[Classes]]]:
    """
    The convolutions at the source's resolution: one per combination of edge / middle dimensions (with its kernel
    from :func:`fold_kernels`), each computing the phase classes of that combination at once, as
    ``(batch, classes, out, *spatial)`` with its list of classes (a class being a tuple of per-dimension kinds). Along
    an edge dimension the result is one longer than the source.
    """
    results = []
    for middle_dims, kernel in zip(_middle_combinations(scale, x.dim() - 2), kernels):
        pads = []
        for middle in reversed(middle_dims):
            pads += [0, 0] if middle else [1, 1]
        result = conv_nd(F.pad(x, pads), kernel)
        result = result.view(x.shape[0], -1, out_chns, *result.shape[2:])
        edge_classes = [[MIDDLE] if middle else [FIRST, LAST] for middle in middle_dims]
        results.append((result, list(itertools.product(*edge_classes))))
    return results


def _class_block(result: torch.Tensor, index: int, combination: Classes, source_size: list[int]) -> torch.Tensor:
    """The view of ``result`` (see :func:`_phase_results`) holding class ``index``, at the source's size."""
    block = result[:, index]
    for dim, kind in enumerate(combination):
        if kind != MIDDLE:  # first phase reads (p - 1, p): outputs 0..S-1; last reads (p, p + 1): 1..S
            block = block.narrow(2 + dim, 0 if kind == FIRST else 1, source_size[dim])
    return block


def _phase_view(out: torch.Tensor, combination: Classes, scale: int) -> torch.Tensor:
    """
    The view of ``out`` holding the phases of one class: ``(batch, out, S1, k1, S2, k2, ...)`` with ``k`` 1 for a
    first or last phase and ``scale - 2`` for the middle phases.
    """
    source_size = [size // scale for size in out.shape[2:]]
    phased = out.view(*out.shape[:2], *[d for s in source_size for d in (s, scale)])
    phase_slices = {FIRST: slice(0, 1), MIDDLE: slice(1, scale - 1), LAST: slice(scale - 1, scale)}
    target = [slice(None), slice(None)] + [s for kind in combination for s in (slice(None), phase_slices[kind])]
    return phased[tuple(target)]


class _AddPhases(torch.autograd.Function):
    """
    ``out += interleave(results)``, in place, with a backward that needs neither operand: the gradient of ``out`` is
    the incoming gradient itself and a class's gradient is the sum of the incoming gradient over the class's phases.

    Written as a function of its own because, through autograd, adding into strided slices of ``out`` makes the
    backward pass copy the whole gradient once per slice, selecting the classes out of each result zero-fills a
    result-sized gradient once per class, and interleaving out of place writes the full-resolution result several
    times.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, scale: int, classes: list[list[Classes]], *results: torch.Tensor):
        ctx.scale, ctx.classes = scale, classes
        ctx.result_shapes = [result.shape for result in results]
        ctx.mark_dirty(out)
        source_size = [size // scale for size in out.shape[2:]]
        for result, combinations in zip(results, classes):
            for index, combination in enumerate(combinations):
                block = _class_block(result, index, combination, source_size)
                for dim in range(len(source_size) - 1, -1, -1):  # (batch, out, S1, 1, S2, 1, ...): broadcast
                    block = block.unsqueeze(3 + dim)
                _phase_view(out, combination, scale).add_(block)  # ``+=`` would copy the slice back onto itself
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        source_size = [size // ctx.scale for size in grad.shape[2:]]
        result_grads = []
        for shape, combinations in zip(ctx.result_shapes, ctx.classes):
            result_grad = grad.new_zeros(shape)
            for index, combination in enumerate(combinations):
                view = _phase_view(grad, combination, ctx.scale)
                phase_sum = view.sum(dim=list(range(3, view.dim(), 2)))
                _class_block(result_grad, index, combination, source_size).copy_(phase_sum)
            result_grads.append(result_grad)
        return grad, None, None, *result_grads


def add_conv_nearest_upsampled(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, kernels: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """
    ``out + conv(nearest_resize(x, out.shape[2:]), weight, padding=1)`` (no bias), with the convolutions at the
    resolution of ``x``, added into ``out`` in place (the addition's backward needs neither operand). A leaf ``out``
    that requires grad is copied first.

    Falls back to the straightforward form, out of place, when the size of ``out`` is not an integer multiple (>= 2,
    the same along every dimension) of the spatial size of ``x``, as happens for inputs not divisible by 16.

    Args:
        out: accumulator ``(batch, out, *size)``.
        x: source feature ``(batch, in, *spatial)``.
        weight: kernel ``(out, in, 3, ..., 3)``.
        kernels: ``fold_kernels(weight, scale)`` for this upsampling factor, if already folded.
    """
    size = list(out.shape[2:])
    scale = integer_scale(size, list(x.shape[2:]))
    if not scale:
        return out + reference_conv_nearest_upsampled(x, weight, size)
    if out.is_leaf and out.requires_grad:
        out = out.clone()
    if kernels is None:
        kernels = fold_kernels(weight, scale)
    results, classes = zip(*_phase_results(x, kernels, weight.shape[0], scale))
    return _AddPhases.apply(out, scale, list(classes), *results)
