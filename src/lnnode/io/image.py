"""Reading and writing 3D images with their geometry (world LPS), with clear errors for bad input.

Arrays here are always in index order ``(i, j, k)`` (SimpleITK's numpy view is ``(k, j, i)``).
With ``allow_2d`` a 2D image (PNG, JPEG, BMP, TIFF, a single-frame DICOM file, a 2D NIfTI/NRRD) is read as a
volume of one slice: shape ``(columns, rows, 1)``; a picture (PNG, JPEG, BMP, TIFF) has spacing 1 and origin 0
whatever DPI it carries, so world x, y are its pixel column and row; a DICOM file has its pixel spacing, position
and orientation (an ultrasound file calibrated only by its ultrasound regions, without PixelSpacing, reads with
spacing 1: that calibration is not read yet). Colour is turned to grey (luminance).
Writes are atomic (see atomic.py): a reader never sees a half-written file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from lnnode.geometry import GeometryError, ImageGeometry
from lnnode.io.atomic import atomic_write

__all__ = [
    "ImageError",
    "IMAGE_SUFFIXES",
    "PHOTO_SUFFIXES",
    "PLANAR_SUFFIXES",
    "STORED_SUFFIXES",
    "is_planar",
    "pixel_spacing_known",
    "image_suffix",
    "read_sitk",
    "read_image",
    "read_geometry",
    "read_header",
    "check_content",
    "MAX_IMAGE_VOXELS",
    "sitk_to_array",
    "array_to_sitk",
    "write_image",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # 2D pictures (read with allow_2d): pixels
PLANAR_SUFFIXES = (*PHOTO_SUFFIXES, ".dcm")  # files that hold a 2D image (a .dcm file: one frame)
# what a studies folder holds (one file per image: no header + data pairs)
STORED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".dcm")
# the largest volume read (voxels); the server sets it from --conf max_image_voxels. 6e8 voxels is
# 2.4 GB as float32: a 512 x 512 x 2000 whole-body CT fits, an absurd upload does not
MAX_IMAGE_VOXELS = int(os.environ.get("LNNODE_MAX_IMAGE_VOXELS", "600000000"))
SPACING_RANGE_MM = (1e-3, 100.0)  # outside it a voxel size is a broken header, not a scanner


class ImageError(ValueError):
    """An image that cannot be used: unreadable, not 3D, empty, or holding non-finite values.

    ``reason`` says what is wrong without the path (for messages about uploads, whose temp path
    means nothing to the client).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def image_suffix(path: str | os.PathLike) -> str:
    """The image suffix of a file name (``.nii.gz`` counts as one; 2D files' too), or '' for a folder / unknown."""
    name = os.path.basename(str(path)).lower()
    for s in (*IMAGE_SUFFIXES, *PLANAR_SUFFIXES):
        if name.endswith(s):
            return s
    return ""


def _read_dicom_series(folder: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(folder)
    if not series:
        raise ImageError(folder, "no DICOM series found in this folder")
    if len(series) > 1:
        raise ImageError(folder, f"holds {len(series)} DICOM series ({', '.join(series)}); give one per folder")
    files = reader.GetGDCMSeriesFileNames(folder, series[0])
    if len(files) < 2:
        raise ImageError(folder, f"the DICOM series has {len(files)} slice(s); a 3D volume needs more")
    reader.SetFileNames(files)
    return reader.Execute()


def _nifti_layout(path: str) -> tuple[np.dtype, int, int]:
    """(voxel type, data offset, data bytes) from a NIfTI header; a broken header is refused."""
    try:
        proxy = nib.load(path).dataobj
    except Exception as e:  # nibabel raises many types for a broken header
        detail = str(e).replace(path, "the file")[:160]
        raise ImageError(path, f"not a readable NIfTI file ({detail})") from None
    # the offset nibabel really uses (vox_offset may be 0)
    return proxy.dtype, int(proxy.offset), int(np.prod(proxy.shape)) * proxy.dtype.itemsize


def _scan_nifti(path: str, dtype: np.dtype, offset: int, n_bytes: int) -> int:
    """Refuse a truncated NIfTI file; return how many voxels are NaN or infinite.

    SimpleITK 2.5 reads a truncated .nii or .nii.gz without complaint, filling the missing voxels
    with zeros, and it reads NaN voxels as 0 (both measured), so size and values are checked here:
    the whole file is decompressed (a gzip trailer alone does not show a missing middle).
    """
    floats = dtype.kind == "f"
    size, nonfinite, pending = 0, 0, b""
    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            while chunk := f.read(1 << 22):
                start = max(offset - size, 0)
                stop = min(offset + n_bytes - size, len(chunk))
                size += len(chunk)
                if floats and stop > start:
                    data = pending + chunk[start:stop]
                    usable = len(data) - len(data) % dtype.itemsize
                    nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype))))
                    pending = data[usable:]
    except (EOFError, OSError, zlib.error) as e:
        raise ImageError(path, f"corrupt or truncated gzip data ({e})") from None
    if size < offset + n_bytes:
        raise ImageError(path, f"truncated NIfTI file: {size} bytes where its header needs {offset + n_bytes}")
    return nonfinite


