"""Exact minimal widths by range analysis (issue 13, part 1).

Brevitas' ``Int16Bias`` (and ``edgeml quantize``) store every bias as a 16-bit
``Quant`` at scale ``s_in * s_w``, although trained biases use a few of those
bits: the high bits only hold range, and in a fault campaign they are the most
harmful bits of the design. :func:`minimize_widths` rewrites every bias
``Quant`` of a cleaned QONNX model to the fewest bits that hold its codes
exactly, and (``trim_frac``) moves the codes' common trailing zero bits into the
scale. The values the ``Quant`` outputs are identical by construction, and this
is checked by re-executing the Quant in numpy: the golden model, hls4ml C-sim
and da4ml RTL of the result compute the same outputs with fewer stored bits.

The report also gives each Dense/Conv layer's accumulator (the sum after the
bias, which is what hls4ml's ``accum_t`` holds) as exact integer bounds from the
golden model's interval analysis, optionally from calibration inputs, and
hls4ml's inferred ``accum_t`` for the same layer. hls4ml infers ``accum_t``
worst-case from the input and weight types (on the jet tagger the narrower biases
leave it unchanged, 4-5 bits wider than the interval); :func:`hls_accum_settings`
gives the interval-minimal ``Precision.accum`` per layer, which C-sim computes
exactly. da4ml's RTL already sizes every wire by its own interval analysis and
hard-wires the biases as constants, so its Verilog is the same before and after.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeml.errors import ConfigError, EdgemlError, UnsupportedOpError
from edgeml.fixed import FixedType, type_for_range

#: ops whose output a bias ``Add`` follows (the golden model fuses it into the layer)
_LAYER_OPS = ("MatMul", "Gemm", "Conv")
#: constant layout ops allowed between a bias Quant and its consumer
_PASS_OPS = ("Reshape", "Identity", "Unsqueeze", "Flatten")
#: fewest bits a rewritten bias keeps (a 1-bit signed Quant is not a valid QONNX Quant)
MIN_BITS = 2


@dataclass
class LayerWidths:
    """Widths of one Dense/Conv layer before and after :func:`minimize_widths`.

    ``acc_*`` describe the layer's sum after the bias (codes at ``2**-acc_frac``):
    ``acc_interval`` is the interval-minimal type from the golden model's exact
    bounds, ``acc_calib`` the type the calibration inputs need (``None`` without
    them), ``hls_accum_before`` / ``hls_accum_after`` hls4ml's inferred ``accum_t``
    (``None`` when not measured). Types are ``ap_fixed<W,I>`` strings.
    """

    layer: str
    kind: str
    bias_quant: str = ""
    bias_size: int = 0
    bias_bits_before: int = 0
    bias_bits_after: int = 0
    bias_log2_scale_before: float | None = None
    bias_log2_scale_after: float | None = None
    bias_code_min: int = 0
    bias_code_max: int = 0
    weight_bits: int = 0
    stored_bits_before: int = 0
    stored_bits_after: int = 0
    acc_frac: int = 0
    acc_lo: int = 0
    acc_hi: int = 0
    acc_interval: str = ""
    acc_interval_bits: int = 0
    acc_calib_lo: int | None = None
    acc_calib_hi: int | None = None
    acc_calib: str | None = None
    acc_calib_bits: int | None = None
    hls_accum_before: str | None = None
    hls_accum_after: str | None = None


@dataclass
class WidthReport:
    """What :func:`minimize_widths` changed, layer by layer, and the stored-bit totals."""

    layers: list[LayerWidths] = field(default_factory=list)
    #: stored parameter bits as the fault campaign counts them (``count_param_sites``)
    total_bits_before: int = 0
    total_bits_after: int = 0
    trim_frac: bool = True
    changed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def bias_bits_before(self) -> int:
        return sum(lw.bias_size * lw.bias_bits_before for lw in self.layers)

    @property
    def bias_bits_after(self) -> int:
        return sum(lw.bias_size * lw.bias_bits_after for lw in self.layers)

    def layer(self, name: str) -> LayerWidths:
        """The entry of layer ``name`` (a golden op name such as ``MatMul_0``)."""
        for lw in self.layers:
            if lw.layer == name:
                return lw
        raise ConfigError(
            f"layer {name!r} is not in the width report; layers: "
            f"{', '.join(lw.layer for lw in self.layers) or '(none)'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trim_frac": self.trim_frac,
            "changed": self.changed,
            "total_bits_before": self.total_bits_before,
            "total_bits_after": self.total_bits_after,
            "bias_bits_before": self.bias_bits_before,
            "bias_bits_after": self.bias_bits_after,
            "notes": list(self.notes),
            "layers": [asdict(lw) for lw in self.layers],
        }

    def to_json(self) -> str:
        """The report as JSON text (what a run folder stores)."""
        return json.dumps(self.to_dict(), indent=2)


# --------------------------------------------------------------------------- graph helpers


@dataclass
class _BiasQuant:
    node: onnx.NodeProto
    layer: str  # the MatMul/Gemm/Conv node the bias belongs to (golden op name)


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A deep copy of ``model`` (a path is read with the golden model's clear errors)."""
    from edgeml.golden import load_model_wrapper

    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    if not isinstance(model, str | Path):
        raise ConfigError(
            f"model must be an onnx.ModelProto or a path to a cleaned QONNX file, got "
            f"{type(model).__name__}"
        )
    return copy.deepcopy(load_model_wrapper(model).model)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _node_names(graph: onnx.GraphProto) -> dict[int, str]:
    """Golden op names: the node's name, else ``<OpType>_<index>`` (as the golden model names it)."""
    return {i: n.name or f"{n.op_type}_{i}" for i, n in enumerate(graph.node)}


