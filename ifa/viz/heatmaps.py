"""Per-level contribution heatmaps: one tile per pyramid level plus a 'dominant level' tile."""

from __future__ import annotations

import numpy as np

from .draw import LEVEL_COLORS, apply_colormap, colorbar, grid, resize, titled


def level_share_panel(shares: np.ndarray, size: tuple[int, int], titles: list[str] | None = None,
                      tile_width: int = 260, name: str = "magma", title: str | None = None) -> np.ndarray:
    """shares (L, h, w) in [0, 1] (summing to 1 over L per pixel) -> one uint8 RGB panel.

    Each level's share is shown as a heatmap stretched to the image aspect (`size` = (width, height)),
    nearest-neighbour so the query grid stays visible, followed by the dominant level per pixel in
    the level colours and a colour bar.
    """
    levels = shares.shape[0]
    titles = titles or [f"level {i + 1} (stride {4 * 2 ** i})" for i in range(levels)]
    width, height = size
    tile_h = max(1, round(tile_width * height / max(width, 1)))
    tiles = [titled(resize(apply_colormap(s, 0.0, 1.0, name), (tile_width, tile_h), nearest=True), t)
             for s, t in zip(shares, titles)]
    dominant = np.asarray(LEVEL_COLORS, dtype=np.uint8)[np.argmax(shares, axis=0) % len(LEVEL_COLORS)]
    tiles.append(titled(resize(dominant, (tile_width, tile_h), nearest=True), "dominant level (colours below)"))
    key = np.full((tile_h // 2, tile_width, 3), 255, dtype=np.uint8)
    band = max(1, tile_width // levels)
    for i in range(levels):
        key[: tile_h // 4, i * band:(i + 1) * band - 2] = LEVEL_COLORS[i % len(LEVEL_COLORS)]
    bar = colorbar(tile_width, name=name, left="0 (no share)", right="1 (all of it)")
    legend = np.concatenate([titled(key, "levels 1..4 (left to right)", size=12), bar], axis=0)
    tiles.append(legend)
    panel = grid(tiles, columns=3)
    return titled(panel, title, size=16) if title else panel
