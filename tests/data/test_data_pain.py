"""Pain archive: layout, subject split, PSPI targets, the similarity warp onto the reference, augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tkn.data as data
from tkn.data import face
from tkn.data.pain import PainDataset, pain_index
from tkn_data_formats import write_pain_frame

SUBJECTS = ["042-ll042", "043-jh043", "047-jl047", "048-aa048", "049-bm049"]
MARKED = (36, 39, 42, 45, 30, 48, 54, 8)  # eye corners, nose tip, mouth corners, chin
FRAME = 128


def base_face():
    """A synthetic 66-point face (x right, y down) in the 66-point AAM order, eyes level."""
    k = np.arange(17)
    jaw = np.stack([-35 * np.cos(np.pi * k / 16), 40 * np.sin(np.pi * k / 16)], 1)
    brows = np.stack([np.r_[np.linspace(-30, -8, 5), np.linspace(8, 30, 5)], np.full(10, -22.0)], 1)
    bridge = np.stack([np.zeros(4), np.linspace(-15, 5, 4)], 1)
    nostrils = np.stack([np.linspace(-8, 8, 5), np.full(5, 10.0)], 1)
    t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eyes = np.concatenate([np.stack([c + 7 * np.cos(t + np.pi), -12 + 3 * np.sin(t)], 1) for c in (-18, 18)])
    t12 = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    mouth = np.stack([-14 * np.cos(t12), 25 + 6 * np.sin(t12)], 1)
    inner = np.stack([-8 * np.cos(t[:6]), 25 + 2 * np.sin(t[:6])], 1)
    shape = np.concatenate([jaw, brows, bridge, nostrils, eyes, mouth, inner])
    assert shape.shape == (66, 2)
    return shape


def similarity(angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def render(points, background, sigma=2.0):
    """Frame with Gaussian blobs of height 200 on a constant background at ``points``."""
    yy, xx = np.mgrid[0:FRAME, 0:FRAME]
    image = np.full((FRAME, FRAME), float(background))
    for x, y in points:
        image += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def expected_reference():
    """The documented placement, written out for a face whose eye line is already horizontal."""
    shape = base_face()
    lo, hi = shape.min(0), shape.max(0)
    return (shape - (lo + hi) / 2) * (0.8 * 48 / (hi - lo).max()) + 23.5


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("pain")
    rng = np.random.default_rng(0)
    records = {}
    for s, subject in enumerate(SUBJECTS):
        sequence = subject.split("-")[1] + "t1aaaff"
        for f in range(2):
            frame = f"{sequence}{f + 1:03d}"
            A = similarity(rng.uniform(-0.4, 0.4), rng.uniform(0.7, 1.0),
                           (64 + rng.uniform(-6, 6), 60 + rng.uniform(-6, 6)))
            landmarks = face.apply_affine(A, base_face())
            pixels = render(landmarks[list(MARKED)], background=20 + 10 * s)
            if s == 1 and f == 1:  # one colour frame: read as grey with Pillow's L weights
                pixels = np.stack([pixels, np.zeros_like(pixels), np.zeros_like(pixels)], -1)
                pixels[..., 1] = 100
            pspi = float(2 * s + f) + 0.5 * f
            write_pain_frame(root, subject, sequence, frame, pixels, landmarks, pspi)
            records[frame] = (subject, pspi, A, pixels)
    return root, records


def blob_centre(image, x, y, r=3):
    """Intensity-weighted centroid of ``image`` (background removed) in a window around (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    win = image[yi - r : yi + r + 1, xi - r : xi + r + 1]
    win = np.clip(win - np.median(image), 0, None)
    yy, xx = np.mgrid[yi - r : yi + r + 1, xi - r : xi + r + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_similarity_fit_inverts_a_known_transform():
    ref = expected_reference()
    angle, scale, shift = 0.7, 2.3, (40.0, -13.0)
    landmarks = face.apply_affine(similarity(angle, scale, shift), ref)
    A = face.similarity_transform(landmarks, ref)
    assert np.abs(face.apply_affine(A, landmarks) - ref).max() < 1e-9
    lin = A[:, :2]
    assert np.isclose(np.sqrt(np.linalg.det(lin)), 1 / scale)
    assert np.isclose(np.arctan2(lin[1, 0], lin[0, 0]), -angle)


def test_similarity_fit_is_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(66, 2)) * 20
    dst = face.apply_affine(similarity(-1.1, 0.5, (3, 4)), src) + rng.normal(size=(66, 2))
    A = face.similarity_transform(src, dst)
    best = ((face.apply_affine(A, src) - dst) ** 2).sum()
    for _ in range(200):  # no nearby similarity does better
        B = similarity(np.arctan2(A[1, 0], A[0, 0]) + rng.normal() * 0.01,
                       np.hypot(A[0, 0], A[1, 0]) * (1 + rng.normal() * 0.01), A[:, 2] + rng.normal(size=2) * 0.1)
        assert ((face.apply_affine(B, src) - dst) ** 2).sum() >= best
    # never a reflection, even when the points are mirrored
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(face.similarity_transform(src, mirrored)[:, :2]) > 0


def test_reference_is_upright_scaled_and_centred(archive):
    root, _ = archive
    ds = data.load("pain", "train", root=root, holdout=2)
    np.testing.assert_allclose(ds.reference, expected_reference(), atol=1e-6)
    eyes = ds.reference[36:42].mean(0), ds.reference[42:48].mean(0)
    assert abs(eyes[0][1] - eyes[1][1]) < 1e-9 and eyes[0][0] < eyes[1][0]
    assert ds.reference[8, 1] > ds.reference[30, 1] > eyes[0][1]  # chin below nose below eyes


def test_warped_faces_land_on_the_reference(archive):
    root, records = archive
    ref = expected_reference()
    for split in ("train", "test"):
        ds = data.load("pain", split, root=root, holdout=2)
        for i in range(len(ds)):
            image, _ = ds[i]
            assert image.shape == (1, 48, 48) and image.dtype == torch.float32
            out = image[0].numpy()
            for k in MARKED:
                error = np.linalg.norm(blob_centre(out, *ref[k]) - ref[k])
                assert error < 0.5, f"{ds.frames[i].name}: landmark {k} lands {error:.2f} px off"


def test_grey_values_and_pixel_scaling(archive):
    root, records = archive
    ds = data.load("pain", "train", root=root, test_subjects=[SUBJECTS[0]])
    for i, frame in enumerate(ds.frames):
        subject, _, _, pixels = records[frame.stem]
        out = ds[i][0][0].numpy()
        background = 20 + 10 * SUBJECTS.index(subject)
        if pixels.ndim == 3:  # red = the grey frame, green = 100, blue = 0
            background = (background * 299 + 100 * 587) / 1000
        corner = out[1, 1]  # far from every blob, inside the frame
        assert abs(corner * 255 - background) <= 0.6
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_targets_are_the_pspi_files(archive):
    root, records = archive
    ds = data.load("pain", "test", root=root, holdout=2)
    for i, frame in enumerate(ds.frames):
        target = ds[i][1]
        assert target.dtype == torch.float32 and target.shape == ()
        assert float(target) == records[frame.stem][1]


def test_split_is_by_subject_and_seeded(archive):
    root, records = archive
    for seed in (0, 1, 2):
        expected = sorted(np.random.default_rng(seed).choice(sorted(SUBJECTS), size=2, replace=False).tolist())
        train = data.load("pain", "train", root=root, seed=seed, holdout=2)
        test = data.load("pain", "test", root=root, seed=seed, holdout=2)
        val = data.load("pain", "val", root=root, seed=seed, holdout=2)
        assert sorted(set(test.subjects)) == expected == test.test_subjects
        assert set(train.subjects) == set(SUBJECTS) - set(expected)
        assert val.frames == test.frames
        assert len(train) + len(test) == len(records)
        # the reference comes from the training subjects only, the same for both splits
        np.testing.assert_array_equal(train.reference, test.reference)


def test_default_holds_out_seven_subjects(tmp_path):
    landmarks = face.apply_affine(similarity(0, 1, (60, 60)), base_face())
    names = [f"{100 + i:03d}-xx{100 + i:03d}" for i in range(9)]
    for name in names:
        write_pain_frame(tmp_path, name, "s1", "f001", np.zeros((8, 8), np.uint8), landmarks, 1.0)
    test = data.load("pain", "test", root=tmp_path, seed=3)
    assert len(test.test_subjects) == 7 and len(test) == 7
    assert len(data.load("pain", "train", root=tmp_path, seed=3)) == 2


def test_flip_and_landmark_noise(archive):
    root, _ = archive
    clean = data.load("pain", "train", root=root, holdout=2)
    flipped = data.load("pain", "train", root=root, holdout=2, augment=True, landmark_noise=0.0, flip_prob=1.0)
    torch.testing.assert_close(flipped[0][0], clean[0][0].flip(-1))
    noisy = data.load("pain", "train", root=root, holdout=2, augment=True, landmark_noise=1.5, flip_prob=0.0)
    torch.manual_seed(0)
    a = noisy[0][0]
    torch.manual_seed(0)
    b = noisy[0][0]
    torch.testing.assert_close(a, b)
    assert (a - clean[0][0]).abs().max() > 0.02
    # noise of 1.5 px on 66 points moves the fit by a fraction of a pixel: blobs stay near the reference
    ref = expected_reference()
    assert np.linalg.norm(blob_centre(a[0].numpy(), *ref[30]) - ref[30]) < 1.5


def test_flip_probability_is_used(archive):
    root, _ = archive
    clean = data.load("pain", "train", root=root, holdout=2)[0][0]
    ds = data.load("pain", "train", root=root, holdout=2, augment=True, landmark_noise=0.0, flip_prob=0.25)
    torch.manual_seed(1)
    outcomes = []
    for _ in range(200):
        image = ds[0][0]
        flipped = torch.equal(image, clean.flip(-1))
        assert flipped or torch.equal(image, clean)
        outcomes.append(flipped)
    assert 30 <= sum(outcomes) <= 70  # binomial(200, 0.25): mean 50, sd 6.1


def test_dataloader_batches(archive):
    root, _ = archive
    ds = data.load("pain", "train", root=root, holdout=2, augment=True)
    x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert x.shape == (4, 1, 48, 48) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0
    assert y.dtype == torch.float32 and y.tolist() == [float(ds[i][1]) for i in range(4)]  # augmentation keeps PSPI


def test_warp_affine_against_naive_bilinear():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, size=(20, 25))
    A = similarity(0.3, 1.7, (-4.0, 2.5))
    out = face.warp_affine(torch.from_numpy(image), A, 16).numpy()
    inv = np.linalg.inv(A[:, :2])
    for i in range(16):
        for j in range(16):
            x, y = inv @ (np.array([j, i], float) - A[:, 2])
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            value = 0.0
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < 20 and 0 <= xx < 25:
                        value += wy * wx * image[yy, xx]
            assert abs(out[i, j] - value) < 1e-3, (i, j)


