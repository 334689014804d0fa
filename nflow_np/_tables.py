"""Point tables for the command line: CSV / whitespace text and ``.npy`` in, CSV out.

Every problem with a file (missing, ragged, non-numeric, NaN or infinite
values) raises ``ValueError`` with one line naming the file, the line and the
column, which the command line prints as is.
"""

import math
import os
import sys

import numpy as np

__all__ = ["check_file", "read_data", "write_table", "text_rows"]


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unquote(field):
    """A CSV field without the double quotes some writers put around every value (``"1.5"``)."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].strip()
    return field


def check_file(path):
    """Raise ``ValueError`` unless ``path`` names an existing file (not a directory).

    Parameters
    ----------
    path : str

    Returns
    -------
    None
    """
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a file")


def read_data(path):
    """Read a 2-D float array from a ``.npy`` file or a CSV / whitespace-separated text file.

    Parameters
    ----------
    path : str
        A ``.npy`` array of shape ``(n, d)`` or ``(n,)``, or text with one
        point per line (commas or whitespace between values; blank lines,
        ``#`` comments and one header line are skipped).

    Returns
    -------
    ndarray of shape (n, d), float64
    """
    check_file(path)
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise ValueError(f"{path}: expected a numeric array; got dtype {getattr(arr, 'dtype', type(arr))}")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{path}: expected a non-empty array of shape (n_points, n_features); got {arr.shape}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{path}: row {row} holds {arr[row, col]} in column {col + 1}; rows with NaN or "
                           f"infinity cannot be used (drop or fill them)")
        return arr
    return _read_text(path)


def _read_text(path):
    rows = [values for _, values in text_rows(path)]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return np.array(rows, dtype=np.float64)


def text_rows(path):
    """``(line number, values)`` of each data row of a CSV / whitespace text file, read line by line (the checks
    and messages of :func:`read_data`; memory does not grow with the file)."""
    try:
        fh = open(path, encoding="utf-8-sig")   # -sig: a leading byte-order mark is not data
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    width, width_line, header_allowed = None, None, True
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                fields = [_unquote(f.strip()) for f in text.split(",")] if "," in text else text.split()
                try:
                    values = [float(f) for f in fields]
                except ValueError:
                    bad = [i for i, f in enumerate(fields) if not _is_number(f)]
                    if header_allowed and len(bad) == len(fields):
                        header_allowed = False   # a header line: column names
                        continue
                    field = fields[bad[0]]
                    shown = "an empty field" if field == "" else f"{field!r}"
                    raise ValueError(f"{path}, line {lineno}, column {bad[0] + 1}: {shown} is not a number") from None
                header_allowed = False
                if width is None:
                    width, width_line = len(fields), lineno
                elif len(fields) != width:
                    raise ValueError(f"{path}, line {lineno}: {len(fields)} values, but line {width_line} has {width} "
                                     f"(every row needs the same number of columns)")
                if not all(map(math.isfinite, values)):
                    col = next(i for i, v in enumerate(values) if not math.isfinite(v))
                    raise ValueError(f"{path}, line {lineno}: {fields[col]} in column {col + 1}; rows with NaN or "
                                     f"infinity cannot be used (drop or fill them)")
                yield lineno, values
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (expected CSV or a .npy array)") from None


def write_table(arr, out):
    """Write rows of numbers as CSV, each value with enough digits to read back exactly.

    Parameters
    ----------
    arr : array_like of shape (n,) or (n, d)
    out : str
        A file name, or ``"-"`` for stdout.

    Returns
    -------
    None
    """
    arr = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
    if out == "-":
        np.savetxt(sys.stdout, arr, delimiter=",", fmt="%.17g")
        return
    try:
        with open(out, "w", encoding="utf-8") as fh:
            np.savetxt(fh, arr, delimiter=",", fmt="%.17g")   # %.17g reads back to the same float64
    except OSError as exc:
        raise ValueError(f"{out}: cannot write ({exc.strerror or exc})") from None
