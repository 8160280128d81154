"""fastinst-rt: real-time instance segmentation with FastInst, from checkpoint to deployment.

from fastinst_rt import Segmenter
res = Segmenter("fastinst-r50-d1").predict("image.jpg")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .runtime.results import Results
from .runtime.segmenter import Segmenter

if TYPE_CHECKING:
    from .modeling.fastinst import FastInst

__all__ = ["Segmenter", "Results", "load_model", "__version__"]
__version__ = "0.1.0"


def load_model(model: str | os.PathLike, device: str = "cpu") -> FastInst:
    """Build a FastInst ``nn.Module`` (eval mode) from a checkpoint file or zoo name.

    Official Detectron2 ``.pth`` files need no config: the architecture is read off the tensors. The returned
    module carries ``.info`` (a ``ModelInfo``: variant, config, class names, test size, source file and hash) for
    reading; functions that need it take it explicitly, e.g. ``export_onnx(net, "x.onnx", info=net.info)``.
    """
    from .checkpoint import load_checkpoint

    net, info = load_checkpoint(model, device)
    net.info = info
    return net
