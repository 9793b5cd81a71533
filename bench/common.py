#!/usr/bin/env python
"""What the HTTP benchmarks share (ingest_bench, isolation_bench, outage_bench).

- Servers, each in its own process group (killed in ``finally``): the real ``bridge serve``
  with a bridge.yaml written into a temp folder, and two comparison apps run by
  ``python bench/common.py serve bare|naive`` under *the bridge's own gunicorn options*
  (``bridge.server.run_gunicorn`` with only the Flask app swapped), so workers, threads,
  worker class (gthread), keep-alive and access log are identical.
- Signed callbacks: Ratio Ready's ``wall_art_completed`` sample with a unique ``job_id``
  each, signed with HMAC-SHA256 (hex, ``X-RatioReady-Signature``) computed here with
  hmac/hashlib, never with the bridge's own code.
- Two load generators in separate processes: ``wrk`` (C, Debian's package) cycling
  through pre-computed signed bodies that a Lua script reads from files (HMAC in Lua is
  impractical), and a Python one (``multiprocessing``, a keep-alive ``http.client``
  connection per sender thread) used by the outage bench and as a fallback.
- Receivers (destinations) in their own process: asyncio HTTP/1.1, optionally answering
  after a delay; they count requests and distinct ``Idempotency-Key`` values.
- RSS from ``/proc/<pid>/status``, machine facts, medians and tables.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SOURCE = "ratioready"
SECRET_VAR = "RATIOREADY_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-RatioReady-Signature"
SAMPLE = REPO / "bridge" / "samples" / "ratioready" / "wall_art_completed.json"
MAPPING = REPO / "mappings" / "ratioready.yaml"
PLACEHOLDER = b"@@JOB@@"


def python_bin() -> str:
    return sys.executable


def bridge_bin() -> list[str]:
    script = Path(sys.executable).with_name("bridge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from bridge.cli import main; main()"]


# -- machine, statistics, tables ------------------------------------------------------------

def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "wrk": wrk_version() or "not installed",
        "code": git_state(),
    }


def machine_line(info: dict[str, str]) -> str:
    return (f"{info['date']}; {info['nproc']} CPUs ({info['cpu']}); Python {info['python']}; "
            f"load average at start {info['load']} (1, 5, 15 min); wrk: {info['wrk']}; "
            f"code: {info['code']}")


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """'median (min–max)'."""
    if not values:
        return "-"
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]],
               right: Iterable[int] = ()) -> str:
    rows = [tuple(r) for r in rows]
    right = set(right)
    widths = [max(len(str(row[i])) for row in (tuple(header), *rows))
              for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i])
                         for i, c in enumerate(row)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   right: Iterable[int] = ()) -> str:
    right = set(right)
    sep = ["---:" if i in right else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# -- signed callbacks ------------------------------------------------------------------------

def template() -> bytes:
    """The sample, compact, with its job_id replaced by a placeholder."""
    data = json.loads(SAMPLE.read_bytes())
    data["job_id"] = PLACEHOLDER.decode()
    return json.dumps(data, separators=(",", ":")).encode()


def signed(tmpl: bytes, key: bytes, job_id: str) -> tuple[bytes, str]:
    body = tmpl.replace(PLACEHOLDER, job_id.encode())
    return body, hmac.new(key, body, hashlib.sha256).hexdigest()


def new_secret() -> str:
    return "bench-" + os.urandom(12).hex()


# -- processes -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen | None, timeout: float = 30.0,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited ({process.returncode}) before answering {url}"
                               f"\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Server:
    """A gunicorn server (``bridge serve`` or a comparison app) in its own process group."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], folder: Path,
                 port: int, health: str, workers: int = 1):
        self.name, self.port, self.folder = name, port, folder
        self.expected_workers = workers
        self.db: Path | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / f"{name}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=folder, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.url + health, self.process, log=self.log)
            self._wait_workers()
        except BaseException:
            self.stop()
            raise

    def _wait_workers(self, timeout: float = 20.0) -> None:
        """Every gunicorn worker booted (so the first measurement does not pay for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if text.count("Booting worker") >= self.expected_workers:
                return
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # gunicorn workers left behind by a killed master share the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def bridge_yaml(folder: Path, *, destination_url: str | None = None,
                in_web: bool = True, destination_extra: str = "") -> Path:
    """A bridge.yaml with one source (ratioready, secret from the environment) and, when
    ``destination_url`` is given, one ``http`` destination routed from it."""
    text = f"""database_url: sqlite:///{folder / 'bridge.db'}
