"""Mask proposals without learned weights (depthclip_ros.objects.proposals).

The scenes are rendered here with numpy: a textured wall and a receding floor, and a few
flat-coloured objects at known depths painted back to front, so each object's visible
mask is known exactly. Every scene has objects that touch or overlap in the image and a
pair of nearly equal colours at different depths, which only the depth refinement can
separate.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from depthclip_ros.objects.proposals import (
    _working_shape,
    check_labels,
    masks_from_labels,
    MAX_MASKS,
    ProposalError,
    propose,
    WORK_PIXELS_PER_SECOND,
)

WALL_DEPTH_M = 5.0

# (kind, shape parameters in image fractions, colour, depth in metres). Rectangles are
# (top, left, bottom, right); discs (row, col, radius); ellipses (row, col, row radius,
# col radius, angle in radians); radii are fractions of min(H, W).
Shape = tuple[str, tuple[float, ...], tuple[int, int, int], float]

SCENES: dict[str, tuple[int, int, int, list[Shape]]] = {
    'vga_red_pair': (480, 640, 0, [
        ('rect', (0.30, 0.10, 0.75, 0.40), (190, 45, 40), 3.0),
        ('disc', (0.62, 0.33, 0.13), (193, 43, 42), 1.6),  # same red, nearer, overlaps
        ('ellipse', (0.50, 0.50, 0.20, 0.12, 0.4), (40, 70, 170), 3.0),  # touches the disc
        ('disc', (0.80, 0.82, 0.10), (50, 150, 60), 2.2),
    ]),
    'vga_yellow_pair': (480, 640, 1, [
        ('rect', (0.10, 0.55, 0.45, 0.90), (220, 200, 40), 4.0),
        ('rect', (0.40, 0.60, 0.85, 0.80), (217, 198, 43), 2.0),  # same yellow, nearer
        ('disc', (0.30, 0.25, 0.15), (30, 120, 160), 3.5),
        ('ellipse', (0.75, 0.30, 0.10, 0.22, -0.2), (150, 60, 150), 2.5),
        ('rect', (0.55, 0.05, 0.70, 0.20), (60, 60, 60), 3.0),  # touches the ellipse
    ]),
    'vga_row_of_boxes': (480, 640, 4, [
        ('rect', (0.25, 0.15, 0.70, 0.35), (210, 120, 40), 2.8),
        ('rect', (0.35, 0.35, 0.70, 0.50), (40, 150, 140), 2.8),  # touches both sides
        ('rect', (0.20, 0.50, 0.70, 0.62), (120, 60, 160), 2.8),
        ('disc', (0.60, 0.42, 0.12), (44, 146, 144), 1.5),  # teal like the middle box
        ('ellipse', (0.85, 0.80, 0.07, 0.15, 0.0), (235, 235, 225), 1.9),
    ]),
    'hd_teal_pair': (720, 1280, 2, [
        ('ellipse', (0.45, 0.30, 0.25, 0.10, 0.0), (60, 160, 160), 2.5),
        ('ellipse', (0.45, 0.40, 0.25, 0.10, 0.0), (62, 158, 163), 3.5),  # same, behind
        ('rect', (0.20, 0.52, 0.60, 0.85), (200, 90, 30), 3.0),
        ('disc', (0.78, 0.70, 0.12), (230, 230, 230), 2.0),
    ]),
    'tiny_blue_pair': (30, 40, 3, [
        ('rect', (0.20, 0.10, 0.70, 0.45), (40, 60, 180), 2.0),
        ('rect', (0.30, 0.45, 0.80, 0.75), (42, 62, 178), 3.0),  # same blue, touching
        ('disc', (0.35, 0.85, 0.14), (200, 40, 40), 2.5),  # touches the second box
    ]),
}


def _shape_mask(height: int, width: int, kind: str, params: tuple[float, ...]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of one shape, sampled at pixel centres."""
    side = min(height, width)
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    if kind == 'rect':
        top, left, bottom, right = params
        return ((rows >= top * height) & (rows < bottom * height)
                & (cols >= left * width) & (cols < right * width))
    if kind == 'disc':
        row, col, radius = params
        return (rows - row * height) ** 2 + (cols - col * width) ** 2 <= (radius * side) ** 2
    row, col, row_radius, col_radius, angle = params
    d_row, d_col = rows - row * height, cols - col * width
    u = (np.cos(angle) * d_col + np.sin(angle) * d_row) / (col_radius * side)
    v = (-np.sin(angle) * d_col + np.cos(angle) * d_row) / (row_radius * side)
    return u * u + v * v <= 1.0


