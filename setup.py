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
    # Runtime dependencies are pinned in requirements.txt (pip) and package.xml (rosdep).
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='depthclip_ros maintainers',
    maintainer_email='maintainers@depthclip-ros.invalid',
    description='Zero-shot metric depth (DepthCLIP) for ROS 2 cameras',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},  # colcon test runs pytest when this names it
    entry_points={
        'console_scripts': [
            'depth_node = depthclip_ros.shutdown:depth_node',
            'depth_lifecycle_node = depthclip_ros.shutdown:depth_lifecycle_node',
            'depthclip-ros = depthclip_ros.cli:main',
        ],
    },
)
