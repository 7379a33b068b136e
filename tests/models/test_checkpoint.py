"""Checkpoint folders (config.json + model.safetensors + README.md): round trip, strict loading, clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ifa.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, atomic_write
from ifa.models import CheckpointError, create_model, load_checkpoint_folder, save_pretrained

TINY = {
    "ifa": dict(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                mlp_channels=[16, 8]),
    "fpn": dict(architecture="fpn", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                head_channels=8),
}
FILES = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}


def tiny_model(architecture: str = "ifa", seed: int = 0):
    """A tiny model whose BN statistics are not the defaults, so buffers are really checked."""
    torch.manual_seed(seed)
    model = create_model(**TINY[architecture])
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, folder) of a saved tiny IFA model; tests work on copies of the folder."""
    model = tiny_model("ifa")
    folder = save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, folder


@pytest.fixture
def folder(saved, tmp_path):
    return Path(shutil.copytree(saved[1], tmp_path / "ckpt"))


def edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(data))


# --- round trip --------------------------------------------------------------------------------


# The save / load round trip of every backbone x decoder: the shared contract (test_model_contract.py).


def test_config_json_holds_everything_needed(saved):
    model, folder = saved
    data = json.loads((folder / CONFIG_NAME).read_text())
    assert data == model.config.to_dict()
    assert data["architecture"] == "ifa" and data["num_classes"] == 3 and len(data["class_names"]) == 3


def test_model_card(saved, tmp_path):
    model, folder = saved
    card = (folder / CARD_NAME).read_text()
    assert card.startswith("---\n") and "FPN + IFA" in card and "efficientnet_lite0" in card
    assert "pipeline_tag: image-segmentation" in card
    custom = save_pretrained(model, tmp_path / "c", card="# my card\n")
    assert (custom / CARD_NAME).read_text() == "# my card\n"


def test_fp16_weights_load_as_fp32_with_close_logits(saved, tmp_path, image):
    model, _ = saved
    half = save_pretrained(model, tmp_path / "half", dtype=torch.float16)
    stored = load_file(half / WEIGHTS_NAME)
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert (half / WEIGHTS_NAME).stat().st_size < 0.6 * (saved[1] / WEIGHTS_NAME).stat().st_size

    loaded = load_checkpoint_folder(half)
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values() if t.is_floating_point())
    with torch.no_grad():
        expected, got = model(image), loaded(image)
    # fp16 keeps ~3 significant digits per weight; the logits of this tiny model stay within 1e-2 (abs) / 1e-2 (rel).
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    assert not torch.equal(got, expected)  # really a lossy copy


# --- atomic writes -----------------------------------------------------------------------------


def test_saving_over_a_checkpoint_leaves_no_temporary_files(saved, folder):
    save_pretrained(saved[0], folder)
    save_pretrained(saved[0], folder, dtype=torch.float16)
    assert set(os.listdir(folder)) == FILES


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda p: Path(p).write_text("old"))

    def broken(p):
        Path(p).write_text("half writt")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["file.txt"]


# --- strict loading ----------------------------------------------------------------------------