sources:
  {SOURCE}:
    profile: {SOURCE}
    secrets: ["${{{SECRET_VAR}}}"]
    mapping: {MAPPING}
"""
    if destination_url:
        text += f"""destinations:
  bench:
    kind: http
    url: {destination_url}
{destination_extra}routes:
  - {{from: {SOURCE}, to: [bench]}}
"""
    text += f"delivery:\n  in_web: {'true' if in_web else 'false'}\n"
    path = folder / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BRIDGE_PATH: str | None = None  # --bridge-path: benchmark another checkout's bridge/


def clean_env(folder: Path, secret: str, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "LANG": "C.UTF-8",
           SECRET_VAR: secret, **extra}
    if BRIDGE_PATH:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (BRIDGE_PATH, env.get("PYTHONPATH"))
                                            if p)
    return env


def start_bridge(folder: Path, secret: str, workers: int, threads: int, name: str = "bridge",
                 **yaml_options) -> Server:
    """``bridge serve`` with a bridge.yaml and a SQLite file in ``folder`` (its cwd, so no
    .env of the repository is read)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = bridge_yaml(folder, **yaml_options)
    port = free_port()
    env = clean_env(folder, secret, BRIDGE_CONFIG=str(config))
    command = [*bridge_bin(), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--threads", str(threads)]
    server = Server(name, command, env, folder, port, "/healthz", workers)
    server.db = folder / "bridge.db"
    return server


def start_app(kind: str, folder: Path, secret: str, workers: int, threads: int,
              destination: str | None = None) -> Server:
    """A comparison app (``bare`` or ``naive``) under the bridge's gunicorn options."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env(folder, secret, PYTHONPATH=str(REPO))
    if destination:
        env["NAIVE_DESTINATION"] = destination
    command = [python_bin(), str(BENCH / "common.py"), "serve", kind, "--port", str(port),
               "--workers", str(workers), "--threads", str(threads)]
    return Server(kind, command, env, folder, port, "/ping", workers)


def settle(db: Path, quiet: float = 0.5, timeout: float = 30.0) -> int:
    """Wait until the rows stop changing (requests still in flight when the load generator
    stopped are stored after it), then return the count."""
    last, since = count_rows(db), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count_rows(db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def count_rows(db: Path, query: str = "SELECT COUNT(*) FROM events") -> int:
    """Read the bridge's SQLite file beside the running bridge (WAL: readers never block
    its writer)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(query).fetchone()[0]
    finally:
        conn.close()


# -- the comparison apps (run inside gunicorn by `python bench/common.py serve ...`) --------

def bare_app():
    """The ceiling: a Flask app that reads the body and answers 200 with a small JSON."""
    from flask import Flask, jsonify, request

    app = Flask("bare")

    @app.post("/hooks/<source>")
    def hook(source: str):
        request.get_data()
        return jsonify(status="accepted"), 200

    @app.get("/ping")
    def ping():
        return "ok"

    return app


def naive_app():
    """The relay users write: verify the HMAC, forward with requests.post inside the
    request handler, then answer. An unreachable destination raises: Flask answers 500."""
    import requests
    from flask import Flask, abort, jsonify, request

    key = os.environ[SECRET_VAR].encode()
    destination = os.environ["NAIVE_DESTINATION"]
    app = Flask("naive")

    @app.post("/hooks/<source>")
    def hook(source: str):
        body = request.get_data()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get(SIGNATURE_HEADER, "")):
            abort(401)
        requests.post(destination, data=body, headers={"Content-Type": "application/json"},
                      timeout=10)
        return jsonify(status="accepted"), 200

    @app.get("/ping")
    def ping():
        return "ok"

    return app


def serve_main(argv: list[str]) -> None:
    """``common.py serve bare|naive --port P --workers W --threads T``: the app under
    bridge.server.run_gunicorn, i.e. the bridge's exact gunicorn options."""
    import argparse
    import logging

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    from bridge import server as bridge_server

    factory = bare_app if args.kind == "bare" else naive_app

    class AppServer(bridge_server.BridgeServer):
        def load(self):
            return factory()

    bridge_server.BridgeServer = AppServer
    bridge_server.run_gunicorn(None, host="127.0.0.1", port=args.port, workers=args.workers,
                               threads=args.threads)


# -- receivers (destinations) ----------------------------------------------------------------

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n"
            b"\r\n" b'{"message":"Workflow was started"}\r\n')


