"""``depthclip-ros bench-node``: the node as its own process, for real (CPU, random weights,
tiny frames and network input). The tool keeps its traffic on this machine itself
(localhost discovery, a random domain, a private namespace); conftest set localhost
discovery and a random domain before anything else. Figures are printed, never asserted
against a time: only that each one is there and consistent with the others."""

import re

from depthclip_ros.tools.cli import main

TINY = ['--frames', '3', '--stream-seconds', '1', '--stream-hz', '10', '--image-size', '48',
        '64', '--input-size', '64', '96', '--device', 'cpu', '--timeout', '120']


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, (pattern, text)
    return float(found[1])


def test_ratio_and_where_the_time_goes(capsys):
    assert main(['bench-node', *TINY]) == 0
    text = capsys.readouterr().out
    assert text.startswith('device: cpu') and 'random weights (cost is the same)' in text
    bare = number(r'^bare network forward \(this process, median of 3, each just before a '
                  r'node frame\): +([\d.]+) ms$', text)
    measured = number(r'^node frame-in -> depth\+cloud-out \(median of 3\): +([\d.]+) ms',
                      text)
    ratio = number(r'^ratio node end-to-end / bare network: ([\d.]+) \(goal <= 1.10\)$',
                   text)
    assert bare > 0 and measured > 0
    # The ratio is printed (2 decimals) from the unrounded times (printed with 1 decimal):
    # it lies within 0.005 of the range those printed times allow.
    half = 0.05
    assert (measured - half) / (bare + half) - 0.005 <= ratio \
        <= (measured + half) / (bare - half) + 0.005, text
    # The node's own view of the same frames, from its /diagnostics.
    inside_network = number(r'^  network inside the node +([\d.]+) ms', text)
    around = number(r'^  node stages around the network +([\d.]+) ms +\(', text)
    stages = re.search(r'^  node stages around the network .*\((.*)\)$', text, re.MULTILINE)
    named = dict(part.rsplit(' ', 1) for part in stages[1].split(', '))
    assert {'preprocess', 'head', 'upsample', 'messages', 'publish'} <= set(named), text
    assert abs(sum(float(ms) for ms in named.values()) - around) <= 0.1 * len(named), text
    inside = number(r'^  node callback -> published +([\d.]+) ms', text)
    transport = number(r'^  DDS in \+ out, hand-over +(-?[\d.]+) ms', text)
    assert 0 < inside_network and 0 < around and inside_network + around <= inside * 1.5
    assert abs(measured - inside - transport) <= 3 * 0.05 + 1e-9, text  # each to 0.1 ms
    usage = re.search(r'^node process per frame \(closed loop\): page faults (\d+), user CPU '
                      r'ms (\d+), system CPU ms (\d+)$', text, re.MULTILINE)
    assert usage, text
    assert re.search(r'^streaming 10 Hz for 1 s: \d+ of \d+ frames processed', text,
                     re.MULTILINE), text
    assert 'Traceback' not in text
