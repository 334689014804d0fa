"""A plain figure without matplotlib: three square panels (data, samples, density) as a PNG, in NumPy.

``nflow-np demo`` draws its figure with matplotlib when the ``plot`` extra is
installed; on a bare ``pip install .`` it still writes this simpler one, so
the main job always shows what the flow learned.
"""

import struct
import zlib

import numpy as np

# three anchors of a dark-to-bright scale (dark violet, teal, yellow), interpolated linearly
_ANCHORS = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)
_DATA_RGB = (31, 119, 180)
_SAMPLE_RGB = (255, 127, 14)


def write_png(path, image):
    """Write an ``(h, w, 3)`` uint8 RGB array as an 8-bit PNG."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter 0 per row

    def chunk(kind, payload):
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
                + chunk(b"IEND", b""))


def _pixels(points, bounds, size):
    (x0, x1), (y0, y1) = bounds
    col = np.floor((points[:, 0] - x0) / (x1 - x0) * size).astype(np.int64)
    row = size - 1 - np.floor((points[:, 1] - y0) / (y1 - y0) * size).astype(np.int64)
    keep = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    return row[keep], col[keep]


def _scatter(points, bounds, size, rgb):
    panel = np.full((size, size, 3), 255, np.uint8)
    row, col = _pixels(points, bounds, size)
    for dr in (0, 1):
        for dc in (0, 1):   # 2 x 2 dots
            panel[np.minimum(row + dr, size - 1), np.minimum(col + dc, size - 1)] = rgb
    return panel


def _density(log_density, bounds, size):
    (x0, x1), (y0, y1) = bounds
    xs = np.linspace(x0, x1, size)
    ys = np.linspace(y1, y0, size)   # top row is the largest y
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    log_values = log_density(grid)
    values = np.exp(log_values - np.max(log_values)).reshape(size, size)
    t = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(_ANCHORS) - 2)
    frac = (t - low)[..., None]
    return np.round(_ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac).astype(np.uint8)


def panels_png(path, data, samples, log_density, bounds, size=320, gap=12):
    """Data, samples and ``exp(log_density)`` over ``bounds`` in three panels, written to ``path``."""
    panels = [_scatter(np.asarray(data), bounds, size, _DATA_RGB),
              _scatter(np.asarray(samples), bounds, size, _SAMPLE_RGB),
              _density(log_density, bounds, size)]
    image = np.full((size + 2 * gap, 3 * size + 4 * gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        left = gap + i * (size + gap)
        image[gap:gap + size, left:left + size] = panel
    write_png(path, image)
