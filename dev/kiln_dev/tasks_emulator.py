"""The local Cloud Tasks emulator: gcloud-tasks-emulator's gRPC API, dispatched like Cloud Tasks.

Run with the emulator's own venv (``.venv-tasks/bin/python``, made by ``make
tasks-emulator``: the package needs protobuf<5, so it cannot live in the dev venv); this
file imports nothing of Kiln. It keeps the package's servicer (the Cloud Tasks gRPC API)
and replaces its state and dispatcher, which differ from Cloud Tasks where Kiln cares:

- a task name is refused (``ALREADY_EXISTS``) for an hour after it was created;
- tasks are dispatched when due by a small thread pool (the package does one at a time,
  polling every 100 ms), each HTTP request with a timeout, failures retried with backoff;
- a queue is created by the first task sent to it (and ``--queue`` ones at start);
- ``--drop-rate R --seed S`` accepts that fraction of tasks and never dispatches them
  (chaos: lost checks);
- a side HTTP port answers ``GET /`` (ready) and ``GET /stats`` (JSON counters:
  created, refused_duplicates, dispatched, dropped, failed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import http.client
import http.server
import itertools
import json
import logging
import random
import threading
import time
from concurrent import futures
from typing import Any
from urllib import parse

import grpc
from gcloud_tasks_emulator.cloudtasks_pb2_grpc import add_CloudTasksServicer_to_server
from gcloud_tasks_emulator.server import Greeter, QueueState
from google.api_core.exceptions import AlreadyExists, NotFound
from google.cloud.tasks_v2 import Queue, Task

NAME_MEMORY = 3600.0  # seconds a task name stays taken (Cloud Tasks: about an hour)
logger = logging.getLogger("kiln-tasks-emulator")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("created", "refused_duplicates", "dispatched", "dropped", "failed"), 0)

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


class DispatchingState(QueueState):  # type: ignore[misc]
    """Queues and due tasks in a heap, dispatched by a pool of threads."""

    def __init__(self, *, workers: int, dispatch_timeout: float, drop_rate: float,
                 seed: int | None, max_attempts: int, stats: Stats) -> None:
        super().__init__("localhost", 80, -1)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str, Task]] = []
        self._seq = itertools.count()
        self._names: dict[str, float] = {}  # task name → when it may be used again
        self._pool = futures.ThreadPoolExecutor(max_workers=workers,
                                                thread_name_prefix="dispatch")
        self._timeout = dispatch_timeout
        self._drop_rate = drop_rate
        self._random = random.Random(seed)
        self._max_attempts = max_attempts
        self._stats = stats
        self._running = True
        self._local = threading.local()  # each dispatch thread's connections
        self._thread = threading.Thread(target=self._loop, daemon=True, name="scheduler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the API the servicer calls ------------------------------------------------

    def create_task(self, queue: str, task: Task) -> Task:
        now = time.time()
        with self._cond:
            if queue not in self._queues:
                self.create_queue(None, Queue(name=queue))
            task.name = task.name or f"{queue}/tasks/{next(self._seq)}-{int(now * 1e6)}"
            if self._names.get(task.name, 0.0) > now:
                self._stats.add("refused_duplicates")
                raise AlreadyExists(f"Task {task.name} already exists.")
            self._forget_names(now)
            self._names[task.name] = now + NAME_MEMORY
            self._stats.add("created")
            if self._drop_rate and self._random.random() < self._drop_rate:
                self._stats.add("dropped")
                return task
            due = task.schedule_time.timestamp() if task.schedule_time else now
            self._push(due, queue, task)
        return task

    def list_tasks(self, queue_name: str) -> list[Task]:
        with self._cond:
            return [task for _, _, queue, task in sorted(self._heap) if queue == queue_name]

    def purge_queue(self, queue_name: str) -> Queue:
        with self._cond:
            self._heap = [item for item in self._heap if item[2] != queue_name]
            heapq.heapify(self._heap)
            return super().purge_queue(queue_name)

    def submit_task(self, task_name: str, force_run: bool = False) -> Task:
        """RunTask: dispatch a pending task now."""
        with self._cond:
            for item in self._heap:
                if item[3].name == task_name:
                    self._heap.remove(item)
                    heapq.heapify(self._heap)
                    self._pool.submit(self._dispatch, item[2], item[3])
                    return item[3]
        raise NotFound(f"Task not found: {task_name}")

    # --- dispatching -------------------------------------------------------------

    def _push(self, due: float, queue: str, task: Task) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), queue, task))
        self._cond.notify()

    def _forget_names(self, now: float) -> None:
        if len(self._names) > 10_000:
            self._names = {name: until for name, until in self._names.items() if until > now}

    def _loop(self) -> None:
        with self._cond:
            while self._running:
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    _, _, queue, task = heapq.heappop(self._heap)
                    if self._queues.get(queue) is None:
                        continue  # deleted queue
                    if self._queues[queue].state == Queue.State.PAUSED:
                        self._push(now + 0.5, queue, task)
                        break
                    self._pool.submit(self._dispatch, queue, task)
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout=wait if wait is None else max(wait, 0.001))

    def _dispatch(self, queue: str, task: Task) -> None:
        task.dispatch_count += 1
        try:
            self._request(queue, task)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._stats.add("failed")
            logger.warning("task %s failed (attempt %d): %s", task.name, task.dispatch_count, exc)
            if self._max_attempts and task.dispatch_count >= self._max_attempts:
                return
            backoff = min(0.1 * 2 ** (task.dispatch_count - 1), 5.0)
            with self._cond:
                self._push(time.time() + backoff, queue, task)
            return
        self._stats.add("dispatched")

    def _request(self, queue: str, task: Task) -> None:
        """POST the task's request on this thread's kept-alive connection to its host (a
        new connection per task costs the Pub/Sub emulator's REST endpoint about 3x)."""
        target = task.http_request
        if not target.url:
            raise ValueError("only HTTP target tasks are emulated")
        url = parse.urlsplit(target.url)
        headers = {**target.headers,
                   "X-CloudTasks-QueueName": queue.rsplit("/", 1)[-1],
                   "X-CloudTasks-TaskName": task.name.rsplit("/", 1)[-1],
                   "X-CloudTasks-TaskRetryCount": str(task.dispatch_count - 1)}
        path = url.path + (f"?{url.query}" if url.query else "")
        connections: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "connections", {})
        for fresh in (False, True):
            connection = connections.get(url.netloc)
            if connection is None or fresh:
                kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
                connection = connections[url.netloc] = kind(url.netloc, timeout=self._timeout)
            try:
                connection.request(target.http_method.name or "POST", path,
                                   body=target.body or None, headers=headers)
                response = connection.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if fresh:
                    raise
                continue  # a kept-alive connection the server closed: once more, anew
            except OSError:
                connection.close()
                del connections[url.netloc]
                raise
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")
            return


