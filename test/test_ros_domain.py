"""Tests never talk on the user's ROS domain: whatever ``ROS_DOMAIN_ID`` is exported, the
tests (test/conftest.py) and the scripts (scripts/env.sh) pick a random domain of their own,
never the exported one, and say which."""

import os
from pathlib import Path
import random
import subprocess
import sys

import pytest

from conftest import choose_ros_domain, EXPORTED_ROS_DOMAIN_ID

REPO = Path(__file__).resolve().parents[1]
PROBE = 'DEPTHCLIP_TEST_DOMAIN_PROBE'


@pytest.mark.parametrize('exported', [None, '', 'robot', '0', '1', '42', '101', '170', 232])
def test_the_domain_is_random_in_the_safe_range_and_never_the_exported_one(exported):
    rng = random.Random(7)
    drawn = [choose_ros_domain(exported, rng) for _ in range(3000)]
    assert all(1 <= domain <= 101 for domain in drawn)
    if exported not in (None, '', 'robot'):
        assert int(exported) not in drawn
    assert len(set(drawn)) >= 99  # every allowed domain comes up, not a fixed one


def test_this_run_uses_its_own_domain(ros):
    assert os.environ['ROS_DOMAIN_ID'] != EXPORTED_ROS_DOMAIN_ID
    assert ros.get_domain_id() == int(os.environ['ROS_DOMAIN_ID'])
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'


@pytest.mark.skipif(PROBE not in os.environ,
                    reason='runs only inside test_an_exported_domain_never_reaches_the_tests')
def test_probe_the_domain_rclpy_uses(ros):
    print(f'probe: environment {os.environ["ROS_DOMAIN_ID"]} rclpy {ros.get_domain_id()}')


def test_an_exported_domain_never_reaches_the_tests():
    """A developer's shell exports their robot's domain: a test run started from it (pytest
    as such, and the README's ./scripts/test.sh through scripts/env.sh) uses another."""
    runs = {}
    for exported in ('42', '170'):
        env = dict(os.environ, ROS_DOMAIN_ID=exported, **{PROBE: '1'})
        env.pop('PYTEST_ADDOPTS', None)  # colcon test's options (-m, its junit file)
        runs[exported] = subprocess.Popen(
            [sys.executable, '-m', 'pytest', '-q', '-s', '-p', 'no:cacheprovider',
             f'{Path(__file__)}::test_probe_the_domain_rclpy_uses'],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for exported, run in runs.items():
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
        line = next((row for row in out.splitlines() if row.startswith('ROS_DOMAIN_ID=')), None)
        assert line and f'the exported {exported} is not used' in line, out
        probe = next((row for row in out.splitlines() if 'probe: environment' in row), None)
        assert probe, out
        environment, used = probe.split()[-3], probe.split()[-1]
        assert environment == used == line.split()[0].split('=')[1], out
        assert used != exported and 1 <= int(used) <= 101, out


@pytest.mark.parametrize('exported', ['170', '42', ''])
def test_the_scripts_pick_their_own_domain_and_say_which(exported):
    shell = f'export ROS_DOMAIN_ID={exported}; . scripts/env.sh; echo "domain=$ROS_DOMAIN_ID"'
    result = subprocess.run(['bash', '-c', shell], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    used = result.stdout.split('domain=')[1].strip()
    assert used != exported and 1 <= int(used) <= 101
    assert f'ROS_DOMAIN_ID={used}' in result.stderr
    assert (f'exported {exported} is not used' in result.stderr) == bool(exported)


@pytest.mark.parametrize('exported', ['42', '170'])
def test_benchmarks_pick_their_own_domain_whatever_is_exported(exported):
    """bench-node, bench-cameras and soak start rclpy through isolate_ros_traffic: run on
    their own (no conftest, no env.sh), an exported domain is replaced and the new one
    said; a domain this run chose itself is kept."""
    code = ('import os; from depthclip_ros.tools import node_process as n; '
            'n.isolate_ros_traffic(); first = os.environ["ROS_DOMAIN_ID"]; '
            'n.isolate_ros_traffic(); '
            'print(first, os.environ["ROS_DOMAIN_ID"], os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]'
            ' == os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"])')
    env = {k: v for k, v in os.environ.items() if k != 'DEPTHCLIP_OWN_ROS_DOMAIN'}
    env['ROS_DOMAIN_ID'] = exported
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    first, again, both = result.stdout.split()
    assert first == again != exported and 1 <= int(first) <= 101 and both == 'True'
    assert f'ROS_DOMAIN_ID={first}' in result.stderr and f'exported {exported}' in result.stderr
