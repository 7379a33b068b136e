"""Class names and RGB colour palettes of every dataset the project knows, written out as data.

Each table below is a tuple of ``(name, (r, g, b))`` rows in train-id order: row ``i`` is the
class a model predicts as index ``i``. :data:`DATASETS` turns the tables into
:class:`DatasetInfo` records.

Label conventions (what a label map holds once a dataset loader has read it):

- ``ignore_index`` is 255 for every dataset: pixels that must not be trained on or scored.
- ``raw_ignore_index`` is the value that marks those pixels in the files on disk, which the
  loaders map to ``ignore_index``:

  - Cityscapes ``*_labelTrainIds.png``: 255 already.
  - ADE20K (ADEChallengeData2016): 0 is "other"; labels are shifted down by one (1..150 -> 0..149)
    and 0 becomes 255.
  - PASCAL Context, 59 classes: 0 is background; shifted like ADE20K (1..59 -> 0..58, 0 -> 255).
  - PASCAL Context, 60 classes: background is class 0 and nothing is ignored in the files, so
    ``raw_ignore_index`` is simply 255 as well.
  - CamVid (SegNet release): 11 is Unlabelled and becomes 255; 0..10 are kept.

Sources: Cityscapes colours from cityscapesScripts ``labels.py``; ADE20K and PASCAL Context names
and palettes as in mmsegmentation's ``ADE20KDataset``, ``PascalContextDataset`` and
``PascalContextDataset59`` (the two ADE20K/PASCAL Context palettes repeat (140, 140, 140) once,
exactly as upstream); CamVid colours from the SegNet tutorial release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Color = tuple[int, int, int]

_CITYSCAPES: tuple[tuple[str, Color], ...] = (
    ("road", (128, 64, 128)),  # 0
    ("sidewalk", (244, 35, 232)),  # 1
    ("building", (70, 70, 70)),  # 2
    ("wall", (102, 102, 156)),  # 3
    ("fence", (190, 153, 153)),  # 4
    ("pole", (153, 153, 153)),  # 5
    ("traffic light", (250, 170, 30)),  # 6
    ("traffic sign", (220, 220, 0)),  # 7
    ("vegetation", (107, 142, 35)),  # 8
    ("terrain", (152, 251, 152)),  # 9
    ("sky", (70, 130, 180)),  # 10
    ("person", (220, 20, 60)),  # 11
    ("rider", (255, 0, 0)),  # 12
    ("car", (0, 0, 142)),  # 13
    ("truck", (0, 0, 70)),  # 14
    ("bus", (0, 60, 100)),  # 15
    ("train", (0, 80, 100)),  # 16
    ("motorcycle", (0, 0, 230)),  # 17
    ("bicycle", (119, 11, 32)),  # 18
)

# ADEChallengeData2016 (SceneParsing) order; file label i + 1 is train id i.
_ADE20K: tuple[tuple[str, Color], ...] = (
    ("wall", (120, 120, 120)),  # 0
    ("building", (180, 120, 120)),  # 1
    ("sky", (6, 230, 230)),  # 2
    ("floor", (80, 50, 50)),  # 3
    ("tree", (4, 200, 3)),  # 4
    ("ceiling", (120, 120, 80)),  # 5
    ("road", (140, 140, 140)),  # 6
    ("bed", (204, 5, 255)),  # 7
    ("windowpane", (230, 230, 230)),  # 8
    ("grass", (4, 250, 7)),  # 9
    ("cabinet", (224, 5, 255)),  # 10
    ("sidewalk", (235, 255, 7)),  # 11
    ("person", (150, 5, 61)),  # 12
    ("earth", (120, 120, 70)),  # 13
    ("door", (8, 255, 51)),  # 14
    ("table", (255, 6, 82)),  # 15
    ("mountain", (143, 255, 140)),  # 16
    ("plant", (204, 255, 4)),  # 17
    ("curtain", (255, 51, 7)),  # 18
    ("chair", (204, 70, 3)),  # 19
    ("car", (0, 102, 200)),  # 20
    ("water", (61, 230, 250)),  # 21
    ("painting", (255, 6, 51)),  # 22
    ("sofa", (11, 102, 255)),  # 23
    ("shelf", (255, 7, 71)),  # 24
    ("house", (255, 9, 224)),  # 25
    ("sea", (9, 7, 230)),  # 26
    ("mirror", (220, 220, 220)),  # 27
    ("rug", (255, 9, 92)),  # 28
    ("field", (112, 9, 255)),  # 29
    ("armchair", (8, 255, 214)),  # 30
    ("seat", (7, 255, 224)),  # 31
    ("fence", (255, 184, 6)),  # 32
    ("desk", (10, 255, 71)),  # 33
    ("rock", (255, 41, 10)),  # 34
    ("wardrobe", (7, 255, 255)),  # 35
    ("lamp", (224, 255, 8)),  # 36
    ("bathtub", (102, 8, 255)),  # 37
    ("railing", (255, 61, 6)),  # 38
    ("cushion", (255, 194, 7)),  # 39
    ("base", (255, 122, 8)),  # 40
    ("box", (0, 255, 20)),  # 41
    ("column", (255, 8, 41)),  # 42
    ("signboard", (255, 5, 153)),  # 43
    ("chest of drawers", (6, 51, 255)),  # 44
    ("counter", (235, 12, 255)),  # 45
    ("sand", (160, 150, 20)),  # 46
    ("sink", (0, 163, 255)),  # 47
    ("skyscraper", (140, 140, 140)),  # 48
    ("fireplace", (250, 10, 15)),  # 49
    ("refrigerator", (20, 255, 0)),  # 50
    ("grandstand", (31, 255, 0)),  # 51
    ("path", (255, 31, 0)),  # 52
    ("stairs", (255, 224, 0)),  # 53
    ("runway", (153, 255, 0)),  # 54
    ("case", (0, 0, 255)),  # 55
    ("pool table", (255, 71, 0)),  # 56
    ("pillow", (0, 235, 255)),  # 57
    ("screen door", (0, 173, 255)),  # 58
    ("stairway", (31, 0, 255)),  # 59
    ("river", (11, 200, 200)),  # 60
    ("bridge", (255, 82, 0)),  # 61
    ("bookcase", (0, 255, 245)),  # 62
    ("blind", (0, 61, 255)),  # 63
    ("coffee table", (0, 255, 112)),  # 64
    ("toilet", (0, 255, 133)),  # 65
    ("flower", (255, 0, 0)),  # 66
    ("book", (255, 163, 0)),  # 67
    ("hill", (255, 102, 0)),  # 68
    ("bench", (194, 255, 0)),  # 69
    ("countertop", (0, 143, 255)),  # 70
    ("stove", (51, 255, 0)),  # 71
    ("palm", (0, 82, 255)),  # 72
    ("kitchen island", (0, 255, 41)),  # 73
    ("computer", (0, 255, 173)),  # 74
    ("swivel chair", (10, 0, 255)),  # 75
    ("boat", (173, 255, 0)),  # 76
    ("bar", (0, 255, 153)),  # 77
    ("arcade machine", (255, 92, 0)),  # 78
    ("hovel", (255, 0, 255)),  # 79
    ("bus", (255, 0, 245)),  # 80
    ("towel", (255, 0, 102)),  # 81
    ("light", (255, 173, 0)),  # 82
    ("truck", (255, 0, 20)),  # 83
    ("tower", (255, 184, 184)),  # 84
    ("chandelier", (0, 31, 255)),  # 85
    ("awning", (0, 255, 61)),  # 86
    ("streetlight", (0, 71, 255)),  # 87
    ("booth", (255, 0, 204)),  # 88
    ("television receiver", (0, 255, 194)),  # 89
    ("airplane", (0, 255, 82)),  # 90
    ("dirt track", (0, 10, 255)),  # 91
    ("apparel", (0, 112, 255)),  # 92
    ("pole", (51, 0, 255)),  # 93
    ("land", (0, 194, 255)),  # 94
    ("bannister", (0, 122, 255)),  # 95
    ("escalator", (0, 255, 163)),  # 96
    ("ottoman", (255, 153, 0)),  # 97
    ("bottle", (0, 255, 10)),  # 98
    ("buffet", (255, 112, 0)),  # 99
    ("poster", (143, 255, 0)),  # 100
    ("stage", (82, 0, 255)),  # 101
    ("van", (163, 255, 0)),  # 102
    ("ship", (255, 235, 0)),  # 103
    ("fountain", (8, 184, 170)),  # 104
    ("conveyer belt", (133, 0, 255)),  # 105
    ("canopy", (0, 255, 92)),  # 106
    ("washer", (184, 0, 255)),  # 107
    ("plaything", (255, 0, 31)),  # 108
    ("swimming pool", (0, 184, 255)),  # 109
    ("stool", (0, 214, 255)),  # 110
    ("barrel", (255, 0, 112)),  # 111
    ("basket", (92, 255, 0)),  # 112
    ("waterfall", (0, 224, 255)),  # 113
    ("tent", (112, 224, 255)),  # 114
    ("bag", (70, 184, 160)),  # 115
    ("minibike", (163, 0, 255)),  # 116
    ("cradle", (153, 0, 255)),  # 117
    ("oven", (71, 255, 0)),  # 118
    ("ball", (255, 0, 163)),  # 119
    ("food", (255, 204, 0)),  # 120
    ("step", (255, 0, 143)),  # 121
    ("tank", (0, 255, 235)),  # 122
    ("trade name", (133, 255, 0)),  # 123
    ("microwave", (255, 0, 235)),  # 124
    ("pot", (245, 0, 255)),  # 125
    ("animal", (255, 0, 122)),  # 126
    ("bicycle", (255, 245, 0)),  # 127
    ("lake", (10, 190, 212)),  # 128
    ("dishwasher", (214, 255, 0)),  # 129
    ("screen", (0, 204, 255)),  # 130
    ("blanket", (20, 0, 255)),  # 131
    ("sculpture", (255, 255, 0)),  # 132
    ("hood", (0, 153, 255)),  # 133
    ("sconce", (0, 41, 255)),  # 134
    ("vase", (0, 255, 204)),  # 135
    ("traffic light", (41, 0, 255)),  # 136
    ("tray", (41, 255, 0)),  # 137
    ("ashcan", (173, 0, 255)),  # 138
    ("fan", (0, 245, 255)),  # 139
    ("pier", (71, 0, 255)),  # 140
    ("crt screen", (122, 0, 255)),  # 141
    ("plate", (0, 255, 184)),  # 142
    ("monitor", (0, 92, 255)),  # 143
    ("bulletin board", (184, 255, 0)),  # 144
    ("shower", (0, 133, 255)),  # 145
    ("radiator", (255, 214, 0)),  # 146
    ("glass", (25, 194, 194)),  # 147
    ("clock", (102, 255, 0)),  # 148
    ("flag", (92, 0, 255)),  # 149
)

# The 59-class variant is this table without its first row (background): its train ids are the
# numbers below minus one.
_PASCAL_CONTEXT_60: tuple[tuple[str, Color], ...] = (
    ("background", (120, 120, 120)),  # 0
    ("aeroplane", (180, 120, 120)),  # 1
    ("bag", (6, 230, 230)),  # 2
    ("bed", (80, 50, 50)),  # 3
    ("bedclothes", (4, 200, 3)),  # 4
    ("bench", (120, 120, 80)),  # 5
    ("bicycle", (140, 140, 140)),  # 6
    ("bird", (204, 5, 255)),  # 7
    ("boat", (230, 230, 230)),  # 8
    ("book", (4, 250, 7)),  # 9
    ("bottle", (224, 5, 255)),  # 10
    ("building", (235, 255, 7)),  # 11
    ("bus", (150, 5, 61)),  # 12
    ("cabinet", (120, 120, 70)),  # 13
    ("car", (8, 255, 51)),  # 14
    ("cat", (255, 6, 82)),  # 15
    ("ceiling", (143, 255, 140)),  # 16
    ("chair", (204, 255, 4)),  # 17
    ("cloth", (255, 51, 7)),  # 18
    ("computer", (204, 70, 3)),  # 19
    ("cow", (0, 102, 200)),  # 20
    ("cup", (61, 230, 250)),  # 21
    ("curtain", (255, 6, 51)),  # 22
    ("dog", (11, 102, 255)),  # 23
    ("door", (255, 7, 71)),  # 24
    ("fence", (255, 9, 224)),  # 25
    ("floor", (9, 7, 230)),  # 26
    ("flower", (220, 220, 220)),  # 27
    ("food", (255, 9, 92)),  # 28
    ("grass", (112, 9, 255)),  # 29
    ("ground", (8, 255, 214)),  # 30
    ("horse", (7, 255, 224)),  # 31
    ("keyboard", (255, 184, 6)),  # 32
    ("light", (10, 255, 71)),  # 33
    ("motorbike", (255, 41, 10)),  # 34
    ("mountain", (7, 255, 255)),  # 35
    ("mouse", (224, 255, 8)),  # 36
    ("person", (102, 8, 255)),  # 37
    ("plate", (255, 61, 6)),  # 38
    ("platform", (255, 194, 7)),  # 39
    ("pottedplant", (255, 122, 8)),  # 40
    ("road", (0, 255, 20)),  # 41
    ("rock", (255, 8, 41)),  # 42
    ("sheep", (255, 5, 153)),  # 43
    ("shelves", (6, 51, 255)),  # 44
    ("sidewalk", (235, 12, 255)),  # 45
    ("sign", (160, 150, 20)),  # 46
    ("sky", (0, 163, 255)),  # 47
    ("snow", (140, 140, 140)),  # 48
    ("sofa", (250, 10, 15)),  # 49
    ("table", (20, 255, 0)),  # 50
    ("track", (31, 255, 0)),  # 51
    ("train", (255, 31, 0)),  # 52
    ("tree", (255, 224, 0)),  # 53
    ("truck", (153, 255, 0)),  # 54
    ("tvmonitor", (0, 0, 255)),  # 55
    ("wall", (255, 71, 0)),  # 56
    ("water", (0, 235, 255)),  # 57
    ("window", (0, 173, 255)),  # 58
    ("wood", (31, 0, 255)),  # 59
)


_CAMVID: tuple[tuple[str, Color], ...] = (
    ("Sky", (128, 128, 128)),  # 0
    ("Building", (128, 0, 0)),  # 1
    ("Pole", (192, 192, 128)),  # 2
    ("Road", (128, 64, 128)),  # 3
    ("Sidewalk", (60, 40, 222)),  # 4  (called Pavement in the SegNet tutorial)
    ("Tree", (128, 128, 0)),  # 5
    ("SignSymbol", (192, 128, 128)),  # 6
    ("Fence", (64, 64, 128)),  # 7
    ("Car", (64, 0, 128)),  # 8
    ("Pedestrian", (64, 64, 0)),  # 9
    ("Bicyclist", (0, 128, 192)),  # 10
    # 11 Unlabelled: ignored (raw_ignore_index), not a class.
)


@dataclass(frozen=True)
class DatasetInfo:
    """Names, colours and ignore values of one dataset's label set.

    Attributes:
        name: key of the dataset in :data:`DATASETS`.
        class_names: K class names; index i is train id i.
        palette: K (r, g, b) colours in 0..255, aligned with ``class_names``.
        ignore_index: label value of ignored pixels after loading (always 255 here).
        raw_ignore_index: label value of ignored pixels in the files on disk, before the
            loader's remapping (see the module docstring).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[Color, ...]
    ignore_index: int = 255
    raw_ignore_index: int = 255

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes K (ignored pixels are not a class)."""
        return len(self.class_names)


def _info(name: str, table: tuple[tuple[str, Color], ...], raw_ignore_index: int) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        class_names=tuple(row[0] for row in table),
        palette=tuple(row[1] for row in table),
        ignore_index=255,
        raw_ignore_index=raw_ignore_index,
    )


DATASETS: dict[str, DatasetInfo] = {
    "cityscapes": _info("cityscapes", _CITYSCAPES, raw_ignore_index=255),
    "ade20k": _info("ade20k", _ADE20K, raw_ignore_index=0),
    "pascal_context": _info("pascal_context", _PASCAL_CONTEXT_60[1:], raw_ignore_index=0),
    "pascal_context_60": _info("pascal_context_60", _PASCAL_CONTEXT_60, raw_ignore_index=255),
    "camvid": _info("camvid", _CAMVID, raw_ignore_index=11),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of ``name``; ValueError naming the valid names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None


def palette_array(palette: tuple[Color, ...] | list[Color]) -> np.ndarray:
    """Return ``palette`` as a (K, 3) uint8 array; ValueError if a colour is not 3 values in 0..255."""
    arr = np.asarray(palette, dtype=np.int64)
    if arr.size == 0:
        arr = arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3 or ((arr < 0) | (arr > 255)).any():
        raise ValueError("a palette is a sequence of (r, g, b) colours with values in 0..255")
    return arr.astype(np.uint8)
