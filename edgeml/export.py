"""QONNX export of Brevitas models and the cleanup every QONNX graph goes through.

:func:`clean_qonnx` is the single entry point for QONNX files from any tool
(Brevitas, FINN, QKeras / HGQ via the qonnx converter): it runs qonnx's
``cleanup_model``, ``ConvertToChannelsLastAndClean``, ``GemmToMatMul`` and
``cleanup_model`` again, the sequence that hls4ml's ONNX front end needs and that
was measured to convert Brevitas models bit-exactly (``../shared/DESIGN.md``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper

from edgeml.errors import ConfigError, CorruptFileError, InvalidTensorError, UnsupportedOpError

log = logging.getLogger(__name__)

#: Op types a cleaned Brevitas design of this project may contain.
EDGE_OPS: frozenset[str] = frozenset(
    {"Transpose", "Quant", "Conv", "Relu", "MaxPool", "Flatten", "Reshape", "MatMul", "Add"}
)


#: Loggers whose warnings during export are noise (e.g. "torchvision is not installed").
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "onnxscript", "onnx_ir", "brevitas", "qonnx")


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
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
    """Parse and check an ONNX file; any failure is a :class:`CorruptFileError` naming ``path``.

    Old custom-op domains (FINN's ``finn.custom_op.general``, Brevitas' ``onnx.brevitas``)
    are renamed and missing opset imports added before ``onnx.checker`` runs
    (:func:`edgeml.ingest.fix_domains`), so files from those tools are not refused.
    """
    proto = parse_onnx(path)
    check_proto(proto, str(path))
    return proto


def parse_onnx(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX file without checking it; a missing or unparsable file is a CorruptFileError."""
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
    return proto


def check_proto(proto: onnx.ModelProto, where: str) -> None:
    """Reject protobufs that parsed but are not usable models (e.g. cut at a field boundary)."""
    graph = proto.graph
    if len(graph.node) == 0 or len(graph.input) == 0 or len(graph.output) == 0:
        raise CorruptFileError(
            f"ONNX file {where} has no graph (nodes={len(graph.node)}, inputs="
            f"{len(graph.input)}, outputs={len(graph.output)}); it is truncated or not a model"
        )
    # Names, values and dimensions first: onnx.checker does not look at them, and a
    # NaN weight would otherwise only show up as a numpy warning (and INT64_MIN codes).
    for kind, names in (
        ("initializer", [t.name for t in graph.initializer]),
        ("graph input", [v.name for v in graph.input]),
        ("graph output", [v.name for v in graph.output]),
        ("value_info", [v.name for v in graph.value_info]),
    ):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        if dup:
            raise CorruptFileError(
                f"ONNX file {where} declares the {kind} name(s) {dup[:5]} more than once; "
                "the file is corrupt or was written wrongly: re-export it"
            )
    check_graph_tensors(graph, where)
    from edgeml.ingest import fix_domains

    for change in fix_domains(proto):  # before the checker, which refuses old domains
        log.info("%s: %s", where, change)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise CorruptFileError(
            f"ONNX file {where} fails onnx.checker ({type(exc).__name__}: {exc})"
        ) from exc


#: Largest dimension and element count of one tensor edgeml accepts. Edge designs are
#: many orders of magnitude smaller; a corrupted dimension is refused before numpy or
#: qonnx try to allocate it.
MAX_DIM = 1 << 31
MAX_ELEMENTS = 1 << 24