def serve_side_port(host: str, port: int, stats: Stats) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/":
                body = b"ok\n"
            elif self.path == "/stats":
                body = json.dumps(stats.snapshot()).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="side-port").start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the Cloud Tasks gRPC API")
    parser.add_argument("--http-port", type=int, required=True, help="GET / and GET /stats")
    parser.add_argument("--queue", action="append", default=[],
                        help="projects/P/locations/L/queues/Q, created at start")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--dispatch-timeout", type=float, default=10.0)
    parser.add_argument("--max-attempts", type=int, default=100, help="0: unlimited")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stats = Stats()
    state = DispatchingState(workers=args.workers, dispatch_timeout=args.dispatch_timeout,
                             drop_rate=args.drop_rate, seed=args.seed,
                             max_attempts=args.max_attempts, stats=stats)
    for name in args.queue:
        state.create_queue(None, Queue(name=name))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_CloudTasksServicer_to_server(Greeter(state), server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    state.start()
    side = serve_side_port(args.host, args.http_port, stats)  # ready once the API is
    logger.info("serving the Cloud Tasks API on %s:%d, stats on :%d at %s", args.host,
                args.port, args.http_port, dt.datetime.now(dt.UTC).isoformat())
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        side.shutdown()
        state.stop()
        server.stop(grace=0)


if __name__ == "__main__":
    main()
