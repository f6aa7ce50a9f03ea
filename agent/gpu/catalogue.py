"""The catalogue of GPU classes right-sizing may recommend: memory, USD per hour, bandwidth.

The bundled ``gpu_classes.toml`` documents every field and where its prices come from; admins
point ``[gpu] catalogue`` at their own copy with the prices they pay.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ConfigError
from agent.gpu.cost import name_matches

MIB_PER_GIB = 1024


class GpuClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    match: str = ""  # empty: the name
    memory_gib: Decimal = Field(gt=0, le=4096)
    usd_per_hour: Decimal = Field(ge=0, allow_inf_nan=False)
    memory_bandwidth_gbps: float | None = Field(default=None, gt=0)
    kind: Literal["cloud", "workstation"] = "cloud"
    note: str = ""

    @model_validator(mode="after")
    def _default_match(self) -> GpuClass:
        if not self.match.strip():
            object.__setattr__(self, "match", self.name)
        return self

    @property
    def memory_mib(self) -> float:
        return float(self.memory_gib * MIB_PER_GIB)

    def matches(self, gpu_name: str) -> bool:
        return name_matches(self.match, gpu_name)


class _CatalogueFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: tuple[GpuClass, ...] = Field(min_length=1)


def load_catalogue(path: Path | None = None) -> list[GpuClass]:
    """The GPU classes of ``path`` (None: the bundled catalogue). Raises ConfigError naming
    the file and the entry that is wrong."""
    source = str(path) if path is not None else "bundled gpu_classes.toml"
    try:
        if path is None:
            text = resources.files("agent.gpu").joinpath("gpu_classes.toml").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(f"GPU catalogue {source} cannot be read: {e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"GPU catalogue {source} is not valid TOML: {e}") from e
    try:
        classes = list(_CatalogueFile.model_validate(raw).gpu)
    except ValidationError as e:
        raise ConfigError(f"GPU catalogue {source}: {_describe(e, raw)}") from None
    names = [c.name.lower() for c in classes]
    duplicates = sorted({c.name for c in classes if names.count(c.name.lower()) > 1})
    if duplicates:
        raise ConfigError(f"GPU catalogue {source}: names must be unique, repeated: {', '.join(duplicates)}")
    return classes


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    problems = []
    for err in error.errors(include_url=False)[:5]:
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "gpu" and isinstance(loc[1], int):
            entries = raw.get("gpu")
            entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            label = f"entry {loc[1] + 1}" + (f" ({str(name)[:64]!r})" if isinstance(name, str) else "")
            where = label + (": " + ".".join(str(p) for p in loc[2:]) if loc[2:] else "")
        problems.append(f"{where}: {err['msg']}")
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def current_class(catalogue: Sequence[GpuClass], gpu_name: str, mem_total_mib: float | None) -> GpuClass | None:
    """The catalogue class of a GPU: its name matches, and among several (A100 40 and 80 GiB)
    the one whose memory is nearest the GPU's own."""
    candidates = [c for c in catalogue if c.matches(gpu_name)]
    if not candidates:
        return None
    if mem_total_mib is None:
        return candidates[0] if len(candidates) == 1 else None
    return min(candidates, key=lambda c: (abs(c.memory_mib - mem_total_mib), c.name))
