"""Parameter values to the node's configurations (ros/configs.py, node.node_configs): the one
mapping the node uses at configure time and for every parameter change, without DDS."""

import pytest

from depthclip_ros.engine.config import HeadConfig, ModelConfig
from depthclip_ros.ros.configs import head_or_mismatch, model_from_parameters
from depthclip_ros.ros.node import node_configs
from depthclip_ros.ros.parameters import DEFAULTS
from depthclip_ros.ros.pipeline import ObjectSettings, OutputSettings


def test_the_table_defaults_are_the_engines_and_pipelines_defaults():
    """A tool that passes only the options it has gets what the node runs by default."""
    configs = node_configs(dict(DEFAULTS))
    assert configs.model == ModelConfig() == model_from_parameters({})
    assert configs.head == HeadConfig()
    assert configs.output == OutputSettings() and configs.objects == ObjectSettings()
    assert configs.mismatch is None


def test_values_reach_their_config_and_bad_ones_are_refused_by_name():
    values = dict(DEFAULTS, input_size=[64, 96], pretrained='none', temperature=0.2,
                  cloud_stride=4, object_queries=['the chair'])
    configs = node_configs(values)
    assert configs.model.input_size == (64, 96) and configs.model.pretrained == 'none'
    assert configs.head.temperature == 0.2 and configs.output.cloud_stride == 4
    assert configs.objects.queries == ('the chair',)
    for name, value in (('input_size', [64, 90]), ('cloud_stride', 0),
                        ('temperature', 0.0), ('precision', 'fp8')):
        with pytest.raises(ValueError, match=name.split('_')[0]):
            node_configs(dict(DEFAULTS, **{name: value}))


def test_a_count_mismatch_waits_only_where_allowed():
    values = dict(DEFAULTS, distance_prompts=['near', 'far'])
    with pytest.raises(ValueError, match='2 prompts, 7 bins'):
        node_configs(values)  # at configure time the counts must agree
    configs = node_configs(values, allow_mismatch=True)
    assert configs.head is None and '2 distance_prompts but 7 depth_bins_m' in \
        configs.mismatch
    with pytest.raises(ValueError, match='strictly increasing'):  # a wrong value never waits
        node_configs(dict(values, depth_bins_m=[2.0, 1.0]), allow_mismatch=True)


def test_the_prompt_check_sees_every_head_it_could_run():
    seen = []
    head, mismatch = head_or_mismatch(dict(DEFAULTS), seen.append)
    assert mismatch is None and seen == [head]
    seen.clear()
    head, mismatch = head_or_mismatch(dict(DEFAULTS, distance_prompts=['a', 'b']), seen.append)
    assert head is None and mismatch
    assert [h.distance_prompts for h in seen] == [('a', 'b')]  # the new prompts, checked

    def refuse(head):
        raise ValueError('prompt too long (tokens)')
    with pytest.raises(ValueError, match='tokens'):
        head_or_mismatch(dict(DEFAULTS, distance_prompts=['a', 'b']), refuse)
