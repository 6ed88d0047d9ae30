"""One exception hierarchy for edgeml.

Every message says what was wrong, what was received, what is allowed and how
to fix it. The CLI maps each class to a documented exit code.
"""

from __future__ import annotations


class EdgemlError(Exception):
    """Base class of every error edgeml raises on purpose."""

    exit_code = 1


class ConfigError(EdgemlError):
    """A config field has a bad value or an unknown name."""


class UnsupportedOpError(EdgemlError):
    """A graph contains an op (or an op variant) that edgeml cannot execute exactly."""


class CorruptFileError(EdgemlError):
    """A file is unreadable, truncated or not what its extension claims."""


class MissingRunError(EdgemlError):
    """A stage needs an artifact from an earlier stage that is not in the run folder."""


class InputRangeError(EdgemlError):
    """Input values fall outside the design's input precision (would overflow/wrap)."""


class DependencyError(EdgemlError):
    """An optional tool (Verilator, g++, yosys) or package is missing."""


class MismatchError(EdgemlError):
    """Two levels (golden, C-sim, RTL) disagree. Exit code 3."""

    exit_code = 3


class InvalidTensorError(CorruptFileError):
    """A model's tensor holds NaN/Inf, or has zero, negative or absurd dimensions."""


class RunConflictError(EdgemlError):
    """A command would mix a different model or design into an existing run folder."""


class AccessError(EdgemlError):
    """A file or folder cannot be read or written: permissions, a read-only file system,
    a full disk, or a path that runs through a file."""
