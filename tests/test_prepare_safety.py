"""Issue 24, data preparation: never lose a user's files, refuse what would corrupt a result.

The output folder (only ctrscale's own folders are ever replaced, atomically), CSV line accounting (every line of a
file is written or counted as skipped; quotes that swallow lines are refused), UTF-8 per row, long lines, pyarrow
errors, time range and unit, target leaks, duplicate columns, report warnings, and a property test on randomly
corrupted files, partly through the real CLI in a subprocess.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrscale.data import store
from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.generic import BadRowError, prepare_table
from ctrscale.errors import DataError
from ctrscale.schema import SchemaError, load_schema, schema_from_dict

REPO = Path(__file__).resolve().parents[1]
T0 = 1_600_000_000
HEADER = ["user", "item", "cat", "price", "clicked", "ts", "hist_items", "hist_ts"]
SCHEMA = """
name: safety
label: clicked
user_key: user
time: ts
fields:
  - {name: user_id, column: user, role: user}
  - {name: item_id, column: item, role: item}
  - {name: cat, role: item}
  - {name: price, kind: numeric, role: item}
sequences:
  - name: hist
    max_len: 4
    time: hist_ts
    fields:
      - {name: item_id, column: hist_items, vocab: item_id}
"""


def rows(n: int = 40, users: int = 6) -> list[dict]:
    """Event i: user u{i % users} at T0 + 10 i, history = that user's last 3 earlier events; every 7th category is
    quoted and holds the delimiter."""
    out = []
    for i in range(n):
        prev = [j for j in range(i) if j % users == i % users][-3:]
        out.append({"user": f"u{i % users}", "item": f"i{i % 9}", "cat": '"c,1"' if i % 7 == 3 else f"c{i % 3}",
                    "price": f"{i / 4:.2f}", "clicked": str(i % 2), "ts": str(T0 + 10 * i),
                    "hist_items": "|".join(f"i{j % 9}" for j in prev),
                    "hist_ts": "|".join(str(T0 + 10 * j) for j in prev)})
    return out


def csv_bytes(rs: list[dict], eol: bytes = b"\n") -> bytes:
    lines = [",".join(HEADER)] + [",".join(r[c] for c in HEADER) for r in rs]
    return eol.join(x.encode() for x in lines) + eol


@pytest.fixture
def schema(tmp_path):
    p = tmp_path / "schema.yaml"
    p.write_text(SCHEMA)
    return load_schema(p)


def data_lines(data: bytes) -> int:
    """Lines after the header, counted independently of ctrscale: a line ends at \\r\\n, \\r or \\n."""
    parts = re.split(rb"\r\n|\r|\n", data)
    if parts and parts[-1] == b"":
        parts.pop()
    return max(len(parts) - 1, 0)


def cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m ctrscale.cli ARGS` (or `python -c CODE ARGS`) in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "ctrscale.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name + ".", f".{out.name}.")))


# ----------------------------------------------------------------------------------------------------------------
# 1. The output folder


def test_a_user_folder_is_never_replaced(tmp_path, schema):
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    mine = tmp_path / "mine"
    (mine / "code").mkdir(parents=True)
    (mine / "thesis.tex").write_text("precious")
    (mine / "code" / "main.py").write_text("print(1)")
    (mine / "meta.json").write_text("{}")  # looks like a preparation, is not marked as one
    before = snapshot(mine)
    with pytest.raises(DataError, match=rf"{mine}: the folder exists .* not made by `ctrscale data prepare` .*"
                                        rf"Choose another --out"):
        prepare_table(schema, [csv], mine)
    assert snapshot(mine) == before and siblings(mine) == []
    # marked, but holding a file ctrscale does not write (at the top or deeper): refused, naming the file
    out = tmp_path / "out"
    prepare_table(schema, [csv], out)
    for extra in ("notes.txt", "vocab/notes.txt", "train/shard-00000/plot.png"):
        (out / extra).write_text("mine")
        before = snapshot(out)
        with pytest.raises(DataError, match=rf"{out}: holds '{extra}', which a preparation does not write"):
            prepare_table(schema, [csv], out, force=True)
        assert snapshot(out) == before
        (out / extra).unlink()
    # a plain file as --out
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        prepare_table(schema, [csv], tmp_path / "file")
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    prepare_table(schema, [csv], tmp_path / "empty")
    assert (tmp_path / "empty" / store.MARKER).is_file()


def test_reprepare_swaps_in_and_leaves_nothing_behind(tmp_path, schema):
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    out = tmp_path / "out"
    prepare_table(schema, [csv], out)
    prepare_table(schema, [csv], out, force=True)
    assert (out / store.MARKER).is_file() and siblings(out) == []
    assert len(PreparedDataset(out).split("train")) == 32
    # leftovers of a dead process: a partial folder is removed; an old folder with no `out` (a swap cut between
    # its renames) is put back; a folder that is not ours is left alone
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    partial = out.with_name(f".out.ctrscale-partial-{dead}-0123abcd")
    partial.mkdir()
    (partial / store.MARKER).touch()
    (partial / "log").mkdir()
    foreign = out.with_name(f".out.ctrscale-partial-{dead + 1}-0123abcd")
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    spill = out.with_name(f".out.ctrscale-spill-{dead}-0123abcd")  # a killed preparation's scratch rows
    spill.mkdir()
    (spill / "keys-0.npy").write_bytes(b"x")
    running = out.with_name(f".out.ctrscale-spill-{os.getpid()}-0123abcd")  # a preparation still running
    running.mkdir()
    backup = out.with_name("out.old-20240101")  # a user's copy, named like a temporary folder might be
    shutil.copytree(out, backup)
    old = out.with_name(f".out.ctrscale-old-{dead}-0123abcd")
    os.rename(out, old)
    fp = json.loads((old / "meta.json").read_text())["fingerprint"]
    assert store.is_prepared(out, fp)  # recovered: the old preparation is back
    assert siblings(out) == sorted([foreign.name, backup.name, running.name])
    assert (foreign / "thesis.tex").read_text() == "mine"
    running.rmdir()
    assert store.is_prepared(out, fp) and (backup / "meta.json").is_file()  # the copy is never touched


def test_a_failed_reprepare_keeps_the_previous_one(tmp_path, schema, monkeypatch):
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    out = tmp_path / "out"
    prepare_table(schema, [csv], out)
    before = snapshot(out)

    def full(self, **columns):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.dir / "x.bin"))

    monkeypatch.setattr(store.ColumnWriter, "append", full)
    with pytest.raises(OSError) as e:
        prepare_table(schema, [csv], out, force=True)
    assert e.value.errno == errno.ENOSPC
    assert snapshot(out) == before and siblings(out) == []  # intact; the partial folder was removed
    monkeypatch.undo()
    assert len(PreparedDataset(out).split("train")) == 32
    # a failure at the very end (writing the report) as well
    monkeypatch.setattr(store, "report_markdown", lambda rep: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prepare_table(schema, [csv], out, force=True)
    assert snapshot(out) == before and siblings(out) == []


def test_inputs_inside_the_output_folder_are_refused(tmp_path, schema):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").mkdir()  # a name a preparation writes: replacing `out` would delete it
    csv = out / "train" / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    before = snapshot(out)
    for o in (out, out / "train"):
        with pytest.raises(DataError, match=r"d.csv: the input lies inside the output folder"):
            prepare_table(schema, [csv], o)
    assert snapshot(out) == before and siblings(out) == []
    # a content table inside the output folder
    elsewhere = tmp_path / "d.csv"
    elsewhere.write_bytes(csv_bytes(rows()))
    np.save(out / "train" / "emb.npy", np.zeros((10, 2), np.float32))
    s2 = schema_from_dict({**schema.to_dict(), "content": {"path": str(out / "train" / "emb.npy"), "dim": 2,
                                                           "key": "item_id"}})
    with pytest.raises(DataError, match="emb.npy: the input lies inside the output folder"):
        prepare_table(s2, [elsewhere], out)
    # MovieLens: the raw folder as --out
    from ctrscale.data.movielens import prepare_movielens
    raw = tmp_path / "ml"
    raw.mkdir()
    for f in ("u.data", "u.user", "u.item"):
        (raw / f).write_text("")
    with pytest.raises(DataError, match="the input lies inside the output folder"):
        prepare_movielens("ml100k-ctr-v1", raw, raw)
    assert sorted(p.name for p in raw.iterdir()) == ["u.data", "u.item", "u.user"]


# ----------------------------------------------------------------------------------------------------------------
# 2. CSV line accounting, quotes, UTF-8, long lines, pyarrow errors


def test_an_unclosed_quote_is_refused_even_in_skip_mode(tmp_path, schema):
    rs = rows(401)
    rs[10]["cat"] = '"c2'  # row 11, line 12: the quote never closes
    csv = tmp_path / "q.csv"
    csv.write_bytes(csv_bytes(rs))
    for mode in ("error", "skip"):
        with pytest.raises(DataError, match=r"q.csv: row 11 \(line 12\): a quoted value opens at character \d+ "
                                            r"and is not closed on that line"):
            prepare_table(schema, [csv], tmp_path / "out", on_bad_row=mode)
    assert not (tmp_path / "out").exists()
    # a quoted value holding a line break: refused at the line where it opens
    rs = rows()
    rs[4]["cat"] = '"c\nd"'
    csv.write_bytes(csv_bytes(rs))
    with pytest.raises(DataError, match=r"row 5 \(line 6\): a quoted value opens"):
        prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    # an unclosed quote on the last line joins nothing, but is refused as well
    rs = rows()
    rs[-1]["hist_ts"] = '"' + rs[-1]["hist_ts"]
    csv.write_bytes(csv_bytes(rs))
    with pytest.raises(DataError, match=rf"row {len(rs)} \(line {len(rs) + 1}\): a quoted value opens"):
        prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    # quotes that close on their line are fine: "" inside, text after the closing quote, a quote mid-value
    rs = rows()
    rs[1]["cat"], rs[2]["cat"], rs[5]["cat"] = '"a""b"', '"x"y', 'p"q'
    csv.write_bytes(csv_bytes(rs))
    rep = prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    assert rep["rows_written"] == len(rs) and rep["bad_rows_skipped"] == {}
    assert sorted(PreparedDataset(tmp_path / "out").vocab("cat").values.tolist()) == ['a"b', 'c,1', 'c0', 'c1',
                                                                                      'c2', 'p"q', 'xy']


def test_every_line_is_written_or_counted(tmp_path, schema):
    rs = rows(30)
    rs[3]["clicked"] = "7"
    data = csv_bytes(rs, eol=b"\r\n")
    lines = data.split(b"\r\n")
    lines[8] = b"u1,i1,c1"  # malformed: too few columns
    lines.insert(12, b"")  # blank
    lines.insert(20, b"u1,i1,c1,1.0,0," + str(T0 + 500).encode() + b",,,extra")  # malformed: too many
    data = b"\r\n".join(lines) + b"\n\n"  # and two blank lines at the end, ended by \n
    csv = tmp_path / "d.csv"
    csv.write_bytes(data)
    rep = prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    n = data_lines(data)
    assert n == 30 + 2 + 2
    assert rep["rows_read"] == rep["lines_read"] == n == rep["rows_written"] + sum(rep["bad_rows_skipped"].values())
    assert rep["bad_rows_skipped"] == {"malformed row (wrong number of columns)": 2, "empty row": 3,
                                       "label not 0/1": 1}
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"Rows read: {n} (CSV data lines: {n}); written: {n - 6}; skipped: 6" in md
    # error mode names the earliest bad row of the file, malformed or not
    with pytest.raises(BadRowError, match=r"d.csv: row 4 \(line 5\): field 'clicked': expected 0 or 1, got '7'; "
                                          r"fix the row, or prepare with --on-bad-row skip"):
        prepare_table(schema, [csv], tmp_path / "o2")


def test_rows_that_are_not_utf8_are_named_and_skipped(tmp_path, schema):
    rs = rows(30)
    data = csv_bytes(rs).split(b"\n")
    data[5] = data[5].replace(b"c", b"c\xe9", 1)  # latin-1 e acute: row 5 (line 6)
    data[9] = data[9] + b"\xff"  # row 9 (line 10), at the end of the line
    data[12] = data[12].replace(b"i", "\u00ef".encode(), 1)  # valid UTF-8: fine
    csv = tmp_path / "u.csv"
    csv.write_bytes(b"\n".join(data))
    with pytest.raises(BadRowError, match=r"u.csv: row 5 \(line 6\): not valid UTF-8 \(byte 0xe9 at byte \d+ of "
                                          r"the line\); save the file as UTF-8"):
        prepare_table(schema, [csv], tmp_path / "out")
    rep = prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    assert rep["bad_rows_skipped"] == {"not UTF-8": 2}
    assert rep["rows_written"] == 28 == rep["rows_read"] - 2
    # a column the schema does not read may hold anything: nothing is lost, nothing is skipped
    extra = [x + (b",caf\xe9" if i else b",note") if x else x for i, x in enumerate(data[:5] + data[6:9] + data[10:])]
    csv.write_bytes(b"\n".join(extra))
    rep = prepare_table(schema, [csv], tmp_path / "out2")
    assert rep["bad_rows_skipped"] == {} and rep["rows_written"] == 28
    # a header that is not UTF-8 cannot be skipped
    csv.write_bytes(b"us\xe9r," + b"\n".join(data).split(b",", 1)[1])
    with pytest.raises(DataError, match=r"u.csv: line 1 \(the header\) is not valid UTF-8"):
        prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")


def test_long_lines_and_unreadable_files(tmp_path, schema):
    rs = rows(30)
    long = [j for j in range(200_000)]
    rs[29]["hist_items"] = "|".join(f"i{j % 9}" for j in long)
    rs[29]["hist_ts"] = "|".join(str(T0 - 1_000_000 + j) for j in long)  # a 3 MB line: beyond pyarrow's block
    csv = tmp_path / "long.csv"
    csv.write_bytes(csv_bytes(rs))
    rep = prepare_table(schema, [csv], tmp_path / "out")
    assert rep["splits"]["test"]["max_history_len"] == 200_000
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read as Parquet"):
        prepare_table(schema, [tmp_path / "bad.parquet"], tmp_path / "o2")
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"bad.csv.gz: not a readable gzip file"):
        prepare_table(schema, [tmp_path / "bad.csv.gz"], tmp_path / "o2")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv: empty file"):
        prepare_table(schema, [tmp_path / "empty.csv"], tmp_path / "o2")


def test_duplicate_column_names_are_refused(tmp_path, schema):
    data = csv_bytes(rows()).replace(b"hist_ts\n", b"price\n", 1)
    csv = tmp_path / "dup.csv"
    csv.write_bytes(data)
    with pytest.raises(DataError, match=r"dup.csv: column name 'price' appears twice \(columns 4 and 8\)"):
        prepare_table(schema, [csv], tmp_path / "out")
    t = pa.table([pa.array(["a"]), pa.array(["b"])], names=["user", "user"])
    pq.write_table(t, tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"dup.parquet: column name 'user' appears twice"):
        prepare_table(schema, [tmp_path / "dup.parquet"], tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# 3. Times


def test_times_out_of_range_and_the_time_unit(tmp_path, schema):
    rs = rows()
    ms = [dict(r, ts=str(int(r["ts"]) * 1000 + 999),
               hist_ts="|".join(str(int(t) * 1000) for t in r["hist_ts"].split("|")) if r["hist_ts"] else "")
          for r in rs]
    csv = tmp_path / "ms.csv"
    csv.write_bytes(csv_bytes(ms))
    with pytest.raises(BadRowError, match=r"ms.csv: row 1 \(line 2\): field 'ts': 1600000000999 is not a plausible "
                                          r"time in unix seconds: it would be the year 52\d\d\d, and times must lie "
                                          r"in 1980-01-01 .. 2100-01-01 .*; it looks like milliseconds: prepare with "
                                          r"--time-unit ms"):
        prepare_table(schema, [csv], tmp_path / "out")
    rep = prepare_table(schema, [csv], tmp_path / "out", time_unit="ms")
    assert rep["time_unit"] == "ms" and rep["rows_written"] == len(rs)
    assert "Times read as unix milliseconds (time_unit ms), stored as unix seconds." in \
        (tmp_path / "out" / "report.md").read_text()
    ds = PreparedDataset(tmp_path / "out")
    assert ds.split("train").column("time").tolist() == [T0 + 10 * i for i in range(32)]  # rounded down
    assert ds.gather("train", np.array([31]), 4)["hist_time"][0].tolist() == [0, T0 + 130, T0 + 190, T0 + 250]
    # seconds, the default, are said so in the report
    csv.write_bytes(csv_bytes(rs))
    rep = prepare_table(schema, [csv], tmp_path / "s")
    assert rep["time_unit"] == "s" and "Times read as unix seconds (time_unit s)." in \
        (tmp_path / "s" / "report.md").read_text()
    # nanoseconds are read exactly (float64 would round 999999999 ns up to the next second)
    ns = [dict(r, ts=str(int(r["ts"]) * 10 ** 9 + 999_999_999), hist_ts="", hist_items="") for r in rs]
    csv.write_bytes(csv_bytes(ns))
    prepare_table(schema, [csv], tmp_path / "ns", time_unit="ns")
    assert PreparedDataset(tmp_path / "ns").split("train").column("time").tolist()[:2] == [T0, T0 + 10]
    # too early, in skip mode: counted by reason; a behavior time far in the future names its behavior
    rs[4]["ts"] = "86400"
    rs[7]["hist_ts"] = rs[7]["hist_ts"].replace(str(T0 + 10), "9999999999")
    csv.write_bytes(csv_bytes(rs))
    with pytest.raises(BadRowError, match=r"row 5 \(line 6\): field 'ts': 86400 is not a plausible time in unix "
                                          r"seconds: it would be the year 1970"):
        prepare_table(schema, [csv], tmp_path / "o2")
    rep = prepare_table(schema, [csv], tmp_path / "o2", on_bad_row="skip")
    assert rep["bad_rows_skipped"] == {"timestamp out of range": 1, "behavior time out of range": 1}
    rs[4]["ts"] = str(T0 + 40)
    csv.write_bytes(csv_bytes(rs))
    with pytest.raises(BadRowError, match=r"row 8 \(line 9\): field 'hist.time' \(column 'hist_ts'\): behavior 1: "
                                          r"9999999999 is not a plausible"):
        prepare_table(schema, [csv], tmp_path / "o2")


def test_every_preparer_writes_plausible_times(tmp_path, tiny, ml100k):
    for ds in (tiny, ml100k):
        for s in store.SPLITS:
            t = ds.split(s).column("time")
            assert ((t >= store.TIME_MIN) & (t < store.TIME_MAX)).all()
        assert ((ds.log_time >= store.TIME_MIN) & (ds.log_time < store.TIME_MAX)).all()
    # and the writer itself refuses anything else, whatever the preparer
    lay = store.Layout(sparse=[], dense=[], hist=[], field_vocab={}, roles={})
    w = store.DatasetWriter(tmp_path / "w", lay)
    with pytest.raises(DataError, match=r"behavior log: 1 time\(s\) outside 1980-01-01 .. 2100-01-01"):
        w.append_log(np.zeros((2, 0), np.int32), np.array([T0, T0 * 1000]))
    assert siblings(tmp_path / "w") == [] and not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------------------------------------------
# 4-7. Target leaks, report warnings


@pytest.mark.parametrize("change,says", [
    (lambda d: d["fields"].append({"name": "clk", "column": "clicked"}), "field 'clk' reads column 'clicked'"),
    (lambda d: d["fields"].append({"name": "clicked", "kind": "numeric"}), "field 'clicked' reads column 'clicked'"),
    (lambda d: d["sequences"][0]["fields"].append({"name": "c", "column": "clicked"}),
     "sequence 'hist' field 'c' reads column 'clicked'"),
    (lambda d: d["sequences"][0].update(time="clicked"), "sequence 'hist' time reads column 'clicked'"),
    (lambda d: d.update(time="clicked"), "time reads column 'clicked'"),
    (lambda d: d.update(user_key="clicked"), "user_key reads column 'clicked'"),
    (lambda d: d.update(request_key="clicked"), "request_key reads column 'clicked'"),
])
def test_the_label_as_an_input_is_a_target_leak(schema, change, says):
    import copy
    d = copy.deepcopy(schema.to_dict())
    d["fields"], d["sequences"] = list(d["fields"]), list(d["sequences"])
    d["sequences"][0] = dict(d["sequences"][0], fields=list(d["sequences"][0]["fields"]))
    change(d)
    with pytest.raises(SchemaError, match=re.escape(says) + ".*target leak") as e:
        schema_from_dict(d)
    assert isinstance(e.value, DataError)


def test_leaky_histories_and_single_class_splits_are_warned(tmp_path, schema):
    rs = rows()
    rs[10]["hist_ts"] = "|".join([str(T0 + 100)] + rs[10]["hist_ts"].split("|")[1:])  # at the impression
    rs[20]["hist_ts"] = "|".join(reversed(rs[20]["hist_ts"].split("|")))  # newest first
    for r in rs[30:33]:
        r["clicked"] = "1"  # valid (events 30..32): all positive
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rs[:-2]))  # 38 rows: 30 train, 3 valid, 5 test
    rep = prepare_table(schema, [csv], tmp_path / "out")
    assert rep["history_checks"] == {"rows_with_behaviors_not_before_impression": 1,
                                     "rows_with_unsorted_history": 1}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- WARNING: 1 row(s) have behaviors at or after their impression's time" in md
    assert "- WARNING: 1 row(s) have a history not sorted oldest first" in md
    assert "- WARNING: split 'valid': all 3 labels are 1" in md
    assert rep["warnings"] == [w[len("- WARNING: "):] for w in md.splitlines() if w.startswith("- WARNING: ")]
    # an empty split
    csv.write_bytes(csv_bytes(rows(4)))
    rep = prepare_table(schema, [csv], tmp_path / "o3")
    assert "split 'valid' is empty: a run needs rows in train, valid and test; check the split (or the input's size)" \
        in rep["warnings"]
    assert rep["warnings"] == json.loads((tmp_path / "o3" / "report.json").read_text())["warnings"]


# ----------------------------------------------------------------------------------------------------------------
# 8. Property test: randomly corrupted files either prepare with every line accounted for, or raise a DataError


def corrupt(rng: np.random.Generator, data: bytes) -> bytes:
    lines = data.split(b"\n")[:-1]
    for _ in range(int(rng.integers(1, 6))):
        i = int(rng.integers(0, len(lines)))
        kind = int(rng.integers(0, 8))
        line = lines[i]
        pos = int(rng.integers(0, len(line) + 1))
        if kind == 0:  # random bytes, invalid UTF-8, line breaks and delimiters included
            lines[i] = line[:pos] + rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes() \
                + line[pos:]
        elif kind == 1:  # a cut line: the rest of the line is lost, or the line break
            joined = rng.random() < 0.5 and i + 1 < len(lines)
            lines[i] = line[:pos] + (lines.pop(i + 1) if joined else b"")
        elif kind == 2:  # a stray quote
            lines[i] = line[:pos] + b'"' + line[pos:]
        elif kind == 3:  # an extra column
            lines[i] = line + b",x"
        elif kind == 4:  # a missing column
            lines[i] = line.rsplit(b",", 1)[0]
        elif kind == 5:  # a blank line (or a few)
            lines[i:i] = [b""] * int(rng.integers(1, 3))
        elif kind == 6:  # invalid UTF-8 only
            lines[i] = line[:pos] + bytes([int(rng.choice([0x80, 0xC3, 0xE2, 0xFF]))]) + line[pos:]
        else:  # a value replaced by junk
            cells = line.split(b",")
            cells[int(rng.integers(0, len(cells)))] = rng.choice([b"", b"nan", b"-1", b"2", b"1e30", b"|"])
            lines[i] = b",".join(cells)
    eol = [b"\n", b"\r\n"][int(rng.integers(0, 2))]
    return eol.join(lines) + (eol if rng.random() < 0.8 else b"")


def test_corrupted_files_are_prepared_or_refused(tmp_path, schema):
    base = csv_bytes(rows(60))
    outcomes = {"prepared": 0, "refused": 0}
    for case in range(40):
        rng = np.random.default_rng(case)
        data = corrupt(rng, base)
        csv = tmp_path / f"c{case}.csv"
        csv.write_bytes(data)
        try:
            rep = prepare_table(schema, [csv], tmp_path / f"o{case}", on_bad_row="skip")
        except DataError:
            outcomes["refused"] += 1
            assert not (tmp_path / f"o{case}").exists() and siblings(tmp_path / f"o{case}") == []
            continue
        outcomes["prepared"] += 1
        n = data_lines(data)
        assert rep["rows_read"] == rep["lines_read"] == n, (case, data)
        assert rep["rows_written"] + sum(rep["bad_rows_skipped"].values()) == n, (case, data)
        assert sum(s["rows"] for s in rep["splits"].values()) == rep["rows_written"]
    assert outcomes["prepared"] >= 15 and outcomes["refused"] >= 3, outcomes


# ----------------------------------------------------------------------------------------------------------------
# 9. Through the real CLI


def test_cli_corrupted_files(tmp_path):
    (tmp_path / "s.yaml").write_text(SCHEMA)
    base = csv_bytes(rows(60))
    codes = []
    for case in (3, 7, 11, 40, 41):
        csv = tmp_path / f"c{case}.csv"
        csv.write_bytes(corrupt(np.random.default_rng(case), base))
        r = cli("data", "prepare", "--schema", str(tmp_path / "s.yaml"), "--input", str(csv), "--out",
                str(tmp_path / f"o{case}"), "--on-bad-row", "skip")
        assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr
        if r.returncode == 2:
            assert r.stderr.startswith("ctrscale data: error: ") and r.stderr.count("\n") == 1, r.stderr
        codes.append(r.returncode)
    assert 0 in codes


def test_cli_refuses_what_would_delete_or_corrupt(tmp_path):
    (tmp_path / "s.yaml").write_text(SCHEMA)
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    base = ["data", "prepare", "--schema", str(tmp_path / "s.yaml")]
    # a user's folder as --out
    thesis = tmp_path / "thesis"
    (thesis / "code").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    (thesis / "code" / "fit.py").write_text("pass")
    (thesis / "meta.json").write_text('{"fingerprint": "x"}')
    before = snapshot(thesis)
    r = cli(*base, "--input", str(csv), "--out", str(thesis))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{thesis}: the folder exists and holds files (e.g. 'code')" in r.stderr
    assert snapshot(thesis) == before
    # an input inside the output folder
    out = tmp_path / "out"
    assert cli(*base, "--input", str(csv), "--out", str(out)).returncode == 0
    good = snapshot(out)
    inside = out / "test" / "d.csv"
    inside.write_bytes(csv.read_bytes())
    r = cli(*base, "--input", str(inside), "--out", str(out), "--force")
    assert r.returncode == 2 and "the input lies inside the output folder" in r.stderr and "Traceback" not in r.stderr
    inside.unlink()
    assert snapshot(out) == good
    # a re-prepare that fails on a full disk leaves the previous preparation
    code = ("import errno, sys\nfrom ctrscale.data import store\n"
            "def full(self, **c):\n    raise OSError(errno.ENOSPC, 'No space left on device', str(self.dir))\n"
            "store.ColumnWriter.append = full\nfrom ctrscale.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = cli(*base, "--input", str(csv), "--out", str(out), "--force", code=code)
    assert r.returncode == 2 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(out) == good and siblings(out) == []
    # the unclosed quote, in skip mode too
    rs = rows(401)
    rs[10]["cat"] = '"c2'
    csv.write_bytes(csv_bytes(rs))
    for mode in ("error", "skip"):
        r = cli(*base, "--input", str(csv), "--out", str(tmp_path / "q"), "--on-bad-row", mode)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "d.csv: row 11 (line 12): a quoted value opens at character" in r.stderr
    assert not (tmp_path / "q").exists()


def test_a_preparation_with_its_gsu_caches_or_from_before_the_marker_is_replaced(tmp_path, schema):
    """Training leaves candidate-sequence caches in <prepared>/gsu/ (data/gsu.py), and folders prepared before the
    marker existed carry only a meta.json of ours: both are still ctrscale's to replace."""
    csv = tmp_path / "d.csv"
    csv.write_bytes(csv_bytes(rows()))
    out = tmp_path / "out"
    prepare_table(schema, [csv], out)
    cache = out / "gsu" / "content-k20-s0-v1-abc"
    cache.mkdir(parents=True)
    np.save(cache / "train.npy", np.zeros(3))
    (out / store.MARKER).unlink()
    prepare_table(schema, [csv], out, force=True)
    assert (out / store.MARKER).is_file() and not (out / "gsu").exists() and siblings(out) == []
