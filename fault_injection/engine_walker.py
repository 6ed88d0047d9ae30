"""The general sparse walker: propagates faulty values through *any* golden graph.

This is the fallback of :mod:`.engine` for graphs or layers its chain engine
does not cover (convolutions, pooling, residual adds, tensors read by several
ops). State: *records*, one per distinct faulty state of one sample, each
holding, per live tensor, the flat positions that differ from the fault-free
trace (shared by all records) and their values. Elementwise ops run on the
changed positions only, layout ops move them, pooling runs on the changed
channels, Dense/Conv consumers add a low-rank update ``(x' - x) @ W``, and
everything else runs densely per record. Records whose values fall back onto
the trace are dropped; after the first requantisation equal records merge.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeml.golden import (
    AddTensors,
    Affine,
    Bipolar,
    Conv,
    Dense,
    Gather,
    GoldenModel,
    Lookup,
    MaxPool,
    MulTensors,
    Op,
    Relu,
    Requant,
    Reshape,
    SubTensors,
    Transpose,
)

#: Two-input elementwise ops on equal shapes: computed on the changed positions only.
_BINARY = (AddTensors, SubTensors, MulTensors)

#: Widest record (sample id + changed values) the walker deduplicates; wider ones rarely repeat.
_DEDUPE_MAX_WIDTH = 65


def _channel_sliced(op: Op, chan: np.ndarray, n_chan: int) -> Op | None:
    """A copy of an elementwise op whose per-channel constants are gathered at ``chan``.

    Used to run the op on a few positions (last axis = positions) instead of a
    whole tensor. ``None`` if the op is not a known elementwise op. A Lookup
    (one table for every element) is elementwise but not monotone: the walker
    runs it on changed positions, the chain engine's slack does not take it.
    """
    if isinstance(op, (Relu, Bipolar, Lookup)):
        return op
    if not isinstance(op, (Requant, Affine)):
        return None
    repl: dict[str, np.ndarray] = {}
    for name in ("mult", "offset"):
        v = np.asarray(getattr(op, name))
        if v.size == 1:
            continue
        if v.size != n_chan:
            return None
        repl[name] = v.reshape(-1)[chan]
    return dataclasses.replace(op, **repl) if repl else op


def _is_identity(pos: np.ndarray, size: int) -> bool:
    """True if ``pos`` lists every position of a ``size``-element tensor in order."""
    return pos.size == size and (size == 0 or (pos[0] == 0 and bool(np.all(np.diff(pos) == 1))))


class _Walker:
    """Propagates faulty values of one tensor through the ops downstream, sparsely.

    State: *records*, one per distinct faulty state of one sample: ``sample``
    (R,) holds each record's sample, and ``mod`` maps each live tensor name to
    ``(pos, val)``: the flat per-sample positions that differ from the
    fault-free trace and their values, shape ``(R, len(pos))``. Each
    (fault, sample) pair points at its record, or at none once its values fall
    back onto the trace (its output is then the golden one). Most faults touch
    few samples (a weight only matters where its input is non-zero;
    requantisation rounds small changes away), so the state shrinks quickly.
    """

    def __init__(self, g: GoldenModel, env: dict[str, np.ndarray]) -> None:
        self.g = g
        self.env = env
        self._perm: dict[int, np.ndarray] = {}
        self._weff: dict[int, np.ndarray] = {}
        # Index of the last op reading each tensor: a faulty tensor no later op
        # reads is dropped, so it no longer keeps its pairs alive.
        self._last_use: dict[str, int] = {g.output_name: len(g.ops)}
        for k, op in enumerate(g.ops):
            for i in op.inputs:
                self._last_use[i] = max(self._last_use.get(i, -1), k)

    def _base(self, name: str, sample: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
        """Fault-free values of ``name`` for the given samples (at ``pos``): (pairs, size)."""
        b = self.env[name]
        b = b.reshape(b.shape[0], -1)
        if pos is not None and not _is_identity(pos, b.shape[1]):
            b = b[:, pos]  # gather columns first: cheaper when few positions changed
        return b[sample]

    def _full(self, name: str, mod: dict, sample: np.ndarray) -> np.ndarray:
        """Dense faulty tensor for each pair, in the op's layout: (pairs, *shape)."""
        full = self._base(name, sample)
        if name in mod:
            pos, val = mod[name]
            full[:, pos] = val
        return full.reshape((sample.size, *self.env[name].shape[1:]))

    def _layout_map(self, k: int, op: Op, in_name: str) -> np.ndarray:
        """For a pure permutation op: new flat position of each old flat position."""
        if k not in self._perm:
            shape = self.env[in_name].shape[1:]
            src = np.asarray(op(np.arange(int(np.prod(shape)), dtype=np.int64).reshape(1, *shape)))
            inv = np.empty(src.size, np.int64)
            inv[src.reshape(-1)] = np.arange(src.size)
            self._perm[k] = inv
        return self._perm[k]

    def _maxpool(
        self, op: MaxPool, src: str, pv: tuple[np.ndarray, np.ndarray], sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pooling acts per channel: pool only the channels holding changed positions."""
        pos, val = pv
        shape = self.env[src].shape[1:]
        c = shape[-1]
        chans = np.unique(pos % c)
        sub = self.env[src][..., chans]  # (N, H, W, J)
        sub = sub.reshape(sub.shape[0], -1)[sample]
        sub[:, (pos // c) * chans.size + np.searchsorted(chans, pos % c)] = val
        out = np.asarray(op(sub.reshape((sample.size, *shape[:-1], chans.size))))
        n_sp = out[0].size // chans.size
        out_c = self.env[op.output].shape[-1]
        out_pos = (np.arange(n_sp)[:, None] * out_c + chans[None, :]).reshape(-1)
        return out_pos, out.reshape(sample.size, -1)

    def _conv(
        self, op: Conv, src: str, pv: tuple[np.ndarray, np.ndarray], sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Linearity for a Conv consumer: y' = y + conv(x' - x) without bias, on the
        input channels that changed only (zero padding pads the difference with 0)."""
        pos, val = pv
        shape = self.env[src].shape[1:]
        c = shape[-1]
        chans = np.unique(pos % c)
        dx = np.zeros((sample.size, int(np.prod(shape[:-1])) * chans.size), np.int64)
        cols = (pos // c) * chans.size + np.searchsorted(chans, pos % c)
        dx[:, cols] = val - self._base(src, sample, pos)
        part = dataclasses.replace(op, weight=op.weight[:, :, chans, :], bias=None)
        dy = np.asarray(part(dx.reshape((sample.size, *shape[:-1], chans.size))))
        y = self._base(op.output, sample) + dy.reshape(sample.size, -1)
        return np.arange(y.shape[1]), y

    def _gather(self, op: Gather, mod: dict) -> tuple[np.ndarray, np.ndarray] | None:
        """A Gather moves values: output positions whose source changed get the new
        (shifted) value, every other one keeps the trace's. None if nothing it reads changed."""
        sizes = [int(np.prod(self.env[i].shape[1:], dtype=np.int64)) for i in op.inputs]
        offs = np.cumsum([0, *sizes])
        shifts = op.shifts or (0,) * len(op.inputs)
        src_pos, src_val = [], []
        for j, name in enumerate(op.inputs):
            if name in mod:
                p, v = mod[name]
                src_pos.append(p + offs[j])
                src_val.append(v << shifts[j] if shifts[j] else v)
        if not src_pos:
            return None
        pos = np.concatenate(src_pos)
        val = np.concatenate(src_val, axis=1)
        slot = np.full(int(offs[-1]) + 1, -1, np.int64)  # +1: index -1 (constant 0)
        slot[pos] = np.arange(pos.size)
        index = np.asarray(op.index, np.int64).reshape(-1)
        which = slot[index]  # index -1 reads the last slot, which stays -1
        out_pos = np.flatnonzero(which >= 0)
        return out_pos, val[:, which[out_pos]]

    def _binary(
        self, op: Op, mod: dict, sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """An elementwise two-input op on the union of the positions changed in either
        input (equal shapes only; None otherwise)."""
        a, b = op.inputs
        if self.env[a].shape != self.env[b].shape:
            return None
        pos = np.unique(np.concatenate([mod[i][0] for i in (a, b) if i in mod]))

        def vals(name: str) -> np.ndarray:
            v = self._base(name, sample, pos)
            if name in mod:
                p, w = mod[name]
                v[:, np.searchsorted(pos, p)] = w
            return v

        return pos, np.asarray(op(vals(a), vals(b)))

    def _dense_tokens(
        self, op: Dense, src: str, pv: tuple[np.ndarray, np.ndarray], sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A Dense on a (..., features) input applies per token: y' = y + (x' - x) @ W on
        the tokens that changed, exact in int64 (shifts aside, as :meth:`Dense.finish`)."""
        pos, val = pv
        shape = self.env[src].shape[1:]
        f_in = shape[-1]
        tokens = np.unique(pos // f_in)
        dx = np.zeros((sample.size, tokens.size, f_in), np.int64)
        dx[:, np.searchsorted(tokens, pos // f_in), pos % f_in] = val - self._base(src, sample, pos)
        upd = dx @ np.asarray(op.effective_weight())
        if op.acc_shift:
            upd = upd << op.acc_shift
        f_out = upd.shape[-1]
        out_pos = (tokens[:, None] * f_out + np.arange(f_out)[None, :]).reshape(-1)
        return out_pos, self._base(op.output, sample, out_pos) + upd.reshape(sample.size, -1)

    def _prune(
        self, mod: dict, sample: np.ndarray, k: int
    ) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """Drop dead tensors, positions equal to the trace, and records with no difference left.

        Returns the new state and ``keep`` (a boolean mask over the old records), or
        ``None`` if every record was kept.
        """
        live: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        alive = np.zeros(sample.size, bool)
        for name, (pos, val) in mod.items():
            if self._last_use.get(name, -1) <= k:
                continue
            diff = val != self._base(name, sample, pos)
            cols = diff.any(axis=0)
            if not cols.any():
                continue
            if not cols.all():
                pos, val, diff = pos[cols], val[:, cols], diff[:, cols]
            alive |= diff.any(axis=1)
            live[name] = (pos, val)
        if alive.all():
            return live, sample, None
        return {nm: (p, v[alive]) for nm, (p, v) in live.items()}, sample[alive], alive

    def _dedupe(self, mod: dict, sample: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """Merge records of the same sample whose live values are identical.

        Right after a fault, requantisation maps many different faults (e.g. most
        low-bit flips of one channel) to the same few activation values per
        sample; everything downstream is then computed once per distinct value.
        Returns the new state and ``inv`` (old record -> new record), or ``None``.
        """
        names = list(mod)
        width = 1 + sum(mod[nm][1].shape[1] for nm in names)
        if sample.size < 2 or width > _DEDUPE_MAX_WIDTH:
            return mod, sample, None
        flat = np.concatenate([sample[:, None], *(mod[nm][1] for nm in names)], axis=1)
        # Group rows by a random linear hash (int64, wrapping), then verify exactly.
        key = np.random.default_rng(width).integers(-(2**62), 2**62, size=width, dtype=np.int64)
        _, first, inv = np.unique(flat @ key, return_index=True, return_inverse=True)
        if first.size == sample.size or not np.array_equal(flat[first][inv], flat):
            return mod, sample, None  # nothing to merge, or a hash collision: keep all
        return {nm: (p, v[first]) for nm, (p, v) in mod.items()}, sample[first], inv.reshape(-1)

    def run(
        self, start: int, name: str, pos: np.ndarray, val: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Faulty outputs of ops[start:] given tensor ``name`` has values ``val`` (F, N, P) at ``pos``.

        Returns ``(fault, sample, out_pos, out_val)``: the (fault, sample) pairs
        whose output differs from the golden output, and their values at ``out_pos``.
        """
        g = self.g
        n = val.shape[1]
        # First drop the (fault, sample) pairs the fault leaves unchanged, without gathers.
        b = self.env[name].reshape(n, -1)[:, pos]
        pair_fault, pair_sample = np.nonzero((val != b[None]).any(axis=2))
        # State: records (one per distinct faulty state; many pairs can share one).
        sample = pair_sample
        pair_rec = np.arange(sample.size)
        mod: dict[str, tuple[np.ndarray, np.ndarray]] = {name: (pos, val[pair_fault, pair_sample])}
        dirty = False  # pruning is deferred to just before costly ops (and the end)
        first_prune = True

        def remap(mapping: np.ndarray | None) -> None:
            nonlocal pair_rec
            if mapping is None:
                return
            if mapping.dtype == bool:
                mapping = np.where(mapping, np.cumsum(mapping) - 1, -1)
            pair_rec = np.append(mapping, -1)[pair_rec]  # -1 stays -1 (dropped)

        for k in range(start, len(g.ops)):
            if not sample.size:
                break
            op = g.ops[k]
            if not any(i in mod for i in op.inputs):
                continue
            src = op.inputs[0]
            if len(op.inputs) == 1 and isinstance(op, (Reshape, Transpose)):
                p_in, v = mod[src]
                mod[op.output] = (self._layout_map(k, op, src)[p_in], v)
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                continue
            if isinstance(op, Gather):
                # data movement: a moved (shifted) change stays a change; nothing to prune
                mod[op.output] = self._gather(op, mod)  # type: ignore[assignment]
                for i in op.inputs:
                    if i in mod and self._last_use.get(i, -1) <= k:
                        del mod[i]
                continue
            n_chan = g.tensors[src].shape[-1] if g.tensors[src].shape else 1
            sliced = None
            if len(op.inputs) == 1:
                sliced = _channel_sliced(op, mod[src][0] % n_chan, n_chan)
            if sliced is not None:
                # Elementwise: run on the changed positions only.
                p_in, v = mod[src]
                mod[op.output] = (p_in, np.asarray(sliced(v)))
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                dirty = True
                continue
            if dirty:
                mod, sample, keep = self._prune(mod, sample, k - 1)
                remap(keep)
                if first_prune:
                    mod, sample, inv = self._dedupe(mod, sample)
                    remap(inv)
                    first_prune = False
                dirty = False
                if not sample.size:
                    break
                if not any(i in mod for i in op.inputs):
                    continue
            tokens = self.env[src].ndim > 2
            if (
                len(op.inputs) == 1
                and isinstance(op, Dense)
                and not isinstance(op, Conv)
                and not tokens
            ):
                # Linearity: y' = y + ((x' - x)[:, P] @ W[P, :]) << acc_shift.
                p_in, v = mod[src]
                if k not in self._weff:
                    self._weff[k] = np.asarray(op.effective_weight())
                w = self._weff[k]
                if _is_identity(p_in, w.shape[0]):
                    y = np.asarray(op(v))
                else:
                    upd = (v - self._base(src, sample, p_in)) @ w[p_in]
                    if op.acc_shift:
                        upd = upd << op.acc_shift
                    y = self._base(op.output, sample) + upd
                mod[op.output] = (np.arange(y.shape[1]), y)
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                dirty = True  # a linear map rarely cancels a change: prune lazily
                continue
            sparse = None
            if isinstance(op, _BINARY):
                sparse = self._binary(op, mod, sample)
            if sparse is not None:
                mod[op.output] = sparse
            elif len(op.inputs) == 1 and isinstance(op, Conv) and getattr(op, "groups", 1) == 1:
                mod[op.output] = self._conv(op, src, mod[src], sample)
            elif len(op.inputs) == 1 and isinstance(op, MaxPool):
                mod[op.output] = self._maxpool(op, src, mod[src], sample)
            elif len(op.inputs) == 1 and isinstance(op, Dense) and not isinstance(op, Conv):
                mod[op.output] = self._dense_tokens(op, src, mod[src], sample)
            else:
                # Anything else (conv, residual add, ...): run densely per record.
                out = np.asarray(op(*(self._full(i, mod, sample) for i in op.inputs)))
                mod[op.output] = (np.arange(out[0].size), out.reshape(sample.size, -1))
            mod, sample, keep = self._prune(mod, sample, k)
            remap(keep)
        if g.output_name not in mod or not sample.size:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros((0, 0), np.int64)
        out_pos, out_val = mod[g.output_name]
        hit = pair_rec >= 0
        return pair_fault[hit], pair_sample[hit], out_pos, out_val[pair_rec[hit]]


def _weight_rows(op: Dense, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Input values that multiply weight row ``r`` (flat over all but the output axis),
    for each ``r`` in ``rows``: shape (len(rows), M), M = N (Dense), N*T (a Dense applied
    per token to (N, ..., features) inputs, T tokens) or N*OH*OW (Conv)."""
    if not isinstance(op, Conv):
        return x.reshape(-1, op.weight.shape[0]).T[rows]
    pat = op.patches(x)  # strided view (N, OH, OW, kh, kw, cin); no im2col copy
    uniq, inv = np.unique(rows, return_inverse=True)
    a, b, c = np.unravel_index(uniq, pat.shape[3:])
    cols = np.stack([pat[:, :, :, a[u], b[u], c[u]].reshape(-1) for u in range(uniq.size)])
    return cols[inv.reshape(-1)]


def _column_change(
    op: Dense, x: np.ndarray, param: str, index: np.ndarray, delta: np.ndarray
) -> np.ndarray:
    """Change of the output channel each fault hits, shape (F, M) (bias: (F, 1)).

    ``M`` is N for Dense (N*T per token) and N*OH*OW for Conv. A weight fault at (row i,
    channel j) adds ``(x_i * (delta << lshift_j)) << acc_shift`` (x_i the input
    column, or the im2col patch column, feeding row i); a bias fault adds
    ``delta << bias_shift`` everywhere in channel j.
    """
    cout = op.weight.shape[-1]
    if param == "bias":
        return (delta << op.bias_shift)[:, None]
    if getattr(op, "groups", 1) != 1:  # a grouped weight layout: re-run the op per fault
        return _column_change_by_rerun(op, x, index, delta)
    j = index % cout
    ls = np.broadcast_to(np.asarray(op.weight_lshift, np.int64).reshape(-1), (cout,))
    d = delta << ls[j]
    ch = _weight_rows(op, x, index // cout) * d[:, None]
    if op.acc_shift:
        ch = ch << op.acc_shift
    return ch


def _column_change_by_rerun(
    op: Dense, x: np.ndarray, index: np.ndarray, delta: np.ndarray
) -> np.ndarray:
    """:func:`_column_change` for weight layouts it does not know (a ``groups`` field):
    the op re-run without bias on weights holding only each fault's change, exact by
    linearity; shape (F, M)."""
    cout = op.weight.shape[-1]
    out = []
    for i, d in zip(index.tolist(), delta.tolist(), strict=True):
        w = np.zeros(op.weight.shape, np.int64)
        w.reshape(-1)[i] = d
        y = np.asarray(dataclasses.replace(op, weight=w, bias=None)(x))
        out.append(y.reshape(-1, cout)[:, i % cout])
    return np.stack(out) if out else np.zeros((0, 0), np.int64)
