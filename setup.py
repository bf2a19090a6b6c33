from glob import glob

from setuptools import find_packages, setup

package_name = 'depthclip_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    # `pip install .` alone gives working tools (infer, evaluate, bench); the ROS 2
    # wheels for the node, bags and demo are the `ros` extra (a ROS install provides them
    # instead). Exact pins: requirements.txt (plain Python), requirements-ros.txt (next to
    # a ROS distribution), package.xml (rosdep). colcon build installs none of these.
    # Every module the package imports is declared (test/test_install.py checks it): mcap
    # reads a partial output for `bag --recover`, pyyaml the scene config, huggingface_hub
    # finds cached weights offline.
    install_requires=['setuptools', 'numpy', 'opencv-python-headless', 'pillow',
                      'scikit-image', 'scipy', 'torch', 'torchvision', 'open_clip_torch',
                      'safetensors', 'huggingface_hub', 'rosbags', 'mcap', 'pyyaml',
                      'tqdm'],
    zip_safe=True,
    maintainer='depthclip_ros maintainers',
    maintainer_email='maintainers@depthclip-ros.invalid',
    description='Zero-shot metric depth (DepthCLIP) for ROS 2 cameras',
    license='Apache-2.0',
    extras_require={
        'ros': ['ros-rclpy', 'ros-rmw-fastrtps-cpp', 'ros-rcl-interfaces',
                'ros-builtin-interfaces', 'ros-ament-index-python', 'ros-sensor-msgs',
                'ros-std-msgs', 'ros-geometry-msgs', 'ros-diagnostic-msgs',
                'ros-visualization-msgs'],
        'test': ['pytest'],  # colcon test runs pytest when this names it
        # backend: openvino and precision: int8 (the trunk on OpenVINO, NNCF's calibration),
        # and onnx for `depthclip-ros export --format onnx`; imported only where used.
        # Pinned in requirements-dev.txt, so CI tests that path.
        'openvino': ['openvino', 'nncf', 'onnx'],
    },
    entry_points={
        'console_scripts': [
            'depth_node = depthclip_ros.ros.entry:depth_node',
            'depth_lifecycle_node = depthclip_ros.ros.entry:depth_lifecycle_node',
            'depthclip-ros = depthclip_ros.tools.cli:main',
        ],
    },
)
