"""Hand corrections of the objects: merge, split and delete, kept beside the run.

**What a correction is.** Corrections never change the clustering (``InstanceClusters``); they are a list of
operations replayed, in order, on the ids it gives each pixel:

- **merge** (two or more ids → the smallest of them) and **delete** (an id → 0, no object, like stuff) relabel ids;
- **split** (an id → parts): that object's sampled pixels are re-clustered on their own by k-means into the
  given number of parts, on their embeddings and, where most of them have one, their 3D points (each
  standardised by its spread over the object, so that both count). The parts' centres are kept; a pixel of that
  id takes the part with the nearest centre (a pixel without a 3D point by its embedding alone). The largest
  part keeps the id; the others get fresh ids above every id in use, which the clustering then never hands
  out (``InstanceClusters.reserved_ids``).

Ids that no correction names keep their id, so the viewer's colours (the palette colours ids) do not change.
Undo drops the last correction.

**A re-clustering** (the viewer's button or slider, or training going on) keeps the ids of the objects it matches
(Hungarian matching), so the corrections are replayed on the new ids, and each stays if it still makes sense:

- a merge keeps those of its ids that still exist, and stays while at least two do;
- a delete stays while its id exists;
- a split stays while its id exists; its parts are fitted again on the new clustering's pixels of that id, and
  keep their ids by matching the new parts to the old ones (Hungarian, on their centres).

What does not stay is said in the console, and the file is rewritten. Opening a run does the same without the
re-fit: corrections that name an id the loaded objects lack are left out (said in the console, with the file's
name), and the file is left as it is, so ``cl-eval`` or ``cl-export`` never change it.

**The file**: ``corrections.json`` beside the run's config.yml, ``{"version": 1, "corrections": [...]}``, one row
per correction in order (``{"op": "merge", "ids": [3, 7]}``, ``{"op": "delete", "id": 5}``, ``{"op": "split",
...}`` with its parts' ids and centres). It is rewritten atomically after every correction: a viewer killed at
any moment loses at most the correction it was saving. A file that cannot be read is reported, naming it, and
the run opens without corrections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import Tensor

from contrastive_lift_ns.atomic import atomic_write_json
from contrastive_lift_ns.clustering.confidence import object_confidence

FILE_NAME = "corrections.json"
"""The corrections file's name, beside the run's config.yml."""
_VERSION = 1
_MIN_PART_PIXELS = 5  # a split needs this many sampled pixels per part
_MIN_LOCATED = 0.5  # a split uses 3D points when at least this share of the object's pixels has one


class CorrectionError(ValueError):
    """A correction that cannot be made (an unknown id, too few pixels to split), or an unreadable file."""


@dataclass
class ClusterSample:
    """The clustering's sampled pixels of the training views, rendered: what a split re-clusters."""

    ids: Tensor
    """(M,) each pixel's id from the clustering (``InstanceClusters.assign``), before any correction."""
    embeddings: Tensor
    """(M, D) rendered embeddings."""
    classes: Tensor
    """(M,) predicted semantic classes."""
    positions: Optional[Tensor] = None
    """(M, 3) surface points, NaN where a pixel sees no surface."""
    segments: Optional[Tensor] = None
    """(M,) 2D segment ids (0: none), for the parts' confidence."""
    views: Optional[Tensor] = None
    """(M,) training view indices, for the parts' confidence."""


@dataclass(frozen=True)
class Merge:
    """Two or more objects become one, with the smallest of their ids."""

    ids: Tuple[int, ...]
    """The merged ids, sorted."""

    @property
    def into(self) -> int:
        return self.ids[0]

    def apply(self, ids: Tensor, embeddings: Tensor, positions: Optional[Tensor]) -> Tensor:
        merged = torch.isin(ids, torch.tensor(self.ids, device=ids.device))
        return torch.where(merged, torch.full_like(ids, self.into), ids)

    def row(self) -> Dict:
        return {"op": "merge", "ids": list(self.ids)}


