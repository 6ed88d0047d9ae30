"""Keras 3 front end: QKeras-style (HGQ2's ``qkeras`` compat API) and HGQ2 models to QONNX.

A ``.keras`` file holding a chain of HGQ2 / QKeras-compat layers is written as a
QONNX graph in which every quantizer is one exact ``Quant`` node, so that the
file then takes edgeml's normal route (``clean_qonnx`` -> golden -> hls4ml -> RTL).

What "exact" means here: the Keras model's own inference forward pass
(``model(x)``: HGQ2 quantizers are fixed-point ops computed in float32) equals the
golden model's dequantized output bit for bit. HGQ2 semantics mirrored:

* a fixed-point quantizer has ``k`` (sign), ``i`` (integer bits, no sign) and
  ``f`` (fractional bits); its codes are ``x * 2**f`` in ``[-k*2**(i+f), 2**(i+f)-1]``
  (``SAT``) or ``[-(2**(i+f)-1), ...]`` (``SAT_SYM``). Note that HGQ2's
  ``quantized_bits(bits, integer)`` counts ``bits`` *without* the sign bit, unlike
  the original QKeras: ``quantized_bits(6, 0)`` is a 7-bit signed type here;
* rounding ``RND_CONV`` (ties to even) is QONNX ``ROUND``; ``TRN`` is ``FLOOR``;
  ``RND`` (ties toward +inf; QONNX has no such mode and hls4ml reads only ROUND
  and FLOOR) is ``Add(2**-(f+1))`` followed by a ``FLOOR`` Quant, or ``ROUND``
  where no tie can occur (the input is no finer than the output grid);
  stochastic modes round deterministically at inference, like their base mode;
* ``WRAP`` overflow is refused (edgeml's golden model saturates) unless
  ``wrap_as_sat=True``, which is then recorded in the notes;
* constant weights and biases are taken as the values Keras uses (``qkernel`` /
  ``qbias``) and written as float initializers followed by a ``Quant`` that
  reproduces them exactly, at the quantizer's declared type when it is
  homogeneous, else at the finest scale they need (heterogeneous HGQ2 weights);
* heterogeneous (per-element) *activation* quantizers are refused: a QONNX
  ``Quant`` has one bit width and the golden model one scale per activation.

Layout: Keras is channels-last; the QONNX graph is NCHW like a torch export, so a
conv model's QONNX input is the Keras input transposed with ``(0, 3, 1, 2)``
(:attr:`KerasConversion.input_layout` says which). Flatten after a conv inserts a
``Transpose`` to NHWC so the feature order is Keras's.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError
from edgeml.fixed import FixedType

QONNX_DOMAIN = "qonnx.custom_op.general"

#: Keras layer classes this front end converts (class names; HGQ2 and Keras core).
SUPPORTED_LAYERS: tuple[str, ...] = (
    "InputLayer",
    "Quantizer (QActivation)",
    "QDense",
    "QBatchNormDense (fused)",
    "Dense",
    "QConv2D",
    "Conv2D",
    "QMaxPool2D / QMaxPooling2D",
    "MaxPooling2D",
    "ReLU",
    "Activation(relu|linear)",
    "Flatten",
    "Reshape (no-op on a flat vector)",
    "Dropout",
)

_LAYER_CLASSES = frozenset(
    {
        "Quantizer",
        "QDense",
        "QBatchNormDense",
        "Dense",
        "QConv2D",
        "Conv2D",
        "QMaxPool2D",
        "QMaxPooling2D",
        "MaxPooling2D",
        "ReLU",
        "Activation",
        "Flatten",
        "Reshape",
        "Dropout",
    }
)
_ROUND_MAP = {"RND_CONV": "ROUND", "S_RND_CONV": "ROUND", "TRN": "FLOOR"}
_MAX_CONST_FRAC = 32


@dataclass
class KerasConversion:
    """Result of :func:`keras_to_qonnx`: the QONNX file written and what was done to get it."""

    onnx_path: Path
    input_shape: tuple[int, ...]  # Keras layout, no batch
    input_layout: str  # "NC" (dense input) or "NCHW" (QONNX input = Keras NHWC input transposed)
    input_type: FixedType | None  # the input quantizer's type (None only if none was found)
    # The final quantizer's declared type when the graph ends in one (what hls4ml's QONNX
    # front end gives the output; golden may report a narrower reachable type), else None.
    output_type: FixedType | None = None
    layers: list[str] = field(default_factory=list)  # "name (Class)" in graph order
    changes: list[str] = field(default_factory=list)  # every transformation that was applied
    notes: list[str] = field(default_factory=list)  # caveats the user should read

    def keras_to_onnx_input(self, x: np.ndarray) -> np.ndarray:
        """Keras-layout inputs (N, ...) -> the QONNX graph's input layout."""
        x = np.asarray(x)
        return np.transpose(x, (0, 3, 1, 2)) if self.input_layout == "NCHW" else x


def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras


def load_keras_model(path: str | Path) -> Any:
    """Load a ``.keras`` file with HGQ2 / QKeras-compat layers registered.

    A missing file raises ``ConfigError``; a file that is not a valid Keras 3
    archive (truncated zip, wrong format) raises :class:`CorruptFileError`.
    """
    keras = _keras()
    import hgq  # noqa: F401  (registers the hgq>... serializable classes)
    import qkeras.quantizers  # noqa: F401  (registers hgq/qkeras>quantized_bits)

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"keras model file {str(p)!r} does not exist; pass a saved .keras file")
    if p.suffix != ".keras":
        raise ConfigError(
            f"keras model file {str(p)!r} must be a Keras 3 '.keras' archive "
            "(model.save('x.keras')); legacy .h5 / SavedModel folders are not supported"
        )
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptFileError(
            f"{str(p)!r} is not a readable .keras archive ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt, save the model again"
        ) from exc
    if bad is not None or "config.json" not in names:
        raise CorruptFileError(
            f"{str(p)!r} is a damaged .keras archive (bad member {bad!r}, members "
            f"{sorted(names)[:5]}); save the model again"
        )
    try:
        return keras.models.load_model(p, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise UnsupportedOpError(
                f"{str(p)!r} holds a Lambda layer or other Python code; edgeml loads Keras files "
                "with safe_mode=True and never runs code from a model file. Replace the Lambda "
                "with supported layers: " + ", ".join(SUPPORTED_LAYERS)
            ) from exc
        raise CorruptFileError(
            f"Keras could not load {str(p)!r} ({type(exc).__name__}: {str(exc)[:300]}); "
            "it needs Keras 3 with HGQ2 layers, saved by model.save('x.keras')"
        ) from exc
    except Exception as exc:
        raise CorruptFileError(
            f"Keras could not load {str(p)!r} ({type(exc).__name__}: {str(exc)[:300]}); "
            "it needs Keras 3 with HGQ2 layers, saved by model.save('x.keras')"
        ) from exc


# --------------------------------------------------------------------------- helpers


def _np(t: Any) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(t), dtype=np.float64)


def _uniform(arr: np.ndarray) -> float | None:
    a = np.asarray(arr).ravel()
    if a.size == 0:
        return None
    return float(a[0]) if np.all(a == a[0]) else None


def _pot_exp(x: float) -> int | None:
    if x <= 0 or not math.isfinite(x):
        return None
    m, e = math.frexp(x)
    return e - 1 if m == 0.5 else None


@dataclass
class _Act:
    """A homogeneous activation quantizer in QONNX terms."""

    signed: bool
    bits: int
    frac: int  # scale = 2**-frac
    narrow: bool
    round_mode: str  # HGQ2 name
    overflow: str


