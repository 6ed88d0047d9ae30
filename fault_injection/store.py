"""Append-only, crash-safe SQLite store of fault-campaign results, keyed by fault id.

A store holds one campaign:

* ``campaign``: key/value rows (JSON values) with the campaign's config: design,
  run folder, model file SHA-256, sample-set hash, sampler, seed, fault-site list
  hash, engine version, ... (see :data:`IDENTITY_KEYS`). Written once, when the
  store is created.
* ``plan``: the fault sites in campaign order (``ord``), written once with the
  config, so a resumed run needs nothing but the store and the run folder.
* ``results``: one row per evaluated fault (``fault_id`` PRIMARY KEY, the site
  fields, acc_drop, sdc_rate, max_dev, the chunk it came in). Rows are only ever
  inserted: a duplicate fault id is refused by the primary key, and triggers
  refuse UPDATE and DELETE on every table.

Crash safety: the database runs in WAL mode with ``synchronous=FULL`` and each
chunk of results is one transaction, so a SIGKILL (or power loss) loses at most
the chunk in flight and never leaves half a chunk. The store file is created
under a temporary name and renamed into place once its config and plan are
committed, so a kill during creation leaves no half-made store behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError

from .sites import FaultSite

log = logging.getLogger(__name__)

FORMAT = "edgeml.fault_store"
FORMAT_VERSION = 1
#: ``PRAGMA application_id`` of an edgeml fault store ("EDFS"): tells it from other SQLite files.
APPLICATION_ID = 0x45444653

#: Config fields that define a campaign. Opening an existing store with a config that
#: differs in any of them is refused, naming the fields; every other config field (run
#: folder path, creation time, chunk size, ...) is recorded for the record only.
IDENTITY_KEYS: tuple[str, ...] = (
    "design",
    "model_sha256",
    "samples_sha256",
    "n_samples",
    "sample_source",
    "sampler",
    "sampler_params",
    "seed",
    "targets",
    "kind",
    "nbits",
    "sdc",
    "sites_sha256",
    "n_faults",
    "engine_version",
)

_SCHEMA = """
CREATE TABLE campaign (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE plan (
    ord      INTEGER PRIMARY KEY,
    fault_id TEXT NOT NULL UNIQUE,
    layer    TEXT NOT NULL,
    param    TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    bit      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    nbits    INTEGER NOT NULL
);
CREATE TABLE results (
    fault_id TEXT PRIMARY KEY REFERENCES plan(fault_id),
    layer    TEXT NOT NULL,
    param    TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    bit      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    nbits    INTEGER NOT NULL,
    acc_drop REAL,            -- NULL = NaN (no labels)
    sdc_rate REAL NOT NULL,
    max_dev  INTEGER NOT NULL,
    chunk    INTEGER NOT NULL,
    chunk_seconds REAL NOT NULL,  -- the chunk's evaluation time (same on each of its rows)
    written  REAL NOT NULL        -- unix time of the chunk's commit
) WITHOUT ROWID;
"""
_TRIGGERS = "".join(
    f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} BEGIN "
    f"SELECT RAISE(ABORT, 'edgeml fault store tables are append-only'); END;\n"
    for t in ("campaign", "plan", "results")
    for op in ("UPDATE", "DELETE")
)
_TABLES = {"campaign", "plan", "results"}
#: Each table's columns, in order (checked when a store is opened).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "campaign": ("key", "value"),
    "plan": ("ord", "fault_id", "layer", "param", "idx", "bit", "kind", "nbits"),
    "results": (
        "fault_id",
        "layer",
        "param",
        "idx",
        "bit",
        "kind",
        "nbits",
        "acc_drop",
        "sdc_rate",
        "max_dev",
        "chunk",
        "chunk_seconds",
        "written",
    ),
}


class StoreMismatchError(ConfigError):
    """A store exists for a different campaign than the one requested."""


# ----------------------------------------------------------------------------- sites


def make_site(
    layer: str, param: str, index: int, bit: int, kind: str = "flip", nbits: int = 1
) -> FaultSite:
    """A :class:`FaultSite` from a stored row."""
    return FaultSite(layer, param, int(index), int(bit), kind, int(nbits))  # type: ignore[arg-type]


def fault_id(site: FaultSite) -> str:
    """The site's stable id, ``layer/param/index/bit/kind/nbits`` (:attr:`FaultSite.fault_id`)."""
    return site.fault_id


def sites_sha256(sites: Sequence[FaultSite]) -> str:
    """Hash of the fault list *in order*: two campaigns with equal hashes evaluate the same faults."""
    h = hashlib.sha256()
    for s in sites:
        h.update(fault_id(s).encode())
        h.update(b"\n")
    return h.hexdigest()


def samples_sha256(x: np.ndarray, labels: np.ndarray | None) -> str:
    """Hash of the sample set: input codes (as int64, with their shape) and labels."""
    h = hashlib.sha256()
    xa = np.ascontiguousarray(np.asarray(x, dtype=np.int64))
    h.update(repr(xa.shape).encode())
    h.update(xa.tobytes())
    if labels is None:
        h.update(b"no labels")
    else:
        h.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- result


@dataclass
class StoredResults:
    """A store's results read back in campaign order (one array element per planned fault).

    Same per-fault metrics as :class:`~.campaign.CampaignResult`: ``acc_drop``
    (baseline minus faulty accuracy, NaN without labels), ``sdc_rate`` (fraction
    of samples counted as silently corrupted) and ``max_dev`` (largest output
    change in output LSBs). Faults without a row yet have ``done`` False (and
    NaN / -1 metrics); ``complete`` tells whether every planned fault has one.
    ``seconds`` is the evaluation time summed over the stored chunks.
    """

    site_list: list[FaultSite]
    ids: list[str]
    acc_drop: np.ndarray
    sdc_rate: np.ndarray
    max_dev: np.ndarray
    done: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.site_list)

    def sites(self) -> list[FaultSite]:
        """The planned fault sites, campaign order (as :meth:`CampaignResult.sites`)."""
        return list(self.site_list)

    def fault_ids(self) -> list[str]:
        """Each planned fault's id, campaign order."""
        return list(self.ids)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def baseline_accuracy(self) -> float:
        v = self.config.get("baseline_accuracy")
        return math.nan if v is None else float(v)

    @property
    def n_samples(self) -> int:
        return int(self.config.get("n_samples", 0))

    def column(self, name: str) -> np.ndarray:
        """A site field as an array: ``layer``/``param``/``kind`` (str) or ``index``/``bit``/``nbits``."""
        if name in ("index", "bit", "nbits"):
            return np.asarray([getattr(s, name) for s in self.site_list], dtype=np.int64)
        if name in ("layer", "param", "kind"):
            return np.asarray([getattr(s, name) for s in self.site_list], dtype=str)
        raise ConfigError(
            f"unknown site field {name!r}; allowed: layer, param, kind, index, bit, nbits"
        )

    def to_campaign_result(self) -> Any:
        """The complete store as a :class:`~.campaign.CampaignResult` (for metrics and plots).

        ``layer_names`` are the layers in order of first appearance in the
        campaign (graph order for enumerated sites).
        """
        if not self.complete:
            raise ConfigError(
                f"the store holds {int(self.done.sum())} of {len(self)} faults; finish it with "
                "`edgeml faults resume` before converting it to a CampaignResult"
            )
        from .campaign import CampaignResult
        from .sites import FAULT_KINDS, PARAMS

        names = list(dict.fromkeys(s.layer for s in self.site_list))
        pos = {n: i for i, n in enumerate(names)}
        return CampaignResult(
            layer=[pos[s.layer] for s in self.site_list],
            param=[PARAMS.index(s.param) for s in self.site_list],
            index=self.column("index"),
            bit=self.column("bit"),
            kind=[FAULT_KINDS.index(s.kind) for s in self.site_list],
            acc_drop=self.acc_drop,
            sdc_rate=self.sdc_rate,
            max_dev=self.max_dev,
            baseline_accuracy=self.baseline_accuracy,
            n_samples=self.n_samples,
            layer_names=names,
            seconds=self.seconds,
            meta={"engine": "store", "sdc": self.config.get("sdc", "top1"), "store": self.config},
            nbits=self.column("nbits"),
        )