def _bias_quants(graph: onnx.GraphProto) -> tuple[list[_BiasQuant], list[str]]:
    """Every ``Quant`` of a constant that is a MatMul/Gemm/Conv layer's bias, and notes on skips."""
    inits = {i.name for i in graph.initializer}
    names = _node_names(graph)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    consumers: dict[str, list[tuple[int, int]]] = {}
    for i, n in enumerate(graph.node):
        for k, t in enumerate(n.input):
            consumers.setdefault(t, []).append((i, k))
    found: list[_BiasQuant] = []
    notes: list[str] = []
    for i, n in enumerate(graph.node):
        if n.op_type != "Quant" or not n.input or n.input[0] not in inits:
            continue
        t, hops = n.output[0], 0
        while hops < 4:
            cons = consumers.get(t, [])
            if len(cons) != 1:
                break
            ci, ck = cons[0]
            c = graph.node[ci]
            if c.op_type in _PASS_OPS and ck == 0:
                t, hops = c.output[0], hops + 1
                continue
            if c.op_type in ("Gemm", "Conv") and ck == 2:
                found.append(_BiasQuant(n, names[ci]))
            elif c.op_type == "Add":
                other = c.input[1 - ck]
                pi = producer.get(other)
                if pi is not None and graph.node[pi].op_type in _LAYER_OPS:
                    found.append(_BiasQuant(n, names[pi]))
                else:
                    notes.append(
                        f"{names[i]}: a quantized constant added to a tensor that is not a "
                        "MatMul/Gemm/Conv output; left as it is"
                    )
            break
    return found, notes


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise UnsupportedOpError(f"'{name}' is not an initializer (a bias Quant needs constant inputs)")


