"""The Jazzy leg's pins (requirements-jazzy.txt, installed by .ci/jazzy.sh) stay what they
claim to be: Jazzy's ROS wheels and Ubuntu 24.04's numerics, the same test tools as the
main leg, and the versions the README says CI proves."""

from pathlib import Path
import re

REPO = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r'([\w.\-]+)==([\w.]+)', line.split('#')[0].strip())
        if match:
            out[match[1].lower()] = match[2]
    return out


JAZZY = pins(REPO / 'requirements-jazzy.txt')


def major_minor(version: str) -> tuple[int, int]:
    return tuple(int(part) for part in version.split('.')[:2])


def test_jazzy_ros_wheels_and_numerics():
    assert major_minor(JAZZY['ros-rclpy']) == (7, 1)  # Jazzy's rclpy
    assert major_minor(JAZZY['ros-rmw-fastrtps-cpp']) == (8, 4)  # Fast DDS 2.14
    for name in ('ros-sensor-msgs', 'ros-std-msgs', 'ros-diagnostic-msgs',
                 'ros-visualization-msgs'):
        assert major_minor(JAZZY[name]) == (5, 3), name
    assert major_minor(JAZZY['numpy']) == (1, 26)
    assert major_minor(JAZZY['opencv-python-headless']) == (4, 6)
    # every ROS package and numeric library the package imports is pinned there
    assert {'ros-lifecycle-msgs', 'scipy', 'scikit-image', 'pillow'} <= set(JAZZY)


def test_test_tools_are_pinned_as_in_the_main_leg():
    dev = {**pins(REPO / 'requirements.txt'), **pins(REPO / 'requirements-dev.txt')}
    tools = {'pytest', 'hypothesis', 'colcon-common-extensions', 'mcap', 'mcap-ros2-support'}
    assert {name: JAZZY.get(name) for name in tools} == {name: dev[name] for name in tools}


def test_nothing_the_ros_requirements_pin_is_pinned_differently():
    ros = pins(REPO / 'requirements-ros.txt')
    assert not {name for name in ros if name in JAZZY and ros[name] != JAZZY[name]}


def test_the_readme_names_the_jazzy_versions_ci_proves():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    for name in ('ros-rclpy', 'ros-rmw-fastrtps-cpp', 'numpy', 'opencv-python-headless',
                 'scipy', 'scikit-image', 'pillow'):
        assert JAZZY[name] in readme, f'README.md does not name {name} {JAZZY[name]}'
