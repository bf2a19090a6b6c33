"""Parameter values to the node's configurations (ros/configs.py, node.node_configs): the one
mapping the node uses at configure time and for every parameter change, without DDS."""

import re

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


# ---------------------------------------------------------------- every value rule, always
# States where the counts disagree (pending) or the scene settings are kept unused (fixed).
PENDING = {
    'prompts against bins': dict(distance_prompts=['near', 'far']),
    'a scene mode without names': dict(bins_mode='scene_soft'),
    'a scene mode with one name': dict(bins_mode='scene_hard', scene_names=['kitchen']),
    'scene bins of another count': dict(bins_mode='scene_soft', scene_names=['a', 'b'],
                                        scene_bins_m=[1.0, 2.0, 3.0]),
}
STATES = {**PENDING, 'fixed mode': dict(bins_mode='fixed')}
INCREASING = [1.0, 1.5, 2.0, 2.25, 2.5, 2.75, 3.0]
# (a change, a word of the reason): each wrong whatever the counts
WRONG = [
    (dict(scene_bins_m=[3.0, 2.0, 1.0]), 'strictly increasing'),
    (dict(scene_bins_m=INCREASING + INCREASING[::-1]), 'strictly increasing'),
    (dict(scene_bins_m=INCREASING + [0.5]), 'strictly increasing'),
    (dict(scene_bins_m=[1.0, float('nan')]), 'finite'),
    (dict(scene_bins_m=[1.0, -2.0]), '> 0'),
    (dict(scene_names=['kitchen', 'kitchen']), 'unique'),
    (dict(scene_names=['kitchen', ' ']), 'non-empty'),
    (dict(scene_names=['x' * 400]), 'characters'),
    (dict(scene_prompt_template='a {} {}'), 'one plain field'),
    (dict(scene_prompt_template='no field'), 'one plain field'),
    (dict(depth_bins_m=[2.0, 1.0]), 'strictly increasing'),
    (dict(depth_bins_m=[0.0, 1.0]), '> 0'),
    (dict(distance_prompts=['only one']), 'at least 2'),
    (dict(distance_prompts=['near', '']), 'non-empty'),
    (dict(prompt_template='{} only'), 'two plain fields'),
    (dict(prompt_objects=[]), 'prompt objects'),
    (dict(temperature=0.0), 'temperature'),
]


@pytest.mark.parametrize('state', STATES)
@pytest.mark.parametrize('change, reason', WRONG)
def test_a_wrong_value_is_refused_whatever_the_counts(state, change, reason):
    """Only the counts of prompts, bins and scene bins may disagree for a while; every rule
    of a value holds on every set, pending or not, used or not (fixed mode)."""
    values = dict(DEFAULTS, **STATES[state])
    configs = node_configs(values, allow_mismatch=True)  # the state itself is accepted
    assert (configs.mismatch is not None) == (state in PENDING)
    with pytest.raises(ValueError, match=re.escape(reason)):
        node_configs(dict(values, **change), allow_mismatch=True)


@pytest.mark.parametrize('state', PENDING)
def test_right_values_are_accepted_while_pending(state):
    """The same parameters with right values wait (the refusals above are no accident of
    the state)."""
    values = dict(DEFAULTS, **PENDING[state])
    for change in (dict(scene_bins_m=INCREASING * 2), dict(scene_bins_m=[1.0, 2.0] * 3),
                   dict(scene_names=['kitchen', 'street', 'forest']),
                   dict(scene_prompt_template='a picture of a {}'),
                   dict(depth_bins_m=[0.5, 1.0, 2.0])):
        node_configs(dict(values, **change), allow_mismatch=True)  # raises if refused


def test_the_prompt_check_sees_the_scene_prompts_whatever_the_counts():
    """The tokeniser's check (a loaded engine's) sees the scene prompts also while pending
    and in fixed mode."""
    def refuse_scenes(head):
        if head.bins_mode != 'fixed' and any('kitchen' in s for s in head.scene_prompts()):
            raise ValueError('scene prompt too long (tokens)')
    for state in STATES.values():
        values = dict(DEFAULTS, **state)
        values['scene_names'] = ['kitchen'] + list(values['scene_names'])[1:]
        with pytest.raises(ValueError, match='tokens'):
            node_configs(values, refuse_scenes, allow_mismatch=True)
        node_configs(dict(values, scene_names=['street']), refuse_scenes, allow_mismatch=True)
