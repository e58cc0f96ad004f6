"""Energy tables: per-action energies with unit basis, node, bit width, source and scaling rule.

Entries are looked up by action and scaled from the nearest reference entry:
``linear``/``quadratic`` in bit width (adders scale linearly, multipliers quadratically: Accelergy's
Aladdin plug-in rule), ``sqrt_capacity`` in SRAM bank size (per-bit access energy grows with the
square root of the array an access activates, which fits Horowitz's 8 KB/32 KB/1 MB points; a
banked buffer activates one bank), ``constant`` otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from hw_models.errors import ConfigError

TABLE_DIR = Path(__file__).parent / "energy_tables"
SCALINGS = ("linear", "quadratic", "sqrt_capacity", "constant")
PER = ("op", "bit", "cycle", "cycle_kb")


@dataclass(frozen=True)
class EnergyEntry:
    action: str
    bits: int
    energy_pj: float
    per: str
    scaling: str
    source: str
    node_nm: int
    capacity_kb: float | None = None


@dataclass(frozen=True)
class EnergyTable:
    name: str
    node_nm: int
    entries: tuple[EnergyEntry, ...]
    description: str = ""

    def _entries(self, action: str) -> list[EnergyEntry]:
        found = [e for e in self.entries if e.action == action]
        if not found:
            raise ConfigError(f"energy table {self.name}: no entry for action {action!r}")
        return found

    def op_pj(self, action: str, bits: int) -> float:
        """Energy of one operation of ``action`` at ``bits`` bits, in pJ."""
        entries = sorted(self._entries(action), key=lambda e: e.bits)
        ref = min(entries, key=lambda e: (abs(math.log2(bits / e.bits)), -e.bits))
        ratio = bits / ref.bits
        return ref.energy_pj * {"linear": ratio, "quadratic": ratio ** 2, "constant": 1.0}[ref.scaling]

    def bit_pj(self, action: str, capacity_bytes: float | None = None) -> float:
        """Energy per bit of an access (SRAM scaled to ``capacity_bytes``), in pJ."""
        ref = self._entries(action)[0]
        if ref.scaling == "sqrt_capacity":
            if capacity_bytes is None:
                raise ConfigError(f"energy table {self.name}: {action} needs a capacity")
            return ref.energy_pj * math.sqrt(capacity_bytes / 1024 / ref.capacity_kb)
        return ref.energy_pj

    def static_pj(self, action: str) -> float:
        return self._entries(action)[0].energy_pj

    def rows(self) -> list[dict]:
        """Flat records for reports: every entry with its unit spelled out."""
        unit = {"op": "pJ/op", "bit": "pJ/bit", "cycle": "pJ/cycle", "cycle_kb": "pJ/(cycle*KB)"}
        return [{"action": e.action, "bits": e.bits, "energy": e.energy_pj, "unit": unit[e.per],
                 "node_nm": e.node_nm, "scaling": e.scaling, "source": e.source} for e in self.entries]


def table_names() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_table(name_or_path: str) -> EnergyTable:
    """Load and validate an energy table by name (shipped) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TABLE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"energy_table: unknown table {name_or_path!r} (shipped: {', '.join(table_names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ConfigError(f"{path}: an energy table needs name, node_nm and an entries list")
    node = data.get("node_nm")
    entries = []
    for i, e in enumerate(data["entries"]):
        where = f"{path.name}: entries[{i}]"
        missing = [k for k in ("action", "bits", "energy_pj", "per", "scaling", "source") if k not in e]
        if missing:
            raise ConfigError(f"{where}: missing {missing[0]!r} (every entry needs unit basis, source and scaling)")
        if e["per"] not in PER:
            raise ConfigError(f"{where}.per: must be one of {', '.join(PER)}, got {e['per']!r}")
        if e["scaling"] not in SCALINGS:
            raise ConfigError(f"{where}.scaling: must be one of {', '.join(SCALINGS)}, got {e['scaling']!r}")
        if not isinstance(e["energy_pj"], (int, float)) or e["energy_pj"] < 0:
            raise ConfigError(f"{where}.energy_pj: must be a non-negative number, got {e['energy_pj']!r}")
        if e["scaling"] == "sqrt_capacity" and not e.get("capacity_kb"):
            raise ConfigError(f"{where}: sqrt_capacity scaling needs capacity_kb")
        entries.append(EnergyEntry(action=e["action"], bits=int(e["bits"]), energy_pj=float(e["energy_pj"]),
                                   per=e["per"], scaling=e["scaling"], source=str(e["source"]),
                                   node_nm=int(e.get("node_nm", node)), capacity_kb=e.get("capacity_kb")))
    return EnergyTable(name=data.get("name", path.stem), node_nm=int(node), entries=tuple(entries),
                       description=data.get("description", ""))