def test_warp_affine_integer_shift_is_exact_and_outside_is_zero():
    image = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    out = face.warp_affine(image, np.array([[1.0, 0, -3], [0, 1.0, -2]]), 10)
    torch.testing.assert_close(out[:8, :7], image[2:, 3:])
    assert float(out[8:].abs().sum()) == 0 and float(out[:, 7:].abs().sum()) == 0


def test_procrustes_mean_recovers_the_shape():
    rng = np.random.default_rng(3)
    base = base_face()
    shapes = np.stack([face.apply_affine(similarity(rng.uniform(-3, 3), rng.uniform(0.2, 5),
                                                    rng.normal(size=2) * 50), base)
                       for _ in range(12)])
    mean = face.procrustes_mean(shapes)
    aligned = face.apply_affine(face.similarity_transform(base, mean), base)
    assert np.abs(aligned - mean).max() < 1e-9
    assert np.isclose((mean**2).sum(), 1.0) and np.allclose(mean.mean(0), 0)


# ------------------------------------------------------------------------------------------- errors


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pain: expected the folder .*Images "
                                                r"\(Images/<subject>/<sequence>/<frame>.png, AAM_landmarks"):
        data.load("pain", "train", root=tmp_path)
    (tmp_path / "Images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"found no frames matching .*Images/<subject>/<sequence>/<frame>.png"):
        data.load("pain", "train", root=tmp_path)


def one_frame_archive(root, landmarks_text=None, pspi_text=None, n_subjects=3):
    landmarks = face.apply_affine(similarity(0, 1, (60, 60)), base_face())
    for i in range(n_subjects):
        write_pain_frame(root, f"00{i}-ab00{i}", "seq", "seq001", np.zeros((8, 8), np.uint8), landmarks, 2.0)
    aam = root / "AAM_landmarks" / "000-ab000" / "seq" / "seq001_aam.txt"
    label = root / "Frame_Labels" / "PSPI" / "000-ab000" / "seq" / "seq001_facs.txt"
    if landmarks_text is not None:
        aam.write_text(landmarks_text)
    if pspi_text is not None:
        label.write_text(pspi_text)
    return aam, label


@pytest.mark.parametrize(
    "landmarks_text,pspi_text,error,message",
    [
        ("1 2\n" * 65, None, ValueError,
         r"seq001_aam.txt: expected 66 lines 'x y' of finite numbers, found 130 numbers"),
        ("1 x\n" * 66, None, ValueError, r"seq001_aam.txt: expected 66 lines 'x y' of numbers"),
        ("nan 1\n" * 66, None, ValueError, r"expected 66 lines 'x y' of finite numbers"),
        (None, "17.0\n", ValueError, r"seq001_facs.txt: expected a PSPI in 0..16, found 17.0"),
        (None, "1 2\n", ValueError, r"seq001_facs.txt: expected one PSPI number in 0..16 \(2 values\)"),
        (None, "", ValueError, r"expected one PSPI number in 0..16 \(0 values\)"),
    ],
)
def test_malformed_annotation_files(tmp_path, landmarks_text, pspi_text, error, message):
    one_frame_archive(tmp_path, landmarks_text, pspi_text)
    with pytest.raises(error, match=message):
        data.load("pain", "train", root=tmp_path, holdout=1)


def test_missing_annotation_files(tmp_path):
    aam, label = one_frame_archive(tmp_path)
    label.unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"pain: expected the PSPI label file .*Frame_Labels/PSPI/000-ab000/seq/seq001_facs.txt"):
        pain_index(tmp_path)
    aam.unlink()
    (tmp_path / "Images" / "new").mkdir()  # the scan is cached by the Images folder's mtime
    with pytest.raises(FileNotFoundError,
                       match=r"pain: expected the landmark file .*AAM_landmarks/000-ab000/seq/seq001_aam.txt"):
        pain_index(tmp_path)


