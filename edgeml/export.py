"""QONNX export of Brevitas models and the cleanup every QONNX graph goes through.

:func:`clean_qonnx` is the single entry point for QONNX files from any tool
(Brevitas, FINN, QKeras / HGQ via the qonnx converter): it runs qonnx's
``cleanup_model``, ``ConvertToChannelsLastAndClean``, ``GemmToMatMul`` and
``cleanup_model`` again, the sequence that hls4ml's ONNX front end needs and that
was measured to convert Brevitas models bit-exactly (``../shared/DESIGN.md``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
from qonnx.core.modelwrapper import ModelWrapper

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError

log = logging.getLogger(__name__)

#: Op types a cleaned Brevitas design of this project may contain.
EDGE_OPS: frozenset[str] = frozenset(
    {"Transpose", "Quant", "Conv", "Relu", "MaxPool", "Flatten", "Reshape", "MatMul", "Add"}
)


#: Loggers whose warnings during export are noise (e.g. "torchvision is not installed").
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "onnxscript", "onnx_ir", "brevitas", "qonnx")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings, log records and stdout/stderr chatter of the exporters."""
    sink = io.StringIO()
    noisy = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(noisy, levels, strict=True):
                lg.setLevel(level)
    chatter = sink.getvalue().strip()
    if chatter:
        log.debug("exporter output:\n%s", chatter)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Parse and check an ONNX file; any failure is a :class:`CorruptFileError` naming ``path``."""
    path = Path(path)
    if not path.exists():
        raise CorruptFileError(f"ONNX file {path} does not exist; check the path or re-export it")
    if not path.is_file():
        raise CorruptFileError(f"ONNX path {path} is not a file")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise CorruptFileError(
            f"ONNX file {path} cannot be parsed ({type(exc).__name__}: {exc}); it is "
            "truncated or not an ONNX model - re-export it"
        ) from exc
    _check_proto(proto, str(path))
    return proto


def _check_proto(proto: onnx.ModelProto, where: str) -> None:
    """Reject protobufs that parsed but are not usable models (e.g. cut at a field boundary)."""
    graph = proto.graph
    if len(graph.node) == 0 or len(graph.input) == 0 or len(graph.output) == 0:
        raise CorruptFileError(
            f"ONNX file {where} has no graph (nodes={len(graph.node)}, inputs="
            f"{len(graph.input)}, outputs={len(graph.output)}); it is truncated or not a model"
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise CorruptFileError(
            f"ONNX file {where} fails onnx.checker ({type(exc).__name__}: {exc})"
        ) from exc


def _to_wrapper(
    model_or_path: ModelWrapper | onnx.ModelProto | str | Path,
) -> tuple[ModelWrapper, str]:
    if isinstance(model_or_path, ModelWrapper):
        return model_or_path, "<ModelWrapper>"
    if isinstance(model_or_path, onnx.ModelProto):
        _check_proto(model_or_path, "<ModelProto>")
        return ModelWrapper(model_or_path), "<ModelProto>"
    if isinstance(model_or_path, str | Path):
        return ModelWrapper(load_onnx(model_or_path)), str(model_or_path)
    raise ConfigError(
        f"clean_qonnx takes a path, an onnx.ModelProto or a qonnx ModelWrapper, "
        f"got {type(model_or_path).__name__}"
    )


def clean_qonnx(
    model_or_path: ModelWrapper | onnx.ModelProto | str | Path,
    out_path: str | Path | None = None,
) -> ModelWrapper:
    """Clean a QONNX model for hls4ml and the golden model; optionally save it to ``out_path``.

    Steps: ``cleanup_model`` -> ``ConvertToChannelsLastAndClean`` -> ``GemmToMatMul``
    -> ``cleanup_model``. Nothing here assumes Brevitas. An input file that is not
    valid ONNX raises :class:`CorruptFileError`; a qonnx transform that fails raises
    :class:`UnsupportedOpError` naming the step.
    """
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    model, where = _to_wrapper(model_or_path)
    steps = [
        ("cleanup_model", cleanup_model),
        ("ConvertToChannelsLastAndClean", lambda m: m.transform(ConvertToChannelsLastAndClean())),
        ("GemmToMatMul", lambda m: m.transform(GemmToMatMul())),
        ("cleanup_model (final)", cleanup_model),
    ]
    for name, step in steps:
        try:
            with _quiet():
                model = step(model)
        except Exception as exc:
            raise UnsupportedOpError(
                f"qonnx step {name} failed on {where} ({type(exc).__name__}: {exc}); "
                "the graph has ops or layouts qonnx cannot clean"
            ) from exc
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(out_path))
    log.debug(
        "cleaned QONNX %s: %s",
        where,
        " -> ".join(n.op_type for n in model.graph.node),
    )
    return model


def export_qonnx(model: object, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export a Brevitas QAT model to QONNX, clean it with :func:`clean_qonnx`, write ``path``.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 1, 8, 8)``. The model
    is exported from the CPU in eval mode and its mode is restored afterwards.
    """
    import torch
    from brevitas.export import export_qonnx as brevitas_export_qonnx

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"export_qonnx needs a torch.nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ConfigError(f"input_shape must be positive ints incl. batch, got {input_shape!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = list(model.parameters())
    if params and params[0].device.type != "cpu":
        raise ConfigError("export_qonnx needs the model on the CPU; call model.cpu() first")
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            with _quiet(), torch.no_grad():
                brevitas_export_qonnx(model, args=torch.zeros(shape), export_path=str(raw))
            cleaned = clean_qonnx(raw, path)
    finally:
        model.train(was_training)
    log.info("exported QONNX %s: %s", path, " -> ".join(n.op_type for n in cleaned.graph.node))
    return path
