"""Label sets: how a label file's values map to a dataset's classes, and across datasets.

A *label set* is the format of a label map as stored on disk (which value means which class).
It decodes to the train ids of one class set in :data:`ifa.data.classes.DATASETS`:

=====================  ==================  ==================================================
label set              classes             stored values
=====================  ==================  ==================================================
camvid                 camvid (11)         0..10; 11 Unlabelled ignored
cityscapes_labelids    cityscapes (19)     the 34 labelIds of cityscapesScripts (0..33)
cityscapes_trainids    cityscapes (19)     0..18; 255 ignored
ade20k                 ade20k (150)        1..150; 0 "other" ignored
pascal_context         pascal_context (59) 1..59; 0 background ignored
pascal_context_60      pascal_context_60   0..59 (background is class 0)
=====================  ==================  ==================================================

Across class sets, :func:`label_lut` uses a written mapping where one exists: Cityscapes ->
CamVid (:data:`CITYSCAPES_TO_CAMVID`, from labelIds, so ids that have no trainId such as bridge or
guard rail can still map). Other pairs (ADE20K or PASCAL Context labels for a CamVid model) have no
mapping: :func:`label_lut` returns None and the caller does not use the ground truth.

All values are uint8 after decoding, 255 = ignored (not trained on, not scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import DATASETS, get_dataset_info

IGNORE = 255

# cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes; all others ignored.
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# Cityscapes labelId -> CamVid class (the SegNet 11-class release), with the reasoning. CamVid's 11
# classes group its 32 original classes (Brostow et al. 2008) as SegNet did: Building holds archway,
# bridge, tunnel and wall; Tree holds misc. vegetation; Car holds SUV/pickup, truck/bus, train and
# other moving; Pedestrian holds child and pram; Bicyclist holds motorcycle/scooter; SignSymbol holds
# traffic lights and text; Pole holds traffic cones. None = no CamVid counterpart: ignored.
CITYSCAPES_TO_CAMVID: tuple[tuple[int, str, str | None, str], ...] = (
    (0, "unlabeled", None, "not a class"),
    (1, "ego vehicle", None, "the recording car's bonnet: CamVid labels it Unlabelled"),
    (2, "rectification border", None, "not image content"),
    (3, "out of roi", None, "not image content"),
    (4, "static", None, "a catch-all of unlisted objects: no single CamVid class"),
    (5, "dynamic", None, "a catch-all of unlisted movable objects: no single CamVid class"),
    (6, "ground", None, "ground that is neither road nor sidewalk: no CamVid class"),
    (7, "road", "Road", ""),
    (8, "sidewalk", "Sidewalk", ""),
    (9, "parking", None, "drivable parking areas: CamVid splits them between Road and Sidewalk (ParkingBlock)"),
    (10, "rail track", None, "no CamVid class"),
    (11, "building", "Building", ""),
    (12, "wall", "Building", "CamVid's 11-class grouping merges Wall into Building"),
    (13, "fence", "Fence", ""),
    (14, "guard rail", "Fence", "a roadside barrier: CamVid's Fence is the only barrier class"),
    (15, "bridge", "Building", "CamVid merges Bridge into Building"),
    (16, "tunnel", "Building", "CamVid merges Tunnel into Building"),
    (17, "pole", "Pole", ""),
    (18, "polegroup", "Pole", "several poles labelled as one region: still poles"),
    (19, "traffic light", "SignSymbol", "CamVid merges TrafficLight into SignSymbol"),
    (20, "traffic sign", "SignSymbol", "CamVid's SignSymbol is its class of signs"),
    (21, "vegetation", "Tree", "CamVid's Tree holds trees and misc. vegetation (bushes, hedges)"),
    (22, "terrain", None, "grass and soil: CamVid has no terrain class (its labels split it between Tree "
                          "and Sidewalk/Road by context), so no single counterpart"),
    (23, "sky", "Sky", ""),
    (24, "person", "Pedestrian", "a person not riding: CamVid's Pedestrian"),
    (25, "rider", "Bicyclist", "CamVid's Bicyclist labels the rider of a bicycle or motorcycle"),
    (26, "car", "Car", ""),
    (27, "truck", "Car", "CamVid merges SUV/pickup and truck into Car"),
    (28, "bus", "Car", "CamVid merges Truck_Bus into Car"),
    (29, "caravan", "Car", "a towed or motor home vehicle: CamVid's Car holds other moving vehicles"),
    (30, "trailer", "Car", "as caravan"),
    (31, "train", "Car", "CamVid merges Train into Car"),
    (32, "motorcycle", "Bicyclist", "CamVid merges MotorcycleScooter into Bicyclist"),
    (33, "bicycle", "Bicyclist", "CamVid's Bicyclist labels bicycle and rider together"),
)


@dataclass(frozen=True)
class LabelSet:
    """One stored label format. `lut[v]` is the train id of stored value v in `classes` (255 = ignored);
    `max_value` is the largest value a file of this format holds (255, "ignore", is legal in every format)."""

    name: str
    title: str
    classes: str
    lut: np.ndarray
    max_value: int

    def admits(self, values: np.ndarray) -> bool:
        """Whether every stored value (1-D integers) is legal in this format: 0..max_value or 255."""
        values = np.asarray(values)
        return bool(((values >= 0) & ((values <= self.max_value) | (values == IGNORE))).all())

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored values (any integer dtype, (H, W)) -> uint8 train ids of `classes`; out of range -> 255."""
        return apply_lut(self.lut, raw)


