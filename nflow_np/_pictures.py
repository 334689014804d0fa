"""Points drawn from pictures: a word in the built-in 5x7 font, or any grayscale image (:mod:`nflow_np.datasets`)."""

import numpy as np

from ._data_checks import _scalar, _setup
from ._font import _GLYPHS, FONT, GLYPH_SHAPE
from ._validation import as_float_array


def render_text(text):
    """Render ``text`` with the built-in 5x7 font into a boolean image (row 0 on top).

    Glyphs are placed side by side with one blank column between them, so the
    image has shape ``(7, 6 * len(text) - 1)``. Case is folded.

    Parameters
    ----------
    text : str
        Non-empty; every character must be in :data:`FONT` (after upper-casing).

    Returns
    -------
    ndarray of bool, shape (7, 6 * len(text) - 1)
    """
    if not isinstance(text, str):
        raise TypeError(f"render_text: text must be a str; got {type(text).__name__}")
    if not text:
        raise ValueError("render_text: text must be non-empty")
    unknown = sorted({c for c in text if c.upper() not in _GLYPHS})
    if unknown:
        raise ValueError(f"render_text: no glyph for {''.join(unknown)!r} ({', '.join(map(repr, unknown))}); "
                         f"the font has A-Z, 0-9 and {''.join(k for k in FONT if not k.isalnum())!r}")
    height, width = GLYPH_SHAPE
    image = np.zeros((height, (width + 1) * len(text) - 1), dtype=bool)
    for i, char in enumerate(text):
        image[:, i * (width + 1): i * (width + 1) + width] = _GLYPHS[char.upper()]
    return image


def _sample_pixels(weights, n, rng, dtype, jitter, where):
    """Points from pixels drawn with probability proportional to ``weights`` (rows top-down).

    Pixel (r, c) is the square [c, c + 1) x [H - r - 1, H - r) so y points up; a point is
    its pixel's centre plus U(-jitter/2, jitter/2)^2. The bounding box of the non-zero
    pixels is centred on the origin and scaled, aspect kept, to span [-4, 4] in x.
    """
    jitter = _scalar(jitter, where, "jitter", strict=False)
    if jitter > 1.0:
        raise ValueError(f"{where}: jitter must lie in [0, 1] (a fraction of a pixel); got {jitter}")
    height = weights.shape[0]
    flat = weights.ravel()
    p = flat / flat.sum()
    idx = rng.choice(flat.size, size=n, p=p)
    rows, cols = np.divmod(idx, weights.shape[1])
    offsets = 0.5 + jitter * (rng.random((n, 2)) - 0.5)
    pts = np.stack([cols + offsets[:, 0], (height - 1 - rows) + offsets[:, 1]], axis=-1)
    lit_rows, lit_cols = np.nonzero(weights)
    x_lo, x_hi = lit_cols.min(), lit_cols.max() + 1
    y_lo, y_hi = height - 1 - lit_rows.max(), height - lit_rows.min()
    center = np.array([(x_lo + x_hi) / 2.0, (y_lo + y_hi) / 2.0])
    return ((pts - center) * (8.0 / (x_hi - x_lo))).astype(dtype)


def text_points(text, n, rng=None, *, dtype=np.float64, jitter=1.0):
    """Points spread uniformly over the lit pixels of ``text`` in the built-in 5x7 font.

    Each point picks a lit pixel uniformly (with replacement) and a uniform offset
    within it, so with ``jitter=1`` the density is uniform on the union of the
    letters' pixel squares. The word is centred and scaled, aspect ratio kept, to
    span [-4, 4] horizontally, y pointing up; ``text_points("flow", 5000)`` gives
    the 2-D "picture of a word" target.

    Parameters
    ----------
    text : str
        Characters of :data:`FONT` (case-insensitive); at least one must be lit
        (not only spaces).
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    jitter : float
        Width of the uniform offset as a fraction of a pixel, in [0, 1]: 1 fills
        the pixel squares, 0 puts every point on a pixel centre.

    Returns
    -------
    ndarray of shape (n, 2)
    """
    n, rng, dtype = _setup(n, rng, dtype, "text_points")
    image = render_text(text)
    if not image.any():
        raise ValueError(f"text_points: {text!r} renders no lit pixel (only spaces?)")
    return _sample_pixels(image.astype(np.float64), n, rng, dtype, jitter, "text_points")


def from_image(array, n, rng=None, *, dtype=np.float64, jitter=1.0):
    """Points drawn with probability proportional to a grayscale image's intensity.

    A pixel is picked with probability proportional to its value, then a uniform
    offset within it is added. Row 0 is the top of the picture (as images are
    stored); the output has y pointing up, and the bounding box of the non-zero
    pixels is centred and scaled, aspect kept, to span [-4, 4] horizontally.

    Parameters
    ----------
    array : array_like of shape (height, width)
        Non-negative, finite intensities, not all zero (bool, int or float).
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    jitter : float
        Width of the uniform offset as a fraction of a pixel, in [0, 1].

    Returns
    -------
    ndarray of shape (n, 2)
    """
    n, rng, dtype = _setup(n, rng, dtype, "from_image")
    if isinstance(array, np.ndarray) and array.dtype == bool:
        array = array.astype(np.float64)
    image = as_float_array(array, None, "from_image", "array").astype(np.float64)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"from_image: array must be a non-empty 2-D grayscale image; got shape {image.shape}")
    if np.any(image < 0):
        raise ValueError(f"from_image: array must be non-negative; got min {image.min()}")
    if not np.any(image > 0):
        raise ValueError("from_image: array is all zero; there is nothing to sample")
    return _sample_pixels(image, n, rng, dtype, jitter, "from_image")