def is_planar(geometry: ImageGeometry) -> bool:
    """A one-slice volume: a 2D image read with ``allow_2d``."""
    return geometry.shape[2] == 1


def _grey(image: sitk.Image) -> sitk.Image:
    """A colour single-frame DICOM as grey: luminance (ITU-R BT.601 weights)."""
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)[..., :3]
    grey = sitk.GetImageFromArray(pixels @ np.array([0.299, 0.587, 0.114], np.float32))
    grey.CopyInformation(image)
    return grey


def _read_picture(path: str) -> sitk.Image:
    """A PNG, JPEG, BMP or TIFF as a grey 2D image in pixels (spacing 1, origin 0, whatever DPI it carries): colour
    by luminance (ITU-R BT.601), grey + alpha by its grey. Pillow reads what SimpleITK cannot (grey + alpha)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            if picture.mode in ("L", "I", "I;16", "F"):
                pixels = np.asarray(picture, dtype=np.float32)
            elif picture.mode == "LA":
                pixels = np.asarray(picture.getchannel("L"), dtype=np.float32)
            else:
                rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
                pixels = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(path, f"not a readable image ({str(e)[:200]})") from None
    if pixels.ndim != 2:
        raise ImageError(path, f"a picture of shape {pixels.shape}: one frame expected")
    return sitk.GetImageFromArray(np.ascontiguousarray(pixels))


def _as_one_slice(image: sitk.Image, path: str) -> sitk.Image:
    """A 2D image (or a one-slice volume) as a grey one-slice volume."""
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # k = 0, spacing 1 along k
    one_slice = image.GetDimension() == 3 and image.GetSize()[2] == 1
    if one_slice and image.GetNumberOfComponentsPerPixel() in (3, 4):
        image = _grey(image)  # a colour single-frame DICOM
    if one_slice and min(image.GetSize()[:2]) < 2:
        raise ImageError(path, f"has size {image.GetSize()[:2]}; a 2D image needs 2+ pixels on each side")
    return image


def _read_image(p: str, allow_2d: bool) -> sitk.Image:
    """SimpleITK's read of a file or DICOM folder; its errors as ImageError."""
    try:
        if allow_2d and p.lower().endswith(PHOTO_SUFFIXES):
            return _read_picture(p)
        return _read_dicom_series(p) if os.path.isdir(p) else sitk.ReadImage(p)
    except RuntimeError as e:
        # SimpleITK puts the useful part ("Unable to determine ImageIO reader...") in its last lines
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        detail = lines[-1].replace(p, "the file").removeprefix("sitk::ERROR: ")
        raise ImageError(p, f"not a readable image ({detail[:200]})") from None


