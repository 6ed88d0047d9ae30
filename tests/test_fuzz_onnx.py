"""Fuzzing the front door: `edgeml export --onnx FILE` on mutated QONNX files.

Valid small QONNX models (built the way qonnx / Brevitas write them, see
``qonnx_builders``) are mutated at the protobuf level (dimensions, dtypes,
attributes, initializer values and sizes, node order and ops, dangling inputs)
and at the byte level (truncation, flipped bytes), then given to the CLI in
process against a copy of an existing run folder. For every case:

* the exit code is 0 or 1 (never 5, never an uncaught exception);
* a refusal prints one ``edgeml: error:`` message and no traceback;
* a refused command leaves every file of the run folder byte-identical;
* an accepted model compiles and runs in the golden model on its whole input range;
* each case finishes within :data:`DEADLINE_S` seconds.

The cases are drawn from a fixed seed (``derandomize``), so CI sees the same
:data:`FUZZ_EXAMPLES` cases every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnx
import pytest
import qonnx_builders as qb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from edgeml.cli import EXIT_OK, EXIT_USER, main

#: Cases per run (fixed seed). ``EDGEML_FUZZ_EXAMPLES=5000`` runs a longer campaign.
FUZZ_EXAMPLES = int(os.environ.get("EDGEML_FUZZ_EXAMPLES", "300"))
#: Upper bound on one case (parse, clean, compile, export, golden run).
DEADLINE_S = 20

#: How each case ended, over the session (printed at the end of the fuzz tests).
OUTCOMES: Counter[str] = Counter()

BUILDERS = {
    "mlp_pot": qb.mlp_pot,
    "cnn_nchw": qb.cnn_nchw,
    "bn_float_scales": qb.bn_float_scales,
    "bipolar_trunc": qb.bipolar_trunc,
}
PROTO_MUTATIONS = (
    "quant_param",
    "quant_param",
    "dim",
    "dtype",
    "value",
    "data_size",
    "attr_drop",
    "attr_change",
    "attr_add",
    "shuffle",
    "dangling",
    "rename_output",
    "op_type",
    "drop_node",
    "input_dim",
    "swap_inits",
)
BYTE_MUTATIONS = ("truncate", "flip")
ODD_INTS = (0, -1, -7, 1, 2, 3, 33, 1000, 2**31 + 5, 2**40, -(2**40))
ODD_FLOATS = (
    float("nan"),
    float("inf"),
    float("-inf"),
    0.0,
    -1.0,
    1e-300,
    1e300,
    3.4e38,
    2.0**31,
    0.3,
)
OPS = ("Relu", "Sigmoid", "Quant", "MatMul", "Add", "Mul", "Conv", "Identity", "Reshape",
       "Flatten", "Transpose", "MaxPool", "Gemm", "Trunc", "BipolarQuant", "Foo")  # fmt: skip


_SEEDS: dict[str, bytes] = {}


def seed_models() -> dict[str, bytes]:
    """The valid models, serialized (built once)."""
    if not _SEEDS:
        rng = np.random.default_rng(7)
        _SEEDS.update({k: b(rng).model.SerializeToString() for k, b in BUILDERS.items()})
    return _SEEDS


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return seed_models()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, seeds) -> Path:
    """An existing run folder of a QONNX MLP (export only), copied for every case."""
    tmp = tmp_path_factory.mktemp("fuzzrun")
    src = tmp / "base.onnx"
    src.write_bytes(seeds["mlp_pot"])
    out = tmp / "run"
    assert main(["export", "--onnx", str(src), "--out", str(out), "-q"]) == EXIT_OK
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- mutations


def _pick(data: st.DataObject, seq, label: str):
    return seq[data.draw(st.integers(0, len(seq) - 1), label=label)]


def _mutate_proto(m: onnx.ModelProto, kind: str, data: st.DataObject) -> None:
    g = m.graph
    inits = list(g.initializer)
    nodes = list(g.node)
    if kind == "dim" and inits:
        t = _pick(data, inits, "init")
        if t.dims:
            k = data.draw(st.integers(0, len(t.dims) - 1), label="axis")
            t.dims[k] = data.draw(st.sampled_from(ODD_INTS), label="dim")
        else:
            t.dims.append(data.draw(st.sampled_from(ODD_INTS), label="dim"))
    elif kind == "quant_param":
        # a quantizer's scale / zero point / bit width: keeps dtype and shape, so the
        # file passes onnx.checker and the value reaches qonnx and the golden compiler
        qs = [n for n in nodes if n.op_type in ("Quant", "BipolarQuant", "Trunc")]
        by_name = {t.name: t for t in inits}
        if not qs:
            return
        node = _pick(data, qs, "quantizer")
        params = [by_name[i] for i in node.input[1:] if i in by_name]
        if not params:
            return
        t = _pick(data, params, "param")
        try:
            arr = numpy_helper.to_array(t).copy()
        except Exception:  # an earlier mutation broke it already
            return
        if arr.dtype.kind != "f" or not arr.size:
            return
        odd = (*ODD_FLOATS, 1.0, 2.0, 2.5, 31.0, 32.0, 33.0, 64.0, 2.0**-40, 2.0**-70, 2.0**70)
        with np.errstate(over="ignore"):
            arr.flat[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.sampled_from(odd))
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif kind == "dtype" and inits:
        t = _pick(data, inits, "init")
        t.data_type = data.draw(st.sampled_from((0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 16, 99)))
    elif kind == "value" and inits:
        t = _pick(data, inits, "init")
        try:
            arr = numpy_helper.to_array(t)
        except Exception:  # an earlier mutation broke it already
            return
        if arr.dtype.kind == "f" and arr.size:
            arr = arr.copy()
            i = data.draw(st.integers(0, arr.size - 1), label="index")
            with np.errstate(over="ignore"):
                arr.flat[i] = data.draw(st.sampled_from(ODD_FLOATS), label="value")
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif kind == "data_size" and inits:
        t = _pick(data, inits, "init")
        n = data.draw(st.integers(-9, 9).filter(bool), label="bytes")
        if t.raw_data:
            t.raw_data = t.raw_data[:n] if n < 0 else t.raw_data + bytes(n)
        else:
            for field, fill in ((t.float_data, 1.0), (t.int64_data, 1), (t.int32_data, 1)):
                if len(field):
                    if n < 0:
                        del field[n:]
                    else:
                        field.extend([fill] * n)
                    break
    elif kind in ("attr_drop", "attr_change") and nodes:
        node = _pick(data, nodes, "node")
        if not node.attribute:
            return
        k = data.draw(st.integers(0, len(node.attribute) - 1), label="attr")
        a = node.attribute[k]
        if kind == "attr_drop":
            del node.attribute[k]
        elif a.type == onnx.AttributeProto.INT:
            a.i = data.draw(st.sampled_from(ODD_INTS), label="int")
        elif a.type == onnx.AttributeProto.INTS:
            n = data.draw(st.integers(0, 5), label="len")
            del a.ints[:]
            a.ints.extend(data.draw(st.sampled_from(ODD_INTS)) for _ in range(n))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = data.draw(st.sampled_from(ODD_FLOATS), label="float")
        elif a.type == onnx.AttributeProto.STRING:
            a.s = data.draw(st.sampled_from((b"", b"FOO", b"ROUND", b"FLOOR", b"\xff\xfe")))
    elif kind == "attr_add" and nodes:
        node = _pick(data, nodes, "node")
        name = data.draw(st.sampled_from(("bogus", "axis", "perm", "group", "pads")))
        node.attribute.append(
            onnx.helper.make_attribute(name, data.draw(st.sampled_from(ODD_INTS)))
        )
    elif kind == "shuffle" and len(nodes) > 1:
        order = data.draw(st.permutations(range(len(nodes))), label="order")
        del g.node[:]
        g.node.extend(nodes[i] for i in order)
    elif kind == "dangling" and nodes:
        node = _pick(data, nodes, "node")
        if node.input:
            node.input[data.draw(st.integers(0, len(node.input) - 1))] = "missing_tensor"
    elif kind == "rename_output" and nodes:
        node = _pick(data, nodes, "node")
        node.output[0] = data.draw(st.sampled_from(("renamed", "inp", "out", "")))
    elif kind == "op_type" and nodes:
        _pick(data, nodes, "node").op_type = data.draw(st.sampled_from(OPS), label="op")
    elif kind == "drop_node" and nodes:
        del g.node[data.draw(st.integers(0, len(nodes) - 1), label="node")]
    elif kind == "input_dim":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[data.draw(st.integers(0, len(dims) - 1), label="axis")]
        d.dim_value = data.draw(st.sampled_from(ODD_INTS), label="dim")
    elif kind == "swap_inits" and len(inits) > 1:
        i, j = data.draw(st.lists(st.integers(0, len(inits) - 1), min_size=2, max_size=2))
        a, b = onnx.TensorProto(), onnx.TensorProto()
        a.CopyFrom(inits[i])
        b.CopyFrom(inits[j])
        a.name, b.name = inits[j].name, inits[i].name
        g.initializer[i].CopyFrom(b)
        g.initializer[j].CopyFrom(a)


@st.composite
def mutated_models(draw) -> tuple[str, list[str], bytes]:
    """A seed model with 0-3 protobuf mutations, sometimes then truncated or byte-flipped."""
    seeds = seed_models()
    data = draw(st.data())
    name = draw(st.sampled_from(sorted(seeds)))
    m = onnx.ModelProto()
    m.ParseFromString(seeds[name])
    kinds = draw(st.lists(st.sampled_from(PROTO_MUTATIONS), min_size=0, max_size=3))
    for kind in kinds:
        _mutate_proto(m, kind, data)
    blob = m.SerializeToString()
    # one case in three is also damaged byte-wise (most of those fail to parse)
    byte_kind = draw(st.sampled_from((None, None, None, None, *BYTE_MUTATIONS)))
    if byte_kind == "truncate":
        blob = blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
        kinds.append("truncate")
    elif byte_kind == "flip":
        b = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        blob = bytes(b)
        kinds.append("flip")
    return name, kinds, blob


# ----------------------------------------------------------------------------- property


def _check_case(base_run: Path, case: tuple[str, list[str], bytes], force: bool) -> None:
    name, kinds, blob = case
    with tempfile.TemporaryDirectory(dir=base_run.parent) as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(base_run, run)
        before = _snapshot(run)
        f = Path(tmp) / f"{name}.onnx"
        f.write_bytes(blob)
        err = io.StringIO()
        args = ["export", "--onnx", str(f), "--out", str(run), "-q"]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([*args, "--force"] if force else args)
        msg = err.getvalue()
        what = f"{name} {kinds} force={force}: rc {rc}, stderr {msg[-2000:]!r}"
        assert rc in (EXIT_OK, EXIT_USER), what
        assert "Traceback" not in msg, what
        if rc == EXIT_USER:
            assert msg.startswith("edgeml: error:"), what
            assert _snapshot(run) == before, f"run folder changed: {what}"
            OUTCOMES["refused"] += 1
            return
        # accepted: without --force only the run's own model may be (its file unchanged)
        if not force:
            assert blob == seed_models()["mlp_pot"], f"another model was mixed in: {what}"
        # the run's golden model must compile and run over its whole input range
        from edgeml.golden import GoldenModel

        g = GoldenModel.from_onnx(run / "model.qonnx.onnx")
        rng = np.random.default_rng(0)
        q = g.input_quant
        x = rng.integers(q.lo, q.hi + 1, size=(64, *g.input_shape), dtype=np.int64)
        x[0], x[1] = q.lo, q.hi
        assert g.predict(x).shape == (64, *g.output_shape), what
        OUTCOMES["accepted"] += 1


_BASE = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=DEADLINE_S),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if OUTCOMES:
        print(f"\nfuzz cases: {sum(OUTCOMES.values())} ({dict(OUTCOMES)})")


def test_fuzz_export_front_door(base_run, seeds):
    """FUZZ_EXAMPLES mutated models: exit 0 or 1, a clean message, an undamaged run folder."""

    @settings(_BASE, max_examples=FUZZ_EXAMPLES)
    @given(case=mutated_models(), force=st.booleans())
    def prop(case, force):
        _check_case(base_run, case, force)

    prop()
    assert sum(OUTCOMES.values()) > FUZZ_EXAMPLES // 2  # the cases did run
