"""depthclip_ros: zero-shot metric depth from any calibrated RGB camera (DepthCLIP).

Subpackages, imports one way (pinned by ``test/test_layers.py``; docs/layout.md):

* ``engine`` -- the DepthCLIP engine on torch/open_clip, no ROS; ``engine.config`` holds
  its settings and rules without torch;
* ``objects`` -- objects named in words, on the engine's CLIP, no ROS;
* ``io`` -- image encodings, image/RGB-D files, previews and PLY, no ROS;
* ``ros`` -- messages, the node, its parameters, launch arguments and entry points;
* ``bags`` -- recorded bags through the node's pipeline;
* ``tools`` -- the ``depthclip-ros`` command line;
* ``geometry``, ``timing``, ``allocator`` -- shared by all, numpy or standard library.
"""

__version__ = '0.1.0'
