"""Draw the synthetic street scenes shipped as app samples (assets/samples/), with exact CamVid label maps.

CamVid images may not be copied into the repository, so the Space's gallery ships two procedurally drawn
480 x 360 scenes (sky, buildings, road with lane marks, sidewalks, trees, poles, a sign, a fence, cars,
a pedestrian, a cyclist) whose label maps are exact by construction. Regenerate with
`python tests/app/synthetic_samples.py` (deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "assets" / "samples"
W, H = 480, 360
SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (W, H))
    lab = Image.new("L", (W, H), 11)  # 11 = unlabelled (ignored)
    di, dl = ImageDraw.Draw(img), ImageDraw.Draw(lab)

    def shape(kind, xy, color, label, **kw):
        getattr(di, kind)(xy, fill=color, **kw)
        getattr(dl, kind)(xy, fill=label, **kw)

    horizon = int(H * rng.uniform(0.42, 0.5))
    sky = np.linspace([150, 185, 225], [205, 220, 235], horizon).astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(sky[:, None, :], W, axis=1)), (0, 0))
    dl.rectangle((0, 0, W, horizon), fill=SKY)
    x = -10
    while x < W:  # buildings along the horizon
        bw, bh = int(rng.integers(60, 130)), int(rng.integers(60, horizon - 10))
        tone = rng.integers(90, 190)
        color = (int(tone), int(tone * rng.uniform(0.8, 1.0)), int(tone * rng.uniform(0.7, 0.95)))
        shape("rectangle", (x, horizon - bh, x + bw, horizon + 30), color, BUILDING)
        for wy in range(horizon - bh + 10, horizon + 10, 18):
            for wx in range(x + 8, x + bw - 12, 20):
                di.rectangle((wx, wy, wx + 9, wy + 10), fill=(60, 70, 85))
        x += bw + int(rng.integers(0, 8))
    vanish = W * rng.uniform(0.42, 0.58)
    road = [(vanish - 12, horizon + 30), (vanish + 12, horizon + 30), (W + 160, H), (-160, H)]
    shape("rectangle", (0, horizon + 30, W, H), (150, 145, 140), SIDEWALK)
    shape("polygon", road, (85, 85, 90), ROAD)
    for t in np.linspace(0.1, 0.9, 6):  # lane marks
        y0, y1 = horizon + 30 + (H - horizon - 30) * t, horizon + 30 + (H - horizon - 30) * (t + 0.06)
        di.line((vanish, y0, vanish, y1), fill=(230, 230, 220), width=max(1, int(6 * t)))
    shape("rectangle", (0, horizon + 12, int(W * 0.22), horizon + 34), (120, 100, 70), FENCE)
    for i in range(int(rng.integers(2, 4))):  # trees
        cx, cy = int(rng.uniform(0.55, 0.95) * W), int(horizon - rng.uniform(10, 40))
        r = int(rng.integers(25, 45))
        shape("ellipse", (cx - r, cy - r, cx + r, cy + r), (60, 110 + 10 * i, 50), TREE)
        shape("rectangle", (cx - 3, cy + r - 6, cx + 3, horizon + 36), (80, 60, 40), TREE)
    for px in (int(W * 0.15), int(W * 0.8)):  # poles + a sign
        shape("rectangle", (px, horizon - 90, px + 4, horizon + 60), (170, 170, 160), POLE)
    shape("rectangle", (int(W * 0.8) - 10, horizon - 88, int(W * 0.8) + 14, horizon - 66), (200, 40, 40), SIGN)
    for i in range(int(rng.integers(1, 3))):  # cars
        cw = int(rng.integers(90, 140))
        cx = int(vanish + rng.uniform(-0.45, 0.1) * W) + i * 150
        cy = H - int(rng.integers(30, 80))
        color = tuple(int(v) for v in rng.integers(30, 200, 3))
        shape("rounded_rectangle", (cx, cy - 45, cx + cw, cy), color, CAR, radius=10)
        shape("rounded_rectangle", (cx + 15, cy - 70, cx + cw - 20, cy - 40), color, CAR, radius=8)
        di.rectangle((cx + 22, cy - 64, cx + cw - 28, cy - 46), fill=(40, 50, 60))
        for wx in (cx + 18, cx + cw - 30):
            shape("ellipse", (wx - 4, cy - 10, wx + 16, cy + 10), (20, 20, 20), CAR)
    px, py = int(W * rng.uniform(0.05, 0.2)), H - int(rng.integers(40, 70))  # pedestrian
    shape("ellipse", (px, py - 78, px + 12, py - 66), (200, 160, 130), PEDESTRIAN)
    shape("rectangle", (px - 2, py - 66, px + 14, py - 30), (40, 60, 140), PEDESTRIAN)
    shape("rectangle", (px, py - 30, px + 12, py), (30, 30, 40), PEDESTRIAN)
    bx, by = int(W * rng.uniform(0.6, 0.75)), horizon + 70  # cyclist
    for wx in (bx, bx + 30):
        shape("ellipse", (wx - 10, by - 10, wx + 10, by + 10), (25, 25, 25), BICYCLIST, width=3)
    shape("line", (bx, by, bx + 15, by - 15, bx + 30, by), (200, 30, 30), BICYCLIST, width=3)
    shape("rectangle", (bx + 8, by - 45, bx + 20, by - 15), (230, 180, 40), BICYCLIST)
    shape("ellipse", (bx + 8, by - 57, bx + 20, by - 45), (200, 160, 130), BICYCLIST)
    image = np.asarray(img.filter(ImageFilter.GaussianBlur(0.8))).astype(np.float32)
    image += rng.normal(0, 6, image.shape)  # sensor noise and a little texture
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(lab)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, seed in enumerate((3, 11), start=1):
        image, label = _scene(seed)
        Image.fromarray(image).save(OUT / f"synthetic_street_{index}.jpg", quality=88)
        Image.fromarray(label).save(OUT / f"synthetic_street_{index}_label.png")
        entries.append({"name": f"synthetic street {index} (drawn, CamVid classes)", "dataset": "camvid",
                        "image": f"samples/synthetic_street_{index}.jpg",
                        "label": f"samples/synthetic_street_{index}_label.png"})
    manifest = {"about": "Sample images of the app. Synthetic scenes drawn by tests/app/synthetic_samples.py; "
                         "set IFA_SAMPLES_DIR to list a folder of real images too (e.g. CamVid val).",
                "samples": entries}
    (ROOT / "assets" / "samples.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
