"""torch_threads.set_torch_threads: a thread's torch thread count holds whatever other threads set.

torch adopts the process-wide count (the last ``set_num_threads`` of any thread) at a
thread's first parallel operation; depth_node's worker sets its full count while the main
and executor threads set one. Run in a fresh interpreter: the setting is process-wide.
"""

import subprocess
import sys
import textwrap

from conftest import REPO

THREADS = textwrap.dedent("""
    import threading
    import torch
    from depthclip_ros.ros.torch_threads import set_torch_threads

    def scenario(setter):
        out = {}
        worker_set, other_set = threading.Event(), threading.Event()

        def worker():
            setter(3)
            worker_set.set()
            other_set.wait()
            out['worker'] = torch.get_num_threads()

        def other():  # the executor thread, started after the worker
            worker_set.wait()
            setter(1)
            other_set.set()

        threads = [threading.Thread(target=worker), threading.Thread(target=other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return out['worker']

    print(scenario(torch.set_num_threads), scenario(set_torch_threads))
""")


def test_the_workers_count_survives_another_thread_setting_one():
    done = subprocess.run([sys.executable, '-c', THREADS], cwd=REPO, check=True,
                          capture_output=True, text=True, timeout=120)
    plain, fixed = map(int, done.stdout.split())
    assert plain == 1  # the trap: torch.set_num_threads alone, overridden by the other
    assert fixed == 3