def _receive(port: int, delay: float, ready, total, distinct) -> None:
    seen: set[bytes] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, key = 0, None
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"idempotency-key":
                        key = value.strip()
                if length:
                    await reader.readexactly(length)
                if delay:
                    await asyncio.sleep(delay)
                total.value += 1  # one thread in this process: no lock needed
                if key is not None and key not in seen:
                    seen.add(key)
                    distinct.value += 1
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024,
                                            reuse_address=True)
        ready.send(server.sockets[0].getsockname()[1])
        ready.close()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Receiver:
    """A destination in its own process: 200 to every POST, after ``delay`` seconds."""

    def __init__(self, port: int = 0, delay: float = 0.0):
        context = multiprocessing.get_context("spawn")
        self.total = context.Value("q", 0, lock=False)
        self.distinct = context.Value("q", 0, lock=False)
        parent, child = context.Pipe(duplex=False)
        self.process = context.Process(target=_receive, daemon=True,
                                       args=(port, delay, child, self.total, self.distinct))
        self.process.start()
        if not parent.poll(20):
            self.close()
            raise RuntimeError("the receiver did not start")
        self.port = parent.recv()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# -- wrk -------------------------------------------------------------------------------------

WRK_LUA = r"""
-- Cycles through pre-computed signed callbacks: one file per wrk thread, one line per
-- request: "<hex signature>\t<body>". Counts answers saying "accepted" / "duplicate".
local threads, next_id = {}, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  path = args[2]
  header = args[3]
  bodies, sigs = {}, {}
  for line in io.lines(args[1] .. "." .. id) do
    local tab = line:find("\t", 1, true)
    sigs[#sigs + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
  end
  n, wraps, accepted, duplicate, other = 0, 0, 0, 0, 0
end

function request()
  n = n + 1
  if n > #bodies then n = 1; wraps = wraps + 1 end
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                   [header] = sigs[n]}, bodies[n])
end

function response(status, headers, body)
  if status == 200 and body:find('"accepted"', 1, true) then accepted = accepted + 1
  elseif status == 200 and body:find('"duplicate"', 1, true) then duplicate = duplicate + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local w, a, d, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    w = w + t:get("wraps"); a = a + t:get("accepted")
    d = d + t:get("duplicate"); o = o + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, "accepted": %d, ' ..
    '"duplicate": %d, "other": %d, "wraps": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, a, d, o, w, e.connect, e.read,
    e.write, e.status, e.timeout))
end
"""


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()