def _set_input(graph: onnx.GraphProto, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
    """Give ``node`` input ``k`` the constant ``value`` (in place if nothing else reads it)."""
    name = node.input[k]
    users = sum(1 for n in graph.node for i in n.input if i == name)
    old = _init(graph, name)
    value = np.asarray(value)
    if value.size == old.size:
        value = value.reshape(old.shape)
    tensor = numpy_helper.from_array(value.astype(old.dtype), name)
    if users == 1:
        for j, t in enumerate(graph.initializer):
            if t.name == name:
                graph.initializer[j].CopyFrom(tensor)
                return
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    new, j = f"{name}_minw", 0
    while new in taken:
        j += 1
        new = f"{name}_minw{j}"
    tensor.name = new
    graph.initializer.append(tensor)
    node.input[k] = new


@dataclass
class _QuantParams:
    x: np.ndarray
    scale: np.ndarray
    bits: int
    signed: bool
    narrow: bool
    mode: str


def _quant_params(graph: onnx.GraphProto, node: onnx.NodeProto) -> _QuantParams:
    x = _init(graph, node.input[0]).astype(np.float64)
    scale = _init(graph, node.input[1]).astype(np.float64)
    zp = _init(graph, node.input[2])
    bw = _init(graph, node.input[3]).reshape(-1)
    if np.any(zp != 0) or bw.size != 1 or bw[0] != int(bw[0]):
        raise UnsupportedOpError(
            f"bias Quant '{node.name}': zero point {zp.ravel()[:4]} and bit width {bw}; "
            "edgeml needs a zero zero-point and one integer bit width"
        )
    mode = str(_attr(node, "rounding_mode", "ROUND")).upper()
    return _QuantParams(
        x,
        scale,
        int(bw[0]),
        bool(_attr(node, "signed", 1)),
        bool(_attr(node, "narrow", 0)),
        "HALF_EVEN" if mode == "ROUND" else mode,
    )


def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def _quant(x: np.ndarray, scale: np.ndarray, bits: int, p: _QuantParams) -> np.ndarray:
    """QONNX ``Quant`` of constant ``x`` in float64: integer codes (times ``scale`` = output)."""
    from edgeml.golden import FLOAT_ROUNDING

    lo, hi = _int_range(bits, p.signed, p.narrow)
    return FLOAT_ROUNDING[p.mode](np.clip(x / scale, lo, hi)).astype(np.int64)


def _min_bits(codes: np.ndarray, signed: bool, narrow: bool) -> int:
    """Fewest bits (>= MIN_BITS) whose Quant range holds every code."""
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    bits = MIN_BITS
    while True:
        qlo, qhi = _int_range(bits, signed, narrow)
        if qlo <= lo and hi <= qhi:
            return bits
        bits += 1


def _trailing_zeros(codes: np.ndarray) -> int:
    """Common trailing zero bits of the non-zero codes (0 if all are zero)."""
    nz = np.abs(codes[codes != 0])
    if nz.size == 0:
        return 0
    low = np.bitwise_and(nz, -nz)  # lowest set bit of each
    return int(np.log2(int(low.min())))


def _log2(scale: np.ndarray) -> float | None:
    """log2 of a per-tensor scale (``None`` for per-channel scales)."""
    s = np.unique(np.asarray(scale, np.float64).reshape(-1))
    return float(math.log2(float(s[0]))) if s.size == 1 else None


# --------------------------------------------------------------------------- analysis


def _compile(model: onnx.ModelProto) -> tuple[Any, dict[str, tuple[int, int]]]:
    """The golden model of ``model`` and its compiler's exact code bounds per tensor."""
    from edgeml.golden import GoldenModel

    return GoldenModel.from_onnx_with_bounds(copy.deepcopy(model))


def _layer_bits(op: Any) -> tuple[int, int]:
    """(weight bits, bias bits) stored by a golden Dense/Conv, as ``count_param_sites`` counts."""
    w = 0 if op.structural else int(op.weight.size * op.weight_type.width)
    b = int(op.bias.size * op.bias_type.width) if op.bias is not None and op.bias_type else 0
    return w, b


def accumulator_ranges(
    golden: Any, x_codes: np.ndarray, batch: int = 4096
) -> dict[str, tuple[int, int]]:
    """Observed (min, max) code of every Dense/Conv layer's output on calibration inputs."""
    names = {op.output: op.name for op in golden.param_ops}
    out: dict[str, tuple[int, int]] = {}
    for i in range(0, len(x_codes), batch):
        _, env = golden.run(np.asarray(x_codes[i : i + batch]), trace=True)
        for t, name in names.items():
            lo, hi = int(env[t].min()), int(env[t].max())
            if name in out:
                lo, hi = min(lo, out[name][0]), max(hi, out[name][1])
            out[name] = (lo, hi)
    return out


def hls_accum_types(model: onnx.ModelProto | str | Path, input_type: FixedType) -> dict[str, str]:
    """hls4ml's inferred ``accum_t`` per Dense/Conv layer (keyed by the QONNX node name).

    Converts ``model`` with edgeml's hls4ml configuration (no compile, no files
    kept) and reads each layer's ``accum_t`` after hls4ml's precision inference.
    """
    import tempfile

    from edgeml.hls import layer_config, quiet_hls4ml

    with quiet_hls4ml("import"):
        import hls4ml
        from qonnx.core.modelwrapper import ModelWrapper

    proto = _load(model)
    mw = ModelWrapper(proto)
    in_name = mw.graph.input[0].name
    result: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgeml-minwidth-") as tmp:
        cfg = layer_config(
            mw, Path("model.onnx"), "Vitis", in_name, input_type, None, "fixed<16,6>", 1
        )
        with quiet_hls4ml("convert_from_onnx_model"):
            hm = hls4ml.converters.convert_from_onnx_model(
                mw,
                output_dir=tmp,
                project_name="minwidth",
                backend="Vitis",
                io_type="io_parallel",
                hls_config=cfg,
            )
        layer_names = [n.name for n in proto.graph.node if n.op_type in _LAYER_OPS]
        for layer in hm.get_layers():
            if "accum_t" not in layer.types:
                continue
            for qname in layer_names:
                if layer.name == qname or layer.name.endswith("_" + qname):
                    result[qname] = str(layer.types["accum_t"].precision.definition_cpp())
    return result


def hls_accum_settings(report: WidthReport) -> dict[str, str]:
    """hls4ml ``Precision.accum`` per Dense/Conv layer at the interval-minimal width.

    Keys are cleaned-QONNX node names (hls4ml's ``LayerName`` keys), values hls4ml
    type strings such as ``fixed<18,7>``. Exact by construction: the accumulator keeps
    every fractional bit (the layer's output grid), and its final value (bias
    included) lies inside the interval, so even a partial sum that left the range
    wraps back (two's complement). edgeml's ``layer_types`` cannot express this: it
    forces a MatMul's *result*, which unfuses the bias Add into a separate layer and
    leaves ``accum_t`` as inferred; apply these with :func:`apply_hls_accum`.
    """
    return {
        lw.layer: lw.acc_interval.replace("ap_fixed", "fixed").replace("ap_ufixed", "ufixed")
        for lw in report.layers
        if lw.acc_interval
    }


def apply_hls_accum(config: dict[str, Any], settings: dict[str, str]) -> dict[str, Any]:
    """Set ``config['LayerName'][layer]['Precision']['accum']`` for each of ``settings``
    (an hls4ml config from ``config_from_onnx_model(granularity='name')``); returns it."""
    layers = config.get("LayerName")
    if not isinstance(layers, dict):
        raise ConfigError("the hls4ml config has no 'LayerName' section (use granularity='name')")
    for name, t in settings.items():
        if name not in layers:
            raise ConfigError(
                f"hls accumulator setting for {name!r}: no such hls4ml layer; known names: "
                f"{', '.join(layers)}"
            )
        layers[name].setdefault("Precision", {})["accum"] = t
    return config


# --------------------------------------------------------------------------- rewrite


def _rewrite(
    model: onnx.ModelProto, trim_frac: bool, golden: Any
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Rewrite every bias Quant of ``model`` in place; per layer what changed."""
    graph = model.graph
    quants, notes = _bias_quants(graph)
    ops = {op.name: op for op in golden.param_ops}
    done: dict[str, dict[str, Any]] = {}
    for bq in quants:
        node = bq.node
        p = _quant_params(graph, node)
        codes = _quant(p.x, p.scale, p.bits, p)
        before = codes * p.scale
        k = _trailing_zeros(codes) if trim_frac else 0
        op = ops.get(bq.layer)
        if k and op is not None and op.bias is not None:
            # a bias on a finer grid than the accumulator sets the layer's output grid:
            # a coarser bias would change it (and every code downstream), so keep its scale
            frac_acc = golden.tensors[op.output].type.frac - op.acc_shift
            bias_log2 = _log2(p.scale)
            if bias_log2 is None or -bias_log2 > frac_acc:
                k = 0
        new_scale = p.scale * 2.0**k
        new_codes = codes >> k if k else codes
        bits = _min_bits(new_codes, p.signed, p.narrow)
        check = _quant(p.x, new_scale, bits, p)
        if not (np.array_equal(check, new_codes) and np.array_equal(check * new_scale, before)):
            raise EdgemlError(
                f"internal error: rewriting bias Quant '{node.name}' to {bits} bits at scale "
                f"x2**{k} changed its output; please report this with the model"
            )
        if bits > p.bits or (bits == p.bits and k == 0):
            bits, new_scale, k = p.bits, p.scale, 0
        else:
            _set_input(graph, node, 1, new_scale)
            _set_input(graph, node, 3, np.asarray(float(bits)))
        done[bq.layer] = {
            "quant": node.name,
            "size": int(codes.size),
            "bits_before": p.bits,
            "bits_after": bits,
            "log2_before": _log2(p.scale),
            "log2_after": _log2(new_scale),
            "code_min": int(new_codes.min()) if codes.size else 0,
            "code_max": int(new_codes.max()) if codes.size else 0,
        }
    return done, notes


def minimize_widths(
    model: onnx.ModelProto | str | Path,
    *,
    trim_frac: bool = True,
    calib_x: np.ndarray | None = None,
    hls_input_type: FixedType | None = None,
) -> tuple[onnx.ModelProto, WidthReport]:
    """Rewrite every bias ``Quant`` of a cleaned QONNX model to its exact minimal width.

    Each bias gets the fewest bits that hold its integer codes (``narrow`` and
    ``signed`` respected, at least 2); with ``trim_frac`` the codes' common
    trailing zero bits move into the scale (``scale * 2**k``, ``bits - k``).
    The Quant's output values are unchanged (checked in numpy), so every level
    computes the same outputs; the golden model's ``bias_type`` narrows and the
    fault sites fall by exactly the bits removed.

    Args:
        model: cleaned QONNX (``onnx.ModelProto`` or path; not modified).
        trim_frac: also drop the codes' common trailing zero bits.
        calib_x: optional input codes; their observed accumulator ranges are reported.
        hls_input_type: if given, hls4ml's inferred ``accum_t`` before and after is
            reported (hls4ml conversion without compilation, about a second).

    Returns:
        The rewritten model (a new ``ModelProto``) and its :class:`WidthReport`.

    Raises:
        CorruptFileError: the file is missing or not ONNX.
        UnsupportedOpError: the model is not a QONNX graph edgeml's golden model takes.
    """
    proto = _load(model)
    if not any(n.op_type in ("Quant", "BipolarQuant") for n in proto.graph.node):
        raise UnsupportedOpError(
            "the model has no Quant nodes: it is not a QONNX design. Quantize it first "
            "(`edgeml quantize` for a float ONNX file, or Brevitas QAT and export_qonnx)"
        )
    g0, bounds = _compile(proto)
    new = copy.deepcopy(proto)
    done, notes = _rewrite(new, trim_frac, g0)
    g1, _ = _compile(new) if done else (g0, bounds)
    if g1.output_type != g0.output_type or g1.input_type != g0.input_type:
        raise EdgemlError(
            f"internal error: minimal bias widths changed the design's I/O types "
            f"({g0.output_type.hls()} -> {g1.output_type.hls()}); please report this"
        )
    from edgeml.fault_injection.sites import count_param_sites

    report = WidthReport(
        total_bits_before=count_param_sites(g0),
        total_bits_after=count_param_sites(g1),
        trim_frac=trim_frac,
        notes=notes,
    )
    if not done:
        report.notes.append("no bias Quant found: the model is returned unchanged")
    calib = accumulator_ranges(g0, calib_x) if calib_x is not None else {}
    hls0 = hls1 = {}
    if hls_input_type is not None:
        hls0 = hls_accum_types(proto, hls_input_type)
        hls1 = hls_accum_types(new, hls_input_type) if done else hls0
    ops1 = {op.name: op for op in g1.param_ops}
    for op in g0.param_ops:
        w0, b0 = _layer_bits(op)
        w1, b1 = _layer_bits(ops1[op.name])
        t = g0.tensors[op.output].type
        lo, hi = bounds[op.output]
        lw = LayerWidths(
            layer=op.name,
            kind=op.kind,
            weight_bits=w0,
            stored_bits_before=w0 + b0,
            stored_bits_after=w1 + b1,
            acc_frac=t.frac,
            acc_lo=lo,
            acc_hi=hi,
            acc_interval=type_for_range(lo, hi, t.frac).hls(),
            acc_interval_bits=type_for_range(lo, hi, t.frac).width,
            hls_accum_before=hls0.get(op.name),
            hls_accum_after=hls1.get(op.name),
        )
        d = done.get(op.name)
        if d is not None:
            lw.bias_quant = d["quant"]
            lw.bias_size = d["size"]
            lw.bias_bits_before, lw.bias_bits_after = d["bits_before"], d["bits_after"]
            lw.bias_log2_scale_before = d["log2_before"]
            lw.bias_log2_scale_after = d["log2_after"]
            lw.bias_code_min, lw.bias_code_max = d["code_min"], d["code_max"]
        if op.name in calib:
            clo, chi = calib[op.name]
            ct = type_for_range(clo, chi, t.frac)
            lw.acc_calib_lo, lw.acc_calib_hi = clo, chi
            lw.acc_calib, lw.acc_calib_bits = ct.hls(), ct.width
        report.layers.append(lw)
    report.changed = report.total_bits_after != report.total_bits_before
    return new, report


def narrower_by_one(model: onnx.ModelProto | str | Path, layer: str) -> onnx.ModelProto:
    """``model`` with layer ``layer``'s bias Quant one bit narrower (scale kept).

    Meant for a minimised model: its widest bias codes then saturate, which is
    how a test proves the width is minimal.
    """
    proto = _load(model)
    quants, _ = _bias_quants(proto.graph)
    for bq in quants:
        if bq.layer != layer:
            continue
        p = _quant_params(proto.graph, bq.node)
        if p.bits - 1 < MIN_BITS:
            raise ConfigError(
                f"the bias of {layer} has {p.bits} bits; one fewer is below the minimum {MIN_BITS}"
            )
        _set_input(proto.graph, bq.node, 3, np.asarray(float(p.bits - 1)))
        return proto
    raise ConfigError(
        f"layer {layer!r} has no bias Quant; layers with one: "
        f"{', '.join(b.layer for b in quants) or '(none)'}"
    )


def minimality_check(model: onnx.ModelProto | str | Path, x_codes: np.ndarray) -> dict[str, int]:
    """For each layer with a bias: vectors of ``x_codes`` whose golden outputs change when
    that bias is one bit narrower than in ``model``.

    0 means the saturated codes are masked downstream on these inputs (e.g. a
    large negative bias before a ReLU): that width is minimal for the stored
    codes, yet one bit fewer would not show at the outputs.
    """
    from edgeml.golden import GoldenModel

    proto = _load(model)
    ref = GoldenModel.from_onnx(copy.deepcopy(proto)).predict(x_codes)
    out: dict[str, int] = {}
    for bq in _bias_quants(proto.graph)[0]:
        if _quant_params(proto.graph, bq.node).bits - 1 < MIN_BITS:
            continue
        got = GoldenModel.from_onnx(narrower_by_one(proto, bq.layer)).predict(x_codes)
        out[bq.layer] = int((got != ref).reshape(len(ref), -1).any(axis=1).sum())
    return out


def format_table(report: WidthReport) -> str:
    """A plain-text table of ``report`` (one row per layer, then the totals)."""
    head = (
        f"{'layer':<12} {'bias bits':>10} {'bias log2 scale':>16} {'acc (interval)':>16} "
        f"{'acc (calib)':>14} {'acc (hls4ml)':>28} {'stored bits':>14}"
    )
    rows = [head, "-" * len(head)]

    def lg(v: float | None) -> str:
        return "ch" if v is None else f"{v:g}"

    for lw in report.layers:
        bias = f"{lw.bias_bits_before}->{lw.bias_bits_after}" if lw.bias_quant else "-"
        scale = (
            f"{lg(lw.bias_log2_scale_before)}->{lg(lw.bias_log2_scale_after)}"
            if lw.bias_quant
            else "-"
        )
        hls = (
            f"{lw.hls_accum_before}->{lw.hls_accum_after}"
            if lw.hls_accum_before is not None
            else "-"
        )
        rows.append(
            f"{lw.layer:<12} {bias:>10} {scale:>16} {lw.acc_interval:>16} "
            f"{lw.acc_calib or '-':>14} {hls:>28} "
            f"{lw.stored_bits_before:>6}->{lw.stored_bits_after:<6}"
        )
    rows.append(
        f"total stored bits {report.total_bits_before} -> {report.total_bits_after} "
        f"(biases {report.bias_bits_before} -> {report.bias_bits_after})"
    )
    rows.extend(f"note: {n}" for n in report.notes)
    return "\n".join(rows)


def section_html(doc: dict[str, Any]) -> str:
    """The report's "Minimal widths" section from ``minwidth.json`` (``compress.min_widths``)."""
    import html

    def e(v: Any) -> str:
        return html.escape("-" if v is None else str(v))

    rows = "".join(
        f"<tr><td>{e(lw['layer'])}</td><td>{e(lw['bias_bits_before'])} -> "
        f"{e(lw['bias_bits_after'])}</td><td>{e(lw.get('hls_accum_before'))} -> "
        f"{e(lw.get('acc_interval'))}</td><td>{e(lw.get('acc_calib'))}</td>"
        f"<td>{lw['stored_bits_before']:,} -> {lw['stored_bits_after']:,}</td></tr>"
        for lw in doc.get("layers", [])
    )
    return (
        "<h2>Minimal widths (compress.min_widths)</h2>"
        f"<p>Every bias holds its trained codes in the fewest bits; accumulators are sized by "
        f"the golden model's interval analysis. Stored parameter bits "
        f"{doc['total_bits_before']:,} -> {doc['total_bits_after']:,} (biases "
        f"{doc['bias_bits_before']:,} -> {doc['bias_bits_after']:,}); every output is unchanged "
        "(checked at export, and by verify at every level).</p>"
        "<table><thead><tr><th>layer</th><th>bias bits</th><th>accumulator (hls4ml inferred "
        "-> interval-minimal)</th><th>observed on training inputs</th><th>stored bits</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )
