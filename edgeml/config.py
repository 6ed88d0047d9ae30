"""Typed, validated configuration for a flow run.

Everything a stage needs is in :class:`FlowConfig`. It is checked when it is
loaded (pydantic, ``extra="forbid"``): an unknown key names the closest valid
ones, and a bad value names the field, what was received and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.implement import DEFAULT_FAMILY, DEVICES

#: The design `edgeml flow`, `make demo` and `edgeml faults` use when none is named.
DEFAULT_DESIGN = "jet"


def builtin_designs() -> tuple[str, ...]:
    """Names of the built-in designs (the model zoo's registry)."""
    from edgeml.models import DESIGN_MODULES

    return tuple(DESIGN_MODULES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(_Strict):
    """Float training, QAT and pruning fine-tune epochs (CUDA when available).

    ``None`` takes the design's own default (``DesignSpec.epochs``).
    """

    epochs_float: int | None = Field(None, ge=1, le=10_000)
    epochs_qat: int | None = Field(None, ge=1, le=10_000)
    epochs_finetune: int | None = Field(None, ge=1, le=10_000)


class LayerCompress(_Strict):
    """One layer's own precision (``compress.layers.<name>``): overrides ``compress.bit_width``."""

    #: weight and output-activation bit width of this layer
    bit_width: int = Field(..., ge=2, le=16)


class CompressConfig(_Strict):
    """Quantization and pruning. Bit widths are those of weights and activations."""

    bit_width: int = Field(6, ge=2, le=16)
    #: per-layer mixed precision: ``{layer name: {"bit_width": b}}`` (names are the QAT
    #: model's quantized layers, e.g. ``fc1``..``fc4`` for the jet tagger); a layer not
    #: named takes ``bit_width``
    layers: dict[str, LayerCompress] = Field(default_factory=dict)
    #: give every bias the fewest bits (and coarsest scale) that hold its trained values
    #: exactly, at export (:mod:`edgeml.minwidth`): the outputs are unchanged at every level
    min_widths: bool = False
    #: ``None`` takes the design's default (``DesignSpec.sparsity``: 0.75 for the jet tagger)
    sparsity: float | None = Field(None, ge=0.0, le=0.95)
    #: randomized-SVD factorisation before QAT (:mod:`edgeml.lowrank`): an integer rank, or
    #: an energy fraction in (0, 1]; ``0`` turns it off; ``None`` takes the design's default
    #: (``DesignSpec.low_rank``: off for every design but ``randnla``)
    low_rank: int | float | None = None

    @field_validator("low_rank", mode="before")
    @classmethod
    def _low_rank(cls, value: Any) -> int | float | None:
        from edgeml.lowrank import check_low_rank

        if isinstance(value, float) and value.is_integer() and value > 1:
            value = int(value)  # 8.0 from a YAML/JSON file is the rank 8
        try:
            check_low_rank(value, "low_rank")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class HlsConfig(_Strict):
    """hls4ml project settings (Vitis backend, io_parallel)."""

    enabled: bool = True
    part: str = "xcvu13p-flga2577-2-e"
    clock_period: float = Field(5.0, gt=0.0, le=1000.0)
    reuse_factor: int = Field(1, ge=1, le=4096)
    io_type: Literal["io_parallel"] = "io_parallel"
    backend: Literal["Vitis"] = "Vitis"


class RtlConfig(_Strict):
    """Verilog generation (da4ml) and Verilator simulation."""

    enabled: bool = True
    #: the size guard: an RTL build estimated (before tracing) to take longer than this many
    #: CPU seconds is skipped with the estimate, not started (``--force-rtl`` builds it anyway)
    max_build_seconds: float = Field(900.0, gt=0.0, le=86_400.0)
    pipelined: bool = True
    latency_cutoff: float = Field(5.0, gt=0.0, le=1000.0)
    cocotb_vectors: int = Field(200, ge=0, le=100_000)
    #: wall-clock limit of the yosys resource estimate (the RN08 design needs ~5 min of CPU)
    resources_timeout: float = Field(900.0, gt=0.0, le=86_400.0)


class ImplementConfig(_Strict):
    """Open-source synthesis, place-and-route, timing and bitstream (``edgeml implement``).

    Off in ``edgeml flow`` by default: place-and-route takes minutes (the jet tagger:
    about 4 on an ECP5-85k). ``edgeml implement`` runs it whatever ``enabled`` says.
    """

    enabled: bool = False
    family: str = DEFAULT_FAMILY
    #: ECP5 speed grade (6 is the slowest and nextpnr's default; 8 the fastest)
    speed: Literal[6, 7, 8] = 6
    #: the clock target nextpnr times against, and close_timing aims for
    clock_mhz: float = Field(100.0, gt=0.0, le=1000.0)
    #: choose da4ml's pipeline cut (rtl.latency_cutoff) for the clock, iterating place-and-route
    close_timing: bool = False
    max_tries: int = Field(4, ge=1, le=12)
    seed: int = Field(1, ge=0)
    #: vectors the post-synthesis netlist is simulated on (0: skip that check)
    netlist_vectors: int = Field(10_000, ge=0, le=10_000_000)
    bitstream: bool = True
    #: also the ASIC view: a generic-gate area/depth estimate and hls4ml's Catapult project
    asic: bool = True
    timeout_s: float = Field(3600.0, gt=0.0, le=86_400.0)

    @field_validator("family")
    @classmethod
    def _family(cls, value: str) -> str:
        if value not in DEVICES:
            raise ValueError(f"unknown device {value!r}; allowed: {', '.join(DEVICES)}")
        return value


class VerifyConfig(_Strict):
    """How many vectors each level is compared on."""

    n_random: int = Field(10_000, ge=0, le=10_000_000)
    seed: int = Field(1234, ge=0)


class FaultConfig(_Strict):
    """The exhaustive single-bit weight/bias campaign and its analysis."""

    enabled: bool = True
    max_samples: int = Field(1000, ge=1, le=1_000_000)
    #: error margin of the Leveugle-sized statistical estimate checked against the exhaustive run
    margin: float = Field(0.02, gt=0.0, lt=0.5)


class IngestConfig(_Strict):
    """How a model made elsewhere is read (``--input-type``, ``--calib``, ``--output``)."""

    #: precision of a float graph input, e.g. ``ap_fixed<16,6>``, ``int8``, ``uint8``
    input_type: str | None = None
    #: calibration inputs (``.npy``): the input precision is the smallest type holding them
    calib: str | None = None
    #: cut the graph at this node or tensor (e.g. drop a trailing Softmax, keep the logits)
    output: str | None = None


class FlowConfig(_Strict):
    """One design's flow: a built-in ``design``, or a model made elsewhere (``onnx``/``keras``)."""

    design: str = DEFAULT_DESIGN
    onnx: str | None = None  # a QONNX/ONNX file made elsewhere (FINN, Brevitas, QKeras, torch)
    keras: str | None = None  # a .keras file (QKeras-compatible or HGQ2 layers)
    ingest: IngestConfig = IngestConfig()
    seed: int = Field(0, ge=0)
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()
    hls: HlsConfig = HlsConfig()
    rtl: RtlConfig = RtlConfig()
    verify: VerifyConfig = VerifyConfig()
    implement: ImplementConfig = ImplementConfig()
    faults: FaultConfig = FaultConfig()


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    skip = False
    for part in loc[:-1]:
        if skip:  # the key of a dict[str, Model] field (compress.layers.<name>)
            skip = False
            continue
        field = cur.model_fields.get(part) if isinstance(part, str) and cur else None
        ann = getattr(field, "annotation", None)
        args = typing.get_args(ann)
        if typing.get_origin(ann) is dict and len(args) == 2 and isinstance(args[1], type):
            cur, skip = args[1], True
            continue
        if field is None or not isinstance(ann, type):
            return []
        cur = ann
    return list(cur.model_fields) if hasattr(cur, "model_fields") else []


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(root)"
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            valid = _field_names(FlowConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            lines.append(
                f"unknown config field '{where}'.{hint} Valid fields here: {', '.join(valid)}"
            )
        else:
            lines.append(f"config field '{where}': {err['msg']} (got {got!r})")
    return "; ".join(lines)


def validate_config(data: dict[str, Any]) -> FlowConfig:
    """Build a FlowConfig from a plain dict, raising ConfigError with a clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of fields, got {type(data).__name__}")
    try:
        cfg = FlowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    return cfg


def external_model(cfg: FlowConfig) -> bool:
    """True when the run's model was made elsewhere (``--onnx`` or ``--keras``)."""
    return cfg.onnx is not None or cfg.keras is not None


def check_design(cfg: FlowConfig, external: bool) -> None:
    """The design must be built in unless an external ONNX file is given."""
    if not external and cfg.design not in builtin_designs():
        raise ConfigError(
            f"config field 'design': unknown built-in design {cfg.design!r}; allowed: "
            f"{', '.join(builtin_designs())} (or pass --onnx FILE for a model made elsewhere)"
        )


def check_options(cfg: FlowConfig, external: bool, sources: dict[str, str] | None = None) -> None:
    """Options that depend on the design, checked before any stage runs (nothing trains first).

    ``sources`` maps a config field to the command-line flag that set it (``--bits``), so
    the message names what the user typed.
    """
    check_design(cfg, external)
    if external:
        return
    from edgeml.models import zoo

    lo, hi = zoo.get(cfg.design).bit_widths
    bits = cfg.compress.bit_width
    if not lo <= bits <= hi:
        flag = (sources or {}).get("compress.bit_width")
        via = f" ({flag})" if flag else ""
        raise ConfigError(
            f"config field 'compress.bit_width'{via}: design {cfg.design!r} supports bit widths "
            f"{lo}..{hi}; got {bits}. Pass --bits {lo}..{hi} (or set compress.bit_width)"
        )
    if cfg.compress.layers:  # names and widths, before the float model trains
        from edgeml.mixed import check_layer_bits, quant_layers

        allowed = quant_layers(zoo.get(cfg.design).build_qat(lo))
        layer_bits = {k: v.bit_width for k, v in cfg.compress.layers.items()}
        check_layer_bits(layer_bits, allowed, (lo, hi))


#: Names a C/C++ compiler or a Verilog tool would read as keywords, not identifiers.
_RESERVED = frozenset(
    """alignas alignof and asm auto bool break case catch char class const constexpr continue
    default delete do double else enum explicit export extern false float for friend goto if
    inline int long mutable namespace new noexcept not nullptr operator or private protected
    public register return short signed sizeof static struct switch template this throw true try
    typedef typeid typename union unsigned using virtual void volatile while xor
    always assign begin buf case casex casez cmos deassign defparam disable edge end endcase
    endfunction endmodule endprimitive endspecify endtable endtask event force forever fork
    function highz0 highz1 initial inout input integer join large macromodule medium module
    nand negedge nmos nor notif0 notif1 or output parameter pmos posedge primitive pull0 pull1
    pulldown pullup rcmos real realtime reg release repeat rnmos rpmos rtran rtranif0 rtranif1
    scalared small specify specparam strong0 strong1 supply0 supply1 table task time tran
    tranif0 tranif1 tri tri0 tri1 triand trior trireg vectored wait wand weak0 weak1 wire wor
    logic bit byte shortint longint genvar generate endgenerate localparam""".split()
)
#: Kept as is: starts with a letter, no double underscore (reserved in C++).
_IDENT_RE = re.compile(r"[A-Za-z](?:_?[A-Za-z0-9])*_?")
#: Longest identifier derived from a name (before the hash suffix).
_IDENT_MAX = 40


def design_identifier(name: str) -> str:
    """An ASCII identifier ``[A-Za-z][A-Za-z0-9_]*`` for a design name (any file name).

    It names the hls4ml top function and the Verilog module, so it must be a C and a
    Verilog identifier. A name that already is one (starting with a letter, without
    ``__``, at most 40 characters, no keyword) is kept as is.
    Otherwise accents are dropped (``modèle`` -> ``modele``), every other character
    becomes ``_``, and an 8-hex-digit hash of the original name is appended so two
    names that map to the same letters (``my-net`` and ``my net``) stay distinct.
    The design keeps its original name for display (``config.design``).
    """
    if _IDENT_RE.fullmatch(name) and len(name) <= _IDENT_MAX and name.lower() not in _RESERVED:
        return name
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^A-Za-z0-9]+", "_", folded).strip("_")[:_IDENT_MAX].strip("_")
    if not base or not base[0].isalpha():
        base = f"m_{base}".rstrip("_")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{base}_{digest}"


def load_config(path: str | Path) -> FlowConfig:
    """Load a YAML or JSON config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:
        raise CorruptFileError(
            f"config file '{p}' is not valid {p.suffix[1:] or 'JSON'}: {exc}"
        ) from exc
    return validate_config(data)


def apply_overrides(cfg: FlowConfig, overrides: dict[str, Any]) -> FlowConfig:
    """Return a copy with dotted-key overrides (e.g. ``{"compress.bit_width": 4}``), re-validated."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return validate_config(data)