def render(height: int, width: int, objects: list[Shape], seed: int
           ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(rgb uint8, depth float32 metres, visible mask of each object)``.

    Wall at ``WALL_DEPTH_M`` above 62 % of the height, a floor plane below it coming
    towards the camera; colour gradients plus Gaussian texture; objects painted far to
    near with a faint vertical shading; then sensor noise on colour (sigma 4), 1 %
    multiplicative depth noise and 1 % unknown depth pixels (half NaN, half 0).
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(height, dtype=np.float64)[:, None] + 0.5
    y = rows / height
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    horizon, vanishing = 0.62 * height, 0.3 * height
    floor = np.broadcast_to(rows >= horizon, (height, width))
    floor_depth = WALL_DEPTH_M * (horizon - vanishing) / np.maximum(rows - vanishing, 1e-6)
    depth = np.where(floor, floor_depth, WALL_DEPTH_M) * np.ones((1, width))
    wall = np.stack(np.broadcast_arrays(170 + 30 * x, 160 + 20 * x + 10 * y, 140 + 20 * y), -1)
    ground = np.stack(np.broadcast_arrays(110 + 20 * y, 90 + 10 * x + 20 * y, 70 + 0 * x), -1)
    image = np.where(floor[..., None], ground, wall) + rng.normal(0.0, 6.0, (height, width, 3))
    owner = np.full((height, width), -1)
    shading = 8.0 * (y - 0.5) * np.ones((1, width))
    for i in sorted(range(len(objects)), key=lambda i: -objects[i][3]):
        kind, params, colour, z = objects[i]
        mask = _shape_mask(height, width, kind, params)
        image[mask] = np.asarray(colour, dtype=np.float64) + shading[mask][:, None]
        depth[mask] = z
        owner[mask] = i
    image += rng.normal(0.0, 4.0, image.shape)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    depth = depth * (1.0 + rng.normal(0.0, 0.01, depth.shape))
    holes = rng.random(depth.shape) < 0.01
    depth[holes] = np.where(rng.random(int(holes.sum())) < 0.5, np.nan, 0.0)
    return rgb, depth.astype(np.float32), [owner == i for i in range(len(objects))]


def best_iou(labels: np.ndarray, mask: np.ndarray) -> float:
    """Largest IoU between ``mask`` and any proposal (label > 0) of ``labels``."""
    best = 0.0
    for label in np.unique(labels[mask]):
        if label == 0:
            continue
        proposal = labels == label
        best = max(best, np.count_nonzero(proposal & mask) / np.count_nonzero(proposal | mask))
    return best


def scene(name: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    height, width, seed, objects = SCENES[name]
    return render(height, width, objects, seed)


def check_label_image(labels: np.ndarray, shape: tuple[int, int], max_masks: int) -> None:
    """int32, right shape, labels exactly 0..N with N <= max_masks, areas non-increasing."""
    assert labels.dtype == np.int32 and labels.shape == shape
    counts = np.bincount(labels.ravel())
    n = counts.size - 1
    assert n <= max_masks
    assert np.all(counts[1:] > 0), 'labels 1..N must all be used'
    assert np.all(np.diff(counts[1:]) <= 0), 'labels must be in order of decreasing area'


# --- the renderer itself ---------------------------------------------------------------

def test_scenes_have_touching_objects_and_a_similar_colour_pair_at_other_depths():
    for name in SCENES:
        rgb, depth, masks = scene(name)
        assert all(m.sum() >= 40 for m in masks), name
        touching = sum(np.any((np.roll(a, 1, 0) | np.roll(a, 1, 1)) & b)
                       for i, a in enumerate(masks) for b in masks[i + 1:])
        assert touching >= 1, name
        objects = SCENES[name][3]
        assert any(np.abs(np.subtract(a[2], b[2])).max() <= 5 and abs(a[3] - b[3]) >= 0.5
                   for i, a in enumerate(objects) for b in objects[i + 1:]), name


# --- propose -------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(SCENES))
def test_every_rendered_object_is_one_proposal(name):
    rgb, depth, masks = scene(name)
    labels = propose(rgb, depth)
    check_label_image(labels, rgb.shape[:2], MAX_MASKS)
    ious = [best_iou(labels, m) for m in masks]
    assert min(ious) >= 0.8, f'{name}: best IoU per object {np.round(ious, 3).tolist()}'


def test_depth_separates_the_same_colour_at_two_depths():
    rgb, depth, masks = scene('vga_red_pair')
    without = [best_iou(propose(rgb), m) for m in masks[:2]]
    with_depth = [best_iou(propose(rgb, depth), m) for m in masks[:2]]
    assert min(without) < 0.8 <= min(with_depth), (without, with_depth)


def test_depth_is_optional():
    rgb, _, masks = scene('vga_row_of_boxes')
    labels = propose(rgb, None)
    check_label_image(labels, rgb.shape[:2], MAX_MASKS)
    # the outer boxes touch the middle one but differ in colour: found without depth
    assert min(best_iou(labels, masks[i]) for i in (0, 2, 4)) >= 0.8


def test_sparse_depth_like_lidar_still_separates_distinct_objects():
    rgb, depth, masks = scene('vga_row_of_boxes')
    sparse = np.where(np.random.default_rng(5).random(depth.shape) < 0.15, depth, np.nan)
    labels = propose(rgb, sparse)
    check_label_image(labels, rgb.shape[:2], MAX_MASKS)
    assert min(best_iou(labels, masks[i]) for i in (0, 2, 4)) >= 0.8


def test_propose_is_deterministic_and_ignores_memory_layout():
    rgb, depth, _ = scene('vga_yellow_pair')
    first = propose(rgb, depth)
    assert np.array_equal(first, propose(rgb.copy(), depth.copy()))
    # the same pixels in a non-contiguous array
    wide = np.zeros((rgb.shape[0], rgb.shape[1] * 2, 3), np.uint8)
    wide[:, ::2] = rgb
    assert np.array_equal(first, propose(wide[:, ::2], depth.astype(np.float64)))


def test_max_masks_bounds_the_proposals():
    # a 12 x 16 checkerboard of random colours: far more regions than the bound
    rng = np.random.default_rng(7)
    cells = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    rgb = np.repeat(np.repeat(cells, 20, axis=0), 20, axis=1)
    many = propose(rgb)
    check_label_image(many, rgb.shape[:2], MAX_MASKS)
    assert many.max() == MAX_MASKS
    for bound in (1, 5):
        labels = propose(rgb, max_masks=bound)
        check_label_image(labels, rgb.shape[:2], bound)
        assert labels.max() == bound
        # the kept proposals are the largest ones, in the same order
        assert np.array_equal(labels, np.where(many <= bound, many, 0))


def test_min_area_fraction_drops_small_regions():
    rgb, depth, masks = scene('vga_red_pair')
    green = masks[3].mean()  # the smallest object
    assert best_iou(propose(rgb, depth), masks[3]) >= 0.8
    labels = propose(rgb, depth, min_area_fraction=green * 1.2)
    assert best_iou(labels, masks[3]) < 0.5  # too small: absorbed or left out
    counts = np.bincount(labels.ravel())[1:]
    assert counts.min() >= green * 1.2 * labels.size


def test_constant_image_and_unknown_depth_give_valid_labels():
    rgb = np.full((48, 64, 3), 128, np.uint8)
    for depth in (None, np.full((48, 64), np.nan), np.full((48, 64), np.inf),
                  np.zeros((48, 64), np.float32), np.full((48, 64), -1.0)):
        labels = propose(rgb, depth)
        check_label_image(labels, (48, 64), MAX_MASKS)
        assert labels.max() <= 1
    rgb, depth, _ = scene('vga_red_pair')
    depth = depth.astype(np.float64)
    depth[:100] = np.inf
    depth[100:110] = -np.inf
    depth[200, 200] = 1e-300
    depth[201, 201] = 1e300
    check_label_image(propose(rgb, depth), rgb.shape[:2], MAX_MASKS)


@pytest.mark.parametrize('shape', [(1, 1), (1, 9), (9, 1), (2, 3), (3, 2), (5, 4)])
def test_tiny_images(shape):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    depth = rng.uniform(0.5, 5.0, shape)
    for d in (None, depth):
        check_label_image(propose(rgb, d, min_area_fraction=0.0), shape, MAX_MASKS)


@pytest.mark.parametrize('rgb, depth, options, problem', [
    (np.zeros((4, 5), np.uint8), None, {}, r'\(H, W, 3\)'),
    (np.zeros((4, 5, 4), np.uint8), None, {}, r'\(H, W, 3\)'),
    (np.zeros((4, 5, 3), np.float32), None, {}, 'uint8'),
    (np.zeros((0, 5, 3), np.uint8), None, {}, 'empty'),
    (np.zeros((4, 5, 3), np.uint8), np.ones((5, 4)), {}, 'depth must be'),
    (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5, 1)), {}, 'depth must be'),
    (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.uint16), {}, 'float metres'),
    (np.zeros((4, 5, 3), np.uint8), None, {'max_masks': 0}, 'max_masks'),
    (np.zeros((4, 5, 3), np.uint8), None, {'max_masks': -3}, 'max_masks'),
    (np.zeros((4, 5, 3), np.uint8), None, {'max_masks': 2.5}, 'max_masks'),
    (np.zeros((4, 5, 3), np.uint8), None, {'max_masks': True}, 'max_masks'),
    (np.zeros((4, 5, 3), np.uint8), None, {'time_budget_s': 0.0}, 'time_budget_s'),
    (np.zeros((4, 5, 3), np.uint8), None, {'time_budget_s': float('nan')}, 'time_budget_s'),
    (np.zeros((4, 5, 3), np.uint8), None, {'min_area_fraction': 1.0}, 'min_area_fraction'),
    (np.zeros((4, 5, 3), np.uint8), None, {'min_area_fraction': -0.1}, 'min_area_fraction'),
])
def test_bad_propose_input_is_rejected_with_the_reason(rgb, depth, options, problem):
    with pytest.raises(ProposalError, match=problem):
        propose(rgb, depth, **options)
    assert issubclass(ProposalError, ValueError)