#: What each input of a QONNX quantizer is, for messages.
_ROLES: dict[str, tuple[str, ...]] = {
    "Quant": ("input", "scale", "zero point", "bit width"),
    "BipolarQuant": ("input", "scale"),
    # v1: ..., output bit width; v2: ..., output scale, output bit width
    "Trunc": (
        "input",
        "scale",
        "zero point",
        "input bit width",
        "output scale/bit width",
        "output bit width",
    ),
}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Tensor name -> "node 'X' (op Y, <role>)" for every node reading it."""
    out: dict[str, list[str]] = {}
    for k, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{k}"
        roles = _ROLES.get(node.op_type, ())
        for i, t in enumerate(node.input):
            role = roles[i] if i < len(roles) else f"input {i}"
            out.setdefault(t, []).append(f"node '{name}' (op {node.op_type}, {role})")
    return out


def _read_by(consumers: dict[str, list[str]], tensor: str) -> str:
    users = consumers.get(tensor, [])
    return f", read by {', '.join(users[:3])}" if users else ", read by no node"


def _check_dims(dims: list[int], what: str, where: str, allow_zero_first: bool = False) -> None:
    for k, d in enumerate(dims):
        if d < 0 or d > MAX_DIM or (d == 0 and not (allow_zero_first and k == 0)):
            raise InvalidTensorError(
                f"{what} in {where} has dimension {k} = {d} (shape {list(dims)}); dimensions "
                f"must be in 1..{MAX_DIM}. The file is corrupt or was written wrongly: re-export it"
            )
    n = int(np.prod([max(d, 1) for d in dims], dtype=object)) if dims else 1
    if n > MAX_ELEMENTS:
        raise InvalidTensorError(
            f"{what} in {where} has shape {list(dims)} = {n:,} elements; edgeml accepts at most "
            f"{MAX_ELEMENTS:,} per tensor (edge designs are far smaller). Re-export the model"
        )


def _tensor_values(t: onnx.TensorProto, what: str, where: str) -> np.ndarray:
    """Decode a TensorProto after checking its shape; undecodable data is a clear error."""
    from onnx import numpy_helper

    if list(t.dims) == [0]:  # an empty 1-D tensor: ONNX's "no value" (e.g. Resize's roi)
        return np.zeros(0)
    _check_dims(list(t.dims), what, where)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return np.zeros(0)  # external data was loaded by onnx.load, or is checked by onnx
    try:
        arr = numpy_helper.to_array(t)
    except Exception as exc:
        raise InvalidTensorError(
            f"{what} in {where} cannot be decoded ({type(exc).__name__}: {exc}): its data does "
            f"not match its shape {list(t.dims)} and type {t.data_type}. Re-export the model"
        ) from exc
    return np.asarray(arr)


def _check_finite(arr: np.ndarray, what: str, where: str) -> None:
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_nan = int(np.isnan(arr).sum())
        raise InvalidTensorError(
            f"{what} in {where} holds {n_nan} NaN and {int(bad.sum()) - n_nan} infinite "
            f"value(s) (first at index {first}: {arr[first]!r}); edgeml needs finite weights, "
            "scales, zero points and bit widths. Check the training run or re-export the model"
        )


#: Ops with a sliding window, whose kernel / stride / padding attributes are checked.
_WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "ConvTranspose", "LpPool"})


def check_graph_tensors(graph: onnx.GraphProto, where: str) -> None:
    """Refuse NaN/Inf values and zero, negative or absurd dimensions in a graph's tensors.

    Checks every initializer, every tensor-valued (or float) attribute, which covers
    ``Constant`` nodes and the Quant scale / zero point / bit width however they are
    stored, the graph inputs' dimensions, and the kernel / stride / padding of
    window ops (a corrupted padding would make qonnx allocate gigabytes). Each
    message names the tensor and the node(s) reading it. Raises
    :class:`~edgeml.errors.InvalidTensorError`.
    """
    from edgeml.golden import MAX_WINDOW

    users = _consumers(graph)
    for k, node in enumerate(graph.node):
        if node.op_type not in _WINDOW_OPS:
            continue
        for a in node.attribute:
            lo = 0 if a.name == "pads" else 1
            if a.name in ("kernel_shape", "strides", "dilations", "pads") and not all(
                lo <= v <= MAX_WINDOW for v in a.ints
            ):
                raise InvalidTensorError(
                    f"node '{node.name or f'{node.op_type}_{k}'}' (op {node.op_type}) in {where} "
                    f"has {a.name} {list(a.ints)}; allowed: {lo}..{MAX_WINDOW} each. The file "
                    "is corrupt or was written wrongly: re-export it"
                )
    for init in graph.initializer:
        what = f"initializer '{init.name}'{_read_by(users, init.name)}"
        _check_finite(_tensor_values(init, what, where), what, where)
    for k, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{k}"
        outs = ", ".join(f"'{o}'" for o in node.output)
        for a in node.attribute:
            what = f"attribute '{a.name}' of node '{name}' (op {node.op_type}, output {outs})"
            if node.op_type == "Constant" and node.output:
                what += _read_by(users, node.output[0])
            if a.type == onnx.AttributeProto.TENSOR:
                _check_finite(_tensor_values(a.t, what, where), what, where)
            elif a.type == onnx.AttributeProto.TENSORS:
                for t in a.tensors:
                    _check_finite(_tensor_values(t, what, where), what, where)
            elif a.type == onnx.AttributeProto.FLOAT:
                _check_finite(np.asarray([a.f]), what, where)
            elif a.type == onnx.AttributeProto.FLOATS:
                _check_finite(np.asarray(list(a.floats), np.float64), what, where)
    inits = {i.name for i in graph.initializer}
    for vi in graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        _check_dims(dims, f"graph input '{vi.name}'", where, allow_zero_first=True)


def check_dangling(graph: onnx.GraphProto, where: str) -> None:
    """Refuse a graph in which a node reads a tensor that nothing produces.

    qonnx's passes can leave such a graph (a weight transpose folded for one reader
    of a shared weight only); compiling it would fail far from the cause.
    """
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for k, node in enumerate(graph.node):
        missing = [i for i in node.input if i not in known]
        if missing:
            raise UnsupportedOpError(
                f"after cleaning, node '{node.name or f'{node.op_type}_{k}'}' (op "
                f"{node.op_type}) of {where} reads {missing}, which no node produces "
                "(qonnx left a dangling tensor); the graph cannot be compiled. Re-export "
                "the model, or report it with the file"
            )
        known.update(node.output)


def _wrap(proto: onnx.ModelProto, where: str) -> ModelWrapper:
    """qonnx's ModelWrapper, whose constructor checks the tensor shapes (with asserts)."""
    try:
        with quiet_tools():
            return ModelWrapper(proto)
    except Exception as exc:
        raise CorruptFileError(
            f"ONNX file {where} is refused by qonnx ({type(exc).__name__}: {exc}); the file is "
            "corrupt or was written wrongly: re-export it"
        ) from exc


