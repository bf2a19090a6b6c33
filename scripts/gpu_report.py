"""The files of ``scripts/gpu_check.sh``: ``gpu-check.json`` (every figure, the machine,
the stages) and ``gpu-check.md`` (the same as tables, for docs/benchmarks.md), from the
run's report and the measurement children's parts (scripts/gpu_measure.py). Standard
library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

NOTE = ('Random weights (pretrained=none): the time of a pass does not depend on the '
        'weights; nothing here is an accuracy result.')
# issue 22's GPU targets (an H100/H200, fp16, 416x544)
TARGET_SIZE = [416, 544]


def merged(report: dict, parts: list[dict]) -> dict:
    """The JSON document: the report with the parts' rows, settings and targets."""
    document = {'title': 'DepthCLIP GPU check', 'random_weights': True, 'note': NOTE,
                **{k: v for k, v in report.items() if k != 'stages'}}
    document['settings'] = next((p['settings'] for p in parts if 'settings' in p), {})
    document['trunk'] = [row for p in parts for row in p.get('trunk', [])]
    document['multi_camera'] = [row for p in parts for row in p.get('multi_camera', [])]
    document['errors'] = [error for p in parts for error in p.get('errors', [])]
    stages = report.get('stages', {})
    document['stages'] = stages
    tests = stages.get('tests')
    document['tests'] = ({'skipped': '--skip-tests'} if tests is None else
                         {k: tests.get(k) for k in ('command', 'exit_status', 'timed_out',
                                                    'seconds', 'counts', 'skipped')
                          if k in tests})
    if 'compile' not in stages:
        document['errors'].append('torch.compile: not run (--quick or the CPU)')
    for name in ('measure', 'compile'):
        stage = stages.get(name, {})
        if stage.get('timed_out'):
            document['errors'].append(f'{name}: stopped at its time cap after '
                                      f'{stage["seconds"]} s (the rows it finished are kept)')
        elif stage.get('skipped'):
            document['errors'].append(f'{name}: not run ({stage["skipped"]})')
    document['targets'] = targets(document)
    return document


def _best(rows: list[dict], batch: int, needle: str = '') -> dict | None:
    found = [r for r in rows if r.get('status') == 'ok' and r['batch'] == batch and
             needle in r['variant']]
    return min(found, key=lambda r: r['median_ms']) if found else None


def targets(document: dict) -> list[dict]:
    """Issue 22's GPU targets against this run: ``met`` is None where they do not apply
    (not CUDA fp16 at 416x544) or were not measured."""
    settings = document.get('settings', {})
    applies = str(settings.get('device', '')).startswith('cuda') and \
        list(settings.get('input_size', [])) == TARGET_SIZE
    rows = document['trunk']
    cameras = next((r for r in document['multi_camera'] if r.get('status') == 'ok'
                    and r['cameras'] == 8), None)
    checks = [
        ('fp16 trunk 416x544, batch 1, CUDA graphs <= 1.5 ms', 1.5,
         _best(rows, 1, 'CUDA graphs')),
        ('fp16 trunk 416x544, 8 frames batched <= 4 ms (fastest variant)', 4.0,
         _best(rows, 8)),
        ('8 cameras through infer_frames (whole engine pass, 640x480 in) <= 4 ms', 4.0,
         None if cameras is None else {'variant': cameras['variant'],
                                       'median_ms': cameras['batched']['median_ms']}),
    ]
    result = []
    for name, limit, row in checks:
        measured = None if row is None else round(row['median_ms'], 3)
        result.append({'target': name, 'limit_ms': limit, 'measured_ms': measured,
                       'variant': None if row is None else row['variant'],
                       'met': None if not applies or measured is None else
                       measured <= limit})
    return result


def timer(document: dict) -> str:
    """How the rows were timed (CUDA events on a GPU, perf_counter on the CPU)."""
    found = {row['timer'] for row in document['trunk'] if 'timer' in row}
    return ', '.join(sorted(found)) or 'nothing timed'


def _ms(value) -> str:
    return '—' if value is None else f'{value:.3f}'


