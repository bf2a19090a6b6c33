"""Property-based fuzzing of the image and CameraInfo conversions and of the node's frame
path (without DDS): any field combination either converts or raises the one named error,
never anything else."""

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from depthclip_ros.io.encodings import decode_to_rgb, ENCODINGS, ImageFormatError
from depthclip_ros.ros.batch import run_batch
from depthclip_ros.ros.messages import CameraInfoError, intrinsics_from_camera_info
from depthclip_ros.ros.pipeline import DepthPipeline, FrameRejected, Wanted
from depthclip_ros.timing import StageTimer

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


field_text = st.text(max_size=10)
fuzz_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.integers(-5, 200).map(float))


@settings(max_examples=120, deadline=None)
@given(encoding=st.one_of(st.sampled_from(sorted(ENCODINGS)), field_text),
       height=st.integers(0, 40), width=st.integers(0, 40), step=st.integers(0, 200),
       length=st.integers(0, 6000), big=st.booleans(),
       info_size=st.tuples(st.integers(0, 60), st.integers(0, 60)),
       k=st.lists(fuzz_floats, min_size=9, max_size=9), model=field_text,
       d=st.lists(fuzz_floats, max_size=8), frame_id=field_text,
       stamp=st.integers(0, 2**31 - 1), compressed=st.booleans())
def test_fuzzed_messages_through_the_pipeline_and_the_batch(small_engine, encoding, height,
                                                            width, step, length, big,
                                                            info_size, k, model, d, frame_id,
                                                            stamp, compressed):
    """Whatever the fields, the node's frame path (its CameraInfo callback, then per
    frame: ``prepare``, ``run_batch``, ``finish``) ends each frame with outputs or with
    the one named rejection: never another error, never a failed forward."""
    pipeline = DepthPipeline(small_engine)
    info = CameraInfo(height=info_size[0], width=info_size[1], distortion_model=model)
    info.k, info.d = k, d
    pipeline.on_camera_info(info)  # the camera_info subscription's callback
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    if compressed:
        msg = CompressedImage(format=encoding, data=data)
    else:
        msg = Image(height=height, width=width, encoding=encoding, step=step,
                    is_bigendian=int(big), data=data)
    msg.header.frame_id, msg.header.stamp.sec = frame_id, stamp
    want = Wanted(depth=True, camera_info=True, points=True)  # the node's subscribed outputs
    timer = StageTimer()
    try:
        job = pipeline.prepare(msg, want, timer)
    except FrameRejected as error:
        assert str(error)  # rejected with a reason
        return
    [result] = run_batch(small_engine, [job.frame], [timer]).results
    assert not isinstance(result, Exception), result
    out = pipeline.finish(job, result, timer)
    assert out.depth.header == msg.header and out.points is not None
    assert 'network' in timer.samples