# --- the time budget -----------------------------------------------------------------

def test_working_resolution_is_bounded_by_the_budget():
    for height, width in ((480, 640), (720, 1280), (3000, 4000), (100, 20000)):
        for budget in (0.05, 0.5, 2.0):
            rows, cols = _working_shape(height, width, budget)
            assert rows * cols <= max(4096, budget * WORK_PIXELS_PER_SECOND)
            assert 1 <= rows <= height and 1 <= cols <= width
            if rows > 20 and cols > 20:
                assert abs(rows / cols - height / width) < 0.02 * height / width
    assert _working_shape(30, 40, 0.5) == (30, 40)  # small images keep their size
    assert _working_shape(480, 640, 100.0) == (480, 640)
    # a bigger budget never means a smaller working image
    sizes = [np.prod(_working_shape(720, 1280, b)) for b in (0.01, 0.1, 0.3, 1.0, 3.0)]
    assert sizes == sorted(sizes)


def test_cpu_time_does_not_grow_with_the_input_size():
    """4x the pixels at the same budget: the same working size, so far less than 4x the
    CPU time (a ratio within this run; the best of three runs of each)."""
    height, width, seed, objects = SCENES['vga_red_pair']
    small = render(height, width, objects, seed)[:2]
    big = render(2 * height, 2 * width, objects, seed)[:2]

    def cpu_seconds(rgb: np.ndarray, depth: np.ndarray) -> float:
        best = float('inf')
        for _ in range(3):
            start = time.process_time()
            propose(rgb, depth)
            best = min(best, time.process_time() - start)
        return best

    assert cpu_seconds(*big) < 2.5 * cpu_seconds(*small)


