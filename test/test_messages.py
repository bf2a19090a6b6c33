"""numpy <-> sensor_msgs conversions against references (OpenCV, hand-computed values)."""

import math

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.io.encodings import encode_rgb, ENCODINGS, ImageFormatError
from depthclip_ros.ros.messages import (
    camera_info_for,
    CameraInfoError,
    cloud_array,
    depth_from_image,
    depth_image,
    intrinsics_from_camera_info,
    pointcloud,
    rgb_from_image,
)


def smooth_rgb(height=48, width=64):
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([u / width * 255, v / height * 255, (u + v) / (width + height) * 255], -1)
    return rgb.astype(np.uint8)


def image_msg(encoding, height, width, rows: np.ndarray, pad=0, big=False):
    msg = Image()
    msg.height, msg.width, msg.encoding = height, width, encoding
    rows = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    msg.step = rows.shape[1]
    msg.is_bigendian = int(big)
    msg.data = rows.tobytes()
    return msg


COLOUR = ['rgb8', 'bgr8', 'rgba8', 'bgra8', '8UC3', '8UC4', 'rgb16', 'bgr16', 'rgba16',
          'bgra16']
GREY = ['mono8', '8UC1', 'mono16', '16UC1']
YUV = ['yuv422', 'yuv422_yuy2']
BAYER = {'bayer_rggb8': {'r': (0, 0), 'b': (1, 1)}, 'bayer_bggr8': {'r': (1, 1), 'b': (0, 0)},
         'bayer_gbrg8': {'r': (1, 0), 'b': (0, 1)}, 'bayer_grbg8': {'r': (0, 1), 'b': (1, 0)},
         'bayer_rggb16': {'r': (0, 0), 'b': (1, 1)}}


@pytest.mark.parametrize('encoding', COLOUR)
@pytest.mark.parametrize('pad', [0, 5])
def test_colour_encodings_round_trip_exactly(encoding, pad):
    rgb = smooth_rgb()
    msg = image_msg(encoding, 48, 64, encode_rgb(rgb, encoding), pad)
    np.testing.assert_array_equal(rgb_from_image(msg), rgb)


@pytest.mark.parametrize('encoding', GREY)
def test_grey_encodings_become_grey_rgb(encoding):
    rgb = smooth_rgb()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = rgb_from_image(image_msg(encoding, 48, 64, encode_rgb(rgb, encoding), 3))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))


def test_big_endian_16_bit():
    grey = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20
    msg = image_msg('mono16', 48, 64, grey.astype('>u2'), big=True)
    np.testing.assert_array_equal(rgb_from_image(msg)[..., 0], (grey >> 8).astype(np.uint8))


def bt601_limited(y, u, v):
    """Reference YUV -> RGB (ITU-R BT.601, video range), by formula."""
    c, d, e = y - 16, u - 128, v - 128
    return np.clip(np.round([1.164 * c + 1.596 * e, 1.164 * c - 0.391 * d - 0.813 * e,
                             1.164 * c + 2.018 * d]), 0, 255)


@pytest.mark.parametrize('encoding', YUV)
def test_yuv422_against_the_bt601_formula(encoding):
    y, u, v = 120, 90, 160
    row = [u, y, v, y] if encoding == 'yuv422' else [y, u, y, v]  # UYVY / YUYV
    rows = np.tile(np.array(row, np.uint8), (8, 8))  # 16 pixels wide, 8 tall
    out = rgb_from_image(image_msg(encoding, 8, 16, rows))
    assert np.abs(out.astype(int) - bt601_limited(y, u, v)).max() <= 2


@pytest.mark.parametrize('encoding, offsets', BAYER.items())
def test_bayer_patterns_demosaic_to_the_original_colours(encoding, offsets):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[...] = (200, 120, 40)  # distinct R, G, B: a swapped pattern is obvious
    mosaic = rgb[..., 1].copy()
    (ry, rx), (by, bx) = offsets['r'], offsets['b']
    mosaic[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    mosaic[by::2, bx::2] = rgb[by::2, bx::2, 2]
    if encoding.endswith('16'):
        mosaic = mosaic.astype('<u2') * 257
    out = rgb_from_image(image_msg(encoding, 32, 32, mosaic))
    np.testing.assert_allclose(out[4:-4, 4:-4].reshape(-1, 3).mean(0), (200, 120, 40), atol=3)


def test_nv12_uniform_colour():
    y = np.full((8, 16), 120, np.uint8)
    uv = np.tile(np.array([90, 160], np.uint8), (4, 8))
    out = rgb_from_image(image_msg('nv12', 8, 16, np.concatenate([y, uv])))
    assert np.abs(out.astype(int) - bt601_limited(120, 90, 160)).max() <= 2


@pytest.mark.parametrize('change, message', [
    (dict(encoding='weird8'), "unsupported encoding 'weird8'"),
    (dict(height=0), 'zero or absurd'), (dict(width=100000), 'zero or absurd'),
    (dict(step=10), 'step 10 is smaller'),
    (dict(data=b'\x00' * 100), 'data has 100 bytes'),
])
def test_malformed_images_raise_a_named_error(change, message):
    msg = image_msg('rgb8', 48, 64, encode_rgb(smooth_rgb(), 'rgb8'))
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageFormatError, match=message):
        rgb_from_image(msg)