def read_sitk(path: str | os.PathLike, allow_nonfinite: bool = False, allow_2d: bool = False) -> sitk.Image:
    """Read a 3D image (NIfTI, NRRD, MetaImage file, or a folder holding one DICOM series); with ``allow_2d``
    also a 2D image, as a volume of one slice (see the module docstring).

    A 4D image with a single channel/time point is squeezed to 3D; anything else not 3D is refused,
    and so are NaN or infinite voxels unless ``allow_nonfinite``.
    """
    p = str(path)
    if not os.path.exists(p):
        raise ImageError(p, "no such file or folder")
    if not os.path.isdir(p):
        _check_header(p)
    if image_suffix(p) in (".nii", ".nii.gz"):
        layout = _nifti_layout(p)
        # the scan decompresses the file a second time: in a thread beside SimpleITK's read (both release the GIL)
        with ThreadPoolExecutor(1) as pool:
            scan = pool.submit(_scan_nifti, p, *layout)
            try:
                image = _read_image(p, allow_2d)
            finally:
                nonfinite = scan.result()  # its ImageError says more than SimpleITK's
        if nonfinite and not allow_nonfinite:
            raise ImageError(p, f"{nonfinite} voxels are NaN or infinite")
    else:
        image = _read_image(p, allow_2d)
    if allow_2d:
        image = _as_one_slice(image, p)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(p, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise ImageError(p, f"is a {dim}D image of size {image.GetSize()}; lnnode needs a 3D volume")
    if min(image.GetSize()) < 2 and not (allow_2d and image.GetSize()[2] == 1):
        raise ImageError(p, f"has size {image.GetSize()}; a 3D volume needs 2+ voxels on every axis")
    try:
        ImageGeometry.from_sitk(image)
    except GeometryError as e:
        raise ImageError(p, str(e)) from None
    _check_size_and_spacing(p, image.GetSize(), image.GetSpacing())
    return image


def read_header(path: str | os.PathLike) -> sitk.ImageFileReader | None:
    """The image file's header, read without decoding any voxel; None when it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _picture_geometry(path: str) -> ImageGeometry | None:
    """A picture's geometry from its size alone (Pillow reads the header only): pixels, as :func:`read_sitk` makes
    it; None when Pillow cannot tell (the full read says why)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            columns, rows = picture.size
            frames = getattr(picture, "n_frames", 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    if frames != 1 or min(columns, rows) < 2:
        return None
    return ImageGeometry((columns, rows, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())


def read_geometry(path: str | os.PathLike, allow_2d: bool = False) -> ImageGeometry:
    """The geometry of an image file from its header alone (no voxel is decoded); a DICOM folder is read.

    For an image :func:`read_sitk` accepts, this equals ``ImageGeometry.from_sitk(read_sitk(path))``.
    """
    p = str(path)
    if allow_2d and p.lower().endswith(PHOTO_SUFFIXES) and os.path.isfile(p):
        picture = _picture_geometry(p)
        if picture is not None:
            return picture
    if allow_2d and not os.path.isdir(p) and _is_2d_header(p):
        return ImageGeometry.from_sitk(read_sitk(p, allow_2d=True))  # a 2D image is small: decoded
    if os.path.isdir(p):
        return ImageGeometry.from_sitk(read_sitk(p))
    reader = read_header(p)
    if reader is None:
        return ImageGeometry.from_sitk(read_sitk(p))  # unreadable: the full read says why
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim == 4 and size[3] == 1:  # one frame: the 3D volume read_sitk makes of it
        direction = np.asarray(reader.GetDirection()).reshape(4, 4)[:3, :3].ravel()
        return ImageGeometry(size[:3], reader.GetSpacing()[:3], reader.GetOrigin()[:3], tuple(direction))
    if dim != 3:
        return ImageGeometry.from_sitk(read_sitk(p))  # refused there, with the reason
    return ImageGeometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def pixel_spacing_known(path: str | os.PathLike) -> bool:
    """Whether an image's spacing is a calibration (mm): not for a picture (PNG, JPEG...: pixels), nor for a DICOM
    file without PixelSpacing or ImagerPixelSpacing (an ultrasound file calibrated by its regions only)."""
    p = str(path)
    if p.lower().endswith(PHOTO_SUFFIXES):
        return False
    if os.path.isdir(p) or image_suffix(p) in IMAGE_SUFFIXES:
        return True  # NIfTI, NRRD, MetaImage and DICOM series carry their spacing
    reader = read_header(p)
    calibrations = {"0028|0030", "0018|1164"}  # PixelSpacing, ImagerPixelSpacing
    return reader is not None and bool(set(reader.GetMetaDataKeys()) & calibrations)


def _is_2d_header(path: str) -> bool:
    """A 2D image, a one-slice or a colour one, from the header (True when the header cannot be read: the
    full read says why)."""
    reader = read_header(path)
    if reader is None:
        return True
    size = reader.GetSize()
    return reader.GetDimension() == 2 or size[2] == 1 or reader.GetNumberOfComponents() > 1


def _check_size_and_spacing(path: str, size, spacing) -> None:
    voxels = int(np.prod([int(s) for s in size], dtype=np.int64))
    if voxels > MAX_IMAGE_VOXELS:
        raise ImageError(path, f"has {voxels:,} voxels {tuple(size)}, over the limit of {MAX_IMAGE_VOXELS:,}")
    lo, hi = SPACING_RANGE_MM
    if any(not lo <= float(s) <= hi for s in spacing[:3]):
        shown = tuple(round(float(s), 6) for s in spacing)
        raise ImageError(path, f"has voxel spacing {shown} mm, outside {lo}-{hi} mm")


def _check_header(path: str) -> None:
    """Size and spacing from the header, before any voxel is read (an oversized upload costs nothing)."""
    reader = read_header(path)
    if reader is None:
        return  # unreadable: the full read says why
    _check_size_and_spacing(path, reader.GetSize(), reader.GetSpacing())


def check_content(path: str | os.PathLike, array: np.ndarray) -> None:
    """An image (not a mask) must hold something: a volume with one value everywhere is refused."""
    finite = np.isfinite(array)
    # the usual case (every voxel finite, checked just before) needs no copy of the volume
    values = array if finite.all() else array[finite]
    if values.size == 0 or float(values.min()) == float(values.max()):
        value = "no finite value" if values.size == 0 else f"the value {float(values.min()):g} everywhere"
        raise ImageError(path, f"holds {value}: there is nothing to find in it")


def sitk_to_array(image: sitk.Image, dtype=np.float32) -> np.ndarray:
    """The voxels of a 3D SimpleITK image as an index-ordered (i, j, k) array (a copy).

    The copy keeps SimpleITK's memory order (i fastest: Fortran order in numpy): reordering 37 M voxels to C
    order costs more than a second on 2 cores, and turning the array back into a SimpleITK image (resampling)
    then needs no copy at all."""
    return sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).astype(dtype, order="K")


def array_to_sitk(array: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """A SimpleITK image from an index-ordered array and its geometry."""
    a = np.asarray(array)
    if tuple(a.shape) != tuple(geometry.shape):
        raise ImageError("<array>", f"shape {a.shape} differs from the geometry's {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def read_image(
    path: str | os.PathLike, allow_nonfinite: bool = False, require_content: bool = False, allow_2d: bool = False
) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D image as a float32 (i, j, k) array and its geometry. ``require_content``: refuse a
    volume with one value everywhere (an image to look at, not a mask); ``allow_2d``: a 2D image too, as
    one slice."""
    image = read_sitk(path, allow_nonfinite, allow_2d)
    array = sitk_to_array(image)
    if not allow_nonfinite and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ImageError(path, f"{bad} of {array.size} voxels are NaN or infinite")
    if require_content:
        check_content(path, array)
    return array, ImageGeometry.from_sitk(image)


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an index-ordered array with its geometry; atomic (temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(target)
    if not suffix:
        raise ImageError(target, f"unknown image suffix (use one of {', '.join(IMAGE_SUFFIXES)})")
    image = array_to_sitk(array, geometry)
    return atomic_write(target, lambda tmp: sitk.WriteImage(image, tmp, compress), suffix=suffix)
