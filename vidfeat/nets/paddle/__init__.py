"""The authors' PaddlePaddle (Fluid) StNet / TSN parameter files: a safe reader and the strict
mapping of their parameter names onto vidfeat's :class:`~vidfeat.nets.segment.StNet` and
:class:`~vidfeat.nets.segment.TSN`.

Modules, read top to bottom:

    rules    the limits of the format and of the networks (shapes, sizes, nesting), the numpy
             globals and dtypes an array pickle may use
    reader   :class:`FluidReader` and :func:`load_pdparams`: the file, read without unpickling
    mapping  what a file holds (:func:`describe_params`), the name mapping
             (:func:`paddle_mapping`) and :func:`state_dict_from_paddle`

**File format.** ``fluid.save`` (and ``paddle.static.save``, ``paddle.save`` of a state dict)
writes ``NAME.pdparams``, a pickle (protocol 2 in the Fluid 1.x releases, up to 4 later) of
``{parameter name: numpy array}``, sometimes with a metadata dict of names
(``StructuredToParameterName@@``). A pickle can name any callable, and numpy's own rebuilders
can be turned into a segfault (an object dtype whose raw bytes become pointers) or a huge array
from a small file (zero strides), so :func:`load_pdparams` does not unpickle: it reads the
opcodes of exactly that format itself, with the limits of what the network can be, and refuses
anything else with one :class:`~vidfeat.errors.ConfigError` naming the file and the problem.

**Names** (``PaddleCV/video/models/stnet/stnet_res_model.py``, ``tsn/tsn_res_model.py``):

- ResNet, explicit: ``conv1_weights`` + ``bn_conv1_{scale,offset,mean,variance}``;
  ``res{S}{b}_branch2{a,b,c}_weights`` + ``bn{S}{b}_branch2{a,b,c}_*``; the projection shortcut
  ``res{S}a_branch1_weights`` + ``bn{S}a_branch1_*``. S = 2..5 (timm ``layer1..4``); block b is
  a, b, c, ... except in Res4 of ResNet-101/152 (a, b1, b2, ...).
- StNet's temporal Xception block, named layers ``xception_{bn, att_conv, att_2, bndw, att1,
  att1_2, dw, bn2}`` with ``.w_0`` / ``.b_0`` (BN: + ``.w_1`` mean, ``.w_2`` variance).
- Auto-numbered, so the numbers depend on what the program built before: the TMB convs
  ``conv3d_<i>.{w_0,b_0}`` ``[C, C, 3, 1, 1]``, the TMB BNs ``batch_norm_<j>.{w_0,b_0,w_1,w_2}``,
  the classifier ``fc_<k>.{w_0,b_0}`` with ``w_0`` ``[in, K]`` (a torch Linear weight
  transposed). They are matched by role (prefix), then shape, then order — never by number.

The mapping is strict: every tensor of the file is consumed and every tensor of the network is
filled (BN ``num_batches_tracked`` counters aside), or :class:`~vidfeat.errors.ConfigError`
lists the missing, unexpected and mis-shaped names.
"""

from vidfeat.nets.paddle.mapping import (
    RESNET_DEPTHS,
    TXB_LAYERS,
    Entry,
    Mapping,
    PaddleFile,
    describe_params,
    paddle_mapping,
    resnet_entries,
    state_dict_from_paddle,
)
from vidfeat.nets.paddle.reader import FluidReader, load_pdparams
from vidfeat.nets.paddle.rules import METADATA_KEYS, NUMERIC_DTYPES, shape_problem

__all__ = [
    "METADATA_KEYS",
    "NUMERIC_DTYPES",
    "RESNET_DEPTHS",
    "TXB_LAYERS",
    "Entry",
    "FluidReader",
    "Mapping",
    "PaddleFile",
    "describe_params",
    "load_pdparams",
    "paddle_mapping",
    "resnet_entries",
    "shape_problem",
    "state_dict_from_paddle",
]