class _Builder:
    def __init__(self, name: str, wrap_as_sat: bool) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.name = name
        self.wrap_as_sat = wrap_as_sat
        self.changes: list[str] = []
        self.notes: list[str] = []

    def uid(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.uid(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, ins: list[str], base: str, domain: str = "", **attrs: Any) -> str:
        out = self.uid(base)
        self.nodes.append(
            helper.make_node(op, ins, [out], name=self.uid(f"{base}_{op}"), domain=domain, **attrs)
        )
        return out

    def quant(
        self, x: str, frac: int, bits: int, signed: bool, narrow: bool, mode: str, base: str
    ) -> str:
        return self.node(
            "Quant",
            [
                x,
                self.const(f"{base}_scale", 2.0**-frac),
                self.const(f"{base}_zeropt", 0.0),
                self.const(f"{base}_bitwidth", float(bits)),
            ],
            base,
            domain=QONNX_DOMAIN,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode=mode,
        )

    # ---- constants (weights, biases)
    def const_quant(self, values: np.ndarray, q: Any, where: str, base: str) -> tuple[str, int]:
        """Float initializer + Quant reproducing ``values`` exactly; returns (tensor, frac)."""
        v = np.asarray(values, dtype=np.float64)
        declared = _declared_type(q) if q is not None else None
        if declared is not None:
            signed, bits, frac, narrow = declared
            codes = v * 2.0**frac
            lo = -(1 << (bits - 1)) + int(narrow) if signed else 0
            hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
            if np.all(codes == np.round(codes)) and codes.min() >= lo and codes.max() <= hi:
                if not signed:  # unsigned weights: write them as signed one bit wider
                    signed, bits = True, bits + 1
                src = self.const(f"{base}_float", v)
                return self.quant(src, frac, bits, signed, narrow, "ROUND", base), frac
        frac = _finest_frac(v)
        if frac is None:
            raise UnsupportedOpError(
                f"{where}: its values are not fixed-point numbers with at most "
                f"{_MAX_CONST_FRAC} fractional bits (plain float weights); quantize them "
                "(kernel_quantizer=quantized_bits(...) / HGQ2 kq_conf) before export"
            )
        codes = np.round(v * 2.0**frac).astype(np.int64)
        bits = 2
        while codes.min() < -(1 << (bits - 1)) or codes.max() > (1 << (bits - 1)) - 1:
            bits += 1
        if bits > 32:
            raise UnsupportedOpError(
                f"{where}: exact codes need {bits} bits at scale 2**-{frac} (more than 32); "
                "quantize the weights with a narrower quantizer"
            )
        if q is None or bits > 24:
            self.notes.append(
                f"{where}: unquantized float32 constants written exactly as "
                f"ap_fixed<{bits},{bits - frac}>; Keras adds them in float32 arithmetic, which "
                "can round sums of more than 24 significant bits, so give the layer a "
                "quantizer for a guaranteed bit-exact match"
            )
        self.changes.append(
            f"{where}: written as ap_fixed<{bits},{bits - frac}> codes at the finest scale "
            f"2**-{frac} its values need"
            + (" (heterogeneous or unquantized constants)" if q is not None else "")
        )
        src = self.const(f"{base}_float", v)
        return self.quant(src, frac, bits, True, False, "ROUND", base), frac


def _finest_frac(v: np.ndarray) -> int | None:
    for f in range(_MAX_CONST_FRAC + 1):
        c = v * 2.0**f
        if np.all(c == np.round(c)):
            return f
    return None


def _inner(q: Any) -> Any:
    """The internal HGQ2 quantizer of a ``Quantizer`` layer (or the object itself)."""
    return getattr(q, "quantizer", q)


def _declared_type(q: Any) -> tuple[bool, int, int, bool] | None:
    """(signed, bits, frac, narrow) of a homogeneous fixed-point quantizer, else None."""
    try:
        k, i, f = (_np(t) for t in _inner(q).kif)
    except Exception:
        return None
    ku, iu, fu = _uniform(k), _uniform(i), _uniform(f)
    if ku is None or iu is None or fu is None:
        return None
    iu = max(iu, -fu)
    bits = int(ku + iu + fu)
    if bits < 1 or bits > 32:
        return None
    narrow = str(getattr(_inner(q), "overflow_mode", "SAT")).upper() == "SAT_SYM" and ku == 1
    return bool(ku), bits, int(fu), narrow


def _scaler_exp(q: Any, where: str) -> int:
    """log2 of a Quantizer's ``alpha``/scaler (0 when absent); non-power-of-two refused."""
    s = getattr(q, "scaler", None)
    if s is None:
        return 0
    val = _uniform(_np(s))
    e = _pot_exp(val) if val is not None else None
    if e is None:
        raise UnsupportedOpError(
            f"{where}: quantizer scale alpha={s!r} is not one power of two; "
            "use alpha=1 (or a power of two) for an exact fixed-point design"
        )
    return e


def _act_quant(q: Any, where: str, wrap_as_sat: bool, notes: list[str]) -> _Act | None:
    """The homogeneous QONNX form of an activation quantizer; None for a pass-through."""
    conf = getattr(q, "config", None)
    qtype = getattr(conf, "q_type", None)
    if qtype == "dummy":
        return None
    if getattr(q, "affine", None) is not None:
        raise UnsupportedOpError(f"{where}: quantizer with an affine transform is not supported")
    inner = _inner(q)
    if qtype == "float" or not hasattr(inner, "kif"):
        raise UnsupportedOpError(
            f"{where}: quantizer type {qtype or type(inner).__name__!r} is not fixed-point; "
            "supported: HGQ2 'kbi' / 'kif' quantizers and qkeras quantized_bits / quantized_relu"
        )
    k, i, f = (_np(t) for t in inner.kif)
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(i)) and np.all(np.isfinite(f))):
        raise UnsupportedOpError(
            f"{where}: quantizer bit widths are NaN/Inf (training diverged); retrain or reset them"
        )
    ku, iu, fu = _uniform(k), _uniform(i), _uniform(f)
    if ku is None or iu is None or fu is None:
        raise UnsupportedOpError(
            f"{where}: heterogeneous activation quantizer (per-element k in "
            f"[{k.min():g}, {k.max():g}], i in [{i.min():g}, {i.max():g}], f in "
            f"[{f.min():g}, {f.max():g}]); a QONNX Quant has one bit width and scale. Make it "
            "homogeneous: QuantizerConfig(..., place='datalane', heterogeneous_axis=()) or "
            "homogeneous_axis covering every axis, or use qkeras quantized_bits"
        )
    mode = str(inner.round_mode).upper()
    ovf = str(inner.overflow_mode).upper()
    if ovf not in ("SAT", "SAT_SYM", "WRAP"):
        raise UnsupportedOpError(
            f"{where}: overflow mode {ovf!r}; supported: SAT, SAT_SYM (WRAP with wrap_as_sat=True)"
        )
    if ovf == "WRAP":
        if not wrap_as_sat:
            raise UnsupportedOpError(
                f"{where}: overflow mode WRAP (two's-complement wrap-around); edgeml's golden "
                "model saturates. Use overflow_mode='SAT' in the quantizer config, or pass "
                "wrap_as_sat=True if the calibrated range guarantees no overflow"
            )
        notes.append(
            f"{where}: WRAP overflow written as saturation (exact only while no value "
            "overflows the calibrated range)"
        )
    if mode not in ("RND_CONV", "S_RND_CONV", "TRN", "RND", "S_RND"):
        raise UnsupportedOpError(
            f"{where}: rounding mode {mode!r}; supported: RND_CONV, RND, TRN (and S_RND, "
            "S_RND_CONV, which round deterministically at inference)"
        )
    if mode.startswith("S_"):
        notes.append(f"{where}: stochastic rounding {mode} is deterministic at inference")
    iu = max(iu, -fu)
    bits = int(ku + iu + fu)
    if bits < 1 or bits > 32:
        raise UnsupportedOpError(
            f"{where}: quantizer of {bits} bits (k={ku:g}, i={iu:g}, f={fu:g}); 1..32 supported"
        )
    frac = int(fu) - _scaler_exp(q, where)
    return _Act(bool(ku), bits, frac, ovf == "SAT_SYM" and ku == 1, mode, ovf)