@dataclass
class Load:
    """One measurement: closed-loop senders (each sends its next request when the answer
    to the previous one arrives) for a fixed time."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    accepted: int           # 200 with "accepted" in the answer
    duplicate: int = 0
    other: int = 0          # any other answer
    errors: int = 0         # connect/read/write/timeouts (no answer)
    wraps: int = 0          # the pre-computed bodies ran out and were sent again
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_bodies(folder: Path, tag: str, count: int, files: int, secret: str) -> Path:
    """``count`` signed callbacks with unique job_ids, spread over ``files`` files (one per
    wrk thread): PREFIX.0, PREFIX.1, …; returns PREFIX."""
    tmpl, key = template(), secret.encode()
    prefix = folder / f"bodies-{tag}"
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(f"{prefix}.{i}", "wb")) for i in range(files)]
        for n in range(count):
            body, sig = signed(tmpl, key, f"rr_{tag}_{n:07d}")
            handles[n % files].write(sig.encode() + b"\t" + body + b"\n")
    return prefix


def run_wrk(url: str, connections: int, seconds: float, bodies: Path, folder: Path,
            threads: int = 1, timeout: float = 30.0) -> Load:
    """wrk -t THREADS -c CONNECTIONS -d SECONDS against POST /hooks/ratioready."""
    script = folder / "signed.lua"
    if not script.exists():
        script.write_text(WRK_LUA, encoding="utf-8")
    threads = max(1, min(threads, connections))
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", f"{timeout:g}s", "-s", str(script), url, "--", str(bodies),
               f"/hooks/{SOURCE}", SIGNATURE_HEADER]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[8:])
            return Load(requests=r["requests"], seconds=r["duration_us"] / 1e6,
                        p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                        max_ms=r["max_us"] / 1000, accepted=r["accepted"],
                        duplicate=r["duplicate"], other=r["other"],
                        errors=r["connect"] + r["read"] + r["write"] + r["timeout"],
                        wraps=r["wraps"], extra={"p90_ms": r["p90_us"] / 1000})
    raise RuntimeError(f"wrk gave no result ({out.returncode}):\n{out.stdout}\n{out.stderr}")


# -- the Python load generator ---------------------------------------------------------------

def _sender(host: str, port: int, path: str, secret: str, tag: str, senders: int,
            first: int, count: int | None, seconds: float | None, start_at: float,
            result, progress, resend: tuple[int, ...]) -> None:
    """One process, ``senders`` threads, one keep-alive connection each. With ``count``:
    send job ids first … first+count-1 (split between the threads), then stop. With
    ``seconds``: send new job ids until the time is up. An answer whose status is in
    ``resend`` is counted, then the same callback is sent again after 0.5 s (as a provider
    retries), up to 20 times; a dropped connection is reopened and the callback sent again."""
    tmpl, secret_key = template(), secret.encode()
    lock = threading.Lock()
    latencies = array.array("d")
    tally = {"accepted": 0, "duplicate": 0, "other": 0, "errors": 0}

    def run(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine = array.array("d")
        counts = dict.fromkeys(tally, 0)
        if count is not None:
            numbers = iter(range(first + index, first + count, senders))
        else:
            numbers = iter(range(first + index, 1 << 60, senders))
        deadline = start_at + seconds if seconds else None
        for n in numbers:
            if deadline and time.time() >= deadline:
                break
            body, sig = signed(tmpl, secret_key, f"rr_{tag}_{n:08d}")
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sig}
            for _try in range(20):
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body, headers)
                    answer = conn.getresponse()
                    text = answer.read()
                except (OSError, http.client.HTTPException):
                    counts["errors"] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    continue
                mine.append(time.perf_counter() - t0)
                if answer.status == 200 and b'"accepted"' in text:
                    counts["accepted"] += 1
                elif answer.status == 200 and b'"duplicate"' in text:
                    counts["duplicate"] += 1
                else:
                    label = f"HTTP {answer.status}"
                    counts[label] = counts.get(label, 0) + 1
                    if answer.status in resend:
                        time.sleep(0.5)
                        continue
                    counts["other"] += 1
                if progress is not None:
                    with progress.get_lock():
                        progress.value += 1
                break
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in counts.items():
                tally[k] = tally.get(k, 0) + v

    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.send((latencies.tobytes(), tally, time.time()))
    result.close()


def run_python_load(url: str, secret: str, tag: str, processes: int, senders: int,
                    count: int | None = None, seconds: float | None = None,
                    progress=None, resend: tuple[int, ...] = ()) -> Load:
    """``processes`` × ``senders`` concurrent senders, closed loop; either ``count``
    callbacks in all (job ids 0 … count-1) or as many as fit in ``seconds``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    start_at = time.time() + 1.0 + 0.2 * processes  # every process ready before the start
    share = None if count is None else -(-count // processes)
    try:
        for p in range(processes):
            parent, child = context.Pipe(duplex=False)
            first = p * (share or (1 << 50))
            mine = None if count is None else max(0, min(share, count - first))
            proc = context.Process(
                target=_sender, daemon=True,
                args=(parts.hostname, parts.port, f"/hooks/{SOURCE}", secret, tag, senders,
                      first, mine, seconds, start_at, child, progress, resend))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        latencies = array.array("d")
        tally = {"accepted": 0, "duplicate": 0, "other": 0, "errors": 0}
        ended = start_at
        for parent in pipes:
            data, counts, finished = parent.recv()
            chunk = array.array("d")
            chunk.frombytes(data)
            latencies.extend(chunk)
            for k, v in counts.items():
                tally[k] = tally.get(k, 0) + v
            ended = max(ended, finished)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    ordered = sorted(latencies)
    seconds_taken = max(1e-9, ended - start_at)

    def pct(q: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return Load(requests=len(ordered), seconds=seconds_taken, p50_ms=pct(0.50),
                p99_ms=pct(0.99), max_ms=ordered[-1] * 1000 if ordered else float("nan"),
                accepted=tally["accepted"], duplicate=tally["duplicate"], other=tally["other"],
                errors=tally["errors"],
                extra={"statuses": {k: v for k, v in tally.items() if k.startswith("HTTP")}})


def measure(url: str, connections: int, seconds: float, *, loadgen: str, folder: Path,
            secret: str, tag: str, bodies: Path | None = None) -> Load:
    """One closed-loop measurement with ``connections`` concurrent senders: wrk over
    pre-computed ``bodies``, or the Python generator (new job ids tagged ``tag``)."""
    if loadgen == "wrk":
        if bodies is None:
            raise ValueError("wrk needs pre-computed bodies")
        return run_wrk(url, connections, seconds, bodies, folder)
    processes = 1 if connections == 1 else 2
    return run_python_load(url, secret, tag, processes, -(-connections // processes),
                           seconds=seconds)


def default_loadgen() -> str:
    return "wrk" if shutil.which("wrk") else "python"


# -- profiles (py-spy) -----------------------------------------------------------------------

def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def start_profiles(pids: Sequence[int], seconds: float, folder: Path,
                   rate: int = 250) -> list[tuple[subprocess.Popen, Path]]:
    """``py-spy record`` (raw collapsed stacks, every thread, idle ones too) on each pid."""
    spy = py_spy()
    if not spy:
        return []
    started = []
    for pid in pids:
        out = folder / f"spy-{pid}.txt"
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "-d", f"{seconds:g}", "-r",
                                 str(rate), "-f", "raw", "--idle", "--nonblocking", "-o",
                                 str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        started.append((proc, out))
    return started


def finish_profiles(started: list[tuple[subprocess.Popen, Path]]) -> dict[str, int]:
    """Wait for the py-spy processes; merge their stacks into {stack: samples}."""
    stacks: dict[str, int] = {}
    for proc, out in started:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if not out.exists():
            continue
        for line in out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit():
                stacks[stack] = stacks.get(stack, 0) + int(n)
    return stacks


# Where a request-handling thread is, by the first matching frame from the leaf up.
PHASES = (
    ("SqliteStore.begin", "SQLite: waiting for the write lock (BEGIN IMMEDIATE, busy handler)"),
    ("SqlStore.transaction", "SQLite: commit (fsync of the WAL, synchronous=FULL)"),
    ("SqlStore.execute", "SQLite: INSERT statements"),
    ("SqlStore.", "SQLite: other store code"),
    ("verify (bridge/signatures", "HMAC verification"),
    ("_parse (bridge/ingest", "JSON parsing of the body"),
    ("dedup_key_of", "event type / dedup key (JMESPath)"),
    ("event_type_of", "event type / dedup key (JMESPath)"),
    ("new_event_id", "event id"),
    ("Worker.notify", "waking the delivery worker"),
    ("metrics.", "metrics"),
    ("Logger.", "logging (the bridge's line per event)"),
    ("logging/", "logging (the bridge's line per event)"),
    ("receive (bridge/ingest", "ingest handler, other"),
    ("glogging", "gunicorn access log"),
    ("Flask.", "Flask / Werkzeug"),
    ("werkzeug/", "Flask / Werkzeug"),
    ("gunicorn/", "gunicorn (parsing, writing the answer)"),
)


def phases(stacks: dict[str, int], within: str = "handle_request") -> list[tuple[str, int]]:
    """Samples of the threads serving a request (stacks through ``within``), by phase."""
    totals: dict[str, int] = {}
    for stack, n in stacks.items():
        if within not in stack:
            continue
        frames = stack.split(";")
        label = "other"
        for frame in reversed(frames):
            hit = next((name for key, name in PHASES if key in frame), None)
            if hit:
                label = hit
                break
        totals[label] = totals.get(label, 0) + n
    return sorted(totals.items(), key=lambda item: -item[1])


def leaves(stacks: dict[str, int], within: str = "handle_request",
           top: int = 12) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for stack, n in stacks.items():
        if within in stack:
            leaf = stack.split(";")[-1]
            totals[leaf] = totals.get(leaf, 0) + n
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


def inclusive(stacks: dict[str, int], within: str, match: str = "bridge/",
              top: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """(samples through ``within``, the ``top`` frames from files matching ``match`` by
    the share of those samples they appear in)."""
    total, counts = 0, {}
    for stack, n in stacks.items():
        if within not in stack:
            continue
        total += n
        names = {frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0] + ")"
                 for frame in stack.split(";") if match in frame}
        for name in names:
            counts[name] = counts.get(name, 0) + n
    return total, sorted(counts.items(), key=lambda item: -item[1])[:top]


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "bridge"],
                               capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    changed = len([line for line in dirty.splitlines() if line.strip()])
    return f"{head}" + (f" + {changed} uncommitted change(s) under bridge/" if changed else "")


class Cleanup:
    """Stops everything registered, last first, even on Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self.items: list = []
        signal.signal(signal.SIGTERM, self._on_term)

    @staticmethod
    def _on_term(signum, frame) -> None:
        raise SystemExit(143)

    def add(self, item):
        self.items.append(item)
        return item

    def close(self) -> None:
        while self.items:
            item = self.items.pop()
            with contextlib.suppress(Exception):
                (item.stop if hasattr(item, "stop") else item.close)()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    else:
        print(__doc__)
