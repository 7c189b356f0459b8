"""A dataset's classes: fine action names and, optionally, coarse groups of them (MA-52's body parts).

One :class:`Taxonomy` flows from the recipe (``data.classes``, a classes file; unset = MA-52) or from what a run
recorded (weights metadata, result dumps) to every consumer: heads, losses, metrics, plots, predictions. Nothing
else in microact hard-codes a class list; :data:`MA52` is the default instance, built from :mod:`microact.ma52`.

The classes file extends MA-52's ``label_name.txt``: one class per line, TAB-separated columns::

    id<TAB>name                 a flat taxonomy (no coarse level)
    id<TAB>name<TAB>group       every line names its group: a two-level taxonomy like MA-52's

Ids are 0..K-1, each once, in any line order; names are unique; group ids number the groups in the order of their
first appearance going through the classes by id (for a file written in id order: the order they first appear in
it), so the meaning of a file never depends on how its lines are ordered. Names may contain spaces, which is why
only a TAB separates columns.
"""
from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microact import ma52
from microact.errors import MicroactError

# safetensors metadata key of the taxonomy a run's weights were trained with (JSON of Taxonomy.to_dict())
TAXONOMY_METADATA_KEY = "microact.taxonomy"


class TaxonomyError(MicroactError, ValueError):
    """A taxonomy is inconsistent (duplicate names, a map that does not fit) or does not fit the data/model."""


