"""Hostile programs are stopped or refused, the sandbox keeps serving, and none of their processes survive."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest


def test_fork_bomb_is_stopped(sandbox):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    resp = sandbox.run(code, run_timeout=2)
    assert resp["status"] == "Failed"
    assert resp["run_result"]["status"] == "TimeLimitExceeded" and resp["run_result"]["return_code"] is None
    assert time.monotonic() - start < 15
    sandbox.assert_healthy()


def test_fork_bomb_hits_the_process_limit(sandbox):
    if not sandbox.runner.isolation.nproc_applies:
        pytest.skip("RLIMIT_NPROC does not apply for this uid without namespaces")
    code = "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(30)\n        n += 1\nexcept OSError as e:\n    print('refused after', n, e.errno)\n"
    resp = sandbox.run(code, run_timeout=5)
    assert resp["run_result"]["stdout"].startswith("refused after"), resp
    forks = int(resp["run_result"]["stdout"].split()[2])
    assert forks < sandbox.config.max_processes
    sandbox.assert_healthy()  # the 30 s sleepers were killed when the program exited


def test_infinite_print_is_cut_flagged_and_killed(sandbox):
    start = time.monotonic()
    resp = sandbox.run("while True:\n    print('spam' * 100)\n", run_timeout=10)
    rr = resp["run_result"]
    assert time.monotonic() - start < 5  # killed at the cap, not at the timeout
    assert rr["stdout_truncated"] is True and rr["stderr_truncated"] is False
    assert len(rr["stdout"].encode()) == sandbox.config.max_output_bytes
    assert rr["return_code"] == -9 and resp["status"] == "Failed"
    assert "truncated" in resp["message"]
    sandbox.assert_healthy()


@pytest.mark.parametrize("limit_mb", [256, -1])  # -1: the server's default_memory_mb applies
def test_memory_hog_gets_memory_error(sandbox, limit_mb):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n"
    resp = sandbox.run(code, memory_limit_MB=limit_mb, run_timeout=20)
    assert resp["status"] == "Failed"
    assert "MemoryError" in resp["run_result"]["stderr"] and resp["run_result"]["return_code"] == 1
    sandbox.assert_healthy()


def test_threads_start_under_a_memory_limit(sandbox):
    # SandboxFusion's RLIMIT_AS makes this fail at memory_limit_MB=1024; RLIMIT_DATA does not.
    code = "import threading\nts = [threading.Thread(target=print, args=(i,)) for i in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\n"
    resp = sandbox.run(code, memory_limit_MB=1024)
    assert resp["status"] == "Success", resp["run_result"]["stderr"][-400:]


def test_busy_loop_times_out(sandbox):
    resp = sandbox.run("print('started', flush=True)\nwhile True:\n    pass\n", run_timeout=1)
    rr = resp["run_result"]
    assert resp["status"] == "Failed" and rr["status"] == "TimeLimitExceeded" and rr["return_code"] is None
    assert rr["stdout"] == "started\n"  # output so far is kept
    assert 1.0 <= rr["execution_time"] < 3.0
    sandbox.assert_healthy()


def test_writes_outside_the_temp_dir_are_refused(sandbox, tmp_path):
    os.chmod(tmp_path, 0o777)  # even a world-writable directory: the mount namespace makes it read-only
    targets = [str(tmp_path / "escaped.txt"), "/tmp/verl-sandbox-escape.txt", os.path.expanduser("~/escaped.txt")]
    code = (
        f"import os\nfor path in {targets!r}:\n    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
        "    except OSError as e:\n        print('refused', e.errno)\nopen(os.path.join(os.environ['HOME'], 'ok.txt'), 'w').write('in')\n"
        "open('out.txt', 'w').write('fine')\n"
    )
    resp = sandbox.run(code, fetch_files=["out.txt", "missing.txt"])
    assert "WROTE" not in resp["run_result"]["stdout"], resp
    assert resp["files"] == {"out.txt": "ZmluZQ=="}  # base64("fine"); missing files are omitted
    for path in targets:
        if sandbox.runner.isolation.namespaces or not path.startswith("/tmp/"):
            assert not os.path.exists(path), path
    sandbox.assert_healthy()


def test_children_left_behind_are_killed(sandbox):
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sleep', '1000'])\n"
        "subprocess.Popen(['sleep', '1001'], start_new_session=True)\n"  # escapes the process group
        "print('parent done')\n"
    )
    start = time.monotonic()
    resp = sandbox.run(code)
    assert resp["status"] == "Success" and resp["run_result"]["stdout"] == "parent done\n"
    assert time.monotonic() - start < 5  # we do not wait for the children
    sandbox.assert_healthy()


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_network_connections_are_refused(make_sandbox, isolation):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = (
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', PORT), timeout=2)\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('refused', type(e).__name__)\n"
    ).replace("PORT", str(port))
    with make_sandbox(max_concurrency=1, isolation=isolation) as sb:
        resp = sb.run(code)
        sb.assert_healthy()
        expected = "namespace" if isolation == "auto" and sb.runner.isolation.namespaces else "socket guard"
        assert expected in sb.runner.isolation.network
    assert resp["run_result"]["stdout"].startswith("refused"), resp
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


def test_concurrency_is_bounded(make_sandbox):
    with make_sandbox(max_concurrency=2) as sb:
        results = []

        def call():
            results.append(sb.run("import time\ntime.sleep(0.6)\n")["status"])

        start = time.monotonic()
        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        assert results == ["Success"] * 4
        assert elapsed >= 1.2  # 4 programs of 0.6 s, 2 at a time
        assert sb.leftovers() == []
