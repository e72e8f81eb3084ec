"""ctrscale.data.table_reader: CSV and Parquet read in blocks, lines counted from the bytes, row numbers per file."""
from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrscale.data import table_reader
from ctrscale.data.table_reader import MissingColumnError, _invalid_utf8, read_blocks

COLS = {"a": "field 'a'", "b": "field 'b'"}


def _read(path) -> tuple[list[str], list[int], int, int]:
    """(values of column a, their row numbers, data lines counted, blocks) over every block of `path`."""
    values, rownums, lines, blocks = [], [], 0, 0
    for raw in read_blocks(path, list(COLS), COLS):
        values += raw.table.column("a").to_pylist()
        rownums += raw.rownum.tolist()
        lines += raw.lines
        blocks += 1
    return values, rownums, lines, blocks


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("block", [8, 1 << 20])
def test_blocks_keep_every_line_and_its_number(tmp_path, monkeypatch, newline, block):
    monkeypatch.setattr(table_reader, "BLOCK_BYTES", block)
    rows = [f"x{i}" * (i % 4) for i in range(40)]  # some rows empty, some longer than a block
    text = newline.join(["a,b"] + [f"{v},{i}" for i, v in enumerate(rows)])
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a byte-order mark, no line break at the end
    values, rownums, lines, blocks = _read(path)
    assert values == rows and rownums == list(range(1, 41)) and lines == 40
    assert (blocks > 1) == (block == 8 and newline != "\r")  # lines ending at a lone \r only: read whole
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress((text + newline).encode()))
    assert _read(gz)[:3] == (rows, list(range(1, 41)), 40)


def test_a_header_only_file_and_malformed_rows_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(table_reader, "BLOCK_BYTES", 16)
    path = tmp_path / "d.csv"
    path.write_text("a,b\n")
    assert _read(path)[1:] == ([], 0, 1)
    path.write_text("a,b\n" + "".join(f"v{i},{i}\n" if i != 7 else "only-one\n" for i in range(12)))
    malformed = [m for raw in read_blocks(path, list(COLS), COLS) for m in raw.malformed]
    assert [(r, line) for r, line, *_ in malformed] == [(8, 9)]
    values, rownums, lines, _ = _read(path)
    assert lines == 12 and 8 not in rownums and rownums == [r for r in range(1, 13) if r != 8]
    path.write_text("a\n1\n")
    with pytest.raises(MissingColumnError, match=r"d.csv: unknown column 'b'"):
        _read(path)


def test_parquet_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(table_reader, "PARQUET_BATCH", 3)
    pq.write_table(pa.table({"a": [str(i) for i in range(10)], "b": list(range(10))}), tmp_path / "d.parquet")
    values, rownums, lines, blocks = _read(tmp_path / "d.parquet")
    assert values == [str(i) for i in range(10)] and rownums == list(range(1, 11)) and lines == 10 and blocks == 4
    pq.write_table(pa.table({"a": pa.array([], pa.string()), "b": pa.array([], pa.int64())}), tmp_path / "e.parquet")
    assert _read(tmp_path / "e.parquet") == ([], [], 0, 1)


def test_invalid_utf8_positions_match_python():
    rng = np.random.default_rng(0)
    samples = ["a\u00e9\u20ac\U0001f600z".encode(), b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\xaf",
               b"\xf0\x9f\x98", b"\x80abc", b"\xe2\x82\xac\x80"]
    samples += [rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes() for _ in range(300)]
    samples += [bytes(rng.choice(list("ab\u00e9\u20ac\U0001f600".encode()), 30)) for _ in range(300)]
    for s in samples:
        bad = _invalid_utf8(np.frombuffer(s, np.uint8))
        expect = []
        i = 0
        while i < len(s):  # Python's decoder, one error at a time
            try:
                s[i:].decode("utf-8")
                break
            except UnicodeDecodeError as e:
                expect += range(i + e.start, i + e.end)
                i += e.end
        assert bool(len(bad)) == bool(expect), s
        if expect:  # the bytes Python's decoder rejects, exactly
            assert bad.tolist() == expect, s
            fixed = bytearray(s)
            for p in bad:
                fixed[p] = ord("?")
            bytes(fixed).decode("utf-8")  # replacing the flagged bytes leaves valid UTF-8