@dataclass(frozen=True)
class Taxonomy:
    """Fine class names plus an optional coarse level (groups of fine classes).

    Equality compares the classes (names, groups, map), not where they were read from, so ``taxonomy == MA52``
    asks "is this MA-52?".

    Attributes:
        fine_names: class names indexed by fine id ``0..K-1``.
        coarse_names: group names indexed by coarse id; empty for a flat taxonomy.
        fine_to_coarse: the group of each fine id (``K`` entries); empty for a flat taxonomy.
        source: where it came from (a file, ``"MA-52"``, a dump), for messages; not compared.
    """

    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...] = ()
    fine_to_coarse: tuple[int, ...] = ()
    source: str = field(default="", compare=False)
    # the map as a tensor per device: coarse_of runs on every training step, and building the table there would
    # copy it host-to-device each time (a pageable copy that waits for the GPU). Not compared, not pickled.
    _device_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_device_tables"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        object.__setattr__(self, "_device_tables", {})

    def __post_init__(self):
        object.__setattr__(self, "fine_names", tuple(str(n) for n in self.fine_names))
        object.__setattr__(self, "coarse_names", tuple(str(n) for n in self.coarse_names))
        object.__setattr__(self, "fine_to_coarse", tuple(int(g) for g in self.fine_to_coarse))
        where = f"{self.source}: " if self.source else ""
        if not self.fine_names:
            raise TaxonomyError(f"{where}no classes")
        for kind, names in (("class", self.fine_names), ("group", self.coarse_names)):
            if any(not n.strip() for n in names):
                raise TaxonomyError(f"{where}a {kind} name is empty")
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise TaxonomyError(f"{where}{kind} name {n!r} appears twice")
                seen.add(n)
        if bool(self.coarse_names) != bool(self.fine_to_coarse):
            raise TaxonomyError(f"{where}group names and the class-to-group map come together (or neither)")
        if self.fine_to_coarse:
            if len(self.fine_to_coarse) != len(self.fine_names):
                raise TaxonomyError(f"{where}the class-to-group map has {len(self.fine_to_coarse)} entries for "
                                    f"{len(self.fine_names)} classes")
            bad = [g for g in self.fine_to_coarse if not 0 <= g < len(self.coarse_names)]
            if bad:
                raise TaxonomyError(f"{where}group id {bad[0]} is outside 0..{len(self.coarse_names) - 1}")
            empty = sorted(set(range(len(self.coarse_names))) - set(self.fine_to_coarse))
            if empty:
                raise TaxonomyError(f"{where}group {self.coarse_names[empty[0]]!r} has no classes")

    # ---- sizes -------------------------------------------------------------------------------------------------

    @property
    def num_fine(self) -> int:
        """``K``, the number of fine classes."""
        return len(self.fine_names)

    @property
    def num_coarse(self) -> int:
        """Number of groups (0 for a flat taxonomy)."""
        return len(self.coarse_names)

    @property
    def has_coarse(self) -> bool:
        """Whether there is a coarse level (groups)."""
        return bool(self.coarse_names)

    @property
    def is_ma52(self) -> bool:
        """Whether these are MA-52's 52 classes and 7 body parts."""
        return self == MA52

    @property
    def coarse_label(self) -> str:
        """What a coarse class is called in reports and predictions: ``"body part"`` (MA-52) or ``"group"``."""
        return "body part" if self.is_ma52 else "group"

    def describe(self, with_source: bool = True) -> str:
        """A short phrase for logs: ``"MA-52 (52 classes, 7 body parts)"``, ``"3 classes in 2 groups, from FILE"``,
        ``"4 classes without groups, from FILE"`` (a flat taxonomy)."""
        if self.is_ma52:
            return "MA-52 (52 classes, 7 body parts)"
        level = f"in {self.num_coarse} groups" if self.has_coarse else "without groups"
        return f"{self.num_fine} classes {level}" + (f", from {self.source}" if self.source and with_source else "")

    # ---- the map -----------------------------------------------------------------------------------------------

    def _require_coarse(self) -> None:
        if not self.has_coarse:
            raise TaxonomyError(f"the taxonomy{' of ' + self.source if self.source else ''} is flat: it has no "
                                "coarse level (its classes file names no groups)")

    def coarse_of(self, labels):
        """Group ids of fine ids: an int, a sequence, a numpy array or a torch tensor (same device) in, same kind out.

        Raises:
            TaxonomyError: a flat taxonomy (no groups).
        """
        self._require_coarse()
        table = np.asarray(self.fine_to_coarse, dtype=np.int64)
        try:
            import torch

            if isinstance(labels, torch.Tensor):
                device_table = self._device_tables.get(labels.device)
                if device_table is None:
                    device_table = self._device_tables[labels.device] = torch.as_tensor(table, device=labels.device)
                return device_table[labels.long()]
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
        if isinstance(labels, (int, np.integer)):
            return int(table[int(labels)])
        return table[np.asarray(labels, dtype=np.int64)]

    def members(self, coarse: int) -> tuple[int, ...]:
        """Fine ids of group ``coarse``, ascending."""
        self._require_coarse()
        if not 0 <= int(coarse) < self.num_coarse:
            raise TaxonomyError(f"group id {coarse} is outside 0..{self.num_coarse - 1}")
        return tuple(i for i, g in enumerate(self.fine_to_coarse) if g == int(coarse))

    def group_name(self, fine: int) -> Optional[str]:
        """Name of the group of fine id ``fine``; ``None`` for a flat taxonomy."""
        return self.coarse_names[self.fine_to_coarse[int(fine)]] if self.has_coarse else None

    # ---- plain data --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able ``{"fine_names": [...], "coarse_names": [...], "fine_to_coarse": [...]}``."""
        return {"fine_names": list(self.fine_names), "coarse_names": list(self.coarse_names),
                "fine_to_coarse": list(self.fine_to_coarse)}

    def to_json(self) -> str:
        """:meth:`to_dict` as one JSON line (what weights and dumps record)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> "Taxonomy":
        """The inverse of :meth:`to_dict`.

        Raises:
            TaxonomyError: naming ``source`` when the data is not a taxonomy.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, dict) or not isinstance(data.get("fine_names"), list):
            raise TaxonomyError(f"{where}not a recorded taxonomy (expected a mapping with a 'fine_names' list)")
        try:
            return cls(tuple(data["fine_names"]), tuple(data.get("coarse_names") or ()),
                       tuple(data.get("fine_to_coarse") or ()), source=source)
        except (TypeError, ValueError) as e:
            if isinstance(e, TaxonomyError):
                raise
            raise TaxonomyError(f"{where}not a recorded taxonomy ({e})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "") -> "Taxonomy":
        """The taxonomy :meth:`to_json` wrote; ``source`` names where the text came from in errors."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TaxonomyError(f"{source + ': ' if source else ''}recorded taxonomy is not valid JSON ({e})") from None
        return cls.from_dict(data, source)


MA52 = Taxonomy(ma52.FINE_NAMES, ma52.COARSE_NAMES, ma52.FINE_TO_COARSE, source="MA-52")


# --------------------------------------------------------------------------------------------
# The classes file
# --------------------------------------------------------------------------------------------

_FORMAT = "'<id><TAB><name>' or '<id><TAB><name><TAB><group>' (columns are TAB-separated: names may contain spaces)"


def load_classes(path: str | os.PathLike) -> Taxonomy:
    """Read a classes file (``id<TAB>name[<TAB>group]`` per line; see the module docstring).

    UTF-8 (a byte order mark is fine), CRLF or LF line ends, blank lines ignored. MA-52's own
    ``label_name.txt`` (two columns) reads as a flat list of its 52 names.

    Raises:
        microact.data.annotations.AnnotationError: every problem at once, each as ``file:line: problem``.
    """
    from microact.data.annotations import AnnotationError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError([f"{path}: classes file not found"]) from None
    except OSError as e:
        raise AnnotationError([f"{path}: cannot read classes file ({e.strerror or e})"]) from None
    data = data.removeprefix(codecs.BOM_UTF8)
    names: dict[int, tuple[str, Optional[str], int]] = {}  # id -> (name, group or None, line)
    name_lines: dict[str, int] = {}
    ids_present: set[int] = set()  # ids written on some line, also one whose line has another problem
    problems: list[str] = []
    with_group: list[int] = []
    without_group: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
            continue
        if not line.strip():
            continue
        parts = [p.strip() for p in line.strip(" \r").split("\t")]
        if len(parts) not in (2, 3):
            problems.append(f"{where}: expected {_FORMAT}, got {len(parts)} TAB-separated column(s): {line[:80]!r}")
            continue
        try:
            class_id = int(parts[0])
        except ValueError:
            problems.append(f"{where}: id {parts[0]!r} is not an integer")
            continue
        if class_id < 0:
            problems.append(f"{where}: id {class_id} is negative (ids are 0..K-1)")
            continue
        ids_present.add(class_id)
        name = parts[1]
        if not name:
            problems.append(f"{where}: class {class_id} has an empty name")
            continue
        group = parts[2] if len(parts) == 3 else None
        if group is not None and not group:
            problems.append(f"{where}: class {class_id} has an empty group name")
            continue
        if class_id in names:
            problems.append(f"{where}: id {class_id} appears twice (first on line {names[class_id][2]})")
            continue
        if name in name_lines:
            problems.append(f"{where}: name {name!r} appears twice (first on line {name_lines[name]})")
            continue
        names[class_id] = (name, group, number)
        name_lines[name] = number
        (with_group if group is not None else without_group).append(number)
    if with_group and without_group:
        few, many = sorted((with_group, without_group), key=len)  # the minority is the likely mistake
        what = ("names no group but line {} names one" if few is without_group
                else "names a group but line {} does not")
        for number in few[:10]:
            problems.append(f"{path}:{number}: this line {what.format(many[0])}: either every line names a group "
                            "(third column) or none does")
    if not names and not problems:
        problems.append(f"{path}: no classes (the file is empty); expected {_FORMAT} per line")
    missing = sorted(set(range(max(ids_present, default=-1) + 1)) - ids_present)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        problems.append(f"{path}: ids missing: {shown} (ids must be 0..K-1, each once)")
    if problems:
        line_prefix = f"{path}:"

        def line_of(problem: str) -> float:  # "PATH:LINE: ..." in line order, whole-file problems last
            number = problem[len(line_prefix):].split(":", 1)[0] if problem.startswith(line_prefix) else ""
            return int(number) if number.isdigit() else float("inf")

        raise AnnotationError(sorted(problems, key=line_of))
    ordered = [names[i] for i in range(len(names))]
    if not with_group:
        return Taxonomy(tuple(n for n, _, _ in ordered), source=str(path))
    groups: dict[str, int] = {}
    for _, group, _ in ordered:  # by class id: line order does not change the group ids
        groups.setdefault(group, len(groups))
    return Taxonomy(tuple(n for n, _, _ in ordered), tuple(groups), tuple(groups[g] for _, g, _ in ordered),
                    source=str(path))


def write_classes(taxonomy: Taxonomy, path: str | os.PathLike) -> Path:
    """Write ``taxonomy`` as a classes file :func:`load_classes` reads back equal."""
    path = Path(path)
    lines = []
    for i, name in enumerate(taxonomy.fine_names):
        group = taxonomy.group_name(i)
        lines.append(f"{i}\t{name}" + (f"\t{group}" if group is not None else ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# From a recipe
# --------------------------------------------------------------------------------------------


def classes_path(cfg) -> Optional[Path]:
    """``data.classes`` as a path (relative to ``data.root`` like the list files), or ``None`` (MA-52)."""
    if cfg.data.classes is None:
        return None
    p = Path(cfg.data.classes)
    return p if p.is_absolute() else Path(cfg.data.root) / p


def resolve_taxonomy(cfg) -> Taxonomy:
    """The taxonomy of a recipe, with ``data.num_classes`` / ``model.num_classes`` made to agree with it.

    ``data.classes`` unset: MA-52 (the recipe must keep 52 classes). Set: the classes file is read; class counts
    the user left alone take its count (``cfg`` is updated in place, so the recipe a run records says it), counts
    set to something else are an error naming the keys and the file. "Left alone" is: not given as an override
    and, in the recipe file, absent or MA-52's 52 (every shipped recipe states ``num_classes: 52``, and a recipe
    copied from them should not have to change it). Call it at start-up, before anything is written.

    Raises:
        microact.config.ConfigError: counts that do not match, or ``num_classes`` other than 52 without a file.
        microact.data.annotations.AnnotationError: the classes file's problems, as ``file:line: problem``.
    """
    from microact.config import ConfigError

    path = classes_path(cfg)
    if path is None:
        if cfg.data.num_classes != ma52.NUM_FINE:
            raise ConfigError(
                f"data.num_classes={cfg.data.num_classes} but data.classes is not set: without a classes file the "
                f"classes are MA-52's {ma52.NUM_FINE}. Write a classes file ('id<TAB>name' per line, optionally "
                "'<TAB>group') and set data.classes=FILE (relative to data.root)",
                keys=("data.num_classes", "data.classes"))
        return MA52
    if not path.is_file():
        raise ConfigError(f"data.classes={cfg.data.classes}: {path} not found" +
                          ("" if Path(cfg.data.root).is_dir() else f" (data.root={cfg.data.root} is not a folder)"),
                          keys=("data.classes",))
    taxonomy = load_classes(path)
    k = taxonomy.num_fine
    counts = {"data.num_classes": cfg.data.num_classes, "model.num_classes": cfg.model.num_classes}
    typed, in_file = getattr(cfg, "override_keys", frozenset()), getattr(cfg, "file_keys", frozenset())
    user_set = [key for key, value in counts.items()
                if key in typed or (key in in_file and value != ma52.NUM_FINE)]
    wrong = [key for key in user_set if counts[key] != k]
    if wrong:
        values = ", ".join(f"{key}={counts[key]}" for key in wrong)
        raise ConfigError(f"{values} but data.classes={cfg.data.classes} ({path}) lists {k} classes: set "
                          f"{' and '.join(f'{key}={k}' for key in wrong)}, leave them out (the count is taken from "
                          "the file) or make the file match",
                          keys=tuple(wrong) + ("data.classes",))
    cfg.data.num_classes = cfg.model.num_classes = k
    if not taxonomy.has_coarse and cfg.predict.coarse_rule != "map_top1":
        raise ConfigError(f"predict.coarse_rule={cfg.predict.coarse_rule} predicts groups, but data.classes="
                          f"{cfg.data.classes} names none (a flat list of classes): leave predict.coarse_rule at "
                          "map_top1 or add a group column to the classes file",
                          keys=("predict.coarse_rule", "data.classes"))
    return taxonomy


def taxonomy_of(model, taxonomy: Optional[Taxonomy] = None) -> Taxonomy:
    """``taxonomy`` when given, else the one a model was built with (``Recognizer.taxonomy``), else MA-52."""
    return taxonomy or getattr(model, "taxonomy", None) or MA52


def read_recorded_taxonomy(path: str | os.PathLike) -> Optional[Taxonomy]:
    """The taxonomy a microact weights file records (:data:`TAXONOMY_METADATA_KEY`), or ``None`` (older runs,
    converted or foreign files). A recorded value that is not a taxonomy raises :class:`TaxonomyError`."""
    from microact.models.checkpoints import weights_metadata

    text = (weights_metadata(path) or {}).get(TAXONOMY_METADATA_KEY)
    if text is None:
        return None
    return Taxonomy.from_json(text, f"{path} (recorded taxonomy)")


def differences(a: Taxonomy, b: Taxonomy) -> str:
    """One phrase saying how two taxonomies differ ("" when equal)."""
    if a == b:
        return ""
    if a.num_fine != b.num_fine:
        return f"{a.num_fine} classes vs {b.num_fine}"
    diff = next((i for i, (x, y) in enumerate(zip(a.fine_names, b.fine_names)) if x != y), None)
    if diff is not None:
        return f"class {diff} is {a.fine_names[diff]!r} vs {b.fine_names[diff]!r}"
    if a.has_coarse != b.has_coarse:
        return "groups vs a flat list" if a.has_coarse else "a flat list vs groups"
    return "the groups differ"


__all__ = ["Taxonomy", "TaxonomyError", "MA52", "TAXONOMY_METADATA_KEY", "load_classes", "write_classes",
           "resolve_taxonomy", "classes_path", "read_recorded_taxonomy", "differences", "taxonomy_of"]