# ----------------------------------------------------------------------------- store


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit; chunk transactions are explicit BEGIN/COMMIT.
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


class FaultStore:
    """One campaign's SQLite store. Use :meth:`create`, :meth:`open` or :meth:`open_for`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._config: dict[str, Any] | None = None
        self._lock: int | None = None

    # ---- opening
    @classmethod
    def create(
        cls, path: str | Path, config: dict[str, Any], sites: Sequence[FaultSite]
    ) -> FaultStore:
        """Make a new store holding ``config`` and the fault plan ``sites`` (refuses to overwrite)."""
        path = Path(path)
        if path.exists():
            raise ConfigError(
                f"fault store '{path}' already exists; open it instead of creating it"
            )
        cfg = dict(config)
        cfg.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            n_faults=len(sites),
            sites_sha256=sites_sha256(sites),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            p.unlink(missing_ok=True)
        conn = _connect(tmp)
        try:
            # Built in rollback-journal mode, then switched to WAL once complete, so the
            # whole store is one file when it is renamed into place.
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute("BEGIN")
            # Statement by statement: executescript() would COMMIT the open transaction.
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.executemany(
                "INSERT INTO campaign(key, value) VALUES (?, ?)",
                [(k, _encode(v)) for k, v in sorted(cfg.items())],
            )
            rows = []
            seen: set[str] = set()
            for k, s in enumerate(sites):
                fid = fault_id(s)
                if fid in seen:
                    raise ConfigError(
                        f"the fault list names fault {fid!r} twice (position {k}); "
                        "a campaign evaluates each fault once"
                    )
                seen.add(fid)
                rows.append((k, fid, s.layer, s.param, s.index, s.bit, s.kind, s.nbits))
            conn.executemany("INSERT INTO plan VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for stmt in _TRIGGERS.strip().split("\n"):
                conn.execute(stmt)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            tmp.unlink(missing_ok=True)
            raise
        conn.close()
        # A -wal / -shm left by a deleted store of the same name would be replayed into
        # the new one by SQLite: remove them before the new file appears under that name.
        for side in ("-wal", "-shm"):
            Path(f"{tmp}{side}").unlink(missing_ok=True)
            Path(f"{path}{side}").unlink(missing_ok=True)
        os.replace(tmp, path)
        log.info("fault store %s created: %d faults planned", path, len(sites))
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> FaultStore:
        """Open an existing store; anything that is not one raises :class:`CorruptFileError`."""
        path = Path(path)
        if not path.is_file():
            raise CorruptFileError(
                f"fault store '{path}' does not exist; start a campaign with "
                "`edgeml faults run` (or pass the --store file it wrote)"
            )
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise CorruptFileError(
                f"'{path}' is not an edgeml fault store: not an SQLite database "
                f"({path.stat().st_size} bytes, starts with {head[:8]!r}). Delete it or pass "
                "another --store to start a new campaign."
            )
        conn = _connect(path)
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if app != APPLICATION_ID or not _TABLES <= tables:
                raise CorruptFileError(
                    f"'{path}' is an SQLite database but not an edgeml fault store "
                    f"(application_id {app:#x}, tables {sorted(tables)})"
                )
            for table, cols in _COLUMNS.items():
                have = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
                if have != cols:
                    raise CorruptFileError(
                        f"'{path}' has an unexpected '{table}' table layout (columns {have}, "
                        f"expected {cols}): written by another edgeml version, or damaged"
                    )
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise CorruptFileError(
                    f"fault store '{path}' is damaged (SQLite quick_check: "
                    f"{'; '.join(str(r[0]) for r in check[:3])})"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed chunk is on disk before the next one starts.
            conn.execute("PRAGMA synchronous=FULL")
        except CorruptFileError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CorruptFileError(f"'{path}' is not a readable edgeml fault store: {exc}") from exc
        store = cls(path, conn)
        cfg = store.config
        if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
            store.close()
            raise CorruptFileError(
                f"'{path}' has store format {cfg.get('format')!r} version "
                f"{cfg.get('format_version')!r}; this edgeml reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        return store

    @classmethod
    def open_for(
        cls, path: str | Path, config: dict[str, Any], sites: Sequence[FaultSite]
    ) -> FaultStore:
        """Open the store of this campaign, creating it if ``path`` does not exist.

        An existing store must hold the same campaign: every :data:`IDENTITY_KEYS`
        field equal, else :class:`StoreMismatchError` names the differing fields.
        """
        path = Path(path)
        if not path.exists():
            return cls.create(path, config, sites)
        store = cls.open(path)
        try:
            want = dict(config, n_faults=len(sites), sites_sha256=sites_sha256(sites))
            store.check_config(want)
        except BaseException:
            store.close()
            raise
        return store

    def check_config(self, config: dict[str, Any]) -> None:
        """Refuse a campaign config that differs from the stored one in any identity field."""
        have = self.config
        diffs = []
        for key in IDENTITY_KEYS:
            if key not in config:
                continue
            a, b = have.get(key), json.loads(_encode(config[key]))
            if a != b and not (_is_nan(a) and _is_nan(b)):
                diffs.append(f"{key}: store has {_short(a)}, requested {_short(b)}")
        if diffs:
            raise StoreMismatchError(
                f"fault store '{self.path}' holds a different campaign; differing fields: "
                + "; ".join(diffs)
                + ". Pass another --store to start a new campaign, or delete this one."
            )

    # ---- reading
    @property
    def config(self) -> dict[str, Any]:
        """The campaign config recorded when the store was created."""
        if self._config is None:
            try:
                rows = self._conn.execute("SELECT key, value FROM campaign").fetchall()
                self._config = {k: json.loads(v) for k, v in rows}
            except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
                raise CorruptFileError(
                    f"fault store '{self.path}' has an unreadable campaign table: {exc}"
                ) from exc
        return dict(self._config)

    def sites(self) -> list[FaultSite]:
        """The planned fault sites, in campaign order."""
        rows = self._conn.execute(
            "SELECT layer, param, idx, bit, kind, nbits FROM plan ORDER BY ord"
        ).fetchall()
        return [make_site(*r) for r in rows]

    def count(self) -> int:
        """Faults with a result row."""
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def next_chunk(self) -> int:
        """Number for the next appended chunk (chunk numbers stay unique across resumes)."""
        row = self._conn.execute("SELECT MAX(chunk) FROM results").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def done_ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT fault_id FROM results")}

    def results(self) -> StoredResults:
        """Every planned fault with its metrics (NaN / -1 where not evaluated yet), campaign order."""
        rows = self._conn.execute(
            "SELECT p.fault_id, p.layer, p.param, p.idx, p.bit, p.kind, p.nbits, "
            "r.fault_id IS NOT NULL, r.acc_drop, r.sdc_rate, r.max_dev "
            "FROM plan p LEFT JOIN results r ON r.fault_id = p.fault_id ORDER BY p.ord"
        ).fetchall()
        n = len(rows)
        acc = np.full(n, np.nan)
        sdc = np.full(n, np.nan)
        dev = np.full(n, -1, np.int64)
        done = np.zeros(n, bool)
        ids, sites = [], []
        for k, r in enumerate(rows):
            ids.append(r[0])
            sites.append(make_site(*r[1:7]))
            if r[7]:
                done[k] = True
                acc[k] = np.nan if r[8] is None else r[8]
                sdc[k], dev[k] = r[9], r[10]
        secs = self._conn.execute(
            "SELECT COALESCE(SUM(s), 0) FROM (SELECT MAX(chunk_seconds) AS s FROM results "
            "GROUP BY chunk)"
        ).fetchone()[0]
        return StoredResults(sites, ids, acc, sdc, dev, done, self.config, float(secs))

    # ---- writing
    def append(
        self,
        sites: Sequence[FaultSite],
        acc_drop: Iterable[float],
        sdc_rate: Iterable[float],
        max_dev: Iterable[int],
        *,
        chunk: int,
        seconds: float = 0.0,
        row_delay: float = 0.0,
    ) -> None:
        """Append one chunk of results as one transaction (all rows or none).

        A fault id already in the store is refused (:class:`ConfigError`), and so is
        one not in the plan. ``seconds`` is the chunk's evaluation time. ``row_delay`` sleeps after each row inside the
        transaction: a test hook that makes a crash mid-chunk likely.
        """
        now = time.time()
        rows = []
        for s, a, d, m in zip(sites, acc_drop, sdc_rate, max_dev, strict=True):
            a = float(a)
            rows.append(
                (
                    fault_id(s),
                    s.layer,
                    s.param,
                    int(s.index),
                    int(s.bit),
                    s.kind,
                    s.nbits,
                    None if math.isnan(a) else a,
                    float(d),
                    int(m),
                    int(chunk),
                    float(seconds),
                    now,
                )
            )
        sql = "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if row_delay > 0:
                for row in rows:
                    conn.execute(sql, row)
                    time.sleep(row_delay)
            else:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise ConfigError(
                f"fault store '{self.path}' refused chunk {chunk}: {exc} (a fault already "
                "stored, or one not in the campaign's plan; is another run writing to it?)"
            ) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def lock_for_writing(self) -> None:
        """Take the store's writer lock (``<store>.lock``), or refuse if another run holds it.

        The lock is an ``flock`` held for the life of this process's store, so a
        killed run releases it at once and a second writer cannot interleave chunks.
        """
        if self._lock is not None:
            return
        import fcntl

        lock_path = Path(f"{self.path}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"fault store '{self.path}' is being written by another run (lock "
                f"'{lock_path}' held); wait for it to finish or stop it first"
            ) from None
        self._lock = fd

    # ---- closing
    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> FaultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_if_empty(path: str | Path) -> bool:
    """Delete the store at ``path`` if it holds no result row; return whether it did.

    A campaign that failed before its first chunk was committed (a crash in the
    engine, a Dask cluster that never started, Ctrl-C) leaves a store with its
    config and plan but no results: nothing is lost by starting it again, possibly
    with other settings. The store must be a readable edgeml store
    (:class:`CorruptFileError` otherwise) and no other run may be writing it
    (:class:`ConfigError`); a store with any result row is kept.
    """
    path = Path(path)
    with FaultStore.open(path) as st:
        st.lock_for_writing()
        if st.count() > 0:
            return False
        st._conn.close()  # closes before the files go; the lock is held until st.close()
        for p in (Path(f"{path}-wal"), Path(f"{path}-shm"), path):
            p.unlink(missing_ok=True)
    log.info(
        "fault store %s held no results (its run stopped before the first chunk); removed", path
    )
    return True


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
