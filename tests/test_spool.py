"""The spool: file format (length + crc32 records), atomic files, order, size bound, restart,
torn and corrupt files; and a property test of the reader on arbitrary bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrayd import spool as sp
from xrayd.spool import Spool, decode, encode

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0"))  # a long run: docs/fuzzing.md
DOCS = [b'{"id":"a"}', b"", b'{"name":"caf\xc3\xa9"}' * 50]


def test_round_trip():
    assert decode(encode(DOCS)) == sp.Decoded(DOCS, "")
    assert decode(encode([])) == sp.Decoded([], "")


def test_torn_file_keeps_the_intact_prefix():
    data = encode(DOCS)
    cut = decode(data[:-5])
    assert cut.docs == DOCS[:2] and "truncated" in cut.error
    assert decode(data[: len(sp.MAGIC) + 3]).error.startswith("truncated record header")


def test_flipped_bit_is_caught_by_the_checksum():
    data = bytearray(encode(DOCS))
    data[-1] ^= 0x01
    result = decode(bytes(data))
    assert result.docs == DOCS[:2] and "checksum" in result.error


def test_bad_magic_and_absurd_length():
    assert decode(b"hello").error.startswith("not a spool file")
    absurd = sp.MAGIC + (2**31).to_bytes(4, "big") + zlib.crc32(b"").to_bytes(4, "big")
    assert decode(absurd).docs == [] and decode(absurd).error


def test_files_are_replayed_in_order_and_survive_a_restart(tmp_path):
    first = Spool(str(tmp_path), 10**6, fsync_interval=0)
    assert first.open() == 0
    for n in range(5):
        assert first.put([b"doc-%d" % n, b"more-%d" % n]).stored
    assert first.depth()[0] == 10 and first.depth()[2] == 5
    # A crash during a write leaves a temporary file: it is cleared, never replayed.
    (tmp_path / (sp.TMP_PREFIX + "0000000000000099-1.spool")).write_bytes(b"partial")
    (tmp_path / "unrelated.txt").write_text("x")
    again = Spool(str(tmp_path), 10**6)
    assert again.open() == 10
    assert not any(name.startswith(sp.TMP_PREFIX) for name in os.listdir(tmp_path))
    seen = []
    while (entry := again.claim()) is not None:
        seen.append(again.read(entry).docs[0])
        again.remove(entry)
    assert seen == [b"doc-%d" % n for n in range(5)]
    assert again.depth() == (0, 0, 0)
    # Numbering continues after the highest file found, so order holds across restarts.
    again.put([b"x"])
    assert [sp.parse_name(n) for n in os.listdir(tmp_path) if n.endswith(".spool")] == [(6, 1)]


def test_size_bound_evicts_the_oldest_but_not_a_file_being_replayed(tmp_path):
    size = len(encode([b"x" * 100]))
    spool = Spool(str(tmp_path), size * 3)
    spool.open()
    for n in range(3):
        spool.put([b"%d" % n * 100])
    replaying = spool.claim()
    stored = spool.put([b"3" * 100])
    assert stored == sp.Stored(True, 1)
    assert replaying is not None and spool.read(replaying).docs == [b"0" * 100]
    spool.release(replaying)
    order = []
    while (entry := spool.claim()) is not None:
        order.append(spool.read(entry).docs[0][:1])
        spool.remove(entry)
    assert order == [b"0", b"2", b"3"]
    assert spool.put([b"y" * (size * 4)]) == sp.Stored(False, 0)  # larger than the whole spool


def test_torn_file_on_disk_is_read_partially(tmp_path):
    spool = Spool(str(tmp_path), 10**6)
    spool.open()
    spool.put([b"first", b"second"])
    (name,) = [n for n in os.listdir(tmp_path) if n.endswith(".spool")]
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-3])
    entry = spool.claim()
    assert entry is not None
    result = spool.read(entry)
    assert result.docs == [b"first"] and result.error


def test_fsync_interval_defers_and_sync_flushes(tmp_path):
    clock = [0.0]
    spool = Spool(str(tmp_path), 10**6, fsync_interval=1.0, clock=lambda: clock[0])
    spool.open()
    spool.put([b"a"])
    spool.put([b"b"])
    assert len(spool._unsynced) == 2
    clock[0] = 1.5
    spool.sync(force=False)
    assert spool._unsynced == []
    spool.put([b"c"])
    spool.sync()
    assert spool._unsynced == []


@settings(max_examples=SCALE or 1000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_reader_never_raises_on_arbitrary_bytes(data):
    result = decode(data)
    assert isinstance(result.docs, list)
    assert result.error or data.startswith(sp.MAGIC)


@settings(max_examples=SCALE or 800, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8), st.data())
def test_fuzz_damaged_files_yield_a_prefix_of_the_documents(docs, data):
    encoded = bytearray(encode(docs))
    action = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    position = data.draw(st.integers(0, len(encoded)))
    if action == "truncate":
        damaged = bytes(encoded[:position])
    elif action == "flip":
        if position == len(encoded):
            position -= 1
        encoded[position] ^= data.draw(st.integers(1, 255))
        damaged = bytes(encoded)
    else:
        damaged = bytes(encoded[:position]) + data.draw(st.binary(min_size=1, max_size=8)) + bytes(
            encoded[position:])
    result = decode(damaged)
    assert all(isinstance(d, bytes) for d in result.docs)
    if action != "insert":
        # What is returned was really written, in order; damage is reported (or shows as
        # fewer documents than the file name announces), never raised.
        assert result.docs == docs[: len(result.docs)]
        if damaged != bytes(encode(docs)):
            assert result.error or len(result.docs) < len(docs)


def test_names_are_checked_strictly():
    assert sp.parse_name(sp.file_name(7, 50)) == (7, 50)
    for name in ("9" * 20 + "-5.spool", "1-5.spool", "000000000000001٣-5.spool",
                 "0000000000000001-0.spool", "0000000000000001-1234567.spool",
                 "0000000000000001-+5.spool", " 000000000000001-5.spool",
                 "0000000000000001-5.spool.bak", "0000000000000001_5.spool"):
        assert sp.parse_name(name) is None, name


def test_entries_that_are_not_spool_files_are_skipped_and_counted(tmp_path, caplog):
    good = encode([b"a"])
    (tmp_path / ("9" * 20 + "-1.spool")).write_bytes(good)  # would set the sequence to 1e20
    (tmp_path / "0000000000000003-1.spool").write_bytes(good)
    (tmp_path / "0000000000000004-1.spool").mkdir()
    os.mkfifo(tmp_path / "0000000000000005-1.spool")
    (tmp_path / (sp.TMP_PREFIX + "0000000000000006-1.spool")).mkdir()
    os.symlink("/dev/zero", tmp_path / "0000000000000007-1.spool")
    spool = Spool(str(tmp_path), 10**6)
    assert spool.open() == 1
    assert spool.skipped == 5
    assert "ignored 5 entries that are not spool files" in caplog.text
    spool.put([b"b"])  # numbered after every spool name found, usable or not
    assert sp.parse_name(max(n for n in os.listdir(tmp_path) if n.startswith("0"))) == (8, 1)


def test_a_fifo_put_in_place_of_a_spool_file_is_never_waited_on(tmp_path):
    spool = Spool(str(tmp_path), 10**6)
    spool.open()
    spool.put([b"a"])
    entry = spool.claim()
    assert entry is not None
    os.remove(tmp_path / entry.name)
    os.mkfifo(tmp_path / entry.name)
    result: list[sp.Decoded] = []
    reader = threading.Thread(target=lambda: result.append(spool.read(entry)), daemon=True)
    reader.start()
    reader.join(10)  # a blocking open of the FIFO would wait here for a writer forever
    assert result and result[0].docs == [] and "not a regular file" in result[0].error
    spool.sync()  # the fsync pass skips it too


FULL_DISK = """
import json, logging, os, sys
from xrayd.spool import Spool, encode
directory = sys.argv[1]
spool = Spool(directory, 10**9, fsync_interval=0)
spool.open()
results = []
for n in range(30):  # 30 x 20 KiB on a 256 KiB file system
    stored = spool.put([bytes([65 + n % 26]) * 20000])
    results.append([stored.stored, stored.evicted])