# --------------------------------------------------------------------------- conversion


class _Converter:
    def __init__(self, model: Any, wrap_as_sat: bool, input_type: FixedType | None) -> None:
        self.model = model
        self.b = _Builder(model.name, wrap_as_sat)
        self.input_type_override = input_type
        self.input_type: FixedType | None = None
        self.layers: list[str] = []

    def chain(self) -> list[Any]:
        m = self.model
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise UnsupportedOpError(
                f"model {m.name!r} has {len(m.inputs)} inputs and {len(m.outputs)} outputs; "
                "edgeml designs have one input and one output"
            )
        layers = [ly for ly in m.layers if type(ly).__name__ != "InputLayer"]
        if type(m).__name__ != "Sequential":
            prev = m.inputs[0]
            for ly in layers:
                nodes = getattr(ly, "_inbound_nodes", [])
                ins = nodes[0].input_tensors if len(nodes) == 1 else None
                if ins is None or len(ins) != 1 or ins[0] is not prev:
                    raise UnsupportedOpError(
                        f"layer {ly.name!r} ({type(ly).__name__}) is not part of a single chain "
                        "(branches, merges or shared layers); only sequential chains are supported"
                    )
                prev = ly.output
        return layers

    def run(self, out_path: Path) -> KerasConversion:
        m = self.model
        chain = self.chain()
        for ly in chain:  # name an unsupported layer before anything else is checked
            if type(ly).__name__ not in _LAYER_CLASSES:
                raise UnsupportedOpError(
                    f"layer '{ly.name}' ({type(ly).__name__}) is not supported by the Keras "
                    "front end; supported layers: " + ", ".join(SUPPORTED_LAYERS)
                )
        shape = tuple(int(d) for d in m.inputs[0].shape[1:])
        if any(d is None or d <= 0 for d in shape):
            raise UnsupportedOpError(f"model input needs a static shape, got {shape}")
        layout = "NCHW" if len(shape) == 3 else "NC"
        if len(shape) not in (1, 3):
            raise UnsupportedOpError(
                f"model input shape {shape}: supported are (features,) and (H, W, C)"
            )
        onnx_in_shape = [1, shape[2], shape[0], shape[1]] if layout == "NCHW" else [1, *shape]
        self.cur = "global_in"
        self.shape = shape  # Keras layout, no batch
        self.frac: int | None = None  # fractional bits of the current tensor (None: float)
        self.signed = True
        self.quantized_input = False
        if self.input_type_override is not None:
            t = self.input_type_override
            self.cur = self.b.quant(self.cur, t.frac, t.width, t.signed, False, "ROUND", "inp_q")
            self.frac, self.signed, self.quantized_input = t.frac, t.signed, True
            self.input_type = t
            self.b.changes.append(f"input quantizer {t.hls()} added (input_type given)")
        for ly in chain:
            self.layers.append(f"{ly.name} ({type(ly).__name__})")
            self.layer(ly)
        if not self.quantized_input:
            raise UnsupportedOpError(
                f"model {m.name!r} has no input quantizer: its first layer should be "
                "QActivation(quantized_bits(...)) / an HGQ2 layer with an input quantizer, "
                "or pass input_type=FixedType(...) (the precision of the data fed to the design)"
            )
        out_shape = [1, *self._onnx_shape()]
        graph = helper.make_graph(
            self.b.nodes,
            m.name or "keras_model",
            [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, onnx_in_shape)],
            [helper.make_tensor_value_info(self.cur, TensorProto.FLOAT, out_shape)],
            initializer=self.b.inits,
        )
        proto = helper.make_model(
            graph,
            producer_name="edgeml.keras_frontend",
            opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1)],
        )
        proto.ir_version = 8
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out_path))
        last = getattr(self, "last_quant", None)
        return KerasConversion(
            onnx_path=out_path,
            input_shape=shape,
            input_layout=layout,
            input_type=self.input_type,
            output_type=last[1] if last is not None and last[0] == self.cur else None,
            layers=self.layers,
            changes=self.b.changes,
            notes=self.b.notes,
        )

    def _onnx_shape(self) -> list[int]:
        s = list(self.shape)
        return [s[2], s[0], s[1]] if len(s) == 3 else s

    # ---- activations
    def act(self, q: Any, where: str) -> None:
        a = _act_quant(q, where, self.b.wrap_as_sat, self.b.notes)
        if a is None:
            return
        base = where.split(" ")[0].replace("'", "")
        mode = _ROUND_MAP.get(a.round_mode)
        x = self.cur
        if mode is None:  # RND / S_RND: ties toward +inf
            # hls4ml's QONNX front end takes only ROUND and FLOOR, so RND is written as
            # FLOOR(x + half an LSB) where a tie can occur, and as ROUND where none can.
            ties = self.frac is None or self.frac > a.frac
            if not ties:
                mode = "ROUND"
            elif not self.quantized_input:
                mode = "ROUND"
                self.b.notes.append(
                    f"{where}: input quantizer RND (ties toward +inf) written as QONNX ROUND "
                    "(ties to even): identical on inputs already on its grid (the design's "
                    "input codes); a real-valued input exactly half-way between codes may round "
                    "one LSB apart"
                )
            else:
                half = self.b.const(f"{base}_half", 2.0 ** -(a.frac + 1))
                x = self.b.node("Add", [x, half], f"{base}_rnd")
                mode = "FLOOR"
                self.b.changes.append(
                    f"{where}: RND (ties toward +inf) written as Add(2**-{a.frac + 1}) + "
                    "Quant(FLOOR)"
                )
        if not self.quantized_input:
            self.quantized_input = True
            self.input_type = FixedType(a.signed, a.bits, a.frac)
        self.cur = self.b.quant(x, a.frac, a.bits, a.signed, a.narrow, mode, base)
        self.frac, self.signed = a.frac, a.signed
        self.last_quant = (self.cur, FixedType(a.signed, a.bits, a.frac))

    def need_input(self, ly: Any) -> None:
        if not self.quantized_input:
            raise UnsupportedOpError(
                f"layer {ly.name!r} ({type(ly).__name__}) computes on the unquantized model input; "
                "the first layer must quantize the input (QActivation(quantized_bits(...)) or an "
                "HGQ2 layer with its input quantizer enabled), or pass input_type=FixedType(...)"
            )

    def relu(self) -> None:
        self.cur = self.b.node("Relu", [self.cur], "relu")

    def activation(self, ly: Any, fn: Any) -> None:
        name = getattr(fn, "__name__", str(fn))
        if name == "linear" or fn is None:
            return
        if name == "relu":
            self.need_input(ly)
            self.relu()
            return
        raise UnsupportedOpError(
            f"layer {ly.name!r} ({type(ly).__name__}) has activation {name!r}; supported "
            "activations are 'relu' and 'linear' (use a QActivation with a quantizer instead)"
        )

    # ---- layers
    def layer(self, ly: Any) -> None:
        cls = type(ly).__name__
        where = f"layer '{ly.name}' ({cls})"
        is_q = hasattr(ly, "enable_iq")
        if cls == "Quantizer":
            self.act(ly, where)
            return
        if is_q and ly.enable_iq:
            self.act(ly.iq, f"{where} input quantizer")
        if cls in ("QDense", "QBatchNormDense", "Dense"):
            self.dense(ly, where)
        elif cls in ("QConv2D", "Conv2D"):
            self.conv(ly, where)
        elif cls in ("QMaxPool2D", "QMaxPooling2D", "MaxPooling2D"):
            self.maxpool(ly, where)
        elif cls == "ReLU":
            if (
                ly.max_value is not None
                or float(ly.negative_slope) != 0
                or float(ly.threshold) != 0
            ):
                raise UnsupportedOpError(
                    f"{where}: only a plain ReLU (no max_value/slope/threshold)"
                )
            self.need_input(ly)
            self.relu()
        elif cls == "Activation":
            self.activation(ly, ly.activation)
        elif cls == "Flatten":
            if len(self.shape) == 3:
                self.cur = self.b.node("Transpose", [self.cur], "to_nhwc", perm=[0, 2, 3, 1])
                self.b.changes.append(f"{where}: Transpose to NHWC before Flatten (Keras order)")
                self.cur = self.b.node("Flatten", [self.cur], "flatten", axis=1)
            self.shape = (int(np.prod(self.shape)),)
        elif cls == "Reshape":
            target = tuple(int(d) for d in ly.target_shape)
            if len(self.shape) != 1 or len(target) != 1 or target != self.shape:
                raise UnsupportedOpError(
                    f"{where}: reshape {self.shape} -> {target}; only rank-1 to rank-1 "
                    "(a no-op) is supported"
                )
        elif cls == "Dropout":
            pass
        else:
            raise UnsupportedOpError(
                f"{where} is not supported by the Keras front end; supported layers: "
                + ", ".join(SUPPORTED_LAYERS)
            )
        if is_q and ly.enable_oq:
            self.act(ly.oq, f"{where} output quantizer")

    def _weights(self, ly: Any, where: str) -> tuple[np.ndarray, Any, np.ndarray | None, Any]:
        if hasattr(ly, "qkernel"):
            w = _np(ly.qkernel)
            kq = ly.kq
            b = _np(ly.qbias) if ly.bias is not None else None
            bq = ly.bq
        else:
            w = _np(ly.kernel)
            kq = None
            b = _np(ly.bias) if ly.bias is not None else None
            bq = None
        return w, kq, b, bq

    def dense(self, ly: Any, where: str) -> None:
        self.need_input(ly)
        if len(self.shape) != 1:
            raise UnsupportedOpError(
                f"{where}: Dense on a rank-{len(self.shape)} input; add Flatten"
            )
        w, kq, b, bq = self._weights(ly, where)
        base = ly.name
        wq, wf = self.b.const_quant(w, kq, f"{where} kernel", f"{base}_w")
        self.cur = self.b.node("MatMul", [self.cur, wq], f"{base}_mm")
        self.frac = None if self.frac is None else self.frac + wf
        if b is not None:
            bqn, bf = self.b.const_quant(b, bq, f"{where} bias", f"{base}_b")
            self.cur = self.b.node("Add", [self.cur, bqn], f"{base}_bias")
            self.frac = None if self.frac is None else max(self.frac, bf)
        self.shape = (int(w.shape[1]),)
        self.activation(ly, ly.activation)

    def conv(self, ly: Any, where: str) -> None:
        self.need_input(ly)
        if len(self.shape) != 3:
            raise UnsupportedOpError(f"{where}: Conv2D needs an (H, W, C) input, got {self.shape}")
        if ly.data_format != "channels_last" or getattr(ly, "groups", 1) != 1:
            raise UnsupportedOpError(f"{where}: only channels_last, groups=1 Conv2D is supported")
        w, kq, b, bq = self._weights(ly, where)  # (kh, kw, cin, cout)
        kh, kw = int(w.shape[0]), int(w.shape[1])
        sh, sw = (int(s) for s in ly.strides)
        dh, dw = (int(d) for d in ly.dilation_rate)
        h, wd, _ = self.shape
        if ly.padding == "valid":
            pads = [0, 0, 0, 0]
            oh = (h - (kh - 1) * dh - 1) // sh + 1
            ow = (wd - (kw - 1) * dw - 1) // sw + 1
        elif ly.padding == "same":
            oh, ow = -(-h // sh), -(-wd // sw)
            th = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0)
            tw = max((ow - 1) * sw + (kw - 1) * dw + 1 - wd, 0)
            pads = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
        else:
            raise ConfigError(f"{where}: padding {ly.padding!r}; allowed: 'valid', 'same'")
        base = ly.name
        # The QONNX weight Quant sees the OIHW tensor.
        wq, wf = self.b.const_quant(
            np.transpose(w, (3, 2, 0, 1)), kq, f"{where} kernel", f"{base}_w"
        )
        ins = [self.cur, wq]
        bf = None
        if b is not None:
            bqn, bf = self.b.const_quant(b, bq, f"{where} bias", f"{base}_b")
            ins.append(bqn)
        self.cur = self.b.node(
            "Conv",
            ins,
            f"{base}_conv",
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            dilations=[dh, dw],
            pads=pads,
            group=1,
        )
        if self.frac is not None:
            self.frac = self.frac + wf if bf is None else max(self.frac + wf, bf)
        self.shape = (oh, ow, int(w.shape[3]))
        self.activation(ly, ly.activation)

    def maxpool(self, ly: Any, where: str) -> None:
        self.need_input(ly)
        if len(self.shape) != 3 or ly.padding != "valid" or ly.data_format != "channels_last":
            raise UnsupportedOpError(
                f"{where}: only channels_last MaxPooling2D with padding='valid' on (H, W, C)"
            )
        ph, pw = (int(p) for p in ly.pool_size)
        sh, sw = (int(s) for s in ly.strides)
        h, wd, c = self.shape
        self.cur = self.b.node(
            "MaxPool",
            [self.cur],
            f"{ly.name}_pool",
            kernel_shape=[ph, pw],
            strides=[sh, sw],
            pads=[0, 0, 0, 0],
        )
        self.shape = ((h - ph) // sh + 1, (wd - pw) // sw + 1, c)


def keras_to_qonnx(
    path_or_model: str | Path | Any,
    out_path: str | Path,
    *,
    wrap_as_sat: bool = False,
    input_type: FixedType | None = None,
) -> KerasConversion:
    """Convert a Keras 3 model (``.keras`` path or model object) with HGQ2 / QKeras-compat
    quantizers into an exact QONNX file at ``out_path``.

    ``input_type`` adds an input quantizer for models whose first layer does not
    quantize the input (it must then match the data fed to the design).
    ``wrap_as_sat`` accepts ``WRAP`` activation quantizers as saturating ones (noted).
    Unsupported layers raise :class:`UnsupportedOpError` naming the layer, its class
    and :data:`SUPPORTED_LAYERS`; an unreadable file raises :class:`CorruptFileError`.
    """
    if isinstance(path_or_model, (str, Path)):
        model = load_keras_model(path_or_model)
        src = str(path_or_model)
    else:
        _keras()
        model = path_or_model
        src = f"<in-memory {type(model).__name__} {getattr(model, 'name', '')!r}>"
    if not hasattr(model, "layers") or not hasattr(model, "inputs"):
        raise ConfigError(
            f"keras_to_qonnx needs a .keras path or a built keras.Model, got {type(model).__name__}"
        )
    conv = _Converter(model, wrap_as_sat, input_type).run(Path(out_path))
    conv.changes.insert(0, f"converted {src} ({len(conv.layers)} layers) to QONNX")
    return conv
