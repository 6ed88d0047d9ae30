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


def execute_original(proto: Any, x: np.ndarray) -> np.ndarray:
    """Run a model as another tool wrote it (old domains, symbolic batch) on the batch ``x``.

    Only what qonnx needs to execute it is changed: custom-op domains
    (:func:`edgeml.ingest.fix_domains`), the batch dimension (set to ``len(x)``) and
    inferred shapes. Used to compare the firmware with the user's original file.
    """
    import copy

    import onnxruntime as ort
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from edgeml.ingest import fix_domains

    ort.set_default_logger_severity(3)

    def with_batch(n: int) -> Any:
        p = copy.deepcopy(proto)
        fix_domains(p)
        inits = {t.name for t in p.graph.initializer}
        for vi in [*p.graph.input, *p.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if vi.name in inits or not dims:
                continue
            dims[0].Clear()
            dims[0].dim_value = n
        del p.graph.value_info[:]
        mw = ModelWrapper(p).transform(InferShapes())
        return mw, next(i.name for i in mw.graph.input if i.name not in inits)

    x = np.asarray(x, np.float32)
    try:  # the whole batch at once
        mw, iname = with_batch(len(x))
        out = execute_onnx(mw, {iname: x})[mw.graph.output[0].name]
    except Exception:  # a graph with the batch baked into a Reshape: one vector at a time
        mw, iname = with_batch(1)
        out = np.concatenate(
            [
                execute_onnx(mw, {iname: x[i : i + 1]})[mw.graph.output[0].name]
                for i in range(len(x))
            ]
        )
    return np.asarray(out, dtype=np.float64)
