"""What the worker's end-to-end tests share: the worker process they start, raw HTTP requests,
and the assertions on OpenAI's error bodies. `run.py` runs the test modules that use it.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import openai
from openai import OpenAI

BASE = "SmolLM2-135M-Instruct"
ADMIN_KEY = "e2e-admin-" + os.urandom(8).hex()
GERMANY = [{"role": "user", "content": "What is the capital of Germany?"}]
STARTUP_TIMEOUT_S = 90
EXIT_TIMEOUT_S = 20

_WORKERS: list["Worker"] = []


def worker_bin() -> str:
    path = os.environ.get("OPENLEDGER_WORKER_BIN")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            "set OPENLEDGER_WORKER_BIN to the release openledger-worker binary "
            "(scripts/worker-e2e.sh does)"
        )
    return path


def create_adapter(out: Path, seed: int, rank: int = 8) -> dict:
    """`openledger-worker adapter create`: random weights, fitted to the default base model."""
    done = subprocess.run(
        [worker_bin(), "adapter", "create", "--out", str(out), "--rank", str(rank), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"adapter create failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


class Worker:
    """One `openledger-worker serve` process; stdout and stderr go to a temp file."""

    def __init__(self, label: str, store: Path, *args: str):
        self.label = label
        self.store = store
        self.args = list(args)
        self.log_path = Path(tempfile.mkstemp(prefix=f"worker-{label}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        _WORKERS.append(self)

    def start(self) -> None:
        command = [
            worker_bin(), "serve",
            "--listen", "127.0.0.1:0",  # the worker binds a free port and logs it
            "--adapters", str(self.store),
            *self.args,
        ]
        # The admin key comes from the environment (or a mode-600 file), never a flag.
        env = dict(os.environ, NO_COLOR="1", OPENLEDGER_ADMIN_API_KEY=ADMIN_KEY)
        env.setdefault("RUST_LOG", "info,rmcp=warn")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker `{self.label}` exited with {self.proc.returncode} while starting:\n{self.log()}")
            if self.port is None:
                found = re.search(r"serving the OpenAI API on http://127\.0\.0\.1:(\d+)", self.log())
                if found:
                    self.port = int(found.group(1))
            if self.port is not None:
                try:
                    status, _, body = raw_request(self.port, "GET", "/health", timeout=2)
                    if status == 200 and json.loads(body) == {"status": "ok"}:
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"worker `{self.label}` not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, timeout: float = 60) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@atexit.register
def _kill_leftovers() -> None:
    for worker in _WORKERS:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request on a fresh connection, without any client-side checks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class WorkerTestCase(unittest.TestCase):
    """Shared assertions. Subclasses set `worker` in setUpClass."""

    worker: Worker
    client: OpenAI

    def setUp(self) -> None:
        self._started = time.monotonic()

    def tearDown(self) -> None:
        print(f"[{time.monotonic() - self._started:.1f} s] ", end="", file=sys.stderr, flush=True)

    @classmethod
    def make_tmp(cls, prefix: str) -> Path:
        """A temp dir removed after the class, even when setUpClass fails."""
        tmp = Path(tempfile.mkdtemp(prefix=prefix))
        cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        return tmp

    @classmethod
    def start_bare_worker(cls, label: str, *args: str) -> None:
        """Starts the class's worker on an empty adapter store."""
        store = cls.make_tmp(f"worker-{label}-") / "store"
        store.mkdir()
        cls.start_worker(label, store, *args)

    @classmethod
    def start_worker(cls, label: str, store: Path, *args: str) -> None:
        """Starts the class's worker; it is stopped (killed if need be) after the class, pass or fail."""
        cls.worker = Worker(label, store, *args)
        cls.addClassCleanup(cls.worker.stop)
        cls.worker.start()
        cls.client = cls.worker.client()

    def assert_error_body(self, body, status: int, *, kind: str | None = None,
                          code: str | None = None, param: str | None = None) -> dict:
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        if isinstance(body, (bytes, str)):
            try:
                body = json.loads(body)
            except ValueError:
                self.fail(f"{status}: the error body is not JSON: {body!r}")
        self.assertIsInstance(body, dict, body)
        self.assertEqual(set(body), {"error"}, body)
        error = body["error"]
        self.assertIsInstance(error, dict, body)
        self.assertTrue({"message", "type", "param", "code"} <= set(error), body)
        self.assertIsInstance(error["message"], str, body)
        self.assertTrue(error["message"], body)
        self.assertIsInstance(error["type"], str, body)
        if kind is not None:
            self.assertEqual(error["type"], kind, body)
        if code is not None:
            self.assertEqual(error["code"], code, body)
        if param is not None:
            self.assertEqual(error["param"], param, body)
        return error

    def assert_status_error(self, exc: openai.APIStatusError, status: int, **expect) -> dict:
        self.assertEqual(exc.status_code, status, exc)
        return self.assert_error_body(exc.response.json(), status, **expect)

    def assert_still_serving(self, model: str = BASE) -> None:
        """A normal request right after a bad one is answered in full."""
        response = self.client.chat.completions.create(
            model=model, messages=GERMANY, temperature=0, max_tokens=3
        )
        self.assertEqual(response.choices[0].finish_reason, "length")
        self.assertEqual(response.usage.completion_tokens, 3)
        self.assertTrue(response.choices[0].message.content)

    def greedy_chat(self, model: str, messages, max_tokens: int):
        return self.client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens
        )

    def assert_usage_consistent(self, usage, max_tokens: int | None = None) -> None:
        self.assertGreater(usage.prompt_tokens, 0)
        self.assertGreater(usage.completion_tokens, 0)
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)
        if max_tokens is not None:
            self.assertLessEqual(usage.completion_tokens, max_tokens)
        cached = usage.prompt_tokens_details.cached_tokens
        self.assertTrue(0 <= cached < usage.prompt_tokens and cached % 16 == 0, usage)


def run(cases: list[type[unittest.TestCase]]) -> int:
    """Runs `cases` in order (with unittest's command-line arguments); prints the workers' logs
    when something failed."""
    started = time.monotonic()

    def load_tests(loader: unittest.TestLoader, standard_tests, pattern):
        suite = unittest.TestSuite()
        for case in cases:
            suite.addTests(loader.loadTestsFromTestCase(case))
        return suite

    module = type(sys)("worker_e2e")
    module.load_tests = load_tests
    for case in cases:  # so a test can be named: `ApiTest.test_models_list`
        setattr(module, case.__name__, case)
    program = unittest.main(module=module, exit=False, verbosity=2)
    result = program.result
    if not result.wasSuccessful():
        for worker in _WORKERS:
            print(f"\n===== worker `{worker.label}` log ({worker.log_path}) =====", file=sys.stderr)
            print(worker.log()[-20000:], file=sys.stderr)
    for worker in _WORKERS:
        worker.stop()
        if result.wasSuccessful():
            worker.log_path.unlink(missing_ok=True)
    print(f"worker e2e: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0 if result.wasSuccessful() else 1
