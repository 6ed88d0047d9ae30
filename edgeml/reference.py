"""QONNX's own real-valued execution, the reference for *float-scale* approximations.

The golden model defines the hardware's integer semantics. For graphs whose
scales are all powers of two it equals QONNX's execution exactly; otherwise
the difference (fixed-point multipliers for real scales) is measured here and
reported beside the bit-exactness table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def execute_qonnx(model: Any, x: np.ndarray) -> np.ndarray:
    """Run ``qonnx.core.onnx_exec.execute_onnx`` vector by vector (graphs have batch 1)."""
    import onnxruntime as ort
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    ort.set_default_logger_severity(3)
    mw = model if isinstance(model, ModelWrapper) else ModelWrapper(str(Path(model)))
    iname = mw.graph.input[0].name
    oname = mw.graph.output[0].name
    outs = [
        execute_onnx(mw, {iname: x[i : i + 1].astype(np.float32)})[oname] for i in range(len(x))
    ]
    return np.concatenate(outs).astype(np.float64)