def apply_lut(lut: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """`lut` (256,) uint8 applied to stored values `raw` (H, W) of any integer dtype; values outside 0..255 -> 255."""
    raw = np.asarray(raw)
    out = lut[np.clip(raw, 0, 255).astype(np.intp)]
    out[(raw < 0) | (raw > 255)] = IGNORE
    return out


def _lut(pairs) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for value, train_id in pairs:
        lut[value] = train_id
    return lut


def _shifted(num_classes: int) -> np.ndarray:  # 0 ignored, 1..K -> 0..K-1
    return _lut((v, v - 1) for v in range(1, num_classes + 1))


def _identity(num_classes: int) -> np.ndarray:
    return _lut((v, v) for v in range(num_classes))


LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (
    LabelSet("camvid", "CamVid 11 (0-10, 11 = unlabelled)", "camvid", _identity(11), 11),
    LabelSet("cityscapes_labelids", "Cityscapes labelIds (0-33)", "cityscapes",
             _lut(CITYSCAPES_LABELID_TO_TRAINID.items()), 33),
    LabelSet("cityscapes_trainids", "Cityscapes trainIds (0-18, 255 = ignore)", "cityscapes", _identity(19), 18),
    LabelSet("ade20k", "ADE20K 150 (1-150, 0 = other)", "ade20k", _shifted(150), 150),
    LabelSet("pascal_context", "PASCAL Context 59 (1-59, 0 = background)", "pascal_context", _shifted(59), 59),
    LabelSet("pascal_context_60", "PASCAL Context 60 (0-59)", "pascal_context_60", _identity(60), 59),
)}

# The label set a class set's own files use by default.
DEFAULT_LABEL_SET = {"camvid": "camvid", "cityscapes": "cityscapes_labelids", "ade20k": "ade20k",
                     "pascal_context": "pascal_context", "pascal_context_60": "pascal_context_60"}


def get_label_set(name: str) -> LabelSet:
    """The :class:`LabelSet` called `name`; ValueError naming the valid ones otherwise."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; valid: {', '.join(LABEL_SETS)}") from None


def _cityscapes_labelid_to_camvid() -> np.ndarray:
    names = get_dataset_info("camvid").class_names
    return _lut((label_id, names.index(target)) for label_id, _, target, _ in CITYSCAPES_TO_CAMVID if target)


def label_lut(label_set: str, classes: str) -> np.ndarray | None:
    """A 256-entry uint8 table: stored value of `label_set` -> train id of class set `classes` (255 = ignored).

    Same class set: the label set's own decoding. Cityscapes labels for CamVid classes: through
    :data:`CITYSCAPES_TO_CAMVID`. None when no mapping exists.
    """
    source = get_label_set(label_set)
    get_dataset_info(classes)  # validates the name
    if source.classes == classes:
        return source.lut
    if source.classes == "cityscapes" and classes == "camvid":
        to_camvid = _cityscapes_labelid_to_camvid()
        if label_set == "cityscapes_labelids":
            return to_camvid
        train_to_id = {t: i for i, t in CITYSCAPES_LABELID_TO_TRAINID.items()}
        return _lut((t, to_camvid[train_to_id[t]]) for t in range(19))
    return None


def scoring_lut(label_set: str, classes: str, num_classes: int) -> tuple[np.ndarray | None, str | None]:
    """How labels stored as `label_set` are scored against a model of class set `classes` with `num_classes`
    outputs: (lookup table stored value -> class index, 255 ignored; or None: the values are the class indices
    below num_classes, as for an empty `label_set`), plus a notice when the labels are mapped to other classes.

    A model whose class set has no name (a custom pair) takes the label set's own classes when their count
    matches. Raises ValueError, with the reason, when the labels cannot be scored.
    """
    if not label_set:
        return None, None
    source = get_label_set(label_set)
    named = classes in DATASETS
    target = classes if named else source.classes
    if not named and get_dataset_info(target).num_classes != num_classes:
        raise ValueError(f"labels in {source.title} have {get_dataset_info(target).num_classes} classes, the "
                         f"pair predicts {num_classes}")
    lut = label_lut(label_set, target)
    if lut is None:
        raise ValueError(f"labels in {source.title} cannot be scored against the pair's {target} classes: no "
                         f"mapping between them is written (ifa.data.label_sets maps Cityscapes to CamVid)")
    notice = None if source.classes == target else (
        f"label read as {source.title} and mapped to the pair's {target} classes "
        f"(ifa.data.label_sets; ids without a counterpart are ignored)")
    return lut, notice


def fitting_label_sets(values: np.ndarray, classes: str) -> list[str]:
    """The label sets that admit every stored value in `values` (1-D) and can be scored against the class set
    `classes` (a written mapping exists; for a class set without a name: every label set), in table order."""
    named = classes in DATASETS
    return [name for name, s in LABEL_SETS.items()
            if s.admits(values) and (not named or label_lut(name, classes) is not None)]


def convert_label(raw: np.ndarray, label_set: str, classes: str) -> np.ndarray | None:
    """Stored label map -> uint8 train ids of `classes` (255 = ignored); None when no mapping exists."""
    lut = label_lut(label_set, classes)
    return None if lut is None else apply_lut(lut, raw)
