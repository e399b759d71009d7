"""``make bench``'s report: medians over rounds, ratios against the floor and the peer, and
the exact last line the issue asks for (numbers made up here; no timing is asserted)."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from kiln_dev.bench import LEVELS, TARGETS, Result, in_turn, report
from kiln_dev.bench_ab import Turn, in_order, summary
from kiln_dev.bench_load import Connection, Run, closed_loop, job_poster, metered_loop
from kiln_dev.bench_parts import apps_table, by_library, library_table, served_table, wsgi_call


def result(ms: float, ingress: float) -> Result:
    return Result(Run([ms] * 98 + [ms * 3] * 2, wall=1.0), {"ingress": ingress, "worker": 1.0,
                                                        "stack": 2.0})


def test_the_last_line_gives_the_ratios() -> None:
    """Given two rounds per target and level, when reported, then the last line is the
    issue's, with Kiln's c1 p50 and c64 p99 over the floor's and ingress CPU over the peer's."""
    results = {}
    for level in LEVELS:
        results[("floor", level)] = [result(2.0, 0.0), result(4.0, 0.0)]
        results[("kiln", level)] = [result(3.0, 2.4), result(6.0, 2.4)]
        results[("peer", level)] = [result(1.0, 1.2), result(1.0, 1.2)]
    bench = SimpleNamespace(results=results)
    lines = report(bench, {"kiln": [0.040, 0.050, 0.060], "peer": [0.005]}, [0.010],  # type: ignore[arg-type]
                   {"kiln": 900.0, "kiln:fn": 400.0, "peer": 270.0, "peer:fn": 260.0},
                   {"ingress": 1.5})
    assert lines[-1] == ("bench: ack p50 1.50× floor, c64 p99 1.50× floor, "
                         "ingress cpu/job 2.00× peer, e2e p50 50 ms")
    assert re.search(r"ack p50 / p99 ms, 64 client\(s\)\s+3.0 / 9.0\s+4.5 / 13.5\s+1.0 / 3.0",
                     "\n".join(lines))

    later = ({"kiln-gen": [0.070, 0.080, 0.090]}, {"published → delivered": [30.0, 31.0, 32.0]})
    lines = report(bench, {"kiln": [0.060], "kiln-gen": [0.045]}, [0.010],  # type: ignore[arg-type]
                   {}, {}, later=later)
    assert lines[-1].endswith("e2e p50 45 ms (80 ms after the load)")
    assert any("after the load rounds" in line and "p50 80 ms, published → delivered 31.0 ms"
               in line for line in lines)


def test_the_ingress_cpu_is_shown_by_level() -> None:
    """Given Kiln's ingress dearer at one client than at 64 (its wake-ups shared), when
    reported, then each level's median is shown beside the peer's, and the ratio in the
    last line is of the medians over all levels and rounds."""
    cpu = {1: (1.9, 2.1), 16: (1.6, 1.6), 64: (1.3, 1.5)}
    results = {}
    for level in LEVELS:
        results[("floor", level)] = [result(2.0, 0.0)]
        results[("kiln", level)] = [result(3.0, cpu[level][0]), result(3.0, cpu[level][1])]
        results[("peer", level)] = [result(2.0, 1.2), result(2.0, 1.2)]
    lines = report(SimpleNamespace(results=results), {"kiln": [0.04]}, [], {}, {})  # type: ignore[arg-type]
    assert re.search(r"…ingress at 1/16/64 clients\s+—\s+2.00/1.60/1.40\s+1.20/1.20/1.20$",
                     "\n".join(lines), re.M)
    assert "ingress cpu/job 1.33× peer" in lines[-1]


def test_a_held_peer_backend_is_said_before_the_last_line() -> None:
    """Given the peer's Redis behind a proxy holding each answer 1.5 ms, when reported,
    then the report says so, and the issue's last line keeps its exact form; without a
    hold, nothing is said."""
    results = {}
    for level in LEVELS:
        results[("floor", level)] = [result(2.0, 0.0)]
        results[("kiln", level)] = [result(3.0, 1.5)]
        results[("peer", level)] = [result(2.0, 1.5)]
    bench = SimpleNamespace(results=results)
    held = report(bench, {"kiln": [0.04]}, [], {}, {}, peer_redis_hold_ms=1.5)  # type: ignore[arg-type]
    plain = report(bench, {"kiln": [0.04]}, [], {}, {})  # type: ignore[arg-type]

    assert any("through a proxy that held each answer 1.5 ms" in line for line in held)
    assert not any("proxy" in line for line in plain)
    assert held[-1] == plain[-1] == ("bench: ack p50 1.50× floor, c64 p99 1.50× floor, "
                                     "ingress cpu/job 1.00× peer, e2e p50 40 ms")


def test_the_closed_loop_counts_every_request_once() -> None:
    seen: list[int] = []
    run = closed_loop(seen.append, requests=50, concurrency=4)
    assert len(run.latencies) == 50 and len(seen) == 54  # 4 warm-ups, then 50 measured
    assert sorted(seen) == list(range(54))


def test_slices_merge_into_one_result_of_their_round() -> None:
    """The one-client slices of a target are one result: every latency, the walls added,
    the CPU per job averaged (slices are the same size)."""
    merged = Result.merged([
        Result(Run([1.0, 2.0], wall=0.5), {"ingress": 1.0, "worker": 10.0}),
        Result(Run([3.0, 9.0], wall=1.5), {"ingress": 2.0, "worker": 20.0}),
    ])
    assert sorted(merged.run.latencies) == [1.0, 2.0, 3.0, 9.0]
    assert merged.run.throughput == 2.0
    assert merged.cpu == {"ingress": 1.5, "worker": 15.0}


def test_targets_take_each_place_in_turn() -> None:
    """Over any three turns in a row, each target is measured first, second and last once
    (none always follows the same other target's jobs)."""
    for start in range(5):
        turns = [in_turn(n) for n in range(start, start + 3)]
        assert all(sorted(order) == sorted(TARGETS) for order in turns)
        for place in range(len(TARGETS)):
            assert sorted(order[place] for order in turns) == sorted(TARGETS)


PERF_REPORT = """\
           850  libpython3.11.so.1.0
           280  [kernel.kallsyms]
           140  cygrpc.cpython-311-x86_64-linux-gnu.so
            46  _message.abi3.so
            44  libc.so.6
             8  ld-linux-x86-64.so.2
             7  libstdc++.so.6.0.30
            25  _pydantic_core.cpython-311-x86_64-linux-gnu.so

# a comment line perf may print
"""


def test_perf_samples_are_grouped_by_library() -> None:
    """Given ``perf report --sort dso -F sample,dso`` lines, when grouped, then each group
    has its share of the samples, libc, ld-linux and libstdc++ together, the rest 'other'."""
    shares = by_library(PERF_REPORT)
    assert round(shares["Python interpreter"] * 1400) == 850
    assert round(shares["kernel"] * 1400) == 280
    assert round(shares["gRPC core"] * 1400) == 140
    assert round(shares["protobuf"] * 1400) == 46
    assert round(shares["C libraries"] * 1400) == 59
    assert round(shares["other"] * 1400) == 25
    assert by_library("") == {}


def test_the_library_table_gives_medians_and_the_ratio() -> None:
    """Given three rounds of each target, when tabled, then each cell is the median of ms ×
    share and the last row the whole worker's medians and their ratio."""
    kiln = [(1.5, {"Python interpreter": 0.6, "gRPC core": 0.1}),
            (1.4, {"Python interpreter": 0.6, "gRPC core": 0.1}),
            (2.0, {"Python interpreter": 0.6, "gRPC core": 0.1})]
    peer = [(1.2, {"Python interpreter": 0.8}), (1.0, {"Python interpreter": 0.8}),
            (1.1, {"Python interpreter": 0.8})]
    lines = library_table({"kiln": kiln, "peer": peer}, 3, 500)
    text = "\n".join(lines)
    assert re.search(r"Python interpreter\s+0.90\s+0.88", text)
    assert re.search(r"gRPC core\s+0.15\s+0.00", text)
    assert lines[-1].split() == ["whole", "worker", "1.50", "1.10", "(1.36×)"]


def test_the_apps_alone_table_gives_each_median_and_their_ratio() -> None:
    """Given three rounds of each app in process, the line holds each median and the ratio."""
    lines = apps_table({"kiln": [0.9, 1.2, 0.95], "peer": [0.7, 0.76, 0.8]}, 500)
    assert "median of 3 × 500" in lines[0]
    assert lines[-1].strip() == "kiln 0.95 ms, peer 0.76 ms (1.25×)"


def test_the_served_table_gives_each_levels_medians_and_ratio() -> None:
    """One line per level, in order, each with both medians and Kiln's over the peer's."""
    lines = served_table({("kiln", 16): [1.6, 1.5, 1.7], ("peer", 16): [1.6, 1.7, 2.0],
                          ("kiln", 1): [1.4, 1.3, 1.5], ("peer", 1): [1.0, 1.1, 1.2]}, 500)
    assert "median of 3 × 500" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["1 client(s)", "16 client(s)"]
    assert lines[1].endswith("kiln 1.40 ms, peer 1.10 ms (1.27×)")
    assert lines[2].endswith("kiln 1.60 ms, peer 1.70 ms (0.94×)")


def test_wsgi_call_answers_the_apps_status_with_the_body_and_token_it_was_given() -> None:
    """The direct call hands the app a WSGI environ as gunicorn would: method, path,
    body, bearer token."""
    seen = {}

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen.update(method=environ["REQUEST_METHOD"], path=environ["PATH_INFO"],
                    body=environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])),
                    auth=environ["HTTP_AUTHORIZATION"])
        start_response("202 ACCEPTED", [])
        return [b"{}"]

    assert wsgi_call(app, "POST", "/v1/jobs", b'{"a": 1}', "tok") == "202"
    assert seen == {"method": "POST", "path": "/v1/jobs", "body": b'{"a": 1}',
                    "auth": "Bearer tok"}


