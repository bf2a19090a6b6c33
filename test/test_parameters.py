"""The YAML in config/ holds exactly the declared parameters, with their defaults."""

from pathlib import Path

import yaml

from depthclip_ros.ros.parameters import PARAMETERS

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'depthclip.yaml'


def test_yaml_keys_equal_the_declared_parameters():
    values = yaml.safe_load(CONFIG.read_text())['/**']['ros__parameters']
    assert list(values) == [p.name for p in PARAMETERS]
    for param in PARAMETERS:
        assert values[param.name] == param.default, param.name


def test_every_parameter_has_a_description_and_the_contract_names_exist():
    contract = {'model', 'pretrained', 'device', 'precision', 'feature_mode', 'input_size',
                'distance_prompts', 'depth_bins_m', 'prompt_template', 'temperature',
                'canonical_focal_px', 'flip_average', 'cloud_stride', 'min_depth_m',
                'max_depth_m', 'cloud_rgb'}
    names = {p.name for p in PARAMETERS}
    assert contract <= names
    assert all(p.description for p in PARAMETERS)
    read_only = {p.name for p in PARAMETERS if p.read_only}
    assert {'model', 'pretrained', 'device', 'precision'} <= read_only


def test_docs_node_documents_every_parameter():
    reference = (CONFIG.parents[1] / 'docs' / 'node.md').read_text()
    missing = [p.name for p in PARAMETERS if f'`{p.name}`' not in reference]
    assert not missing, f'docs/node.md "Parameters" section lacks {missing}'
