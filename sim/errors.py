"""Errors raised by the simulator.

- :class:`SimError`: base class of every error below.
- :class:`ScenarioError`: a scenario document is malformed; names the step index and field.
- :class:`UnsupportedError`: the scenario uses an operation the chosen kernel lacks
  (``prctl`` on 6.1); the kernel replayer exits with status 4 for the same case.
- :class:`OpError`: an operation is invalid in the current state (unknown process, unknown
  mapping, page index out of range).
- :class:`KnobError`: the kernel rejected a sysfs write; carries the errno name
  (``EINVAL``, ``EBUSY``, ``ERANGE``, ``ENOENT``) exactly as the kernel would return it.
- :class:`InvariantError`: the invariant checker found the model inconsistent (a bug).
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of every simulator error."""


class ScenarioError(SimError):
    """A scenario document is malformed."""

    def __init__(self, message: str, step: int | None = None, field: str | None = None):
        self.step = step
        self.field = field
        self.message = message
        where = []
        if step is not None:
            where.append(f"step {step}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnsupportedError(SimError):
    """The operation does not exist on the simulated kernel version."""

    def __init__(self, message: str, step: int | None = None):
        self.step = step
        super().__init__(f"step {step}: {message}" if step is not None else message)


class OpError(SimError):
    """An operation is invalid in the current state."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class KnobError(SimError):
    """A sysfs write the kernel rejects, with the kernel's errno."""

    def __init__(self, knob: str, errno: str, reason: str):
        self.knob = knob
        self.errno = errno
        self.reason = reason
        super().__init__(f"{knob}: {errno}: {reason}")


class InvariantError(SimError):
    """A structural invariant of the model does not hold."""
