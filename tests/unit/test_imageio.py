"""Image reading: every bad input gets an ImageError that says what is wrong."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from lnnode.geometry import ImageGeometry
from lnnode.io.image import ImageError, read_image, write_image

from ..conftest import REAL_DATA, requires_real_data


@pytest.fixture
def good(tmp_path, oblique_geometry):
    array = np.random.default_rng(0).normal(size=oblique_geometry.shape).astype(np.float32)
    return write_image(array, oblique_geometry, tmp_path / "good.nii.gz"), array


def test_write_then_read_keeps_voxels_and_geometry(good, oblique_geometry):
    path, array = good
    back, g = read_image(path)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(g.affine, oblique_geometry.affine, atol=1e-4)
    assert not list(path.parent.glob(".lnnode-tmp/*")), "no temp file left behind"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
def test_truncated_files_are_refused(tmp_path, good, suffix):
    path, array = good
    g = ImageGeometry.from_sitk(sitk.ReadImage(str(path)))
    full = write_image(array, g, tmp_path / f"full{suffix}")
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|not a readable"):
        read_image(cut)


def test_non_images_2d_nan_and_missing_are_refused(tmp_path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"this is a text file"))
    with pytest.raises(ImageError, match="not a readable"):
        read_image(fake)
    text = tmp_path / "notes.nrrd"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a readable"):
        read_image(text)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.float32)), str(flat))
    with pytest.raises(ImageError, match="2D"):
        read_image(flat)
    thin = tmp_path / "thin.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 9), np.float32)), str(thin))
    with pytest.raises(ImageError, match="2\\+ voxels"):
        read_image(thin)
    nan = tmp_path / "nan.nii.gz"
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(nan))
    with pytest.raises(ImageError, match="1 voxels are NaN"):
        read_image(nan)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    vec = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(vec))
    with pytest.raises(ImageError, match="3 components"):
        read_image(vec)


def test_single_frame_4d_is_read_as_3d_and_more_frames_are_refused(tmp_path):
    import nibabel as nib

    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 1), np.float32), np.diag([-0.8, -0.8, 3.0, 1.0])), str(path))
    array, g = read_image(path)
    assert array.shape == (6, 5, 4) and g.shape == (6, 5, 4)
    np.testing.assert_allclose(g.spacing, (0.8, 0.8, 3.0))
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 2), np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageError, match="4D"):
        read_image(path)


@requires_real_data
def test_real_dicom_series_reads_with_its_geometry():
    array, g = read_image(REAL_DATA / "totalseg" / "example_ct_dicom")
    assert array.shape == (512, 512, 20)
    np.testing.assert_allclose(g.spacing, (0.9765625, 0.9765625, 2.0))
    assert -1100 < array.min() < -900 and array.max() > 500  # HU


@requires_real_data
def test_folder_with_two_series_is_refused(tmp_path):
    import shutil

    src = REAL_DATA / "totalseg" / "example_ct_dicom"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    files = sorted(src.iterdir())
    for f in files[:10]:
        shutil.copy(f, mixed / f.name)
    # a second series: the same slices re-written with another SeriesInstanceUID
    import pydicom

    for f in files[10:]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".99"
        ds.save_as(mixed / f.name)
    with pytest.raises(ImageError, match="holds 2 DICOM series"):
        read_image(mixed)
