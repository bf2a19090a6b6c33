"""``depthclip-ros bench-cameras``: two cameras into one depth_node process, for real
(CPU, random weights, tiny frames and network input). The tool keeps the traffic on this
machine itself (isolate_ros_traffic: localhost discovery, a random domain, a private
namespace); conftest set localhost discovery and a random domain before anything else."""

import json
import re

from depthclip_ros.tools.cli import main

TINY = ['--cameras', '2', '--rate-hz', '5', '--seconds', '2', '--image-size', '48', '64',
        '--input-size', '64', '96', '--device', 'cpu', '--timeout', '120']


def test_two_cameras_answered_table_and_json(tmp_path, capsys):
    out = tmp_path / 'cameras.json'
    assert main(['bench-cameras', *TINY, '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith('device: cpu') and 'random weights (cost is the same)' in text
    assert '2 cameras x 5 Hz, 48x64 rgb8 -> network 64x96' in text
    rows = {}
    for name in ('cam0', 'cam1', 'total'):
        found = re.search(rf'^{name} +(\d+) +(\d+) +([\d.]+) +(\d+) +([\d.]+) +([\d.]+)$',
                          text, re.MULTILINE)
        assert found, (name, text)
        sent, answered, _, dropped = (int(found[i]) if i != 3 else found[i]
                                      for i in range(1, 5))
        assert sent == (20 if name == 'total' else 10), text  # 5 Hz x 2 s per camera
        assert 0 < answered <= sent and dropped == sent - answered, text
        rows[name] = answered
    assert rows['total'] == rows['cam0'] + rows['cam1']
    assert 'backlog check: ' in text
    assert 'Traceback' not in text and 'exit code after SIGINT' not in text, text

    result = json.loads(out.read_text())
    assert {'device', 'model', 'random_weights', 'cameras', 'rate_hz', 'seconds',
            'image_size', 'input_size', 'rows', 'total', 'backlog', 'node_exit_code',
            'node_stderr_problems'} <= set(result)
    assert [row['camera'] for row in result['rows']] == ['cam0', 'cam1']
    for row in (*result['rows'], result['total']):
        assert {'sent', 'answered', 'output_hz', 'dropped', 'p50_ms', 'p95_ms'} <= set(row)
        assert row['answered'] > 0 and 0 < row['p50_ms'] <= row['p95_ms']
        assert row['output_hz'] == row['answered'] / 2
    assert {'first_third_p50_ms', 'last_third_p50_ms', 'ratio', 'growing'} <= \
        set(result['backlog'])
    assert result['node_exit_code'] == 0 and result['node_stderr_problems'] == []
    # the node saw both cameras (its own counts, warm-up included)
    assert all(row['node_counts'].get('processed', 0) > 0 for row in result['rows'])


def test_refuses_too_many_cameras(capsys):
    assert main(['bench-cameras', '--cameras', '17', '--device', 'cpu']) == 2
    assert '--cameras must be in 1..16' in capsys.readouterr().err
