"""Fault-injection builds of the RTL: pipelines whose every register rank has an XOR-mask port.

Two builds, one harness:

* :func:`generate_fi_rtl` (**layer build**): every golden layer segment is its
  own da4ml combinational block, and a generated top registers each segment's
  output tensors, so register rank ``k`` holds exactly the golden tensors
  live after segment ``k``, element ``e`` bit ``b`` at bit ``offset + e*W + b``
  (``W`` the golden code width, two's complement when signed). The mapping of
  every flip-flop to a golden quantity is exact by construction. This is the
  register placement of a layer-pipelined accelerator (hls4ml ``io_parallel``
  registers each layer's output); it is not da4ml's timing-driven pipeline.
* :func:`wrap_da4ml_pipeline` (**da4ml build**): the flow's own pipelined design
  (:func:`edgeml.rtl.generate_rtl`), its stage modules unchanged, under a
  generated top that adds the same mask ports to da4ml's stage registers. da4ml
  cuts stages at ``latency_cutoff`` points that need not coincide with layers,
  so only some of its register bits hold a golden quantity
  (:mod:`edgeml.fault_injection.rtl_regmap` finds which).

**Fault mechanism.** Each rank is written ``r_k <= d_k ^ fi_mask_k`` on the
rising edge. Holding ``fi_mask_k`` non-zero for exactly one edge flips the
chosen bits of what rank ``k`` captures: an SEU that strikes the register
right after that edge and lasts until the next one. (Writing the register
from C++ after an edge does not work with Verilator: the combinational logic
downstream has already been evaluated; DESIGN.md.) With zero masks the
pipeline is the plain design.

**Timing.** Vector ``j`` of a stream is sampled into rank 0 on rising edge
``j`` (edges counted from 0), so after edge ``c`` rank ``k`` holds vector
``c - k``, and ``model_out`` (the last rank, ``latency`` = number of ranks - 1)
shows vector ``c - latency``. An SEU at cycle ``c`` in rank ``k`` therefore
hits exactly one vector in flight, ``c - k``; the pipeline holds no other
state, so every other vector is unaffected.

**Harness.** A C++ harness (generated per design, compiled with Verilator,
loaded with ctypes, cached by hash under ``<edgeml cache>/rtl_fi_builds``)
streams *slots*: slot ``s`` is (vector, fault or none), entering on edge ``s``;
its fault's mask is raised on edge ``s + rank``. So one pass evaluates many
(fault, vector) pairs back to back at full pipeline throughput, with no Python
loop per vector, and OpenMP splits the stream over cores (each thread its own
simulator; a pipeline stream restarts cleanly after ``latency`` edges).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeml.errors import (
    ConfigError,
    DependencyError,
    EdgemlError,
    InputRangeError,
    MissingRunError,
    UnsupportedOpError,
)
from edgeml.fixed import FixedType, type_for_range
from edgeml.golden import Dense, GoldenModel
from edgeml.rtl import LAYOUT_KINDS, memfiles_cwd

log = logging.getLogger(__name__)

#: Register placements of the layer build.
BOUNDARY_MODES: tuple[str, ...] = ("layers", "ops")
#: The harness moves port elements through int32.
MAX_PORT_BITS = 32
_META = "edgeml_fi.json"
_HARNESS_VERSION = "1"
_VERILATOR_FLAGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--output-split-cfuncs", "10000")
_OPT = "-O"


class FiBuildError(EdgemlError):
    """Verilator / g++ failed on a fault-injection build (the log tail is in the message)."""


# --------------------------------------------------------------------------- register layout


@dataclass(frozen=True)
class RegElement:
    """One value packed in a register: bits ``[offset, offset + width)``.

    The bits hold ``value * 2**frac`` (``frac <= 0`` drops low zero bits of an
    always-even value, as da4ml does), two's complement when ``signed``.
    ``tensor``/``index`` name the golden quantity (flat C-order index, NHWC
    for conv tensors), or are ``None``/``-1`` when the value is no golden
    tensor element (an internal da4ml partial result).
    """

    offset: int
    width: int
    signed: bool
    frac: int
    tensor: str | None
    index: int
    live: bool = True  # False: no logic reads it (synthesis would remove these flip-flops)


@dataclass(frozen=True)
class Register:
    """One register rank of an FI build: Verilog name ``name`` in the FI top, ``width`` bits.

    ``rank`` is its pipeline position (0 = input register): after rising edge
    ``c`` it holds the vector sampled on edge ``c - rank``. ``holds`` says
    what it carries (golden tensors of the layer build, or the da4ml stage).
    """

    name: str
    rank: int
    width: int
    holds: str
    elements: tuple[RegElement, ...]

    def element_at(self, bit: int) -> tuple[RegElement, int] | None:
        """The element holding register bit ``bit`` and the bit's position within it."""
        lo, hi = 0, len(self.elements)
        while lo < hi:  # elements are sorted by offset
            mid = (lo + hi) // 2
            if self.elements[mid].offset + self.elements[mid].width <= bit:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.elements):
            el = self.elements[lo]
            if el.offset <= bit < el.offset + el.width:
                return el, bit - el.offset
        return None