def test_the_ab_turn_order_rotates_with_round_and_level() -> None:
    """Over two rounds at one level each side goes first once; the level shifts it."""
    assert [in_order(r, 16)[0] for r in range(2)] == ["this", "base"]
    assert [in_order(r, 1)[0] for r in range(2)] == ["base", "this"]
    assert sorted(in_order(0, 64)) == ["base", "this"]


def test_the_ab_summary_gives_medians_the_ratio_and_the_rounds_won() -> None:
    """Each side's medians per level, this side's CPU over the base's, and how many
    rounds this side used less CPU in (paired by round)."""
    turns = {("this", 16): [Turn(1.2, 20, 40), Turn(1.4, 22, 50), Turn(2.0, 30, 90)],
             ("base", 16): [Turn(1.6, 25, 60), Turn(1.3, 24, 45), Turn(2.1, 35, 80)]}
    [line] = summary(turns, [16])
    assert "CPU per job 1.400 against 1.600 ms (0.87×; lower in 2 of 3 rounds)" in line
    assert "p50 22.0 against 25.0 ms, p99 50.0 against 60.0 ms" in line


def test_the_job_poster_posts_each_job_as_its_user_and_raises_unless_accepted() -> None:
    """Against a tiny HTTP server that accepts prompts ending in an even number: each
    send posts the numbered job with the bearer token; a refused one raises with the
    label, the status and the body."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Authorization"], body))
            status = 202 if int(body["prompt"].rsplit(" ", 1)[1]) % 2 == 0 else 429
            answer = b'{"error": {"code": "quota_exceeded"}}' if status == 429 else b"{}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with job_poster(url, "tok", 2, "probe") as post:
            post(4)
            with pytest.raises(RuntimeError, match=r"probe: 429 .*quota_exceeded"):
                post(7)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/v1/jobs", "Bearer tok", {"kind": "image", "prompt": "probe 4"}),
                    ("/v1/jobs", "Bearer tok", {"kind": "image", "prompt": "probe 7"})]


class _KeepAlive(BaseHTTPRequestHandler):
    """An HTTP/1.1 server's handler that keeps connections open, except that it drops the
    connection of every second request after answering it, without saying so (as a
    keep-alive timeout does), so the next request on it finds it closed."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[int, str]] = []
    answered = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.client_address[1], body["prompt"]))
        type(self).answered += 1
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
        self.close_connection = type(self).answered % 2 == 0

    def log_message(self, *args: object) -> None:
        pass


