"""What the tools tell people is true and readable: topic names as they are in the bag,
closing lists of exactly the files written, label images with a preview a person can see,
colour bars that say what they span."""

import argparse
from pathlib import Path
import re
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from depthclip_ros.io.visualize import (
    CAPTION_LINE,
    colorize_labels,
    DEPTH_PERCENTILES,
    preview,
    preview_caption,
    query_rgb,
    UNCERTAINTY_PERCENTILE,
)
from depthclip_ros.tools import bag as bag_tool
from depthclip_ros.tools.demo import closing_list

# ---------------------------------------------------------------------------------------
# bag: the Foxglove line names topics the bag has, by their names


def report_with(*names: str, namespace: str = '/cam/color') -> SimpleNamespace:
    return SimpleNamespace(output_topics={n: f'{namespace}/{n}' for n in names})


DEPTH = ('depth/image', 'depth/camera_info', 'points')


@pytest.mark.parametrize('names', [
    DEPTH,
    (*DEPTH, 'depth/colormap'),
    (*DEPTH, 'depth/uncertainty'),
    (*DEPTH, 'depth/colormap', 'depth/uncertainty'),
    (*DEPTH, 'objects/markers', 'objects/points', 'objects/labels', 'objects/camera_info'),
])
def test_the_foxglove_line_names_only_topics_the_bag_has(names):
    report = report_with(*names)
    text = bag_tool.foxglove_panels(report)
    named = set(re.findall(r'/cam/color/[\w/]+', text))
    assert named <= set(report.output_topics.values()), text
    assert '/cam/color/depth/image' in named and '/cam/color/points' in named
    for shown in ('depth/colormap', 'depth/uncertainty', 'objects/labels', 'objects/markers'):
        assert (f'/cam/color/{shown}' in named) == (shown in names), text
    assert not re.search(r'(?<![/\w])depth(?![/\w])', text), text  # no bare "depth" topic


def test_bag_help_and_docs_name_the_depth_image_topic():
    parser = argparse.ArgumentParser(description=bag_tool.__doc__)
    bag_tool.add_arguments(parser)
    text = parser.format_help()
    assert 'depth/image, depth/camera_info' in text
    assert not re.search(r'plus depth,', text)


# ---------------------------------------------------------------------------------------
# demo: the closing list is what was written


def listed(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines[1:] if not line.strip().startswith('for each')]


def test_a_bag_only_demo_lists_the_bag_and_nothing_else(tmp_path):
    lines = closing_list(tmp_path, [], False, False, [tmp_path / 'rec_depth'])
    assert listed(lines) == ['rec_depth/']
    assert not any('.png' in line or '.npy' in line or '.ply' in line for line in lines)


def test_a_demo_of_images_lists_every_kind_of_file_uncertainty_included(tmp_path):
    lines = closing_list(tmp_path, ['a', 'b'], False, False, [])
    assert listed(lines) == ['<name>_preview.png', '<name>_depth.npy',
                             '<name>_uncertainty.npy', '<name>.ply']
    assert any('a, b' in line for line in lines)
    one = closing_list(tmp_path, ['corridor'], True, True, [tmp_path / 'corridor_depth'])
    assert listed(one) == ['corridor_preview.png', 'corridor_depth.npy',
                           'corridor_uncertainty.npy', 'corridor.ply',
                           'corridor_truth_depth.npy', 'corridor_camera/', 'corridor_depth/']
    assert any('corridor_depth.png' in line for line in one)  # the 16-bit PNG too


# ---------------------------------------------------------------------------------------
# label images: a coloured preview


def test_colorize_labels_gives_every_label_its_own_visible_colour():
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:10], labels[10:18, 5:25], labels[0:4, 26:30] = 1, 2, 300
    coloured = colorize_labels(labels)
    assert coloured.dtype == np.uint8 and coloured.shape == (20, 30, 3)
    assert (coloured[labels == 0] == 0).all()
    colours = {tuple(coloured[labels == k][0]) for k in (1, 2, 300)}
    assert len(colours) == 3 and all(max(c) > 200 for c in colours)  # bright, distinct
    assert tuple(coloured[3, 3]) == tuple(round(255 * c) for c in query_rgb(1))
    rgb = np.full((20, 30, 3), 200, np.uint8)
    over = colorize_labels(labels, rgb)
    assert (over[labels == 0] == 100).all()  # the image, greyed and darkened
    assert tuple(over[3, 3]) == tuple(round(100 + 0.5 * v) for v in coloured[3, 3])
    with pytest.raises(ValueError):
        colorize_labels(labels, rgb[:10])


# ---------------------------------------------------------------------------------------
# the preview says what its colour bars span


def test_the_preview_says_what_its_colour_bars_span():
    assert DEPTH_PERCENTILES == (2, 98) and UNCERTAINTY_PERCENTILE == 98
    assert preview_caption(False) == [
        'depth bar: 2nd-98th percentile (beyond: end colours)']
    assert preview_caption(True)[1] == 'uncertainty bar: 0-98th percentile (beyond: end colour)'
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    depth = rng.uniform(1, 5, (120, 160)).astype(np.float32)
    for sigma, lines in ((None, 1), (depth / 10, 2)):
        picture = preview(rgb, depth, sigma=sigma)
        assert picture.shape[0] == 120 + lines * CAPTION_LINE
        caption = picture[120:]
        assert (caption == 255).mean() > 0.6  # white, with text on it
        for line in range(lines):
            rows = caption[line * CAPTION_LINE:(line + 1) * CAPTION_LINE]
            assert (rows.max(axis=2) < 100).sum() > 50, f'caption line {line} is empty'


def test_the_caption_is_legible_under_a_real_size_preview(tmp_path):
    """Written at the usual font size (not shrunk) under a 640x480 frame's preview."""
    rgb = np.zeros((480, 640, 3), np.uint8)
    picture = preview(rgb, np.ones((480, 640), np.float32), sigma=np.ones((480, 640)))
    text_rows = np.nonzero((picture[480:].max(axis=2) < 100).any(axis=1))[0]
    assert text_rows.max() - text_rows.min() >= 8 + CAPTION_LINE  # two lines of ~9 px text
    path = tmp_path / 'p.png'
    cv2.imwrite(str(path), picture)
    assert Path(path).stat().st_size > 0


def test_bag_lists_every_topic_it_could_not_copy(tmp_path, capsys):
    """A RealSense bag has dozens of topics whose names ROS 2 refuses: each is named."""
    from depthclip_ros.bags.process import BagReport
    from depthclip_ros.tools.bag import print_summary
    report = BagReport()
    report.skipped_topics = [f'/device_0/sensor_0/option/Option {i}/value' for i in range(38)]
    print_summary(report, tmp_path / 'out', random_weights=True)
    out = capsys.readouterr().out
    assert 'not copied (names ROS 2 does not allow): 38 topics' in out
    assert all(repr(topic) in out for topic in report.skipped_topics)
