"""Lossless JPEG crop on the block grid, in process, through the turbojpeg wheel (it bundles libjpeg-turbo).

The kept pixels are the original ones: the DCT blocks are copied, not re-encoded. A crop can
start only on the iMCU grid (8 or 16 px, from the chroma subsampling in the header), so the
origin is moved down to it and the far corner kept: the actual box holds the asked one.
Where the wheel cannot be imported, crops are re-encoded as PNG and say so (`reencode-png`).
"""
from .photos import DataError

try:
    import turbojpeg
except ImportError:  # pragma: no cover - a core dependency
    turbojpeg = None


def lossless_method():
    """The path lossless crops take here: 'lossless-turbojpeg', or None."""
    return "lossless-turbojpeg" if turbojpeg else None


def imcu_size(data, name="<bytes>"):
    """(width, height) in pixels of the JPEG's iMCU, the grid a lossless crop must start on."""
    try:
        hdr = turbojpeg.decompress_header(data)
    except Exception as e:  # the binding raises RuntimeError or ValueError on a bad header
        raise DataError(f"{name}: not a readable JPEG header ({e})") from None
    return {turbojpeg.SAMP.Y444: (8, 8), turbojpeg.SAMP.GRAY: (8, 8), turbojpeg.SAMP.Y422: (16, 8),
            turbojpeg.SAMP.Y420: (16, 16), turbojpeg.SAMP.Y440: (8, 16), turbojpeg.SAMP.Y411: (32, 8),
            turbojpeg.SAMP.Y441: (8, 32)}.get(hdr["subsamp"], (16, 16))


def lossless_crop(data, box, name="<bytes>"):
    """Crop JPEG bytes to box = (x0, y0, x1, y1) without re-encoding: (bytes, actual box).

    Markers (EXIF, its orientation tag included) are copied. Raises DataError naming `name`
    when the file cannot be cropped exactly.
    """
    x0, y0, x1, y1 = box
    mw, mh = imcu_size(data, name)
    x0, y0 = x0 - x0 % mw, y0 - y0 % mh
    try:
        out = turbojpeg.transform(data, x=x0, y=y0, w=x1 - x0, h=y1 - y0, crop=True, perfect=True)
    except Exception as e:
        raise DataError(f"{name}: lossless crop failed ({e})") from None
    return out, (x0, y0, x1, y1)
