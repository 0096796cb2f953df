"""The controls under the viewer's "Custom Elements": re-cluster, cluster size, picking objects, and the hand
corrections (merge, split, delete, undo) with the list of objects.

The controls know nothing of the pipeline or the model: they get the few callables they need
(``ControlActions``), so the dependency runs one way, from the pipeline to its controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerClick,
    ViewerControl,
    ViewerDropdown,
    ViewerNumber,
    ViewerSlider,
    ViewerText,
)
from rich.markup import escape
from torch import nn

_ALL = "all objects"


@dataclass
class ControlActions:
    """What the controls can do."""

    clustering: bool
    """Whether the model has a clustering (linear-assignment-lift has none: no clustering controls)."""
    min_cluster_size: int
    """The slider's first value (0: automatic)."""
    fitted: Callable[[], bool]
    """Whether a clustering has run."""
    recluster: Callable[[Optional[int]], object]
    """Re-clusters, with a min_cluster_size (None: the configured or automatic one)."""
    pick: Callable[[Sequence[float], Sequence[float]], int]
    """The object id along a ray (origin, direction); 0 if none."""
    isolate: Callable[[int], None]
    """Highlights one object in the 'instance' output (0: none)."""
    merge: Callable[[Sequence[int]], str]
    """Merges objects; returns what was done. Corrections raise ValueError for what cannot be done."""
    split: Callable[[int, int], str]
    """Splits an object into a number of parts."""
    delete: Callable[[int], str]
    """Makes an object no object."""
    undo: Callable[[], str]
    """Undoes the last correction."""
    objects: Callable[[], List[Tuple[int, int, float]]]
    """The objects: (id, size in sampled pixels, confidence)."""


class ClusteringControls(nn.Module):
    """Viewer elements for a pipeline's clustering. An ``nn.Module`` only so that the viewer finds the elements
    (it lists them by attribute name, hence the letter prefixes that order them)."""

    def __init__(self, actions: ControlActions) -> None:
        super().__init__()
        self._actions = actions
        clusters = actions.clustering
        self.a_recluster = ViewerButton("Recluster now", cb_hook=lambda _: self._recluster(), visible=clusters)
        self.b_min_cluster_size = ViewerSlider(
            "Min cluster size (0: auto)",
            actions.min_cluster_size,
            0,
            2000,
            step=5,
            visible=clusters,
            cb_hook=lambda _: self._recluster() if actions.fitted() else None,
            hint="HDBSCAN's smallest object, in sampled pixels; changing it re-clusters",
        )
        self.c_isolated_object = ViewerNumber(
            "Show object (0: all)",
            0,
            cb_hook=lambda element: actions.isolate(int(element.value)),
            hint="Dims every other object in the 'instance' output",
        )
        self.d_pick_object = ViewerButton("Pick object by clicking", cb_hook=lambda _: self._arm_picker())
        self.e_selection = ViewerText(
            "Selected objects",
            "",
            visible=clusters,
            hint="Ids for merge, split and delete, comma-separated; each picked object is added",
        )
        self.f_merge = ViewerButton("Merge selected", cb_hook=lambda _: self._correct("merge"), visible=clusters)
        self.g_parts = ViewerNumber("Split into parts", 2, visible=clusters, hint="How many parts a split makes")
        self.h_split = ViewerButton("Split selected", cb_hook=lambda _: self._correct("split"), visible=clusters)
        self.i_delete = ViewerButton("Delete selected", cb_hook=lambda _: self._correct("delete"), visible=clusters)
        self.j_undo = ViewerButton("Undo last correction", cb_hook=lambda _: self._correct("undo"), visible=clusters)
        self.k_objects = ViewerDropdown(
            "Objects (id · pixels · confidence)",
            _ALL,
            [_ALL],
            visible=clusters,
            cb_hook=lambda element: self._show(element.value),
            hint="Each object's size in sampled pixels and its confidence; choosing one highlights it",
        )
        self.picker = ViewerControl()

    def _recluster(self) -> None:
        self._actions.recluster(int(self.b_min_cluster_size.value) or None)  # 0: configured or automatic

    def _arm_picker(self) -> None:
        """The next click in the scene highlights the object under the cursor and adds it to the selection."""

        def on_click(click: ViewerClick) -> None:
            self.picker.unregister_pointer_cb()
            picked = self._actions.pick(click.origin, click.direction)
            self.c_isolated_object.value = picked
            if picked and picked not in self.selected():
                self.e_selection.value = ", ".join(str(i) for i in [*self.selected(), picked])

        self.picker.register_pointer_cb("click", on_click)

    def selected(self) -> List[int]:
        """The ids in the selection field (unreadable parts are ignored)."""
        return [int(part) for part in str(self.e_selection.value).replace(",", " ").split() if part.isdigit()]

    def _correct(self, kind: str) -> None:
        """Makes one correction of the selection; what cannot be done is said in the console."""
        selected = self.selected()
        try:
            if kind == "undo":
                self._actions.undo()
            elif kind == "merge":
                self._actions.merge(selected)
            elif len(selected) != 1:
                raise ValueError(f"{kind} needs exactly one selected object; selected: {selected or 'none'}")
            elif kind == "split":
                self._actions.split(selected[0], int(self.g_parts.value))
            else:
                self._actions.delete(selected[0])
        except ValueError as err:
            CONSOLE.print(f"[bold yellow]{kind}: {escape(str(err))}")
            return
        self.e_selection.value = ""
        self.refresh_objects()

    def refresh_objects(self) -> None:
        """Lists the current objects in the dropdown (the pipeline calls it after every clustering)."""
        rows = [f"{i} · {size} · {confidence:.2f}" for i, size, confidence in self._actions.objects()]
        self.k_objects.set_options([_ALL, *rows])

    def _show(self, row: str) -> None:
        object_id = 0 if row == _ALL else int(row.split(" ")[0])
        self._actions.isolate(object_id)
        self.c_isolated_object.value = object_id
