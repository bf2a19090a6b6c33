"""The tier table in conftest.py covers every test file, names only tests that exist, and
gives each test the marks pytest.ini registers (unit, ros, slow, smoke)."""

import ast
import configparser
from pathlib import Path

from conftest import SMOKE, tier_marks, TIERS

TEST = Path(__file__).resolve().parent


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith('test')}


def test_every_test_file_has_a_tier_and_every_named_test_exists():
    files = {path.name for path in TEST.glob('test_*.py')}
    assert not files - set(TIERS), f'add these files to conftest.TIERS: {files - set(TIERS)}'
    assert not set(TIERS) - files, f'conftest.TIERS names absent files: {set(TIERS) - files}'
    for name, (tier, slow) in TIERS.items():
        assert tier in ('unit', 'ros'), (name, tier)
        assert slow is True or isinstance(slow, set), (name, slow)
        tests = defined_tests(TEST / name)
        if slow is not True:
            assert not slow - tests, f'{name}: no such tests {slow - tests}'
    for name, tests in SMOKE.items():
        assert name in TIERS and tests and not tests - defined_tests(TEST / name), name


def test_marks_follow_the_table():
    assert tier_marks('test_node.py', 'test_outputs_match_the_input_and_each_other') == \
        ['ros', 'smoke']
    assert tier_marks('test_soak.py', 'test_anything') == ['ros', 'slow']
    assert tier_marks('test_geometry.py', 'test_anything') == ['unit']
    assert 'test_paper_mode_equals_the_authors_computation' in TIERS['test_model.py'][1]
    assert tier_marks('test_model.py', 'test_paper_mode_equals_the_authors_computation') == \
        ['slow']  # unit means fast
    assert tier_marks('test_model.py', 'test_invalid_model_config_is_rejected') == ['unit']
    assert tier_marks('test_not_in_the_table.py', 'test_x') == ['slow']


def test_pytest_registers_exactly_these_marks_strictly():
    ini = configparser.ConfigParser()
    ini.read(TEST.parent / 'pytest.ini')
    registered = {line.split(':')[0].strip()
                  for line in ini['pytest']['markers'].strip().splitlines()}
    assert registered == {'unit', 'ros', 'slow', 'smoke'}
    options = ini['pytest']['addopts'].split()
    assert '--strict-markers' in options and '--durations=25' in options