def test_bad_split_arguments(tmp_path):
    one_frame_archive(tmp_path)
    index = pain_index(tmp_path)
    with pytest.raises(ValueError, match=r"holdout: expected an integer in 1..2 \(the archive has 3 subjects\), got 7"):
        data.load("pain", "train", root=tmp_path)
    with pytest.raises(ValueError, match=r"holdout: expected an integer in 1..2 .*got 0"):
        PainDataset(index, "train", holdout=0)
    with pytest.raises(ValueError, match=r"test_subjects: expected a non-empty proper subset of the archive's "
                                         r"subjects \['000-ab000'"):
        PainDataset(index, "train", test_subjects=["999-zz999"])
    with pytest.raises(ValueError, match=r"test_subjects: expected a non-empty proper subset"):
        PainDataset(index, "train", test_subjects=["000-ab000", "001-ab001", "002-ab002"])
    with pytest.raises(ValueError, match=r"split: expected 'train', 'test' or 'val' for pain, got 'extra'"):
        PainDataset(index, "extra", holdout=1)
    with pytest.raises(ValueError, match=r"landmark_noise: expected a non-negative number of pixels, got -1"):
        PainDataset(index, "train", holdout=1, landmark_noise=-1)
    with pytest.raises(ValueError, match=r"flip_prob: expected a probability in \[0, 1\], got 2"):
        PainDataset(index, "train", holdout=1, flip_prob=2)
    with pytest.raises(ValueError, match=r"reference: expected shape \(66, 2\), got \(68, 2\)"):
        PainDataset(index, "train", holdout=1, reference=np.zeros((68, 2)))


def test_geometry_argument_errors():
    with pytest.raises(ValueError, match=r"src: expected points of shape \(..., K, 2\) with K >= 2, got \(5, 3\)"):
        face.similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"dst: expected \(5, 2\) points to match src, got \(4, 2\)"):
        face.similarity_transform(np.ones((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"src: all points coincide"):
        face.similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"A: expected an invertible affine map"):
        face.warp_affine(torch.zeros(4, 4), np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match=r"mean_shape: expected \(48 or more, 2\) landmarks, got \(10, 2\)"):
        face.upright_reference(np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"shapes: expected \(M, K, 2\) with M >= 1, got \(0, 66, 2\)"):
        face.procrustes_mean(np.zeros((0, 66, 2)))