def test_the_job_poster_keeps_its_connection_and_resends_once_when_the_server_closed_it() -> None:
    """Each caller thread posts on one connection while the server keeps it; a request
    that finds its connection closed by the server is sent once more on a new one: every
    job is posted exactly once."""
    _KeepAlive.seen, _KeepAlive.answered = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with job_poster(f"http://127.0.0.1:{server.server_address[1]}", "tok", 1, "k") as post:
            for i in range(5):
                post(i)
    finally:
        server.shutdown()
        server.server_close()
    assert [prompt for _, prompt in _KeepAlive.seen] == [f"k {i}" for i in range(5)]
    ports = [port for port, _ in _KeepAlive.seen]
    # Two requests a connection: the server dropped it after every second one.
    assert ports[0] == ports[1] != ports[2] == ports[3] != ports[4]


def _one_shot_server(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A socket server that reads one request, writes ``answer`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(("answer", "error"), [
    (b"", "before answering"),  # a new connection closed with no answer: not resent
    (b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n{}", "without Content-Length"),
    (b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\n{}", "mid-answer"),
])
def test_a_connection_raises_on_an_answer_it_cannot_read(answer: bytes, error: str) -> None:
    """No answer on a new connection, an answer with no length, or one cut short: each
    raises (a benchmark never counts an answer it did not read)."""
    listener, thread = _one_shot_server(answer)
    connection = Connection("127.0.0.1", listener.getsockname()[1], timeout=10)
    try:
        with pytest.raises(ConnectionError) as raised:
            connection.round_trip(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert error in str(raised.value)
    finally:
        thread.join(10)
        listener.close()
        connection.close()


def test_a_metered_loop_divides_the_cpu_by_every_request_it_sent() -> None:
    """The meter runs over closed_loop's warm-up too (one request per client), so the CPU
    is divided by the requests and the warm-up: 2 ms a request reads 2 ms, not more."""
    spent = [0.0]
    lock = threading.Lock()

    def send(i: int) -> None:
        with lock:
            spent[0] += 0.002

    run, ms = metered_loop(send, 40, 4, lambda: spent[0])
    assert len(run.latencies) == 40
    assert abs(ms - 2.0) < 1e-9


def test_a_job_that_did_not_complete_is_told_where_it_stands() -> None:
    """The end-to-end wait's error names the job's status, why it waits and its last
    step, read once after the listener's time ran out (a stalled run says why)."""
    import datetime as dt

    from kiln.core.job import Job
    from kiln_dev.bench import where

    at = dt.datetime(2026, 12, 7, 9, 30, 1, 250000, tzinfo=dt.UTC)
    job = Job.from_docs("j1", {"uid": "u", "status": "pending", "stage": "queued",
                               "queueReason": "running_limit"},
                        {"timeline": {"accepted": at, "published": at + dt.timedelta(seconds=1)}})
    jobs = {"j1": job}
    services = SimpleNamespace(store=SimpleNamespace(get=jobs.get))
    assert where(services, "j1") == ("status pending, stage queued, queueReason running_limit, "
                                     "attempts 0, last step published at 09:30:02.250")
    assert where(services, "gone") == "no such job"


def test_the_fair_queue_simulation_holds_every_limit_and_loses_nothing() -> None:
    """``make bench-fairness``'s part 1, small: 400 jobs from 200 users on Kiln's own
    code and the fakes. Every job ends, none expires, no user runs above its plan's limit
    (free 2, pro 4), jobs wait (the load is above the provider's capacity) and paid ones
    wait less. (From the ack path's change until the fifteenth pass the simulation took
    an arrival's message for its start: every job started at once, 1,025 over the
    limit, and nothing failed.)"""
    import statistics

    from kiln_dev.bench_fairness import simulate

    result = simulate(jobs=400)
    assert (result["accepted"], result["lost"], result["expired"]) == (400, 0, 0)
    assert result["over_limit"] == 0 and 2 <= result["most_running"] <= 4
    paid, free = (statistics.median(result["waits"][group]) for group in ("paid", "free"))
    assert 0 < paid < free
