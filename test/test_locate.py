"""``depthclip-ros locate``: objects named in words, in one image (CPU, the tests' tiny
random model).

Random weights: the tests check the mechanics (files, JSON, refusals, inputs untouched),
never which mask is chosen.
"""

import hashlib
import json
import math
from pathlib import Path
import re

import cv2
import numpy as np
import pytest

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.io.visualize import read_ply
from depthclip_ros.tools.cli import main

from conftest import TINY_MODEL

FAST = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu', '--input-size', '64',
        '96']
pytestmark = pytest.mark.usefixtures('tiny_model')  # FAST's model, in this process
CAMERA = ['--intrinsics', '60', '60', '32', '24']
LABELS = (1, 2, 7)


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Path]:
    """A 64x48 image (a red and a blue box on green) and its label PNG (8-bit)."""
    rgb = np.full((48, 64, 3), (40, 160, 60), np.uint8)
    rgb[8:30, 4:26] = (220, 30, 30)
    rgb[14:40, 34:60] = (30, 40, 220)
    image = tmp_path / 'scene.png'
    assert cv2.imwrite(str(image), rgb[..., ::-1])
    labels = np.zeros((48, 64), np.uint8)
    labels[8:30, 4:26], labels[14:40, 34:60], labels[42:, :] = LABELS
    masks = tmp_path / 'labels.png'
    assert cv2.imwrite(str(masks), labels)
    return image, masks


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def check_common(doc: dict, out: Path, stem: str = 'scene') -> None:
    assert doc['random_weights'] is True and doc['warning'] == RANDOM_WEIGHTS_BANNER
    assert doc['intrinsics'] == {'fx': 60.0, 'fy': 60.0, 'cx': 32.0, 'cy': 24.0,
                                 'width': 64, 'height': 48}
    assert isinstance(doc['noun_phrase_parser'], str) and doc['noun_phrase_parser']
    assert (out / f'{stem}_locate.png').is_file()
    proposals = cv2.imread(str(out / f'{stem}_proposals.png'), cv2.IMREAD_UNCHANGED)
    assert proposals.dtype == np.uint16 and proposals.shape == (48, 64)
    # beside the labels (black in a viewer: values 1, 2, ... of 65535), a picture of them
    seen = cv2.imread(str(out / f'{stem}_proposals_preview.png'), cv2.IMREAD_UNCHANGED)
    assert seen.dtype == np.uint8 and seen.shape == (48, 64, 3)
    ids = [k for k in np.unique(proposals) if k]
    colours = {tuple(seen[proposals == k].mean(axis=0).round()) for k in ids}
    assert len(colours) == len(ids)  # every candidate its own colour
    assert all(seen[proposals == k].max() > 100 for k in ids)  # visible, not black
    for index, query in enumerate(doc['queries']):
        assert query['index'] == index
        labels = [m['label'] for m in query['masks']]
        assert query['best_label'] in labels
        assert query['score'] == max(m['score'] for m in query['masks'])
        assert set(labels) == set(np.unique(proposals[proposals > 0]).tolist())
        position = query['position_m']
        assert len(position) == 3 and all(math.isfinite(v) for v in position)
        assert all(lo <= hi for lo, hi in zip(query['box_m']['min'], query['box_m']['max']))
        cloud = read_ply(out / f'{stem}_{index}.ply')
        assert query['ply'] == f'{stem}_{index}.ply' and len(cloud) == query['points'] > 0
        np.testing.assert_allclose(np.median(cloud['z']), position[2], rtol=1e-5)


def test_builtin_proposals(scene, tmp_path, capsys):
    image, _ = scene
    out = tmp_path / 'out'
    before = digest(image)
    assert main(['locate', str(image), '--query', 'the red box', '--query',
                 'the blue box on the right', *CAMERA, '--output', str(out), *FAST]) == 0
    assert digest(image) == before
    text = (out / 'scene_locate.json').read_text()
    assert 'NaN' not in text and 'Infinity' not in text
    doc = json.loads(text)
    check_common(doc, out)
    assert (doc['protocol'], doc['alpha'], doc['beta']) == ('paper', 0.95, 0.5)
    assert doc['proposals'] == 'builtin' and doc['masks_file'] is None
    assert [q['query'] for q in doc['queries']] == ['the red box', 'the blue box on the right']
    assert len(doc['queries'][0]['masks']) >= 1
    printed = capsys.readouterr().out
    assert "[1] 'the blue box on the right' (noun phrase 'the blue box')" in printed
    assert 'score' in printed and 'margin' in printed and 'position (' in printed
    assert RANDOM_WEIGHTS_BANNER in printed
    preview = cv2.imread(str(out / 'scene_locate.png'))
    assert (preview[5, 5] == (0, 255, 255)).all()  # the yellow random-weights banner (BGR)