def _to_wrapper(
    model_or_path: ModelWrapper | onnx.ModelProto | str | Path,
) -> tuple[ModelWrapper, str]:
    if isinstance(model_or_path, ModelWrapper):
        check_graph_tensors(model_or_path.graph, "<ModelWrapper>")
        return model_or_path, "<ModelWrapper>"
    if isinstance(model_or_path, onnx.ModelProto):
        proto = copy.deepcopy(model_or_path)  # check_proto may rename old domains
        check_proto(proto, "<ModelProto>")
        return _wrap(proto, "<ModelProto>"), "<ModelProto>"
    if isinstance(model_or_path, str | Path):
        return _wrap(load_onnx(model_or_path), str(model_or_path)), str(model_or_path)
    raise ConfigError(
        f"clean_qonnx takes a path, an onnx.ModelProto or a qonnx ModelWrapper, "
        f"got {type(model_or_path).__name__}"
    )


def clean_qonnx(
    model_or_path: ModelWrapper | onnx.ModelProto | str | Path,
    out_path: str | Path | None = None,
) -> ModelWrapper:
    """Clean a QONNX model for hls4ml and the golden model; optionally save it to ``out_path``.

    Steps: three fixes for forms qonnx mishandles (implicit window attributes, a
    bias-free Gemm, a constant quantizer shared by several readers), ``cleanup_model``
    -> ``ConvertToChannelsLastAndClean`` -> ``GemmToMatMul`` -> ``cleanup_model``, and
    a check that every node input is produced (:func:`check_dangling`). Nothing here assumes Brevitas. An input file that is not
    valid ONNX raises :class:`CorruptFileError`; a qonnx transform that fails raises
    :class:`UnsupportedOpError` naming the step.
    """
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    from edgeml.ingest import ExplicitWindowAttrs, GemmNoBiasToMatMul, UnshareConstantQuants

    model, where = _to_wrapper(model_or_path)
    steps = [
        # ONNX-legal forms qonnx's passes crash on or mangle (Brevitas' dynamo export
        # writes all three: implicit window attributes, bias-free Gemm, a layer reused
        # across unrolled steps)
        ("ExplicitWindowAttrs", lambda m: m.transform(ExplicitWindowAttrs())),
        ("GemmNoBiasToMatMul", lambda m: m.transform(GemmNoBiasToMatMul())),
        ("UnshareConstantQuants", lambda m: m.transform(UnshareConstantQuants())),
        ("cleanup_model", cleanup_model),
        ("ConvertToChannelsLastAndClean", lambda m: m.transform(ConvertToChannelsLastAndClean())),
        ("GemmToMatMul", lambda m: m.transform(GemmToMatMul())),
        ("cleanup_model (final)", cleanup_model),
    ]
    for name, step in steps:
        try:
            with quiet_tools():
                model = step(model)
        except Exception as exc:
            raise UnsupportedOpError(
                f"qonnx step {name} failed on {where} ({type(exc).__name__}: {exc}); "
                "the graph has ops or layouts qonnx cannot clean"
            ) from exc
    check_dangling(model.graph, where)
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
            with quiet_tools(), torch.no_grad():
                brevitas_export_qonnx(model, args=torch.zeros(shape), export_path=str(raw))
            cleaned = clean_qonnx(raw, path)
    finally:
        model.train(was_training)
    log.info("exported QONNX %s: %s", path, " -> ".join(n.op_type for n in cleaned.graph.node))
    return path
