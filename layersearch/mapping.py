"""Layer mappings: which teacher layer supervises which student layer.

A mapping for an M-layer student and an N-layer teacher is a tuple of M genes;
gene m (1-based student layer m) is the teacher layer 1..N that supervises it,
or 0 for no layer-level supervision. The embedding output always maps to the
teacher's embedding output, so it is not a gene.
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layersearch.errors import UserError

MAPPING_FORMAT_VERSION = 1
HEURISTICS = ("uniform", "last", "lower", "upper")


class MappingError(UserError):
    pass


@dataclass(frozen=True)
class Mapping:
    genes: tuple[int, ...]
    num_teacher_layers: int
    # The teacher layer (1-based) each student layer is initialised from, when the
    # mapping names it (searched with search.search_init, or saved by a search);
    # None leaves the choice to student.init.layers.
    init: tuple[int, ...] | None = None

    def __post_init__(self):
        validate_genes(tuple(self.genes), self.num_teacher_layers)
        object.__setattr__(self, "genes", tuple(int(g) for g in self.genes))
        if self.init is not None:
            validate_init(tuple(self.init), self.num_teacher_layers, len(self.genes))
            object.__setattr__(self, "init", tuple(int(g) for g in self.init))

    @property
    def num_student_layers(self) -> int:
        return len(self.genes)

    def pairs(self) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs that carry supervision, 1-based."""
        return [(m, g) for m, g in enumerate(self.genes, start=1) if g > 0]

    def teacher_layers(self) -> list[int]:
        """Distinct teacher layers the mapping reads, ascending."""
        return sorted({g for g in self.genes if g > 0})

    @property
    def key(self) -> str:
        """Stable text key, e.g. ``6:2-4-6`` (teacher depth, then genes), ``6:2-4-6_init-1-3-6`` with init."""
        key = f"{self.num_teacher_layers}:" + "-".join(str(g) for g in self.genes)
        return key + ("_init-" + "-".join(str(g) for g in self.init) if self.init is not None else "")

    def __str__(self) -> str:
        text = "[" + ", ".join(str(g) for g in self.genes) + "]"
        return text + (" init [" + ", ".join(str(g) for g in self.init) + "]" if self.init is not None else "")

    @classmethod
    def from_key(cls, key: str) -> Mapping:
        """The mapping a ``key`` names (its inverse)."""
        depth, _, rest = key.partition(":")
        genes, _, init = rest.partition("_init-")
        return cls(tuple(int(g) for g in genes.split("-")), int(depth),
                   tuple(int(g) for g in init.split("-")) if init else None)

    def with_init(self, init) -> Mapping:
        return Mapping(self.genes, self.num_teacher_layers, None if init is None else tuple(init))

    def to_json(self, teacher: str, objective: list[str] | None = None, **extra) -> dict:
        return {
            "format_version": MAPPING_FORMAT_VERSION,
            "teacher": teacher,
            "num_teacher_layers": self.num_teacher_layers,
            "num_student_layers": self.num_student_layers,
            "genes": list(self.genes),
            **({"init": list(self.init)} if self.init is not None else {}),
            "objective": objective or [],
            **extra,
        }


def validate_genes(genes, num_teacher_layers: int, num_student_layers: int | None = None) -> None:
    if num_teacher_layers < 1:
        raise MappingError(f"mapping: teacher depth must be >= 1, got {num_teacher_layers}")
    if not genes:
        raise MappingError("mapping: no genes; give one teacher layer per student layer")
    if num_student_layers is not None and len(genes) != num_student_layers:
        raise MappingError(
            f"mapping: {len(genes)} genes for a {num_student_layers}-layer student; "
            f"give exactly {num_student_layers}"
        )
    for m, g in enumerate(genes, start=1):
        if not isinstance(g, numbers.Integral) or isinstance(g, bool):
            raise MappingError(f"mapping: gene {m} is {g!r}, not an integer")
        if g < 0 or g > num_teacher_layers:
            raise MappingError(
                f"mapping: gene {m} is {g}, outside 0..{num_teacher_layers} for a "
                f"{num_teacher_layers}-layer teacher"
            )
    if all(g == 0 for g in genes):
        raise MappingError("mapping: every gene is 0, so no student layer is supervised")