def markdown(document: dict) -> str:
    machine = document.get('machine', {})
    settings = document.get('settings', {})
    size = 'x'.join(map(str, settings.get('input_size', [])))
    lines = [f'# {document["title"]}', '', f'**{NOTE}**', '']
    if document.get('quick'):
        lines += ['**--quick: a check of the chain at a tiny size, not a measurement.**', '']
    lines += ['| | |', '|---|---|',
              f'| GPU | {machine.get("gpu") or "none"} |',
              f'| torch / CUDA / cuDNN | {machine.get("torch")} / {machine.get("cuda")} / '
              f'{machine.get("cudnn")} |',
              f'| Python | {machine.get("python")} |',
              f'| date | {document.get("date")} |',
              f'| device, input size | {settings.get("device")}, {size} |',
              f'| timing | median of {settings.get("repeat")} runs after '
              f'{settings.get("warmup")} warm-up runs, each timed alone with '
              f'{timer(document)} |',
              f'| run took | {document.get("seconds")} s of a {document.get("budget_s")} s '
              f'budget |',
              f'| installed from the wheels | '
              f'{", ".join(document.get("installed_from_wheels") or []) or "nothing"} |', '']
    tests = document['tests']
    lines += ['## Tests that need CUDA', '']
    if 'command' in tests:
        counts = ', '.join(f'{n} {w}' for w, n in (tests.get('counts') or {}).items())
        lines += [f'`{" ".join(tests["command"][1:])}`: {counts or "no summary"} '
                  f'(exit status {tests.get("exit_status")}'
                  f'{", stopped at its cap" if tests.get("timed_out") else ""}, '
                  f'{tests.get("seconds")} s)', '']
    else:
        lines += [f'not run ({tests.get("skipped")})', '']
    lines += [f'## Image trunk {size}', '',
              '| variant | batch | median ms | p10–p90 ms | ms per frame | frames/s | notes |',
              '|---|---|---|---|---|---|---|']
    for row in document['trunk']:
        if row.get('status') != 'ok':
            lines.append(f'| {row["variant"]} | {row["batch"]} | — | — | — | — | '
                         f'{row.get("status")} |')
            continue
        notes = []
        if 'compile_s' in row:
            notes.append(f'compiled in {row["compile_s"]:.0f} s')
        if 'graph_replays' in row:
            notes.append(f'{row["graph_replays"]} graph replays' +
                         (f', disabled: {row["graphs_disabled"]}'
                          if row.get('graphs_disabled') else ''))
        lines.append(f'| {row["variant"]} | {row["batch"]} | {row["median_ms"]:.3f} | '
                     f'{row["p10_ms"]:.3f}–{row["p90_ms"]:.3f} | {row["per_frame_ms"]:.3f} | '
                     f'{1e3 / row["per_frame_ms"]:.0f} | {"; ".join(notes)} |')
    lines += ['', '## Several cameras: `infer_frames` (whole engine pass)', '',
              '| variant | cameras | batched, median ms | ms per frame | one call per frame, '
              'ms | speed-up |', '|---|---|---|---|---|---|']
    for row in document['multi_camera']:
        lines.append(f'| {row["variant"]} | {row["cameras"]} x '
                     f'{"x".join(map(str, row["camera_size"][::-1]))} | '
                     f'{row["batched"]["median_ms"]:.3f} | {row["batched_per_frame_ms"]:.3f} | '
                     f'{row["one_by_one"]["median_ms"]:.3f} | {row["speed_up"]:.2f}x |')
    lines += ['', '## Targets (issue 22)', '', '| target | measured ms | variant | met |',
              '|---|---|---|---|']
    for target in document['targets']:
        met = {True: 'yes', False: 'no', None: 'not applicable here'}[target['met']]
        lines.append(f'| {target["target"]} | {_ms(target["measured_ms"])} | '
                     f'{target["variant"] or "—"} | {met} |')
    if document['errors']:
        lines += ['', '## Not measured', ''] + [f'- {error}' for error in document['errors']]
    return '\n'.join(lines) + '\n'


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    temporary.write_text(text, encoding='utf-8')
    os.replace(temporary, path)


def write_report(out: Path, report: dict, parts: list[dict]) -> tuple[Path, Path]:
    """Write ``out/gpu-check.json`` and ``out/gpu-check.md``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    document = merged(report, parts)
    json_path, md_path = out / 'gpu-check.json', out / 'gpu-check.md'
    _write(json_path, json.dumps(document, indent=2) + '\n')
    _write(md_path, markdown(document))
    return md_path, json_path
