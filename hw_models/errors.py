"""Errors that carry a one-line, user-facing message; the CLI prints them and exits with code 2."""


class CodesignError(Exception):
    """Base class: ``str(err)`` is a complete one-line message naming what is wrong."""


class WorkloadError(CodesignError):
    """A workload (IR graph or JSON file) is malformed."""


class ConfigError(CodesignError):
    """An accelerator description or energy table is invalid."""


class MappingError(CodesignError):
    """An operator cannot be placed on the accelerator (unsupported kind, nothing fits)."""