@dataclass(frozen=True)
class Delete:
    """An object becomes no object (id 0)."""

    id: int
    """The deleted id."""

    def apply(self, ids: Tensor, embeddings: Tensor, positions: Optional[Tensor]) -> Tensor:
        return ids.masked_fill(ids == self.id, 0)

    def row(self) -> Dict:
        return {"op": "delete", "id": self.id}


@dataclass(frozen=True)
class Split:
    """An object becomes parts: its pixels take the part with the nearest centre."""

    id: int
    """The split id; the largest part keeps it."""
    part_ids: Tuple[int, ...]
    """Each part's id, the first being ``id``."""
    embedding_centres: Tuple[Tuple[float, ...], ...]
    """Each part's centre in embedding space."""
    embedding_scale: float
    """The object's embedding spread, dividing embedding distances."""
    position_centres: Optional[Tuple[Tuple[float, ...], ...]] = None
    """Each part's centre in 3D, or None when the split uses embeddings alone."""
    position_scale: float = 1.0
    """The object's spread in 3D, dividing 3D distances."""
    sizes: Tuple[int, ...] = ()
    """Each part's sampled pixels when it was fitted (for the object list)."""
    confidence: Tuple[float, ...] = ()
    """Each part's confidence when it was fitted."""

    def apply(self, ids: Tensor, embeddings: Tensor, positions: Optional[Tensor]) -> Tensor:
        flat = ids.reshape(-1)
        member = flat == self.id
        if not member.any():
            return ids
        device = embeddings.device
        centres = torch.tensor(self.embedding_centres, dtype=torch.float32, device=device)
        distance = torch.cdist(embeddings.reshape(-1, centres.shape[1])[member].float(), centres) ** 2
        distance = distance / self.embedding_scale**2
        if self.position_centres is not None and positions is not None:
            where = positions.reshape(-1, 3)[member].float()
            located = torch.isfinite(where).all(-1, keepdim=True)
            anchors = torch.tensor(self.position_centres, dtype=torch.float32, device=device)
            apart = torch.cdist(torch.nan_to_num(where), anchors) ** 2 / self.position_scale**2
            distance = distance + torch.where(located, apart, torch.zeros_like(apart))
        parts = torch.tensor(self.part_ids, dtype=flat.dtype, device=flat.device)
        flat = flat.clone()
        flat[member] = parts[distance.argmin(-1).to(flat.device)]
        return flat.reshape(ids.shape)

    def row(self) -> Dict:
        return {
            "op": "split",
            "id": self.id,
            "part_ids": list(self.part_ids),
            "embedding_centres": [list(c) for c in self.embedding_centres],
            "embedding_scale": self.embedding_scale,
            "position_centres": None if self.position_centres is None else [list(c) for c in self.position_centres],
            "position_scale": self.position_scale,
            "sizes": list(self.sizes),
            "confidence": list(self.confidence),
        }


Correction = Union[Merge, Delete, Split]
ObjectRow = Tuple[int, float]
"""An object's size in sampled pixels and its confidence."""


