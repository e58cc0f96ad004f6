"""Turn ``--model`` into a workload IR and, where possible, the equivalent PyTorch model.

Accepted forms (those of ``codesign map`` plus architecture records):
  * a built-in workload name (``codesign workloads``): IR from ``hw_models.zoo``, PyTorch model from
    ``search_spaces.zoo_models``;
  * ``pkg.module:factory``: a callable returning an ``nn.Module``; IR from ``codesign.lower``;
  * a workload JSON: IR only -- it has no weights and no code, so nothing can run on a CPU/GPU;
  * an architecture record from a search: a record JSON file, or ``runs/NAME@K`` (the K-th record of
    that search's front). NASA records: model built by ``search_spaces.nasa_space``, IR by lowering it.
    ViTCoD records (``codesign search --space vitcod``): IR by ``codesign.nas.vitcod_space.workload_from_record``
    (``hw_models.zoo.vit`` with the record's masks and Q/K auto-encoder), model by
    ``search_spaces.vitcod_space.build_model`` -- with the search's fine-tuned weights when the front point
    names a weights file that exists (``OUT/weights/trial-NNNN.pt``), else random weights (noted).
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw_models.errors import CodesignError, WorkloadError
from hw_models.workload import Workload
from hw_models.zoo import BUILTIN, attention_masks, get_builtin

NO_CPU_FOR_JSON = ("a bare workload JSON holds shapes only (no weights, no PyTorch code), so it cannot be run "
                   "on a CPU or GPU: no measured baseline is reported")


@dataclass
class ResolvedModel:
    spec: str
    name: str
    form: str
    workload: Workload
    input_shape: tuple[int, ...]
    module: Any = None                  # torch.nn.Module or None
    no_run_reason: str | None = None    # why there is no module to run
    description: str = ""
    record: dict | None = None
    record_index: int | None = None
    search_dir: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in re.split(r"[x,]", text.strip()) if v)
    except ValueError:
        raise CodesignError(f"--input-shape must look like 1,3,32,32 or 1x3x32x32, got {text!r}") from None
    if len(shape) < 2 or any(v < 1 for v in shape):
        raise CodesignError(f"--input-shape must have at least 2 positive sizes, got {text!r}")
    return shape


def _lower():
    try:
        return importlib.import_module("codesign.lower")
    except ImportError as exc:
        raise CodesignError(f"lowering a PyTorch model needs codesign.lower, which cannot be imported ({exc})") from None


def _import_factory(spec: str):
    """``pkg.module:factory`` (as codesign map reads it): factory is an nn.Module or a callable
    returning one; the module is imported from the current directory, then sys.path."""
    import os
    import sys

    import torch.nn as nn

    mod_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:            # the user's module may raise anything while importing
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CodesignError(f"cannot import {mod_name!r} for model {spec}: {exc.__class__.__name__}: {first}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CodesignError(f"model {spec!r}: {mod_name} has no callable {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise CodesignError(f"model {spec!r}: {attr} is neither an nn.Module nor a callable returning one")
        try:
            obj = obj()
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CodesignError(f"model factory {spec}() failed: {exc.__class__.__name__}: {first}") from None
        if not isinstance(obj, nn.Module):
            raise CodesignError(f"model factory {spec}() returned {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def _is_arch_record(data: Any) -> bool:
    """An architecture record (search_spaces.nasa_space format codesign-arch/1) or a front point holding one."""
    if not isinstance(data, dict) or "ops" in data and isinstance(data.get("ops"), list) and data["ops"] \
            and isinstance(data["ops"][0], dict):
        return False                      # a workload JSON: its ops are objects
    if isinstance(data.get("arch"), dict):
        return _is_arch_record(data["arch"])
    return str(data.get("format", "")).startswith("codesign-arch") or ("space" in data and "ops" in data) \
        or isinstance(data.get("string"), str)


def _nasa_space():
    try:
        return importlib.import_module("search_spaces.nasa_space")
    except ImportError as exc:
        raise CodesignError(f"architecture records need search_spaces.nasa_space, which cannot be imported ({exc})") from None


def _record_parts(record: dict) -> tuple[dict, dict]:
    """(architecture record, the front point around it or {})."""
    if isinstance(record.get("arch"), dict):
        return record["arch"], record
    return record, {}


def load_front(search_dir: str | Path) -> tuple[Path, list[dict]]:
    """The front JSON of a search run directory and its records (list of dicts)."""
    d = Path(search_dir)
    if not d.is_dir():
        raise CodesignError(f"search run directory not found: {d}")
    candidates = [d / "front.json", d / "pareto.json", *sorted(d.glob("*front*.json")), *sorted(d.glob("*.json"))]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        records = data
        if isinstance(data, dict):
            records = next((data[k] for k in ("front", "pareto", "records", "points") if isinstance(data.get(k), list)), None)
        if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            return path, records
    raise CodesignError(f"{d}: no front JSON with a list of architecture records (looked for front.json, *.json)")


def resolve_model(spec: str, input_shape: tuple[int, ...] | None = None) -> ResolvedModel:
    """Resolve ``--model``; raises CodesignError (one line) when it cannot be loaded."""
    if spec in BUILTIN:
        wl = get_builtin(spec)
        shape = _builtin_shape(wl)
        rm = ResolvedModel(spec, spec, "built-in workload", wl, shape, description=BUILTIN[spec][1])
        try:
            from search_spaces.zoo_models import MASKED_MODELS, build_zoo_model
            rm.module = build_zoo_model(spec, masks=attention_masks(wl) if spec in MASKED_MODELS else None)
            rm.notes.append("PyTorch model: search_spaces.zoo_models equivalent of the built-in (random weights; "
                            "same layers and shapes as the IR)")
            if spec in MASKED_MODELS:
                rm.notes.append("The CPU and GPU run the masked attention as dense matrix products with the mask "
                                "applied (PyTorch has no kernel that skips the masked entries); the accelerator "
                                "computes only the kept entries")
        except ImportError as exc:
            rm.no_run_reason = f"the PyTorch equivalent cannot be built here ({exc})"
        if input_shape and tuple(input_shape) != shape:
            rm.notes.append(f"--input-shape ignored: the built-in {spec} is defined for {'x'.join(map(str, shape))}")
        return rm

    m = re.fullmatch(r"(.+?)[@#](\d+)", spec)
    if m and Path(m.group(1)).is_dir():
        path, records = load_front(m.group(1))
        k = int(m.group(2))
        if k >= len(records):
            raise CodesignError(f"{spec}: the front in {path} has {len(records)} records (0..{len(records) - 1})")
        rm = _from_record(records[k], f"{Path(m.group(1)).name}@{k}", input_shape, spec, base_dir=Path(m.group(1)))
        rm.record_index, rm.search_dir = k, str(Path(m.group(1)))
        return rm

    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise CodesignError(f"model file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CodesignError(f"{path}: not valid JSON ({exc})") from None
        if _is_arch_record(data):
            return _from_record(data, path.stem, input_shape, spec, base_dir=path.parent)
        try:
            wl = Workload.from_dict(data)
        except WorkloadError as exc:
            raise CodesignError(f"{path}: {exc}") from None
        first = wl.ops()[0] if len(wl) else None
        shape = input_shape or _first_input_shape(first)
        return ResolvedModel(spec, wl.name, "workload JSON", wl, shape, no_run_reason=NO_CPU_FOR_JSON,
                             description=wl.description)

    if re.match(r"[a-z][a-z0-9_-]*@\d+x\d+x\d+/\d+\S*:", spec):       # canonical architecture string
        return _from_record({"string": spec}, spec.split("@")[0] + "-arch", input_shape, spec)

    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", spec):
        if input_shape is None:
            raise CodesignError(f"{spec}: a PyTorch model needs --input-shape (e.g. 1,3,32,32)")
        module = _import_factory(spec)
        lower = _lower()
        name = spec.split(":")[1].split(".")[-1]
        try:
            wl = lower.lower_model(module, input_shape, name=name)
        except CodesignError:
            raise
        except Exception as exc:
            raise CodesignError(f"lowering {spec} failed: {exc.__class__.__name__}: {exc}") from None
        return ResolvedModel(spec, name, "PyTorch factory", wl, tuple(input_shape), module=module,
                             description=f"{spec} lowered with codesign.lower.lower_model")

    raise CodesignError(f"cannot load model {spec!r}: not a built-in ({', '.join(BUILTIN)}), a workload or "
                        "architecture-record JSON, runs/NAME@K, or pkg.module:factory")


def _from_record(record: dict, name: str, input_shape: tuple[int, ...] | None, spec: str,
                 base_dir: Path | None = None) -> ResolvedModel:
    arch, point = _record_parts(record)
    if _is_vitcod_record(arch):
        return _from_vitcod_record(arch, point, name, input_shape, spec, base_dir)
    space = _nasa_space()
    try:
        parsed = space.parse_architecture(arch)
    except (ValueError, KeyError, TypeError) as exc:
        raise CodesignError(f"{spec}: not a valid architecture record ({exc})") from None
    rec_shape = tuple(getattr(parsed.space, "input_shape", ()) or (arch.get("space") or {}).get("input_shape") or ())
    shape = (1, *rec_shape) if rec_shape else (input_shape or (1, 3, 32, 32))
    lower = _lower()                      # fail fast, before building the model
    module = space.build_model(parsed, seed=0).eval()
    try:
        wl = lower.lower_model(module, shape, name=name)
    except CodesignError:
        raise
    except Exception as exc:
        raise CodesignError(f"lowering architecture record {name} failed: {exc.__class__.__name__}: {exc}") from None
    desc = f"architecture record {parsed.to_string()}"
    if point.get("trial") is not None:
        desc += f" (search trial {point['trial']}, family {point.get('family', '?')})"
    rm = ResolvedModel(spec, name, "architecture record", wl, shape, module=module, record=arch, description=desc)
    if input_shape and tuple(input_shape) != shape:
        rm.notes.append(f"--input-shape ignored: the record's space fixes the input to {'x'.join(map(str, shape))}")
    return rm


def _is_vitcod_record(arch: dict) -> bool:
    return str(arch.get("format", "")).startswith("codesign-arch-vitcod") or arch.get("space") == "vitcod"


def _from_vitcod_record(arch: dict, point: dict, name: str, input_shape: tuple[int, ...] | None, spec: str,
                        base_dir: Path | None) -> ResolvedModel:
    """A ViTCoD record: the masked ViT's IR (zoo.vit) and its PyTorch model (saved or random weights)."""
    try:
        import torch
        from search_spaces.vitcod_space import ViTCoDArch, build_model
        from codesign.nas.vitcod_space import workload_from_record
    except ImportError as exc:
        raise CodesignError(f"ViTCoD records need search_spaces.vitcod_space, which cannot be imported ({exc})") from None
    try:
        parsed = ViTCoDArch.from_dict(arch)
    except (ValueError, KeyError, TypeError) as exc:
        raise CodesignError(f"{spec}: not a valid ViTCoD record ({exc})") from None
    try:
        wl = workload_from_record(parsed, name=name)
    except WorkloadError as exc:
        raise CodesignError(f"{spec}: {exc}") from None
    v = parsed.vit
    shape = (1, v.in_chans, v.image_size, v.image_size)
    notes = []
    state, weights = None, point.get("weights") or arch.get("weights")
    if weights:
        wpath = Path(weights)
        if not wpath.is_absolute() and base_dir is not None:
            wpath = base_dir / wpath
        if wpath.is_file():
            try:
                state = torch.load(wpath, map_location="cpu", weights_only=True)["state"]
            except Exception as exc:                     # noqa: BLE001 - a damaged file: random weights, said so
                notes.append(f"weights file {wpath} could not be read ({exc.__class__.__name__}); random weights")
        else:
            notes.append(f"weights file {wpath} not found")
    try:
        module = build_model(parsed, seed=0, state_dict=state).eval()
    except RuntimeError as exc:                          # weights of another shape
        first = str(exc).splitlines()[0] if str(exc) else ""
        notes.append(f"the saved weights do not fit the record ({first}); random weights")
        module = build_model(parsed, seed=0).eval()
        state = None
    notes.insert(0, "PyTorch model: search_spaces.vitcod_space.build_model (MaskedViT with the record's masks"
                 + (" and Q/K auto-encoder" if parsed.qk_compressed_heads else "") + "), "
                 + ("the search's fine-tuned weights" if state is not None else "random weights (seed 0)"))
    desc = (f"ViTCoD record {parsed.to_string()} ({parsed.mask_rule}, sparsity {parsed.sparsity:.3f}, "
            f"Q/K auto-encoder {f'{v.heads}->{parsed.qk_compressed_heads}' if parsed.qk_compressed_heads else 'none'}, "
            f"polarize_threshold {parsed.polarize_threshold if parsed.polarize_threshold is not None else '-'})")
    if point.get("trial") is not None:
        desc += f" (search trial {point['trial']}, family {point.get('family', parsed.family)})"
    rm = ResolvedModel(spec, name, "architecture record", wl, shape, module=module, record=arch, description=desc,
                       notes=notes)
    if parsed.polarize_threshold is not None:
        rm.notes.append(f"the record's dense/sparse split (polarize_threshold {parsed.polarize_threshold:g}) is a "
                        "setting of the accelerator's sparse_attention chunk: the --hw accelerators use their own")
    if input_shape and tuple(input_shape) != shape:
        rm.notes.append(f"--input-shape ignored: the record's ViT fixes the input to {'x'.join(map(str, shape))}")
    return rm


def _builtin_shape(wl: Workload) -> tuple[int, ...]:
    """Network input shape of a built-in: the input of its first op (a conv in every built-in)."""
    return _first_input_shape(wl.ops()[0])


def _first_input_shape(op) -> tuple[int, ...]:
    s = getattr(op, "shape", None)
    if s is not None and all(hasattr(s, a) for a in ("n", "c", "h", "w")):
        return (s.n, s.c, s.h, s.w)
    return (1,)