# --- check_labels ----------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.int32, np.uint32, np.int64,
                                   np.int16, np.uint64])
def test_check_labels_accepts_integer_images(dtype):
    labels = np.array([[0, 1, 2], [2, 2, 7]], dtype=dtype)
    out = check_labels(labels, shape=(2, 3))
    assert out.dtype == np.int32 and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 2], [2, 2, 7]]


def test_check_labels_returns_a_view_when_it_can():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert np.shares_memory(check_labels(labels), labels)
    unsigned = labels.astype(np.uint32)
    assert np.shares_memory(check_labels(unsigned), unsigned)
    assert not np.shares_memory(check_labels(labels.astype(np.uint16)), labels)


@pytest.mark.parametrize('labels, shape, problem', [
    (np.zeros((2, 3, 1), np.int32), None, '2-D'),
    (np.zeros(6, np.int32), None, '2-D'),
    (np.zeros((0, 3), np.int32), None, 'empty'),
    (np.zeros((2, 3), np.float32), None, 'integer dtype'),
    (np.zeros((2, 3), bool), None, 'integer dtype'),
    (np.array([['a', 'b']]), None, 'integer dtype'),
    (np.array([[0, -1]], np.int32), None, 'negative'),
    (np.array([[0, -1]], np.int8), None, 'negative'),
    (np.array([[0, 2 ** 31]], np.int64), None, 'int32'),
    (np.array([[0, 2 ** 32 - 1]], np.uint32), None, 'int32'),
    (np.zeros((2, 3), np.uint8), (3, 2), 'shape'),
])
def test_check_labels_rejects_bad_images(labels, shape, problem):
    with pytest.raises(ProposalError, match=problem):
        check_labels(labels, shape)


