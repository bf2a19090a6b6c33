"""depthclip_ros: zero-shot metric depth from any calibrated RGB camera (DepthCLIP).

Layers (imports go one way, pinned by ``test/test_layers.py``):

* ``geometry``, ``metrics``, ``timing`` -- numpy only;
* ``model`` -- torch/open_clip, no ROS;
* ``encodings``, ``messages`` -- numpy <-> sensor_msgs, no rclpy;
* ``node``, ``bag`` -- rclpy / rosbags;
* ``cli`` and ``tools`` -- command-line front ends on the same engine.
"""

__version__ = '0.1.0'
