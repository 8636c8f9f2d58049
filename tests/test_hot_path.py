"""The throughput work on the intake path (docs/benchmarks.md): recvmmsg reads, several
documents per lock acquisition, batch sizes under a flood, wake-ups."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time

import pytest

from xrayd import logs
from xrayd.batcher import DOC_OVERHEAD, Batcher, Spill
from xrayd.protocol import Reason
from xrayd.receivers.mmsg import open_reader
from xrayd.receivers.udp import UdpReceiver, bind_udp
from xrayd.segment_queue import SegmentQueue
from xrayd.stats import Stats

HEADER = b'{"format":"json","version":1}\n'


def doc(n: int, size: int = 100) -> bytes:
    body = b'{"id":"%d","pad":"' % n
    return body + b"x" * (size - len(body) - 2) + b'"}'


@pytest.fixture
def receiving_socket():
    sock = bind_udp("127.0.0.1:0")
    yield sock
    sock.close()


def test_multi_reader_returns_each_datagram_exactly(receiving_socket):
    reader = open_reader(receiving_socket.fileno(), slots=4)
    if reader is None:
        pytest.skip("recvmmsg through ctypes is Linux only")
    assert reader.read() == []  # nothing waiting: no blocking, no error
    sizes = [0, 1, 1000, 9480, 65507, 3]
    payloads = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for payload in payloads:
            sender.sendto(payload, receiving_socket.getsockname())
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < len(payloads) and time.monotonic() < deadline:
        chunk = reader.read()
        assert len(chunk) <= 4
        got += chunk
    assert got == payloads


def run_receiver(sock, datagrams, put_many=True):
    queue = SegmentQueue(Batcher(budget=10**8), clock=time.monotonic)
    stats = Stats()
    spills: list[Spill] = []
    receiver = UdpReceiver(sock, queue.put, stats.intake(), spills.append,
                           logs.RateLimitedLog(logs.get_logger()),
                           put_many=queue.put_many if put_many else None)
    receiver.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for data in datagrams:
            sender.sendto(data, sock.getsockname())
    time.sleep(0.1)
    receiver.stop()
    queue.close()
    taken = []
    while (batch := queue.get(timeout=0)) is not None:
        taken += batch.docs
    return stats, taken, spills


@pytest.mark.parametrize("put_many", [True, False], ids=["recvmmsg", "recv"])
def test_receiver_hands_over_every_valid_document_in_order(receiving_socket, put_many):
    logs.configure(logging.ERROR, stream=io.StringIO())
    docs = [doc(i) for i in range(500)]
    bad = [b"no separator", HEADER, b'{"format":"xml","version":1}\n{}']
    datagrams = docs[:200] + bad + docs[200:]
    stats, taken, spills = run_receiver(
        receiving_socket, [d if d in bad else HEADER + d for d in datagrams], put_many)
    assert taken == docs
    assert stats.received == len(datagrams)  # the stop datagram is not counted
    assert stats.accepted == len(docs)
    assert stats.rejected() == {Reason.NO_SEPARATOR: 1, Reason.EMPTY_BODY: 1,
                                Reason.BAD_FORMAT: 1}
    assert spills == []


def test_add_many_sums_the_spills_of_each_document():
    batcher = Batcher(budget=10 * (100 + DOC_OVERHEAD), max_batch=5, low_water=1)
    assert batcher.add_many([doc(i) for i in range(10)], now=0) is None
    spill = batcher.add_many([doc(i) for i in range(10, 17)], now=0)
    assert spill == Spill(evicted=10, dropped=0)
    assert batcher.held <= batcher.budget


def test_a_flood_near_the_budget_keeps_batches_full():
    """Low on budget with batches already waiting, the open batch still fills up to
    max_batch: one-document batches would cost a call each and slow delivery down."""
    size = 100 + DOC_OVERHEAD
    batcher = Batcher(budget=200 * size, max_batch=50)  # low water: 20 documents
    batcher.add_many([doc(i) for i in range(195)], now=0)
    assert [len(b) for b in batcher._waiting] == [50, 50, 50]
    assert batcher.open_count == 45
    # Nothing waits (all in flight): low on budget, the open batch is sealed early for an idle
    # worker.
    batcher = Batcher(budget=200 * size, max_batch=50)
    batcher.add_many([doc(i) for i in range(150)], now=0)
    in_flight = [batcher.take(now=0) for _ in range(3)]
    assert all(in_flight)
    batcher.add_many([doc(i) for i in range(31)], now=0)
    assert [len(b) for b in batcher._waiting] == [31]


def test_put_many_wakes_a_worker_for_every_two_ready_batches():
    """Three batches sealed at once wake two of three idle workers; a woken worker takes the
    next waiting batch after its own, so all three are taken at once."""
    queue = SegmentQueue(Batcher(budget=10**7, max_batch=10), clock=time.monotonic)
    taken: dict[int, int] = {}
    lock = threading.Lock()

    def worker(index: int) -> None:
        while (batch := queue.get(timeout=1.5)) is not None:
            with lock:
                taken[index] = taken.get(index, 0) + len(batch)
            time.sleep(0.01)  # an upload call
            queue.done(batch)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    queue.put_many([doc(i) for i in range(30)])
    time.sleep(0.5)
    with lock:
        assert sum(taken.values()) == 30  # long before the idle worker's 1.5 s timeout
        assert len(taken) == 2
    for thread in threads:
        thread.join(5)


def test_kick_hands_a_waiting_batch_to_an_idle_worker():
    queue = SegmentQueue(Batcher(budget=10**7, max_batch=10), clock=time.monotonic)
    got: list[tuple[int, float]] = []

    def worker() -> None:  # takes one batch and keeps it (an upload that is retrying)
        batch = queue.get(timeout=5)
        got.append((len(batch) if batch else 0, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    queue.put_many([doc(i) for i in range(20)])  # two batches: one of the two is woken
    time.sleep(0.3)
    assert [n for n, _ in got] == [10]
    kicked = time.monotonic()
    queue.kick()  # the first worker is about to sleep before a retry
    for thread in threads:
        thread.join(5)
    assert [n for n, _ in got] == [10, 10]
    assert got[1][1] - kicked < 2.0  # woken by the kick, not by its 5 s timeout
