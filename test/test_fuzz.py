"""Property-based fuzzing of the image and CameraInfo conversions: any field combination
either converts or raises the one named error, never anything else."""

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
from sensor_msgs.msg import CameraInfo

from depthclip_ros.io.encodings import decode_to_rgb, ENCODINGS, ImageFormatError
from depthclip_ros.ros.messages import CameraInfoError, intrinsics_from_camera_info

encodings = st.one_of(st.sampled_from(sorted(ENCODINGS)), st.text(max_size=12))
sizes = st.integers(min_value=-2, max_value=40)


@settings(max_examples=400, deadline=None)
@given(encoding=encodings, height=sizes, width=sizes, step=st.integers(-4, 200),
       extra=st.integers(-3, 3), big=st.booleans(), data=st.data())
def test_image_fields_convert_or_raise_the_named_error(encoding, height, width, step, extra,
                                                       big, data):
    exact = data.draw(st.booleans())
    rows = int(max(height, 0) * (1.5 if encoding in ('nv12', 'nv21') else 1))
    length = max(step * rows + extra, 0) if exact else data.draw(st.integers(0, 3000))
    buffer = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    try:
        rgb = decode_to_rgb(encoding, height, width, step, big, buffer)
    except ImageFormatError:
        return
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.integers(-10, 10).map(float))


@settings(max_examples=300, deadline=None)
@given(k=st.lists(finite_or_not, min_size=9, max_size=9), p=st.lists(finite_or_not, min_size=12,
                                                                        max_size=12),
       info_size=st.tuples(st.integers(0, 50), st.integers(0, 50)),
       image_size=st.tuples(st.integers(1, 50), st.integers(1, 50)),
       source=st.sampled_from(['K', 'P']))
def test_camera_info_gives_valid_intrinsics_or_the_named_error(k, p, info_size, image_size,
                                                               source):
    msg = CameraInfo()
    msg.height, msg.width = info_size
    msg.k, msg.p = k, p
    try:
        camera = intrinsics_from_camera_info(msg, *image_size, source)
    except CameraInfoError:
        return
    assert camera.size == image_size and camera.fx > 0 and camera.fy > 0
    assert all(np.isfinite([camera.fx, camera.fy, camera.cx, camera.cy]))