def test_extra_key_is_an_error_naming_it(folder):
    state = load_file(folder / WEIGHTS_NAME)
    state["decoder.head.extra_weight"] = torch.zeros(2)
    save_file(state, folder / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['decoder.head.extra_weight'\]"):
        load_checkpoint_folder(folder)


def test_missing_key_is_an_error_naming_it(folder):
    state = load_file(folder / WEIGHTS_NAME)
    dropped = sorted(k for k in state if k.startswith("decoder."))[0]
    del state[dropped]
    save_file(state, folder / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=rf"missing keys \['{dropped}'\]"):
        load_checkpoint_folder(folder)


def test_num_classes_argument_must_match(folder):
    assert load_checkpoint_folder(folder, num_classes=3).config.num_classes == 3
    with pytest.raises(CheckpointError, match="predicts 3 classes, expected 5"):
        load_checkpoint_folder(folder, num_classes=5)


def test_config_whose_classifier_disagrees_with_the_weights(folder):
    edit_config(folder, num_classes=4, class_names=None, palette=None)
    with pytest.raises(CheckpointError, match=r"wrong shape.*\(3, .*\) vs \(4, "):
        load_checkpoint_folder(folder)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("architecture", "unet", r"unknown architecture 'unet'; valid: fpn, ifa"),
    ("backbone", "resnet9000", r"unknown backbone 'resnet9000'; valid: .*efficientnet_lite0"),
    ("pos_encoding", "rotary", r"unknown pos_encoding 'rotary'; valid: .*learned"),
    ("num_classes", 0, r"num_classes must be a positive integer"),
    ("dropout", 0.1, r"unknown config keys \['dropout'\]"),
    ("architecture", None, r"lacks required keys \['architecture'\]"),
])
def test_bad_config_values_are_clear_errors(folder, key, value, message):
    edit_config(folder, **{key: value})
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint_folder(folder)
    assert str(folder / CONFIG_NAME) in str(info.value)


# --- missing and broken files ------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_folder(tmp_path / "nowhere")


def test_missing_config(folder):
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_checkpoint_folder(folder)


def test_missing_weights(folder):
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        load_checkpoint_folder(folder)


def test_card_is_optional(folder):
    (folder / CARD_NAME).unlink()
    assert load_checkpoint_folder(folder).config.num_classes == 3


@pytest.mark.parametrize("cut", [0, 5, 100, -1000])
def test_truncated_or_empty_weights(folder, cut):
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"model.safetensors is unreadable or truncated"):
        load_checkpoint_folder(folder)


def test_weights_that_are_not_safetensors(folder):
    (folder / WEIGHTS_NAME).write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(CheckpointError, match=r"unreadable or truncated"):
        load_checkpoint_folder(folder)


@pytest.mark.parametrize(("text", "message"), [
    ("{ not json", r"is not valid JSON"),
    ("", r"is not valid JSON"),
    ("[1, 2, 3]", r"config must be a JSON object, got list"),
])
def test_invalid_config_json(folder, text, message):
    (folder / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_folder(folder)


def test_cards_carry_hub_metadata_results_and_records(tmp_path):
    """ifa.cards writes what the Hub reads (ModelCard.load): pipeline tag, library, licence from the data,
    model-index results for image-segmentation; the check and offset ablation as the card's own records."""
    from huggingface_hub import ModelCard

    from ifa.cards import card_metrics, card_records, model_card, offset_ablation, write_card

    ablation = {"as_trained": 70.1234, "offsets_zeroed": 68.5, "changed_percent": 1.25}
    card = model_card("m", "ifa", "camvid", "Some *body*.", results={"val mIoU single scale": 71.0},
                      check={"images": 8, "mIoU": 69.166}, offset_ablation=ablation)
    write_card(card, tmp_path)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.pipeline_tag == "image-segmentation" and data.library_name == "ifa-explorer"
    assert data.license == "cc-by-nc-4.0" and "pytorch" in data.tags and data.datasets == ["camvid"]
    assert [r.task_type for r in data.eval_results] == ["image-segmentation"]
    assert "2206.08655" in (tmp_path / "README.md").read_text() and data.base_model is None
    assert card_metrics(tmp_path) == {"val mIoU single scale": 71.0}  # the check is not a result
    assert card_records(tmp_path)["check"] == {"images": 8, "mIoU": 69.166}
    assert offset_ablation(tmp_path) == ablation
    write_card(model_card("m", "ifa", "camvid", "body", results={"val mIoU single scale": 71.0}), tmp_path)
    assert offset_ablation(tmp_path) is None
    (tmp_path / "README.md").write_text("no front matter at all\n")
    assert card_metrics(tmp_path) == {} and offset_ablation(tmp_path) is None
    assert card_metrics(tmp_path / "missing") == {}