def validate_init(init, num_teacher_layers: int, num_student_layers: int) -> None:
    if len(init) != num_student_layers:
        raise MappingError(f"mapping: {len(init)} init layers for a {num_student_layers}-layer student; "
                           f"give exactly {num_student_layers}")
    for m, g in enumerate(init, start=1):
        if not isinstance(g, numbers.Integral) or isinstance(g, bool) or not 1 <= g <= num_teacher_layers:
            raise MappingError(f"mapping: init layer {m} is {g!r}, outside 1..{num_teacher_layers} "
                               "(every student layer is initialised from a teacher layer)")


def heuristic(name: str, num_student_layers: int, num_teacher_layers: int) -> Mapping:
    """Named mappings from the literature.

    uniform: TinyBERT's g(m) = m*N/M; last: MiniLM's last-layer-only;
    lower: g(m) = m; upper: g(m) = N - M + m.
    """
    m_, n_ = num_student_layers, num_teacher_layers
    if m_ > n_ and name in ("lower", "upper"):
        raise MappingError(f"mapping: '{name}' needs a student no deeper than the teacher")
    if name == "uniform":
        genes = [max(1, (m * n_) // m_) for m in range(1, m_ + 1)]
    elif name == "last":
        genes = [0] * (m_ - 1) + [n_]
    elif name == "lower":
        genes = list(range(1, m_ + 1))
    elif name == "upper":
        genes = [n_ - m_ + m for m in range(1, m_ + 1)]
    else:
        raise MappingError(f"mapping: unknown heuristic '{name}'; choose from {list(HEURISTICS)}")
    return Mapping(tuple(genes), n_)


def parse_genes(text: str) -> list[int]:
    """``"2,4,6"``, ``"[2, 4, 6]"`` or ``"2-4-6"`` -> [2, 4, 6]."""
    body = text.strip().strip("[]()")
    parts = [p for p in body.replace("-", ",").replace(" ", ",").split(",") if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise MappingError(f"mapping: cannot read '{text}' as a list of layer numbers") from None


def save_mapping(mapping: Mapping, path: str | Path, teacher: str, objective=None, **extra) -> Path:
    """Write the versioned JSON file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = mapping.to_json(teacher, objective, **extra)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_mapping(path: str | Path) -> tuple[Mapping, dict]:
    """Read a mapping file; returns the mapping and the file's full record."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"mapping: file {path} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"mapping: {path} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or "genes" not in data or "num_teacher_layers" not in data:
        raise MappingError(f"mapping: {path} lacks 'genes' / 'num_teacher_layers'")
    version = data.get("format_version")
    if version != MAPPING_FORMAT_VERSION:
        raise MappingError(
            f"mapping: {path} has format_version {version!r}; this layersearch reads {MAPPING_FORMAT_VERSION}"
        )
    genes, init = data["genes"], data.get("init")
    if not isinstance(genes, list):
        raise MappingError(f"mapping: {path} 'genes' must be a list")
    if not isinstance(init, list | None):
        raise MappingError(f"mapping: {path} 'init' must be a list of teacher layers")
    return Mapping(tuple(genes), int(data["num_teacher_layers"]), None if init is None else tuple(init)), data


def resolve_mapping(spec: str, num_student_layers: int, num_teacher_layers: int) -> Mapping:
    """A heuristic name, a JSON file, or an explicit gene list, checked against (N, M).

    (Search run ids are resolved by the search package before reaching here.)
    """
    if spec in HEURISTICS:
        mapping = heuristic(spec, num_student_layers, num_teacher_layers)
    elif spec.endswith(".json") or Path(spec).is_file():
        mapping, _ = load_mapping(spec)
        return check_saved(mapping, f"{spec} was made for", num_student_layers, num_teacher_layers)
    else:
        mapping = Mapping(tuple(parse_genes(spec)), num_teacher_layers)
    validate_genes(mapping.genes, num_teacher_layers, num_student_layers)
    return mapping


def check_saved(mapping: Mapping, origin: str, num_student_layers: int, num_teacher_layers: int) -> Mapping:
    """Check a mapping saved elsewhere (a file, a search run) against this teacher and student.

    ``origin`` opens the error, e.g. "best.json was made for" or "run <id> searched".
    """
    if mapping.num_teacher_layers != num_teacher_layers:
        raise MappingError(
            f"mapping: {origin} a {mapping.num_teacher_layers}-layer teacher, "
            f"this teacher has {num_teacher_layers}"
        )
    validate_genes(mapping.genes, num_teacher_layers, num_student_layers)
    return mapping