def test_every_encoding_in_the_table_is_tested():
    """The encodings the tests above run (their parameter lists, and nv12's own test),
    plus the aliases that share a tested decoder, are exactly the table's."""
    tested = {*COLOUR, *GREY, *YUV, *BAYER, 'nv12'}
    aliases = {'uyvy', 'yuyv', 'nv21', 'bayer_bggr16', 'bayer_gbrg16', 'bayer_grbg16'}
    assert set(ENCODINGS) == tested | aliases


def camera_info(width=640, height=480, k=(500.0, 0, 320.0, 0, 400.0, 240.0, 0, 0, 1)):
    msg = CameraInfo()
    msg.width, msg.height = width, height
    msg.k = list(k)
    msg.p = [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    return msg


def test_camera_info_intrinsics_scaling_and_refusals():
    info = camera_info()
    assert intrinsics_from_camera_info(info, 480, 640) == Intrinsics(500, 400, 320, 240, 640, 480)
    half = intrinsics_from_camera_info(info, 240, 320)
    assert (half.fx, half.fy, half.cx, half.cy) == (250, 200, 160, 120)
    with pytest.raises(CameraInfoError, match='different aspect'):
        intrinsics_from_camera_info(info, 480, 480)
    with pytest.raises(CameraInfoError, match='uncalibrated'):
        intrinsics_from_camera_info(camera_info(k=[0.0] * 9), 480, 640)
    with pytest.raises(CameraInfoError, match='non-finite'):
        intrinsics_from_camera_info(camera_info(k=(math.nan, 0, 320, 0, 400, 240, 0, 0, 1)),
                                    480, 640)
    with pytest.raises(CameraInfoError, match='non-positive'):
        intrinsics_from_camera_info(camera_info(k=(-5.0, 0, 320, 0, 400, 240, 0, 0, 1)),
                                    480, 640)


def test_depth_message_and_its_camera_info_match():
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    depth = np.random.default_rng(0).uniform(0.5, 5, (30, 40)).astype(np.float32)
    depth[0, 0] = np.nan
    msg = depth_image(depth, header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('32FC1', 30, 40, 160)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(depth_from_image(msg), depth)
    camera = Intrinsics(50.0, 40.0, 20.0, 15.0, 40, 30)
    info = camera_info_for(camera, header, camera_info())
    assert (info.width, info.height) == (40, 30)
    assert info.k[0] == 50.0 and info.k[4] == 40.0 and info.p[0] == 50.0 and info.p[6] == 15.0
    assert info.header.frame_id == 'cam'


@pytest.mark.parametrize('stride, with_rgb', [(1, False), (3, True)])
def test_pointcloud_is_the_backprojection(stride, with_rgb):
    rng = np.random.default_rng(2)
    depth = rng.uniform(0.05, 12.0, (30, 40)).astype(np.float32)
    depth[5, 5] = np.nan
    camera = Intrinsics(50.0, 40.0, 20.0, 15.0, 40, 30)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) if with_rgb else None
    msg = pointcloud(depth, camera, Header(frame_id='cam'), stride, 0.1, 10.0, rgb)
    assert (msg.height, msg.width) == depth[::stride, ::stride].shape
    assert msg.point_step == (16 if with_rgb else 12)
    assert msg.row_step == msg.point_step * msg.width and not msg.is_dense
    assert [f.name for f in msg.fields] == ['x', 'y', 'z'] + (['rgb'] if with_rgb else [])
    cloud = cloud_array(msg)
    expected = backproject(depth, camera, stride, 0.1, 10.0)
    for i, axis in enumerate('xyz'):
        np.testing.assert_array_equal(cloud[axis], expected[..., i])
    assert np.isnan(cloud['z']).sum() == np.isnan(expected[..., 2]).sum() > 0
    if with_rgb:
        packed = cloud['rgb'].view(np.uint32)
        sub = rgb[::stride, ::stride].astype(np.uint32)
        np.testing.assert_array_equal(packed, (sub[..., 0] << 16) | (sub[..., 1] << 8)
                                      | sub[..., 2])


def test_cross_check_with_cv_bridge_and_sensor_msgs_py():
    cv_bridge = pytest.importorskip('cv_bridge', reason='cv_bridge is not on PyPI (ROS '
                                    'install only); the numpy path is tested above')
    point_cloud2 = pytest.importorskip('sensor_msgs_py.point_cloud2')
    bridge = cv_bridge.CvBridge()
    rgb = smooth_rgb()
    for encoding in ('bgr8', 'rgba8', 'mono8'):
        msg = bridge.cv2_to_imgmsg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 'bgr8')
        msg = bridge.cv2_to_imgmsg(bridge.imgmsg_to_cv2(msg, encoding), encoding)
        np.testing.assert_array_equal(rgb_from_image(msg), bridge.imgmsg_to_cv2(msg, 'rgb8'))
    depth = np.random.default_rng(0).uniform(0.5, 5, (30, 40)).astype(np.float32)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(depth_image(depth, Header())), depth)
    camera = Intrinsics(50.0, 40.0, 20.0, 15.0, 40, 30)
    msg = pointcloud(depth, camera, Header())
    points = point_cloud2.read_points_numpy(msg, field_names=('x', 'y', 'z'))
    np.testing.assert_array_equal(points.reshape(30, 40, 3), backproject(depth, camera))