# --- masks_from_labels -----------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.int32])
def test_masks_from_labels_excludes_background(dtype):
    labels = np.array([[0, 3, 3, 0],
                       [1, 1, 3, 0],
                       [0, 0, 0, 9]], dtype=dtype)
    ids, masks = masks_from_labels(labels)
    assert ids.dtype == np.int32 and ids.tolist() == [1, 3, 9]
    assert masks.dtype == bool and masks.shape == (3, 3, 4)
    for i, mask in zip(ids, masks):
        assert np.array_equal(mask, labels == i)
    assert not masks.any(axis=0)[labels == 0].any()


def test_masks_from_labels_keeps_the_largest_in_id_order():
    # areas: id 1 -> 2, id 2 -> 4, id 4 -> 4, id 6 -> 3, id 8 -> 1
    labels = np.array([[1, 1, 2, 2, 2, 2],
                       [4, 4, 4, 4, 6, 6],
                       [6, 8, 0, 0, 0, 0]], dtype=np.uint16)
    ids, masks = masks_from_labels(labels, max_masks=3)
    assert ids.tolist() == [2, 4, 6]
    assert [int(m.sum()) for m in masks] == [4, 4, 3]
    ids, _ = masks_from_labels(labels, max_masks=1)  # equal areas: the smaller id
    assert ids.tolist() == [2]
    ids, _ = masks_from_labels(labels, min_pixels=3)
    assert ids.tolist() == [2, 4, 6]
    ids, masks = masks_from_labels(labels, min_pixels=5)
    assert ids.shape == (0,) and masks.shape == (0, 3, 6)


def test_masks_from_labels_memory_is_bounded():
    labels = np.arange(200 * 300, dtype=np.int32).reshape(200, 300)  # 60k one-pixel ids
    labels[:, :10] = 2_000_000_000  # a huge id: no table of that size
    ids, masks = masks_from_labels(labels, max_masks=4)
    assert masks.shape == (4, 200, 300)
    assert ids[-1] == 2_000_000_000 and masks[-1].sum() == 2000


def test_masks_from_labels_rejects_bad_input():
    with pytest.raises(ProposalError, match='max_masks'):
        masks_from_labels(np.ones((2, 2), np.uint8), max_masks=0)
    with pytest.raises(ProposalError, match='min_pixels'):
        masks_from_labels(np.ones((2, 2), np.uint8), min_pixels=-1)
    with pytest.raises(ProposalError, match='integer dtype'):
        masks_from_labels(np.ones((2, 2), np.float64))
    with pytest.raises(ProposalError, match='2-D'):
        masks_from_labels(np.ones((2, 2, 2), np.int32))


def test_proposals_round_trip_through_masks_from_labels():
    rgb, depth, _ = scene('vga_yellow_pair')
    labels = propose(rgb, depth, max_masks=8)
    ids, masks = masks_from_labels(labels)
    assert ids.tolist() == list(range(1, labels.max() + 1))
    assert np.array_equal(masks.sum(axis=0) > 0, labels > 0)
    assert not (masks.sum(axis=0) > 1).any()