@dataclass
class FiDesign:
    """A fault-injection build (see the module docstring) and its compiled SEU harness."""

    name: str  # FI top module
    kind: Literal["layers", "da4ml"]
    out_dir: Path
    registers: list[Register]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_type: FixedType
    output_type: FixedType  # golden output type
    out_signed: bool  # model_out element format (may be wider than the golden type)
    out_width: int
    sources: list[str]  # relative to out_dir
    segments: list[list[str]] = field(default_factory=list)  # golden ops per rank (layer build)
    boundaries: str = ""
    _lib: Any = field(default=None, repr=False, compare=False)

    # ---- facts
    @property
    def latency(self) -> int:
        """Rising edges from sampling a vector to seeing its output on ``model_out``."""
        return len(self.registers) - 1

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def n_register_bits(self) -> int:
        return sum(r.width for r in self.registers)

    @property
    def verilog_files(self) -> list[Path]:
        return [self.out_dir / s for s in self.sources]

    def register(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise ConfigError(
            f"no register {name!r} in FI design '{self.name}'; it has {[r.name for r in self.registers]}"
        )

    # ---- persistence
    def save(self) -> Path:
        d = {
            "name": self.name,
            "kind": self.kind,
            "registers": [asdict(r) for r in self.registers],
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "input_type": asdict(self.input_type),
            "output_type": asdict(self.output_type),
            "out_signed": self.out_signed,
            "out_width": self.out_width,
            "sources": self.sources,
            "segments": self.segments,
            "boundaries": self.boundaries,
        }
        path = self.out_dir / _META
        path.write_text(json.dumps(d, indent=1))
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> FiDesign:
        """Re-open an FI build written by :func:`generate_fi_rtl` / :func:`wrap_da4ml_pipeline`."""
        out_dir = Path(out_dir)
        path = out_dir / _META
        if not path.is_file():
            raise MissingRunError(f"{path} not found: generate the FI build first")
        d = json.loads(path.read_text())
        regs = [
            Register(
                r["name"],
                r["rank"],
                r["width"],
                r["holds"],
                tuple(RegElement(**e) for e in r["elements"]),
            )
            for r in d["registers"]
        ]
        return cls(
            name=d["name"],
            kind=d["kind"],
            out_dir=out_dir.resolve(),
            registers=regs,
            input_shape=tuple(d["input_shape"]),
            output_shape=tuple(d["output_shape"]),
            input_type=FixedType(**d["input_type"]),
            output_type=FixedType(**d["output_type"]),
            out_signed=d["out_signed"],
            out_width=d["out_width"],
            sources=d["sources"],
            segments=d["segments"],
            boundaries=d["boundaries"],
        )

    # ---- build
    def build_key(self) -> str:
        from edgeml.toolchain import find_verilator

        h = hashlib.sha256()
        for p in sorted(self.sources):
            h.update(p.encode() + b"\0" + (self.out_dir / p).read_bytes() + b"\0")
        h.update(_harness_source(self).encode())
        h.update(
            f"verilator {find_verilator().version}; {_VERILATOR_FLAGS} {_OPT}; "
            f"harness {_HARNESS_VERSION}".encode()
        )
        return h.hexdigest()

    def build(self, *, use_cache: bool = True, n_jobs: int | None = None) -> float:
        """Verilate the FI top with its SEU harness into a shared library; seconds spent (0.0 if cached).

        Builds are cached by :meth:`build_key` under ``<edgeml cache>/rtl_fi_builds``
        and serialised with a file lock, so concurrent sessions build each design once.
        """
        from edgeml.toolchain import cache_dir, file_lock

        key = self.build_key()
        cache = cache_dir() / "rtl_fi_builds"
        lib = cache / f"{key}.so"
        t0 = time.perf_counter()
        built = 0.0
        with file_lock(cache / f"{key}.lock"):
            if not (use_cache and lib.is_file()):
                self._compile(lib, n_jobs)
                built = time.perf_counter() - t0
                log.info("FI build %s: Verilator + harness in %.1f s", self.name, built)
        self._lib = _load_harness(lib)
        self._check_info()
        return built

    def _compile(self, lib: Path, n_jobs: int | None) -> None:
        from edgeml.toolchain import find_verilator, verilator_env

        env = verilator_env()
        for tool in ("make", "g++"):
            if shutil.which(tool, path=env["PATH"]) is None:
                raise DependencyError(
                    f"building the FI harness needs `{tool}` (apt-get install build-essential)"
                )
        root = find_verilator().root
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgeml_fi_", dir=lib.parent) as tmp:
            tmpd = Path(tmp)
            harness = tmpd / "fi_harness.cc"
            harness.write_text(_harness_source(self))
            obj = tmpd / "obj_dir"
            jobs = str(n_jobs or os.cpu_count() or 1)
            cmd = [
                "verilator",
                "--cc",
                "--build",
                "-j",
                jobs,
                "--prefix",
                "Vfi",
                "--top-module",
                self.name,
                "-Mdir",
                str(obj),
                *_VERILATOR_FLAGS,
                "-CFLAGS",
                f"-std=c++17 -fPIC {_OPT}",
                *[str(p) for p in self.verilog_files],
            ]
            _run_tool(cmd, env, self.out_dir, "Verilator")
            archives = sorted(obj.glob("*.a"), key=lambda p: p.name.startswith("libverilated"))
            tmp_lib = tmpd / "fi.so"
            cxx = [
                "g++",
                "-std=c++17",
                "-fPIC",
                "-O2",
                "-shared",
                "-fopenmp",
                f"-I{obj}",
                f"-I{root / 'include'}",
                f"-I{root / 'include' / 'vltstd'}",
                str(harness),
                *[str(a) for a in archives],
                "-pthread",
                "-o",
                str(tmp_lib),
            ]
            _run_tool(cxx, env, self.out_dir, "g++ (FI harness)")
            tmp_lib.replace(lib)

    def _check_info(self) -> None:
        info = np.zeros(8 + len(self.registers), np.int32)
        self._lib.fi_info(info.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), len(info))
        want = [
            len(self.registers),
            self.n_inputs,
            self.input_type.width,
            self.n_outputs,
            self.out_width,
            int(self.out_signed),
        ]
        widths = [r.width for r in self.registers]
        if list(info[:6]) != want or list(info[8:]) != widths:
            raise FiBuildError(
                f"the compiled FI harness of '{self.name}' does not match its metadata "
                f"(harness {list(info)}, expected {want} + {widths}); rebuild with use_cache=False"
            )

    @property
    def built(self) -> bool:
        return self._lib is not None

    # ---- run
    def run_slots(
        self,
        x_codes: np.ndarray,
        slot_vec: np.ndarray,
        slot_fault: np.ndarray,
        fault_rank: np.ndarray,
        fault_ptr: np.ndarray,
        flip_bits: np.ndarray,
        *,
        n_threads: int = 0,
    ) -> np.ndarray:
        """Stream ``len(slot_vec)`` slots through the pipeline; output codes ``(n_slots, n_outputs)``.

        Slot ``s`` carries vector ``x_codes[slot_vec[s]]`` and fault
        ``slot_fault[s]`` (-1: none). Fault ``f`` flips register rank
        ``fault_rank[f]``'s bits ``flip_bits[fault_ptr[f]:fault_ptr[f+1]]`` as the
        rank captures that slot (one SEU per slot). Everything is validated
        here, so the C++ side never reads out of bounds.
        """
        if self._lib is None:
            self.build()
        x = self.input_codes(x_codes)
        sv = np.ascontiguousarray(slot_vec, np.int64)
        sf = np.ascontiguousarray(slot_fault, np.int32)
        fr = np.ascontiguousarray(fault_rank, np.int32)
        fp = np.ascontiguousarray(fault_ptr, np.int64)
        fb = np.ascontiguousarray(flip_bits, np.int32)
        n_f = len(fr)
        if sv.shape != sf.shape or sv.ndim != 1:
            raise InputRangeError("slot_vec and slot_fault must be 1-D arrays of one length")
        if sv.size and (sv.min() < 0 or sv.max() >= len(x)):
            raise InputRangeError(f"slot vector indices must lie in [0, {len(x)})")
        if sf.size and (sf.min() < -1 or sf.max() >= n_f):
            raise InputRangeError(f"slot fault indices must lie in [-1, {n_f})")
        if fp.shape != (n_f + 1,) or (n_f and (fp[0] != 0 or np.any(np.diff(fp) < 0))):
            raise InputRangeError("fault_ptr must be a CSR pointer of length n_faults + 1 from 0")
        if n_f and fp[-1] != len(fb):
            raise InputRangeError("fault_ptr[-1] must equal len(flip_bits)")
        if n_f:
            if fr.min() < 0 or fr.max() >= len(self.registers):
                raise InputRangeError(f"fault ranks must lie in [0, {len(self.registers)})")
            widths = np.array([r.width for r in self.registers], np.int64)
            per_bit_rank = np.repeat(fr, np.diff(fp))
            if fb.size and (fb.min() < 0 or np.any(fb >= widths[per_bit_rank])):
                raise InputRangeError("a flip bit lies outside its register's width")
        out = np.zeros((len(sv), self.n_outputs), np.int32)
        if len(sv) == 0:
            return out
        i32 = ctypes.POINTER(ctypes.c_int32)
        i64 = ctypes.POINTER(ctypes.c_int64)
        if n_f == 0:  # ctypes needs valid pointers even for empty arrays
            fr, fp, fb = np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int32)
        elif fb.size == 0:
            fb = np.zeros(1, np.int32)
        with memfiles_cwd(self.out_dir / "src" / "memfiles"):
            rc = self._lib.fi_run(
                x.ctypes.data_as(i32),
                ctypes.c_int64(len(x)),
                sv.ctypes.data_as(i64),
                sf.ctypes.data_as(i32),
                ctypes.c_int64(len(sv)),
                fr.ctypes.data_as(i32),
                fp.ctypes.data_as(i64),
                fb.ctypes.data_as(i32),
                out.ctypes.data_as(i32),
                ctypes.c_int32(max(int(n_threads), 0)),
            )
        if rc != 0:
            raise EdgemlError(f"FI harness of '{self.name}' failed with code {rc}")
        return out

    def input_codes(self, x_codes: np.ndarray) -> np.ndarray:
        """Validate golden input codes (graph-input layout) -> contiguous (N, n_inputs) int32."""
        x = np.asarray(x_codes)
        if x.dtype.kind not in "iu":
            raise InputRangeError(f"RTL inputs must be integer codes, got dtype {x.dtype}")
        if x.ndim < 1:
            raise InputRangeError("RTL inputs must be a batch of vectors, got a scalar")
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.n_inputs:
            raise InputRangeError(
                f"RTL input vectors must have {self.n_inputs} elements (shape {self.input_shape}); got {x.shape[1]}"
            )
        t = self.input_type
        if x.size and (x.min() < t.qmin or x.max() > t.qmax):
            raise InputRangeError(
                f"input codes span [{x.min()}, {x.max()}] but the input type {t.hls()} holds [{t.qmin}, {t.qmax}]"
            )
        return np.ascontiguousarray(x, np.int32)

    def predict_int(self, x_codes: np.ndarray, n_threads: int = 0) -> np.ndarray:
        """Fault-free outputs (every mask zero), golden output codes (N, *output_shape) int64."""
        x = self.input_codes(x_codes)
        n = len(x)
        empty = np.zeros(0, np.int32)
        out = self.run_slots(
            x,
            np.arange(n, dtype=np.int64),
            np.full(n, -1, np.int32),
            empty,
            np.zeros(1, np.int64),
            empty,
            n_threads=n_threads,
        )
        return out.astype(np.int64).reshape(n, *self.output_shape)


