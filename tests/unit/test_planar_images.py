"""2D images read as one-slice volumes (``allow_2d``): PNG, JPEG (colour to grey), a single-frame DICOM with its
pixel spacing, position and orientation, a 2D NIfTI; x, y are the pixel column and row; refused without the flag."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from lnnode.io.image import ImageError, is_planar, read_geometry, read_image

ROWS, COLS = 30, 40
PIXELS = (np.arange(ROWS * COLS).reshape(ROWS, COLS) % 251).astype(np.uint8)  # [row, column]


def test_a_png_is_one_slice_whose_world_x_y_are_column_and_row(tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "a.png")
    volume, geometry = read_image(tmp_path / "a.png", allow_2d=True)
    assert volume.shape == (COLS, ROWS, 1) and is_planar(geometry)
    assert geometry.spacing == (1.0, 1.0, 1.0) and geometry.origin == (0.0, 0.0, 0.0)
    assert volume[20, 10, 0] == PIXELS[10, 20]
    assert geometry.index_to_world([20, 10, 0]).tolist() == [20.0, 10.0, 0.0]
    assert read_geometry(tmp_path / "a.png", allow_2d=True) == geometry
    with pytest.raises(ImageError, match="3D"):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_colour_is_turned_to_grey(tmp_path, suffix):
    rgb = np.stack([PIXELS, PIXELS // 2, PIXELS // 4], axis=-1)
    options = {"quality": 100} if suffix == "jpg" else {}
    Image.fromarray(rgb).save(tmp_path / f"c.{suffix}", **options)
    volume, _ = read_image(tmp_path / f"c.{suffix}", allow_2d=True)
    expected = 0.299 * PIXELS + 0.587 * (PIXELS // 2) + 0.114 * (PIXELS // 4)
    tolerance = 0.01 if suffix == "png" else 4.0  # JPEG is lossy
    assert volume.shape == (COLS, ROWS, 1)
    assert np.abs(volume[:, :, 0].T - expected).mean() < tolerance


def test_a_single_frame_dicom_has_its_pixel_spacing_position_and_orientation(tmp_path):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows, ds.Columns, ds.PixelSpacing = ROWS, COLS, [0.2, 0.1]  # row spacing 0.2, column spacing 0.1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [10.0, -5.0, 3.0], [0, 1, 0, 0, 0, -1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = PIXELS.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.is_little_endian, ds.is_implicit_VR = True, False
    pydicom.dcmwrite(tmp_path / "us.dcm", ds)
    volume, geometry = read_image(tmp_path / "us.dcm", allow_2d=True)
    assert volume.shape == (COLS, ROWS, 1) and volume[20, 10, 0] == PIXELS[10, 20]
    assert geometry.spacing[:2] == pytest.approx((0.1, 0.2))
    # column 20, row 10: 20 x 0.1 mm along the row direction (+y), 10 x 0.2 mm along the column direction (-z)
    assert geometry.index_to_world([20, 10, 0]) == pytest.approx([10.0, -3.0, 1.0])


def test_a_2d_nifti_and_an_image_too_small_or_3d(tmp_path):
    image = sitk.GetImageFromArray(PIXELS.astype(np.int16))
    image.SetSpacing((0.5, 0.7))
    sitk.WriteImage(image, str(tmp_path / "flat.nii.gz"))
    volume, geometry = read_image(tmp_path / "flat.nii.gz", allow_2d=True)
    assert volume.shape == (COLS, ROWS, 1) and geometry.spacing[:2] == pytest.approx((0.5, 0.7))
    Image.fromarray(np.zeros((1, 5), np.uint8)).save(tmp_path / "line.png")
    with pytest.raises(ImageError, match="2\\+ pixels"):
        read_image(tmp_path / "line.png", allow_2d=True)
    cube = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32))
    sitk.WriteImage(cube, str(tmp_path / "cube.nii.gz"))
    assert read_image(tmp_path / "cube.nii.gz", allow_2d=True)[0].shape == (6, 5, 4), "a volume stays a volume"


def test_planar_crops_follow_the_image_plane_at_its_pixel_spacing():
    from lnnode.geometry import ImageGeometry
    from lnnode.transforms.crops import NodeCropsd, extract_planar_crops

    # an oblique plane (DICOM-like orientation) with anisotropic pixels: 0.1 mm across, 0.2 mm down
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # columns: i, j and the normal
    geometry = ImageGeometry((40, 30, 1), (0.1, 0.2, 1.0), (10.0, -5.0, 3.0), direction.ravel())
    i, j = np.meshgrid(np.arange(40.0), np.arange(30.0), indexing="ij")
    image = (2.0 * i + 3.0 * j)[:, :, None]  # linear: bilinear sampling is exact inside
    centre = geometry.index_to_world([20.0, 15.0, 0.0])
    crop = extract_planar_crops(image, geometry, [centre], size=5, spacing=0.2)
    assert crop.shape == (1, 1, 5, 5)
    # crop pixel (a, b) is (a - 2) * 0.2 mm along i (2 pixels of 0.1) and (b - 2) * 0.2 mm along j (1 pixel)
    a, b = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    assert np.allclose(crop[0, 0], 2.0 * (20 + 2 * (a - 2)) + 3.0 * (15 + (b - 2)))
    far = geometry.index_to_world([-50.0, -50.0, 0.0])
    assert np.all(extract_planar_crops(image, geometry, [far], 5, 0.2, fill=-1.0) == -1.0)
    d = NodeCropsd(keys="image", shape=(5, 5), spacing=0.2)({"image": image[None], "image_geometry": geometry,
                                                             "nodes": [{"center": centre.tolist()}]})  # fmt: skip
    assert np.array_equal(d["image"], crop)
    with pytest.raises(ValueError, match="one-slice"):
        extract_planar_crops(np.zeros((4, 4, 2)), ImageGeometry((4, 4, 2), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()),
                             [[0, 0, 0]], 3, 1.0)  # fmt: skip


def test_a_pixel_box_is_a_world_box_one_slice_thick_and_back():
    from lnnode.contracts import make_label
    from lnnode.contracts.convert import label_to_planar_boxes, planar_box_to_node
    from lnnode.geometry import ImageGeometry

    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    geometry = ImageGeometry((40, 30, 1), (0.1, 0.2, 0.7), (10.0, -5.0, 3.0), direction.ravel())
    node = planar_box_to_node([4.5, 9.5], [14.5, 19.5], geometry)
    assert node["size"] == pytest.approx([0.7, 1.0, 2.0]), "the normal (world x) one slice thick; 10 px each way"
    boxes = label_to_planar_boxes(make_label("us", [node]), geometry)
    assert boxes.shape == (1, 2, 2) and np.allclose(boxes[0], [[4.5, 9.5], [14.5, 19.5]])
    png = ImageGeometry((40, 30, 1), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    assert planar_box_to_node([4.5, 9.5], [14.5, 19.5], png) == {"center": [9.5, 14.5, 0.0], "size": [10.0, 10.0, 1.0]}


def test_a_pictures_dpi_is_not_a_pixel_spacing(tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "scan.jpg", dpi=(72, 72), quality=95)
    Image.fromarray(np.stack([PIXELS, PIXELS], axis=-1), mode="LA").save(tmp_path / "grey_alpha.png")
    for name in ("scan.jpg", "grey_alpha.png"):
        volume, geometry = read_image(tmp_path / name, allow_2d=True)
        assert geometry.spacing == (1.0, 1.0, 1.0) and geometry.origin == (0.0, 0.0, 0.0), name
        assert volume.shape == (COLS, ROWS, 1)


def test_an_oblique_plane_has_no_world_aligned_pixel_boxes():
    from lnnode.contracts import ContractError
    from lnnode.contracts.convert import planar_box_to_node
    from lnnode.geometry import ImageGeometry

    c, s = np.cos(0.5), np.sin(0.5)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    tilted = ImageGeometry((40, 30, 1), (0.1, 0.2, 1.0), (0, 0, 0), rotation.ravel())
    with pytest.raises(ContractError, match="oblique"):
        planar_box_to_node([1, 1], [5, 5], tilted)