kept = sorted(spool.read(e).docs[0][:1].decode() for e in list(spool._entries))
huge = spool.put([b"z" * 400000])  # more than the whole file system
print(json.dumps({"results": results, "kept": kept, "huge": [huge.stored, huge.evicted],
                  "left": sorted(os.listdir(directory)), "full_drops": spool.full_drops}))
"""


def test_a_full_disk_evicts_the_oldest_files_and_leaves_no_temporary_file(tmp_path):
    """A real full disk: a 256 KiB tmpfs, mounted in a user and mount namespace of its own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here for a tmpfs: {probe.stderr.decode()[:200]}")
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f'mount -t tmpfs -o size=256k none "{disk}" && exec "{sys.executable}" "{script}" '
         f'"{disk}"'], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    out = json.loads(run.stdout)
    assert all(stored for stored, _ in out["results"])  # every new batch was kept
    evicted = sum(n for _, n in out["results"])
    assert evicted > 0
    # The oldest went first: what is kept is the newest files, in one run of letters.
    letters = [chr(65 + n % 26) for n in range(30)]
    assert out["kept"] == sorted(letters[30 - len(out["kept"]):])
    assert len(out["kept"]) + evicted == 30
    assert out["huge"] == [False, len(out["kept"])]  # refused only after emptying the spool
    assert out["full_drops"] == 1
    assert out["left"] == []  # no temporary file, empty or partial