def test_label_png_node_protocol_and_noun_phrases(scene, tmp_path):
    image, masks = scene
    json_file = tmp_path / 'answers.json'
    before = digest(image, masks)
    # the output folder is the inputs' folder: nothing there may be replaced
    assert main(['locate', str(image), '--query', 'the red box', '--query', 'the blue one',
                 '--noun-phrase', 'red box', '--noun-phrase', 'blue thing', '--masks',
                 str(masks), '--protocol', 'node', '--alpha', '0.85', '--beta', '0.3',
                 *CAMERA, '--output', str(tmp_path), '--json', str(json_file), *FAST]) == 0
    assert digest(image, masks) == before
    assert not (tmp_path / 'scene_locate.json').exists()
    doc = json.loads(json_file.read_text())
    check_common(doc, tmp_path)
    assert (doc['protocol'], doc['alpha'], doc['beta']) == ('node', 0.85, 0.3)
    assert doc['masks_file'] == str(masks) and doc['proposals'] == 'file'
    assert [q['noun_phrase'] for q in doc['queries']] == ['red box', 'blue thing']
    for query in doc['queries']:  # one entry per label of the PNG, each with its score
        assert [m['label'] for m in query['masks']] == list(LABELS)
        assert all(math.isfinite(m['score']) for m in query['masks'])
    proposals = cv2.imread(str(tmp_path / 'scene_proposals.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(proposals, cv2.imread(str(masks), cv2.IMREAD_UNCHANGED))
    assert not list(tmp_path.glob('.*.tmp*'))  # no temporary file left behind


@pytest.mark.parametrize('change, problem', [
    (lambda a, t: a.__setitem__(a.index('--masks') + 1, str(t / 'small.png')),
     'masks .*small.png are 32x24, the image is 64x48'),
    (lambda a, t: a.__setitem__(a.index('--masks') + 1, str(t / 'colour.png')),
     'masks .*colour.png have 3 channels'),
    (lambda a, t: a.__setitem__(a.index('--masks') + 1, str(t / 'nothing.png')),
     'masks .*nothing.png do not exist'),
    (lambda a, t: a.__setitem__(a.index('--masks') + 1, str(t / 'notes.png')),
     'cannot read masks .*notes.png'),
    (lambda a, t: a.extend(['--alpha', '1.5']), '--alpha must be a number in \\[0, 1\\]'),
    (lambda a, t: a.extend(['--beta', 'nan']), '--beta must be a number in \\[0, 1\\]'),
    (lambda a, t: a.extend(['--protocol', 'fast']), '--protocol must be one of paper, node'),
    (lambda a, t: a.__setitem__(1, str(t / 'missing.png')), 'image .*missing.png does not '
     'exist'),
    (lambda a, t: a.extend(['--noun-phrase', 'red box']),
     '--noun-phrase: give one per --query \\(2 queries, 1 noun phrases\\)'),
    (lambda a, t: a.extend(['--query', '   ']), '--query: every query must be a non-empty'),
    (lambda a, t: a.extend(sum((['--query', f'thing {i}'] for i in range(15)), [])),
     '--query: at most 16 queries, got 17'),
    (lambda a, t: a.__setitem__(a.index('--intrinsics') + 1, '0'),
     '--intrinsics must be finite with fx, fy > 0'),
    (lambda a, t: a.extend(['--json', str(t / 'scene.png')]),
     'scene.png would overwrite the input .*scene.png'),
    (lambda a, t: a.extend(['--max-masks', '0']), '--max-masks must be in \\[1, 64\\]'),
    (lambda a, t: a.extend(['--query', 'a ' * 100]),  # refused once the model is loaded
     "--query: query 'a a .* is longer than the text encoder's context of 77 tokens"),
])
def test_refusals_exit_2_naming_the_problem(scene, tmp_path, capsys, change, problem):
    image, masks = scene
    cv2.imwrite(str(tmp_path / 'small.png'), np.ones((24, 32), np.uint8))
    cv2.imwrite(str(tmp_path / 'colour.png'), np.ones((48, 64, 3), np.uint8))
    (tmp_path / 'notes.png').write_text('not an image')
    before = digest(image, masks)
    out = tmp_path / 'out'
    args = ['locate', str(image), '--query', 'the red box', '--query', 'the blue box',
            '--masks', str(masks), *CAMERA, '--output', str(out), *FAST]
    change(args, tmp_path)
    assert main(args) == 2
    *banner, line = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('depthclip-ros locate: ') and re.search(problem, line), line
    assert not banner or RANDOM_WEIGHTS_BANNER in banner  # refused once the model loaded
    assert not out.exists()  # refused before anything was written
    assert digest(image, masks) == before


def test_max_masks_keeps_the_largest_labels(scene, tmp_path):
    image, masks = scene  # label 2 is 26x26 px, 1 is 22x22, 7 is 64x6 (the smallest)
    out = tmp_path / 'out'
    assert main(['locate', str(image), '--query', 'a box', '--masks', str(masks),
                 '--max-masks', '2', *CAMERA, '--output', str(out), *FAST]) == 0
    doc = json.loads((out / 'scene_locate.json').read_text())
    assert [m['label'] for m in doc['queries'][0]['masks']] == [1, 2]
    proposals = cv2.imread(str(out / 'scene_proposals.png'), cv2.IMREAD_UNCHANGED)
    assert sorted(np.unique(proposals).tolist()) == [0, 1, 2]  # the candidates used