def _run_tool(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = (res.stdout[-3000:] + "\n" + res.stderr[-3000:]).strip()
        raise FiBuildError(f"{what} failed (exit {res.returncode}) in {cwd}:\n{tail}")


def _load_harness(lib: Path) -> Any:
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise FiBuildError(f"cannot load the FI harness {lib}: {exc}") from exc
    i32 = ctypes.POINTER(ctypes.c_int32)
    i64 = ctypes.POINTER(ctypes.c_int64)
    so.fi_run.argtypes = [
        i32,
        ctypes.c_int64,
        i64,
        i32,
        ctypes.c_int64,
        i32,
        i64,
        i32,
        i32,
        ctypes.c_int32,
    ]
    so.fi_run.restype = ctypes.c_int
    so.fi_info.argtypes = [i32, ctypes.c_int32]
    so.fi_info.restype = None
    return so


# --------------------------------------------------------------------------- C++ harness

_HARNESS = r"""// Generated by edgeml.fault_injection.rtl_fi_build: SEU harness for FI top '@TOP@'.
// Streams slots (vector, fault) back to back; fault f raises rank fault_rank[f]'s mask
// bits on the rising edge where that rank captures the slot (one SEU per slot).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>
#include <verilated.h>
#include "Vfi.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
constexpr int N_RANKS = @NRANKS@;
constexpr int LATENCY = N_RANKS - 1;
constexpr int N_IN = @NIN@, W_IN = @WIN@, IN_WORDS = @INWORDS@;
constexpr int N_OUT = @NOUT@, W_OUT = @WOUT@, OUT_WORDS = @OUTWORDS@;
constexpr bool OUT_SIGNED = @OUTSIGNED@;
const int32_t RANK_WIDTHS[N_RANKS] = {@WIDTHS@};

template <typename T> inline void port_load(T& p, const uint32_t* w) {
    if (sizeof(T) > 4) p = (T)((uint64_t)w[0] | ((uint64_t)w[1] << 32));
    else p = (T)w[0];
}
template <std::size_t N> inline void port_load(VlWide<N>& p, const uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) p[i] = w[i];
}
template <typename T> inline void port_store(const T& p, uint32_t* w) {
    uint64_t v = (uint64_t)p;
    w[0] = (uint32_t)v;
    if (sizeof(T) > 4) w[1] = (uint32_t)(v >> 32);
}
template <std::size_t N> inline void port_store(const VlWide<N>& p, uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) w[i] = p[i];
}
template <typename T> inline void port_flip(T& p, int b) { p = (T)(p ^ ((T)1 << b)); }
template <std::size_t N> inline void port_flip(VlWide<N>& p, int b) { p[b >> 5] ^= (1u << (b & 31)); }

inline void toggle(Vfi* d, int rank, const int32_t* bits, int64_t nb) {
    switch (rank) {
@TOGGLES@
    default: break;
    }
}

void pack(const int32_t* codes, uint32_t* words) {  // element j at bits [j*W_IN, (j+1)*W_IN)
    for (int i = 0; i < IN_WORDS + 1; ++i) words[i] = 0;
    const uint64_t m = (W_IN >= 32) ? 0xffffffffull : ((1ull << W_IN) - 1);
    for (int j = 0; j < N_IN; ++j) {
        uint64_t v = ((uint64_t)(uint32_t)codes[j]) & m;
        int64_t pos = (int64_t)j * W_IN;
        int w = (int)(pos >> 5), s = (int)(pos & 31);
        uint64_t sh = v << s;
        words[w] |= (uint32_t)sh;
        words[w + 1] |= (uint32_t)(sh >> 32);
    }
}

void unpack(const uint32_t* words, int32_t* out) {
    for (int j = 0; j < N_OUT; ++j) {
        int64_t pos = (int64_t)j * W_OUT;
        int w = (int)(pos >> 5), s = (int)(pos & 31);
        uint64_t both = (uint64_t)words[w] | ((uint64_t)words[w + 1] << 32);
        uint64_t v = (both >> s) & ((W_OUT >= 32) ? 0xffffffffull : ((1ull << W_OUT) - 1));
        if (OUT_SIGNED && W_OUT < 64 && ((v >> (W_OUT - 1)) & 1)) v |= ~0ull << W_OUT;
        out[j] = (int32_t)(int64_t)v;
    }
}

void run_chunk(const uint32_t* packed, const int64_t* sv, const int32_t* sf, int64_t n,
               const int32_t* fr, const int64_t* fp, const int32_t* fb, int32_t* out) {
    auto ctx = std::make_unique<VerilatedContext>();
    auto d = std::make_unique<Vfi>(ctx.get());
    std::vector<uint32_t> obuf(OUT_WORDS + 2, 0);
    d->clk = 0;
    d->eval();
    for (int64_t t = 0; t < n + LATENCY; ++t) {
        if (t < n) port_load(d->model_inp, &packed[sv[t] * (IN_WORDS + 1)]);
        for (int r = 0; r < N_RANKS; ++r) {  // raise the masks of slots captured on this edge
            int64_t s = t - r;
            if (s < 0 || s >= n) continue;
            int32_t f = sf[s];
            if (f >= 0 && fr[f] == r) toggle(d.get(), r, &fb[fp[f]], fp[f + 1] - fp[f]);
        }
        d->clk = 1;
        d->eval();
        for (int r = 0; r < N_RANKS; ++r) {  // lower them again (XOR toggles back to zero)
            int64_t s = t - r;
            if (s < 0 || s >= n) continue;
            int32_t f = sf[s];
            if (f >= 0 && fr[f] == r) toggle(d.get(), r, &fb[fp[f]], fp[f + 1] - fp[f]);
        }
        if (t >= LATENCY) {
            port_store(d->model_out, obuf.data());
            unpack(obuf.data(), &out[(t - LATENCY) * N_OUT]);
        }
        d->clk = 0;
        d->eval();
    }
    d->final();
}
}  // namespace

extern "C" {
void fi_info(int32_t* info, int32_t n) {
    int32_t v[8] = {N_RANKS, N_IN, W_IN, N_OUT, W_OUT, (int32_t)OUT_SIGNED, 0, 0};
    for (int i = 0; i < n; ++i) info[i] = i < 8 ? v[i] : (i - 8 < N_RANKS ? RANK_WIDTHS[i - 8] : 0);
}

int fi_run(const int32_t* codes, int64_t n_vec, const int64_t* sv, const int32_t* sf, int64_t n_slots,
           const int32_t* fr, const int64_t* fp, const int32_t* fb, int32_t* out, int32_t n_threads) {
    std::vector<uint32_t> packed((size_t)n_vec * (IN_WORDS + 1));
    for (int64_t i = 0; i < n_vec; ++i) pack(&codes[i * N_IN], &packed[i * (IN_WORDS + 1)]);
    int nt = 1;
#ifdef _OPENMP
    nt = n_threads > 0 ? n_threads : omp_get_max_threads();
#endif
    int64_t per = (n_slots + nt - 1) / nt;
    if (per < 4 * (LATENCY + 1)) per = 4 * (LATENCY + 1);  // keep pipeline fill small
    int64_t n_chunks = (n_slots + per - 1) / per;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
        int64_t s0 = c * per, s1 = s0 + per < n_slots ? s0 + per : n_slots;
        run_chunk(packed.data(), sv + s0, sf + s0, s1 - s0, fr, fp, fb, out + s0 * N_OUT);
    }
    return 0;
}
}
"""


def _harness_source(d: FiDesign) -> str:
    toggles = "\n".join(
        f"    case {r.rank}: for (int64_t i = 0; i < nb; ++i) port_flip(d->fi_mask_{r.rank}, bits[i]); break;"
        for r in d.registers
    )
    n_in, w_in = d.n_inputs, d.input_type.width
    n_out, w_out = d.n_outputs, d.out_width
    subs = {
        "@TOP@": d.name,
        "@NRANKS@": str(len(d.registers)),
        "@NIN@": str(n_in),
        "@WIN@": str(w_in),
        "@INWORDS@": str((n_in * w_in + 31) // 32),
        "@NOUT@": str(n_out),
        "@WOUT@": str(w_out),
        "@OUTWORDS@": str((n_out * w_out + 31) // 32),
        "@OUTSIGNED@": "true" if d.out_signed else "false",
        "@WIDTHS@": ", ".join(str(r.width) for r in d.registers),
        "@TOGGLES@": toggles,
    }
    text = _HARNESS
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


# --------------------------------------------------------------------------- Verilog helpers


def _input_use(comb: Any) -> np.ndarray:
    """Which inputs of a da4ml block any operation or output reads (dead ones drive nothing)."""
    refs = comb.ref_count
    used = np.zeros(comb.shape[0], bool)
    for i, op in enumerate(comb.ops):
        if op.opcode == -1 and refs[i] > 0:
            used[op.id0] = True
    return used


def _kif_width(qint: Any) -> tuple[int, int, int]:
    """(signed, width, frac) of da4ml's minimal packing of one value."""
    from da4ml.types import minimal_kif

    k, i, f = (int(v) for v in minimal_kif(qint))
    return k, k + i + f, f


def _convert_expr(src: str, off: int, width: int, signed: bool, frac: int, out_width: int) -> str:
    """Verilog expression of ``out_width`` bits: the integer code held at ``src[off +: width]``.

    The packed bits hold ``value * 2**frac`` (``frac <= 0``): append ``-frac``
    zero LSBs, then sign- (or zero-) extend, or keep the low ``out_width`` bits.
    """
    if frac > 0:
        raise UnsupportedOpError(
            f"a register value carries {frac} fractional bits; integer codes never should"
        )
    if width == 0:
        return f"{out_width}'d0"
    low = -frac
    parts: list[str] = []
    body_bits = min(width, max(out_width - low, 0))
    ext = out_width - low - body_bits
    if ext > 0:
        fill = f"{src}[{off + width - 1}]" if signed else "1'b0"
        parts.append(f"{{{ext}{{{fill}}}}}")
    if body_bits > 0:
        parts.append(f"{src}[{off + body_bits - 1}:{off}]")
    if low > 0:
        parts.append(f"{min(low, out_width)}'d0")
    return parts[0] if len(parts) == 1 else "{" + ", ".join(parts) + "}"


def _pack_expr(src: str, off: int, code_width: int, width: int, frac: int) -> str:
    """Verilog expression of ``width`` bits: da4ml's packing of the code at ``src[off +: code_width]``."""
    lo = off - frac  # drop -frac zero LSBs
    hi = lo + width - 1
    if hi <= off + code_width - 1:
        return f"{src}[{hi}:{lo}]"
    # da4ml's field is wider than the code (cannot happen for full-range inputs): sign-extend
    ext = hi - (off + code_width - 1)
    return f"{{{{{ext}{{{src}[{off + code_width - 1}]}}}}, {src}[{off + code_width - 1}:{lo}]}}"


def _top_verilog(
    top: str,
    registers: list[Register],
    in_width: int,
    blocks: list[tuple[str, list[str], list[str]]],
    next_exprs: list[list[tuple[int, int, str]]],
    out_assign: str,
    out_width: int,
    comment: str,
    r0_from: str = "model_inp",
    pre_lines: Sequence[str] = (),
) -> str:
    """The FI top: ranks ``r0..rK`` with ``r_k <= d_k ^ fi_mask_k``.

    ``blocks`` are the combinational instances (module, lines before, lines
    after), ``next_exprs[k-1]`` the slices of ``d_k``, ``r0_from`` what rank 0
    captures (``model_inp``, or its repacking declared in ``pre_lines``).
    """
    ports = ["    input clk,", f"    input [{in_width - 1}:0] model_inp,"]
    ports += [f"    input [{r.width - 1}:0] fi_mask_{r.rank}," for r in registers]
    ports.append(f"    output [{out_width - 1}:0] model_out")
    body: list[str] = []
    for r in registers:
        body.append(f"    reg [{r.width - 1}:0] r{r.rank};  // {r.holds}")
    for r in registers[1:]:
        body.append(f"    wire [{r.width - 1}:0] d{r.rank};")
    body += pre_lines
    for module, in_lines, out_lines in blocks:
        body += in_lines
        body.append(f"    {module} u_{module} (.model_inp({module}_in), .model_out({module}_out));")
        body += out_lines
    for r, exprs in zip(registers[1:], next_exprs, strict=True):
        for lo, hi, expr in exprs:
            body.append(f"    assign d{r.rank}[{hi}:{lo}] = {expr};")
    seq = ["    always @(posedge clk) begin", f"        r0 <= {r0_from} ^ fi_mask_0;"]
    seq += [f"        r{r.rank} <= d{r.rank} ^ fi_mask_{r.rank};" for r in registers[1:]]
    seq.append("    end")
    return "\n".join(
        [
            "`timescale 1 ns / 1 ps",
            f"// Generated by edgeml.fault_injection.rtl_fi_build. {comment}",
            "// Every register rank r<k> captures d<k> ^ fi_mask_<k>: a mask held for one rising",
            "// edge flips those bits of what the rank captures (an SEU). Masks at zero = plain design.",
            "/* verilator lint_off UNUSEDSIGNAL */",
            f"module {top} (",
            *ports,
            ");",
            *body,
            *seq,
            f"    assign model_out = {out_assign};",
            "endmodule",
            "/* verilator lint_on UNUSEDSIGNAL */",
            "",
        ]
    )


def _copy_static(dst: Path) -> list[Path]:
    import da4ml.codegen.rtl as rtl_pkg

    src = Path(rtl_pkg.__file__).parent / "verilog" / "source"
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.glob("*.v")):
        shutil.copy(p, dst / p.name)
        out.append(dst / p.name)
    return out


def check_ident(name: str) -> None:
    import re

    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ConfigError(
            f"FI module name {name!r} is not a Verilog identifier; use letters, digits and '_'"
        )


# --------------------------------------------------------------------------- layer build


@dataclass
class _Field:
    tensor: str
    shape: tuple[int, ...]
    signed: bool
    width: int  # bits per element in the register

    @property
    def n(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


def _producers(g: GoldenModel) -> dict[str, int]:
    return {op.output: i for i, op in enumerate(g.ops)}


def plan_boundaries(g: GoldenModel, boundaries: str | Sequence[str] = "layers") -> list[str]:
    """The golden tensors the layer build registers, in op order (the graph output last).

    ``"layers"``: each tensor a Dense/Conv reads (through layout ops), i.e. every
    layer's activation, plus the output. ``"ops"``: every op output except pure
    layout ops (accumulators, ReLU and requant outputs, pools...). Or an explicit
    list of golden op output names.
    """
    prod = _producers(g)
    if isinstance(boundaries, str):
        if boundaries not in BOUNDARY_MODES:
            raise ConfigError(
                f"boundaries must be one of {BOUNDARY_MODES} or a list of tensor names, got {boundaries!r}"
            )
        if boundaries == "ops":
            names = [op.output for op in g.ops if op.kind not in LAYOUT_KINDS]
        else:
            feeds: set[str] = set()
            for op in g.ops:
                if isinstance(op, Dense):
                    t = op.inputs[0]
                    while t in prod and g.ops[prod[t]].kind in LAYOUT_KINDS:
                        t = g.ops[prod[t]].inputs[0]
                    if t in prod:
                        feeds.add(t)
            names = [op.output for op in g.ops if op.output in feeds]
    else:
        names = list(dict.fromkeys(boundaries))
        unknown = [n for n in names if n not in prod]
        if unknown:
            import difflib

            hints = {n: difflib.get_close_matches(n, list(prod), n=3) for n in unknown}
            raise ConfigError(
                f"unknown boundary tensor(s) {unknown}; boundaries must be golden op outputs "
                f"(closest: {hints}; all: {list(prod)})"
            )
        names.sort(key=lambda n: prod[n])
    if g.output_name not in prod:
        raise UnsupportedOpError("the golden graph output is its input; nothing to register")
    last = prod[g.output_name]
    names = [n for n in names if prod[n] < last] + [g.output_name]
    return names


def generate_fi_rtl(
    g: GoldenModel,
    out_dir: str | Path,
    name: str,
    *,
    boundaries: str | Sequence[str] = "layers",
) -> FiDesign:
    """Write the layer build of ``g`` (see the module docstring) into ``out_dir``; returns it unbuilt.

    Each segment (the golden ops between two registered tensors) is traced on
    fresh da4ml variables spanning the *whole* code range of its input tensors'
    golden types, so the logic is exact for any bit pattern in the registers
    (a flipped code can lie outside the fault-free range). A register field is
    as wide as the golden type, or wider when a flipped upstream code can drive
    the tensor beyond it (then reported per bit by the register map).
    """
    from da4ml.codegen.rtl.verilog.comb import comb_logic_gen, table_mem_gen
    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    from edgeml.rtl import SUPPORTED_RTL_OPS, _trace_op

    check_ident(name)
    for op in g.ops:
        if op.kind not in SUPPORTED_RTL_OPS:
            raise UnsupportedOpError(
                f"golden op '{op.name}' of kind '{op.kind}' has no RTL mirror; "
                f"supported: {', '.join(SUPPORTED_RTL_OPS)}"
            )
    bnames = plan_boundaries(g, boundaries)
    prod = _producers(g)
    last_op = prod[g.output_name]
    seg_of_op: list[int] = []
    seg = 1
    ends = {prod[b]: k + 1 for k, b in enumerate(bnames)}
    for i in range(last_op + 1):
        seg_of_op.append(seg)
        if i in ends:
            seg += 1
    n_ranks = len(bnames) + 1
    # the last segment that reads each tensor
    last_use: dict[str, int] = {}
    for i in range(last_op + 1):
        for t in g.ops[i].inputs:
            last_use[t] = max(last_use.get(t, 0), seg_of_op[i])
    made_in = {g.input_name: 0, **{g.ops[i].output: seg_of_op[i] for i in range(last_op + 1)}}
    order = [g.input_name] + [g.ops[i].output for i in range(last_op + 1)]
    live: list[list[str]] = [[g.input_name]]
    for k in range(1, n_ranks):
        keep = [
            t for t in order if made_in[t] <= k and (last_use.get(t, 0) > k or t == bnames[k - 1])
        ]
        live.append(keep)

    out_dir = Path(out_dir).resolve()
    src = out_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    static = _copy_static(src / "static")
    (src / "memfiles").mkdir(parents=True, exist_ok=True)
    hw = HWConfig(1, -1, -1)

    t_in = g.input_type
    fields: dict[str, _Field] = {
        g.input_name: _Field(g.input_name, tuple(g.input_shape), t_in.signed, t_in.width)
    }
    if t_in.width > MAX_PORT_BITS:
        raise UnsupportedOpError(f"input codes of {t_in.width} bits exceed {MAX_PORT_BITS}")
    blocks: list[tuple[str, list[str], list[str]]] = []
    next_exprs: list[list[tuple[int, int, str]]] = []
    seg_ops: list[list[str]] = [[]]
    read: dict[tuple[int, str], np.ndarray] = {}
    sources: list[Path] = list(static)
    t0 = time.perf_counter()
    for k in range(1, n_ranks):
        prev = [fields[t] for t in live[k - 1]]
        ops = [g.ops[i] for i in range(last_op + 1) if seg_of_op[i] == k]
        seg_ops.append([op.name for op in ops])
        env: dict[str, np.ndarray] = {}
        inputs: list[Any] = []
        for f in prev:
            lo = -(1 << (f.width - 1)) if f.signed else 0
            hi = (1 << (f.width - 1)) - 1 if f.signed else (1 << f.width) - 1
            shp = (1, *f.shape)
            v = FixedVariableArray.from_lhs(
                low=np.full(shp, float(lo)),
                high=np.full(shp, float(hi)),
                step=np.ones(shp),
                hwconf=hw,
            )._vars
            env[f.tensor] = v
            inputs.extend(v.reshape(-1))
        for op in ops:
            try:
                env[op.output] = _trace_op(op, [env[i] for i in op.inputs])
            except EdgemlError:
                raise
            except Exception as exc:
                raise UnsupportedOpError(
                    f"tracing golden op '{op.name}' ({op.kind}) for the FI build failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        produced = [t for t in live[k] if made_in[t] == k]
        outs = [v for t in produced for v in env[t].reshape(-1)]
        module = f"{name}_seg{k}"
        comb = comb_trace(inputs, outs, keep_dead_inputs=True)
        used = _input_use(comb)
        e0 = 0
        for f in prev:
            carried = f.tensor in live[k] and made_in[f.tensor] < k
            read[(k - 1, f.tensor)] = used[e0 : e0 + f.n] | carried
            e0 += f.n
        (src / f"{module}.v").write_text(
            comb_logic_gen(comb, module, timescale="`timescale 1 ns / 1 ps")
        )
        for mem, text in table_mem_gen(comb).items():
            (src / "memfiles" / mem).write_text(text)
        sources.append(src / f"{module}.v")
        # input packing: rank k-1 (golden format) -> da4ml's packing of the block's inputs
        in_lines = []
        q_in = comb.inp_qint
        pos = 0
        roff = 0
        elem_fmt = [(f.width, j) for f in prev for j in range(f.n)]
        for e, qi in enumerate(q_in):
            sgn, w, fr = _kif_width(qi)
            cw = elem_fmt[e][0]
            if w > 0:
                in_lines.append(
                    f"    assign {module}_in[{pos + w - 1}:{pos}] = "
                    f"{_pack_expr(f'r{k - 1}', roff, cw, w, fr)};"
                )
            pos += w
            roff += cw
            del sgn
        in_total = max(pos, 1)
        in_lines.insert(0, f"    wire [{in_total - 1}:0] {module}_in;")
        # output formats: union of the golden type and the da4ml range (flipped inputs)
        q_out = comb.out_qint
        out_kif = [_kif_width(q) for q in q_out]
        out_total = sum(w for _, w, _ in out_kif)
        dead = [idx < 0 for idx in comb.out_idxs]
        e0 = 0
        for t in produced:
            ti = g.tensors[t]
            n = int(np.prod(ti.shape)) if ti.shape else 1
            qs = [q_out[e0 + j] for j in range(n) if not dead[e0 + j]]
            lo = min([ti.type.qmin, *(int(np.floor(q.min)) for q in qs)])
            hi = max([ti.type.qmax, *(int(np.ceil(q.max)) for q in qs)])
            ft = type_for_range(lo, hi, 0)
            if ft.width > ti.type.width:
                log.info(
                    "FI build: tensor %s needs %d bits in the register (golden type %s): "
                    "flipped upstream codes can exceed its fault-free range",
                    t,
                    ft.width,
                    ti.type.hls(),
                )
            fields[t] = _Field(t, tuple(ti.shape), ft.signed, ft.width)
            e0 += n
        out_lines = [f"    wire [{max(out_total, 1) - 1}:0] {module}_out;"]
        blocks.append((module, in_lines, out_lines))
        # next-state expressions of rank k
        exprs: list[tuple[int, int, str]] = []
        off = 0
        prev_off: dict[str, int] = {}
        o = 0
        for f in prev:
            prev_off[f.tensor] = o
            o += f.n * f.width
        pk = np.cumsum([0] + [w for _, w, _ in out_kif])
        e_of: dict[str, int] = {}
        e0 = 0
        for t in produced:
            e_of[t] = e0
            e0 += fields[t].n
        for t in live[k]:
            f = fields[t]
            if made_in[t] < k:  # carried through: plain wires from the previous rank
                p = prev_off[t]
                exprs.append(
                    (off, off + f.n * f.width - 1, f"r{k - 1}[{p + f.n * f.width - 1}:{p}]")
                )
            else:
                for j in range(f.n):
                    e = e_of[t] + j
                    sgn, w, fr = out_kif[e]
                    expr = (
                        f"{f.width}'d0"
                        if dead[e]
                        else _convert_expr(f"{module}_out", int(pk[e]), w, bool(sgn), fr, f.width)
                    )
                    lo_b = off + j * f.width
                    exprs.append((lo_b, lo_b + f.width - 1, expr))
            off += f.n * f.width
        next_exprs.append(exprs)
        log.debug("FI segment %d (%s) traced", k, ", ".join(seg_ops[-1]))
    log.info(
        "FI build %s: %d segments traced in %.1f s", name, n_ranks - 1, time.perf_counter() - t0
    )

    registers: list[Register] = []
    for k in range(n_ranks):
        els: list[RegElement] = []
        off = 0
        for t in live[k]:
            f = fields[t]
            used = read.get((k, t), np.ones(f.n, bool))
            for j in range(f.n):
                els.append(RegElement(off, f.width, f.signed, 0, t, j, bool(used[j])))
                off += f.width
        holds = ", ".join(live[k])
        registers.append(Register(f"r{k}", k, off, holds, tuple(els)))
    out_f = fields[g.output_name]
    if out_f.width > MAX_PORT_BITS:
        raise UnsupportedOpError(
            f"output codes need {out_f.width} bits in the FI build, over the harness' {MAX_PORT_BITS}"
        )
    top_text = _top_verilog(
        name,
        registers,
        registers[0].width,
        blocks,
        next_exprs,
        f"r{n_ranks - 1}",
        registers[-1].width,
        f"Layer build of '{Path(g.source).name if g.source else name}': one combinational block per golden layer segment.",
    )
    (src / f"{name}.v").write_text(top_text)
    sources.append(src / f"{name}.v")
    d = FiDesign(
        name=name,
        kind="layers",
        out_dir=out_dir,
        registers=registers,
        input_shape=tuple(g.input_shape),
        output_shape=tuple(g.output_shape),
        input_type=g.input_type,
        output_type=g.output_type,
        out_signed=out_f.signed,
        out_width=out_f.width,
        sources=[str(p.relative_to(out_dir)) for p in sources],
        segments=seg_ops,
        boundaries=boundaries if isinstance(boundaries, str) else ",".join(bnames),
    )
    d.save()
    return d


# --------------------------------------------------------------------------- da4ml build


def load_pipeline(design: Any) -> Any:
    """da4ml's ``Pipeline`` of a pipelined :class:`edgeml.rtl.RtlDesign` (``model/pipeline.json``).

    Checks that it is the one the design's Verilog was written from (stage
    count and register widths), so register positions derived from it are right.
    """
    from da4ml.types import Pipeline

    if not design.pipelined:
        raise ConfigError(
            f"design '{design.name}' is combinational; it has no registers to inject into. "
            "Generate it with generate_rtl(..., pipelined=True)."
        )
    path = design.out_dir / "model" / "pipeline.json"
    if not path.is_file():
        raise MissingRunError(f"{path} not found: re-run generate_rtl for '{design.name}'")
    pipe = Pipeline.load(str(path))
    if len(pipe.solutions) != design.latency:
        raise EdgemlError(
            f"{path} has {len(pipe.solutions)} stages but the design's latency is {design.latency}; "
            "the folder holds a different design"
        )
    text = (design.src_dir / f"{design.name}.v").read_text()
    for k, sol in enumerate(pipe.solutions):
        w = sum(_kif_width(q)[1] for q in sol.inp_qint)
        if f"reg [{w - 1}:0] stage{k}_inp;" not in text:
            raise EdgemlError(
                f"{path} stage {k} does not match {design.name}.v; regenerate the design"
            )
    return pipe


def stage_elements(qints: Sequence[Any], used: np.ndarray | None = None) -> tuple[RegElement, ...]:
    """da4ml's packing of one register: one element per value, minimal width, in order."""
    out = []
    off = 0
    for j, q in enumerate(qints):
        sgn, w, fr = _kif_width(q)
        live = True if used is None else bool(used[j])
        out.append(RegElement(off, w, bool(sgn), fr, None, -1, live))
        off += w
    return tuple(out)


def wrap_da4ml_pipeline(
    design: Any, out_dir: str | Path, name: str | None = None, *, g: GoldenModel | None = None
) -> FiDesign:
    """The da4ml build: ``design``'s own stage modules under a top with mask ports on every stage register.

    Register ``r0`` is da4ml's ``stage0_inp`` (the input register), ``r<k>`` its
    ``stage<k>_inp`` and the last rank its ``model_out`` register, each in
    da4ml's packed minimal-width format. Passing ``g`` maps every register value
    that equals a golden tensor element (:func:`edgeml.fault_injection.rtl_regmap.match_da4ml_registers`).
    """
    pipe = load_pipeline(design)
    name = name or f"{design.name}_fi"
    check_ident(name)
    out_dir = Path(out_dir).resolve()
    src = out_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    sources = _copy_static(src / "static")
    mem = design.src_dir / "memfiles"
    if any(mem.glob("*.mem")):
        raise UnsupportedOpError("the da4ml build does not support lookup-table memories yet")
    for k in range(len(pipe.solutions)):
        p = design.src_dir / f"{design.name}_stage{k}.v"
        shutil.copy(p, src / p.name)
        sources.append(src / p.name)
    n_st = len(pipe.solutions)
    qints = [list(sol.inp_qint) for sol in pipe.solutions] + [list(pipe.out_qint)]
    registers = []
    for k, q in enumerate(qints):
        els = stage_elements(q, _input_use(pipe.solutions[k]) if k < n_st else None)
        width = sum(e.width for e in els)
        holds = (
            "da4ml stage0_inp (input)"
            if k == 0
            else (f"da4ml stage{k}_inp" if k < n_st else "da4ml model_out register")
        )
        registers.append(Register(f"r{k}", k, width, holds, els))
    if g is not None:
        from edgeml.fault_injection.rtl_regmap import match_da4ml_registers

        registers = match_da4ml_registers(g, pipe, registers)
    t_in = design.input_type
    blocks = []
    next_exprs = []
    # model_inp (golden codes, uniform width) -> rank 0 packing is done by the input assign
    in_exprs = []
    for j, el in enumerate(registers[0].elements):
        if el.width:
            in_exprs.append(
                (
                    el.offset,
                    el.offset + el.width - 1,
                    _pack_expr("model_inp", j * t_in.width, t_in.width, el.width, el.frac),
                )
            )
    for k in range(n_st):
        module = f"{design.name}_stage{k}"
        in_lines = [f"    wire [{registers[k].width - 1}:0] {module}_in = r{k};"]
        out_lines = [f"    wire [{registers[k + 1].width - 1}:0] {module}_out;"]
        blocks.append((module, in_lines, out_lines))
        next_exprs.append([(0, registers[k + 1].width - 1, f"{module}_out")])
    # output conversion: da4ml packing -> golden codes, uniform width
    out_els = registers[-1].elements
    lo = min([design.output_type.qmin] + [_el_range(e)[0] for e in out_els])
    hi = max([design.output_type.qmax] + [_el_range(e)[1] for e in out_els])
    ot = type_for_range(lo, hi, 0)
    if ot.width > MAX_PORT_BITS:
        raise UnsupportedOpError(f"output codes need {ot.width} bits, over {MAX_PORT_BITS}")
    parts = [
        _convert_expr(f"r{n_st}", e.offset, e.width, e.signed, e.frac, ot.width)
        for e in reversed(out_els)
    ]
    out_assign = "{" + ", ".join(parts) + "}"
    # rank 0 captures model_inp (golden codes, uniform width) repacked to da4ml's format
    r0_in = [f"    wire [{registers[0].width - 1}:0] r0_in;"] + [
        f"    assign r0_in[{hi_}:{lo_}] = {e};" for lo_, hi_, e in in_exprs
    ]
    top = _top_verilog(
        name,
        registers,
        len(registers[0].elements) * t_in.width,
        blocks,
        next_exprs,
        out_assign,
        len(out_els) * ot.width,
        f"da4ml build of '{design.name}': da4ml's stage modules, mask ports on its stage registers.",
        r0_from="r0_in",
        pre_lines=r0_in,
    )
    (src / f"{name}.v").write_text(top)
    sources.append(src / f"{name}.v")
    d = FiDesign(
        name=name,
        kind="da4ml",
        out_dir=out_dir,
        registers=registers,
        input_shape=tuple(design.input_shape),
        output_shape=tuple(design.output_shape),
        input_type=design.input_type,
        output_type=design.output_type,
        out_signed=ot.signed,
        out_width=ot.width,
        sources=[str(p.relative_to(out_dir)) for p in sources],
        segments=[],
        boundaries=f"da4ml latency_cutoff={design.latency_cutoff:g}",
    )
    d.save()
    return d


def _el_range(e: RegElement) -> tuple[int, int]:
    """Integer code range representable by a packed element."""
    if e.width == 0:
        return 0, 0
    sh = -e.frac
    if e.signed:
        return -(1 << (e.width - 1)) << sh, ((1 << (e.width - 1)) - 1) << sh
    return 0, ((1 << e.width) - 1) << sh
