"""The design registry (models/zoo.py) and generic training helpers (models/training.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.models import training, zoo


def test_unknown_design_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown built-in design 'nope'.*jet.*mlp.*cnn"):
        zoo.get("nope")


def test_registry_round_trip_train_qat_prune_checkpoint(tmp_path: Path) -> None:
    spec = zoo.get("mlp")
    data = spec.load_data(0)
    assert data.x_train.shape[1:] == spec.input_shape
    fl = zoo.train_float(spec, data, epochs=4, seed=0)
    acc = zoo.evaluate(spec, fl, data.x_test, data.y_test)["accuracy"]
    assert acc > 0.8
    with pytest.raises(
        ConfigError, match="bit_width for design 'mlp' must be an integer from 2 to 8"
    ):
        zoo.train_qat(spec, data, fl, bit_width=9, epochs=1)
    q = zoo.train_qat(spec, data, fl, bit_width=4, epochs=2, seed=0)
    p = zoo.prune(spec, data, q, sparsity=0.75, epochs=1, seed=0)
    assert zoo.edge_sparsity(spec, p) >= 0.75
    path = zoo.save_checkpoint(spec, p, tmp_path / "m.pt", {"note": "x"})
    loaded, meta, spec2 = zoo.load_checkpoint(path)
    assert spec2.name == "mlp" and meta["kind"] == "qat" and meta["bit_width"] == 4
    np.testing.assert_array_equal(
        training.predict(loaded, data.x_test), training.predict(p, data.x_test)
    )
    # same seed, same result: training is deterministic (single-threaded CPU)
    fl2 = zoo.train_float(spec, data, epochs=4, seed=0)
    for a, b in zip(fl.parameters(), fl2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_naming_an_unknown_design_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save(
        {"format": training.CHECKPOINT_FORMAT, "meta": {"design": "zzz"}, "state_dict": {}}, path
    )
    with pytest.raises(CorruptFileError, match="names no buildable design"):
        zoo.load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="cannot be read"):
        zoo.load_checkpoint(path)


@pytest.mark.parametrize("name", zoo.names())
def test_every_registered_design_resolves_to_its_own_spec(name: str) -> None:
    """The registry names a module whose ``DESIGNS`` holds a spec of that very name."""
    spec = zoo.get(name)
    assert spec.name == name
    assert spec.task in ("classification", "autoencoder", "regression")
    lo, hi = spec.bit_widths
    assert 1 <= lo <= hi <= 16
    assert all(isinstance(d, int) and d > 0 for d in spec.input_shape)


def test_a_study_trainer_replaces_the_generic_fit() -> None:
    """``DesignSpec.fit_float`` is what ``train_float`` runs, with the epochs and seed given."""
    base = zoo.get("mlp")
    data = base.load_data(0)
    calls: list[tuple[int, int]] = []

    def fit_float(d: training.Dataset, epochs: int, seed: int) -> torch.nn.Module:
        calls.append((epochs, seed))
        assert d is data
        return base.build_float()

    from dataclasses import replace

    spec = replace(base, fit_float=fit_float)
    model = zoo.train_float(spec, data, epochs=3, seed=7)
    assert calls == [(3, 7)]
    assert isinstance(model, torch.nn.Module)
