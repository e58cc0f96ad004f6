"""Hardware side of codesign: workload IR, accelerator descriptions, energy tables, engines and the
event-driven simulator. Depends on numpy and networkx (plus PyYAML to read its data files) only, so it can be used without torch."""
from hw_models.errors import CodesignError, ConfigError, MappingError, WorkloadError
from hw_models.workload import Mask, OpCounts, OpNode, Workload

__all__ = ["CodesignError", "ConfigError", "MappingError", "WorkloadError",
           "Mask", "OpCounts", "OpNode", "Workload"]