class Corrections:
    """The corrections of one run, in order; ``apply`` replays them on the clustering's ids."""

    def __init__(self, operations: Iterable[Correction] = ()) -> None:
        self.operations: List[Correction] = list(operations)

    def __len__(self) -> int:
        return len(self.operations)

    def apply(self, ids: Tensor, embeddings: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        """The corrected ids of pixels with the clustering's ``ids``, ``embeddings`` and surface ``positions``."""
        for operation in self.operations:
            ids = operation.apply(ids, embeddings, positions)
        return ids

    def object_ids(self, cluster_ids: Iterable[int]) -> List[int]:
        """The ids of the corrected objects, given the clustering's."""
        live = set(int(i) for i in cluster_ids)
        for operation in self.operations:
            _update(live, operation)
        return sorted(live)

    def table(self, rows: Dict[int, ObjectRow]) -> Dict[int, ObjectRow]:
        """The corrected objects' sizes and confidences from the clustering's: a merge adds the sizes and
        averages the confidences weighted by size; split parts have theirs from when they were fitted."""
        rows = dict(rows)
        for operation in self.operations:
            if isinstance(operation, Merge):
                merged = [rows.pop(i) for i in operation.ids if i in rows]
                size = sum(s for s, _ in merged)
                mean = sum(s * c for s, c in merged) / size if size else float(np.mean([c for _, c in merged]))
                rows[operation.into] = (size, mean)
            elif isinstance(operation, Delete):
                rows.pop(operation.id, None)
            else:
                rows.pop(operation.id, None)
                rows.update(zip(operation.part_ids, zip(operation.sizes, operation.confidence)))
        return rows

    def largest_id(self) -> int:
        """The largest id a split handed out (0 if none)."""
        return max((max(o.part_ids) for o in self.operations if isinstance(o, Split)), default=0)

    # ------------------------------------------------------------ making corrections

    def merge(self, ids: Sequence[int], cluster_ids: Iterable[int]) -> Merge:
        """Merges ``ids`` (two or more objects) into the smallest of them."""
        ids = tuple(sorted(set(int(i) for i in ids)))
        if len(ids) < 2:
            raise CorrectionError(f"a merge needs two or more objects; got {_listed(ids)}")
        self._check_exist(ids, cluster_ids)
        return self._add(Merge(ids))

    def delete(self, object_id: int, cluster_ids: Iterable[int]) -> Delete:
        """Makes ``object_id`` no object."""
        self._check_exist([object_id], cluster_ids)
        return self._add(Delete(int(object_id)))

    def split(
        self, object_id: int, parts: int, cluster_ids: Sequence[int], sample: ClusterSample, reserved: int = 0
    ) -> Split:
        """Re-clusters the sampled pixels of ``object_id`` into ``parts`` parts; ids above ``reserved`` and every
        id in use go to the new parts."""
        if parts < 2:
            raise CorrectionError(f"a split needs at least 2 parts; got {parts}")
        self._check_exist([object_id], cluster_ids)
        current = self.apply(sample.ids, sample.embeddings, sample.positions)
        first_free = max([reserved, self.largest_id(), *[int(i) for i in cluster_ids]]) + 1
        return self._add(_fit_split(int(object_id), parts, current, sample, range(first_free, first_free + parts - 1)))

    def undo(self) -> Optional[Correction]:
        """Drops the last correction and returns it (None if there was none)."""
        return self.operations.pop() if self.operations else None

    def _add(self, operation: Correction) -> Correction:
        self.operations.append(operation)
        return operation

    def _check_exist(self, ids: Sequence[int], cluster_ids: Iterable[int]) -> None:
        live = self.object_ids(cluster_ids)
        unknown = [i for i in ids if i not in live]
        if unknown:
            raise CorrectionError(f"no object {_listed(unknown)}; the objects are {_listed(live)}")

    # ------------------------------------------------------------ after a re-clustering or on opening a run

    def rebase(self, cluster_ids: Iterable[int], sample: Optional[ClusterSample] = None) -> List[str]:
        """Keeps the corrections that still make sense for the clustering's ``cluster_ids`` (see the module's
        docstring); with a ``sample``, splits are fitted again on it. Returns what was left out, one line each."""
        live = set(int(i) for i in cluster_ids)
        current = None if sample is None else sample.ids
        kept: List[Correction] = []
        dropped = []
        for operation in self.operations:
            operation, reason = _rebased(operation, live, current, sample)
            if operation is None:
                dropped.append(reason)
                continue
            _update(live, operation)
            kept.append(operation)
            if current is not None:
                current = operation.apply(current, sample.embeddings, sample.positions)
        self.operations = kept
        return dropped

    # ------------------------------------------------------------ the file

    def save(self, path: Path) -> None:
        """Writes the corrections to ``path`` atomically."""
        atomic_write_json(path, {"version": _VERSION, "corrections": [o.row() for o in self.operations]})

    @classmethod
    def load(cls, path: Path) -> "Corrections":
        """The corrections in ``path`` (none if it does not exist); raises CorrectionError, naming the file, if it
        cannot be read."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorrectionError(f"{path}: not a readable corrections file ({err})") from None
        rows = data.get("corrections") if isinstance(data, dict) and data.get("version") == _VERSION else None
        if not isinstance(rows, list):
            raise CorrectionError(f'{path}: not a corrections file (expected {{"version": 1, "corrections": [...]}})')
        operations = []
        for number, row in enumerate(rows, 1):
            try:
                operations.append(_parse(row))
            except (KeyError, TypeError, ValueError) as err:
                raise CorrectionError(f"{path}: correction {number} is not valid ({err}): {json.dumps(row)}") from None
        return cls(operations)


def _update(live: set, operation: Correction) -> None:
    """The ids that exist after ``operation``."""
    if isinstance(operation, Merge):
        live.difference_update(operation.ids)
        live.add(operation.into)
    elif isinstance(operation, Delete):
        live.discard(operation.id)
    else:
        live.update(operation.part_ids)


def _rebased(
    operation: Correction, live: set, current: Optional[Tensor], sample: Optional[ClusterSample]
) -> Tuple[Optional[Correction], str]:
    """The correction as it applies to the objects ``live`` (None, and why, if it no longer does)."""
    if isinstance(operation, Merge):
        surviving = tuple(i for i in operation.ids if i in live)
        if len(surviving) < 2:
            gone = [i for i in operation.ids if i not in live]
            return None, f"the merge of {_listed(operation.ids)}: object {_listed(gone)} no longer exists"
        return Merge(surviving), ""
    if isinstance(operation, Delete):
        if operation.id not in live:
            return None, f"the delete of {operation.id}: no such object"
        return operation, ""
    if operation.id not in live:
        return None, f"the split of {operation.id}: no such object"
    taken = [i for i in operation.part_ids[1:] if i in live]
    if taken:
        return None, f"the split of {operation.id}: its parts' ids {_listed(taken)} belong to other objects"
    if sample is None:
        return operation, ""
    try:
        return _refitted(operation, current, sample), ""
    except CorrectionError as err:
        return None, f"the split of {operation.id}: {err}"


def _fit_split(object_id: int, parts: int, ids: Tensor, sample: ClusterSample, new_ids: Sequence[int]) -> Split:
    """The object's sampled pixels split into ``parts`` parts; the largest keeps the id, the others take
    ``new_ids`` by size."""
    fitted = _fit_parts(object_id, parts, ids, sample)
    return _rated(_reordered(fitted, range(parts), (object_id, *new_ids)), ids, sample)


def _fit_parts(object_id: int, parts: int, ids: Tensor, sample: ClusterSample) -> Split:
    """k-means of the object's sampled pixels (module docstring), the parts listed from the largest."""
    member = (ids == object_id).cpu()
    count = int(member.sum())
    if count < parts * _MIN_PART_PIXELS:
        raise CorrectionError(
            f"object {object_id} has {count} sampled pixels; {parts} parts need at least {parts * _MIN_PART_PIXELS}"
        )
    embeddings = sample.embeddings.detach().cpu().double()[member].numpy()
    width = embeddings.shape[1]
    embedding_scale = _spread(embeddings)
    features, position_scale, fitted_on = embeddings / embedding_scale, 1.0, np.ones(count, dtype=bool)
    positions = None if sample.positions is None else sample.positions.detach().cpu().double()[member].numpy()
    if positions is not None:
        located = np.isfinite(positions).all(-1)
        if located.mean() >= _MIN_LOCATED and _spread(positions[located]) > 0:
            position_scale, fitted_on = _spread(positions[located]), located
            features = np.concatenate([features, np.nan_to_num(positions) / position_scale], -1)
    centres = KMeans(n_clusters=parts, n_init=4, random_state=0).fit(features[fitted_on]).cluster_centers_
    split = Split(
        object_id,
        tuple(range(parts)),
        _rows(centres[:, :width] * embedding_scale),
        embedding_scale,
        _rows(centres[:, width:] * position_scale) if centres.shape[1] > width else None,
        position_scale,
    )
    part = split.apply(torch.full((count,), object_id), torch.from_numpy(embeddings), _tensor(positions))
    sizes = torch.bincount(part, minlength=parts).numpy()
    if (sizes > 0).sum() < 2:
        raise CorrectionError(f"object {object_id}'s sampled pixels form one group; nothing to split")
    return _reordered(split, np.argsort(-sizes, kind="stable"), split.part_ids)


def _reordered(split: Split, order: Iterable[int], part_ids: Sequence[int]) -> Split:
    """``split`` with its parts listed in ``order`` and given ``part_ids`` (in that order)."""
    order = list(order)
    return replace(
        split,
        part_ids=tuple(int(i) for i in part_ids),
        embedding_centres=tuple(split.embedding_centres[k] for k in order),
        position_centres=None if split.position_centres is None else tuple(split.position_centres[k] for k in order),
    )


def _rated(split: Split, ids: Tensor, sample: ClusterSample) -> Split:
    """``split`` with its parts' sizes and confidences on the sample (``confidence.py``)."""
    corrected = split.apply(ids, sample.embeddings, sample.positions)
    numpy = [None if t is None else t.detach().cpu().numpy() for t in (sample.segments, sample.views)]
    rated = object_confidence(
        corrected.cpu().numpy(), sample.embeddings.detach().cpu().double().numpy(), sample.classes.cpu().numpy(), *numpy
    )
    rows = [rated.get(i, (0, 0.0)) for i in split.part_ids]
    return replace(split, sizes=tuple(r[0] for r in rows), confidence=tuple(r[1] for r in rows))


def _refitted(old: Split, ids: Tensor, sample: ClusterSample) -> Split:
    """``old`` fitted again on a new clustering's pixels; each new part takes the id of the old part it matches
    (Hungarian on the parts' centres), so the parts keep their ids and colours."""
    fitted = _fit_parts(old.id, len(old.part_ids), ids, sample)
    cost = torch.cdist(_tensor(fitted.embedding_centres), _tensor(old.embedding_centres)) / fitted.embedding_scale
    if fitted.position_centres is not None and old.position_centres is not None:
        apart = torch.cdist(_tensor(fitted.position_centres), _tensor(old.position_centres))
        cost = cost + apart / fitted.position_scale
    rows, cols = linear_sum_assignment(cost.numpy())
    return _rated(_reordered(fitted, rows[np.argsort(cols)], old.part_ids), ids, sample)


def _tensor(values) -> Optional[Tensor]:
    return None if values is None else torch.as_tensor(np.asarray(values, dtype=np.float64))


def _spread(points: np.ndarray) -> float:
    """Root mean squared distance from the mean (1 for a single point or none)."""
    if len(points) < 2:
        return 1.0
    spread = float(np.sqrt(((points - points.mean(0)) ** 2).sum(-1).mean()))
    return spread if spread > 0 else 1.0


def _rows(values: np.ndarray) -> Tuple[Tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in values)


def _parse(row: Dict) -> Correction:
    op = row["op"]
    if op == "merge":
        return Merge(tuple(sorted(_id(i) for i in row["ids"])))
    if op == "delete":
        return Delete(_id(row["id"]))
    if op == "split":
        parts = len(row["part_ids"])
        centres = _matrix(row["embedding_centres"], parts)
        positions = None if row.get("position_centres") is None else _matrix(row["position_centres"], parts, 3)
        return Split(
            _id(row["id"]),
            tuple(_id(i) for i in row["part_ids"]),
            centres,
            _positive(row["embedding_scale"]),
            positions,
            _positive(row.get("position_scale", 1.0)),
            tuple(int(s) for s in row.get("sizes", [0] * parts)),
            tuple(float(c) for c in row.get("confidence", [float("nan")] * parts)),
        )
    raise ValueError(f"unknown op {op!r}; expected merge, split or delete")


def _id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"object ids are integers from 1; got {value!r}")
    return value


def _positive(value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"scales must be positive; got {value}")
    return value


def _matrix(rows, count: int, width: Optional[int] = None) -> Tuple[Tuple[float, ...], ...]:
    matrix = tuple(tuple(float(v) for v in r) for r in rows)
    widths = {len(r) for r in matrix}
    if len(matrix) != count or len(widths) != 1 or (width is not None and widths != {width}):
        raise ValueError(f"expected {count} centres of one width{'' if width is None else f' ({width})'}")
    return matrix


def _listed(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"
