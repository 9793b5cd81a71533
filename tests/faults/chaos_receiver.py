"""A misbehaving catch-hook, run as its own process by tests/faults/test_chaos.py.

    python chaos_receiver.py LOG SEED [--fail 0.30] [--drop 0.05] [--burst-every 6]

Prints ``PORT <n>`` on its first line, then answers every POST on 127.0.0.1:<n>:

* in a 429 burst (one starts every ``--burst-every`` seconds on average, at random, and
  lasts 0.3-1.5 s): 429 with ``Retry-After: 1``;
* else with probability ``--fail``: a 5xx (500, 502, 503 or 504);
* else with probability ``--drop``: the connection is closed without an answer (half of
  the time with a TCP reset);
* else 200.

Every request is one JSON line in LOG: time, the Idempotency-Key (the bridge's event id),
the job_id of the flat event, and the outcome ("200", "5xx", "429", "drop"). The random
choices come from SEED. SIGTERM ends it after flushing the log.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Chaos:
    def __init__(self, log_path: str, seed: int, fail: float, drop: float, burst_every: float):
        self.rng = random.Random(seed)
        self.fail, self.drop, self.burst_every = fail, drop, burst_every
        self.burst_until = 0.0
        self.next_burst = time.monotonic() + self.rng.expovariate(1 / burst_every)
        self.lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed at exit

    def decide(self) -> tuple[str, int]:
        with self.lock:
            now = time.monotonic()
            if now < self.burst_until:
                return "429", 429
            if now >= self.next_burst:
                self.burst_until = now + self.rng.uniform(0.3, 1.5)
                self.next_burst = now + self.rng.expovariate(1 / self.burst_every)
                return "429", 429
            roll = self.rng.random()
            if roll < self.fail:
                return "5xx", self.rng.choice((500, 502, 503, 504))
            if roll < self.fail + self.drop:
                return "drop", 0
            return "200", 200

    def record(self, event_id: str | None, job_id: object, outcome: str, status: int) -> None:
        line = json.dumps({"t": round(time.time(), 4), "id": event_id, "job": job_id,
                           "outcome": outcome, "status": status})
        with self.lock:
            self.log.write(line + "\n")
            self.log.flush()

    def close(self) -> None:
        with self.lock:
            self.log.flush()
            self.log.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        chaos = self.server.chaos
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        event_id = self.headers.get("Idempotency-Key")
        try:
            job_id = json.loads(body).get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        outcome, status = chaos.decide()
        if outcome == "drop":
            chaos.record(event_id, job_id, outcome, status)
            if chaos.rng.random() < 0.5:  # a reset instead of a clean close
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        payload = b'{"accepted": true}' if status == 200 else b'{"error": "chaos"}'
        # logged before the answer is written: a 200 the bridge never reads still counts as
        # received (the bridge will send it again: a duplicate, never a loss)
        chaos.record(event_id, job_id, outcome, status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    chaos: Chaos

    def handle_error(self, request, client_address) -> None:
        pass  # a client killed mid-request (a SIGKILLed worker) is part of the game


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("seed", type=int)
    parser.add_argument("--fail", type=float, default=0.30)
    parser.add_argument("--drop", type=float, default=0.05)
    parser.add_argument("--burst-every", type=float, default=6.0)
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.chaos = Chaos(args.log, args.seed, args.fail, args.drop, args.burst_every)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.chaos.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
