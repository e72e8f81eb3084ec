"""The generic schema-driven preparer (ctrscale.data.generic) on small CSV/TSV/Parquet files made here."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.generic import BadRowError, prepare_from_schema_file, prepare_table
from ctrscale.data.table_reader import MissingColumnError
from ctrscale.errors import DataError
from ctrscale.schema import load_schema

N = 20
T0 = 1_600_000_000  # 2020-09-13: times must be plausible unix seconds (1980..2100)
HEADER = ["user", "item", "cat", "price", "clicked", "ts", "hist_items", "hist_cats", "hist_ts", "fold"]

SCHEMA = """
name: toy
label: clicked
user_key: user
time: ts
fields:
  - {name: user_id, column: user, role: user}
  - {name: item_id, column: item, role: item}
  - {name: cat, role: item, min_freq: MINFREQ}
  - {name: price, kind: numeric, role: item}
sequences:
  - name: hist
    max_len: 3
    time: hist_ts
    fields:
      - {name: item_id, column: hist_items, vocab: item_id}
      - {name: cat, column: hist_cats, vocab: cat}
"""


def make_rows(item=lambda i: f"i{i % 5}"):
    """Event i: user u{i%4} at time T0+10i; its history = the same user's earlier events. The last event's item
    'zz' appears only in the test split. Returned in file order: reversed, so the preparer has to sort."""
    items = [item(i) for i in range(N)]
    items[N - 1] = "zz" if item(0).startswith("i") else items[N - 1]
    rows = []
    for i in range(N):
        prev = [j for j in range(i) if j % 4 == i % 4]
        rows.append({"user": f"u{i % 4}", "item": items[i], "cat": f"c{i % 3}", "price": str(i / 2),
                     "clicked": str(i % 2), "ts": str(T0 + 10 * i),
                     "hist_items": "|".join(items[j] for j in prev),
                     "hist_cats": "|".join(f"c{j % 3}" for j in prev),
                     "hist_ts": "|".join(str(T0 + 10 * j) for j in prev),
                     "fold": "train" if i < 14 else "valid" if i < 17 else "test"})
    return rows[::-1]


def write_csv(path, rows, sep=",", drop=()):
    cols = [c for c in HEADER if c not in drop]
    lines = [sep.join(cols)] + [sep.join(r[c] for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_schema(tmp_path, min_freq=1, extra=""):
    p = tmp_path / "schema.yaml"
    p.write_text(SCHEMA.replace("MINFREQ", str(min_freq)) + extra)
    return p


def file_row(i):
    """1-based row number in the file of event i (rows are written reversed)."""
    return N - i


def decode(ds, vocab, ids):
    v = ds.vocab(vocab).values
    return [None if x == 0 else "<oov>" if x == 1 else str(v[x - 2]) for x in np.asarray(ids).tolist()]


@pytest.fixture
def clean(tmp_path):
    csv = write_csv(tmp_path / "data.csv", make_rows())
    return load_schema(write_schema(tmp_path)), csv


def test_clean_csv(tmp_path, clean):
    schema, csv = clean
    rep = prepare_table(schema, [csv], tmp_path / "out")
    assert {s: r["rows"] for s, r in rep["splits"].items()} == {"train": 16, "valid": 2, "test": 2}
    assert rep["splits"]["train"]["positives"] == 8
    assert rep["bad_rows_skipped"] == {}
    assert rep["rows_read"] == rep["rows_written"] == N
    # vocabularies on train only (events 0..15): 4 users, items i0..i4, 3 categories, +2 for pad and OOV
    assert rep["vocab_sizes"] == {"user_id": 6, "item_id": 7, "cat": 5}
    assert rep["history_checks"] == {"rows_with_behaviors_not_before_impression": 0,
                                     "rows_with_unsorted_history": 0}
    ds = PreparedDataset(tmp_path / "out")
    assert ds.spec.sparse == ("user_id", "item_id", "cat") and ds.spec.dense == ("price",)
    train = ds.gather("train", np.arange(16), 3)
    assert train["time"].tolist() == [T0 + 10 * i for i in range(16)]  # stored in time order
    assert train["label"].tolist() == [i % 2 for i in range(16)]
    assert decode(ds, "item_id", train["sparse"][:, 1]) == [f"i{i % 5}" for i in range(16)]
    assert abs(train["dense"][:, 0].mean()) < 1e-6  # standardised with train statistics
    test = ds.gather("test", np.arange(2), 3)
    assert decode(ds, "item_id", test["sparse"][:, 1]) == ["i3", "<oov>"]  # 'zz' is only in test
    assert len(set(ds.split("train").column("request").tolist())) == 16  # (user, time) pairs are distinct
    assert ds.split("test").column("user").tolist() == [2, 3]  # user keys u0..u3 -> 0..3


def test_histories_round_trip(tmp_path, clean):
    schema, csv = clean
    prepare_table(schema, [csv], tmp_path / "out")
    ds = PreparedDataset(tmp_path / "out")
    g = ds.gather("train", np.array([0, 4, 8, 12]), 3)  # user u0: 0, 1, 2, 3 earlier events
    hist_items = [decode(ds, "item_id", row[:, 0]) for row in g["hist"]]
    assert hist_items == [[None, None, None], [None, None, "i0"], [None, "i0", "i4"], ["i0", "i4", "i3"]]
    assert [decode(ds, "cat", row[:, 1]) for row in g["hist"]][3] == ["c0", "c1", "c2"]
    assert g["hist_time"].tolist() == [[0, 0, 0], [0, 0, T0], [0, T0, T0 + 40], [T0, T0 + 40, T0 + 80]]
    t = ds.gather("test", np.array([1]), 3)  # event 19 (u3): history 3, 7, 11, 15, most recent 3 kept
    assert decode(ds, "item_id", t["hist"][0, :, 0]) == ["i2", "i1", "i0"]
    assert t["hist_time"][0].tolist() == [T0 + 70, T0 + 110, T0 + 150]
    long = ds.gather("test", np.array([1]), 6)
    assert long["hist_time"][0].tolist() == [0, 0, T0 + 30, T0 + 70, T0 + 110, T0 + 150]
    assert ds.report["splits"]["test"]["max_history_len"] == 4


BAD = [  # event, column, value, reason, what the message must say
    (8, "clicked", "2", "label not 0/1", "field 'clicked': expected 0 or 1, got '2'"),
    (8, "clicked", "", "label not 0/1", "field 'clicked'"),
    (8, "ts", "", "timestamp missing", "field 'ts': missing timestamp"),
    (8, "ts", "yesterday", "timestamp not an integer", "got 'yesterday'"),
    (8, "ts", "1080.5", "timestamp not an integer", "got '1080.5'"),
    (8, "ts", "-5", "timestamp not positive", "field 'ts'"),
    (8, "ts", "0", "timestamp not positive", "got '0'"),
    (8, "price", "abc", "numeric field not a finite number", "field 'price': expected a finite number, got 'abc'"),
    (8, "price", "inf", "numeric field not a finite number", "got 'inf'"),
    (8, "price", "", "numeric field not a finite number", "field 'price'"),
    (8, "user", "", "missing value", "field 'user': missing value"),
    (8, "hist_ts", "1000|x", "behavior time not a positive integer", "behavior 2"),
    (8, "hist_ts", "0|1040", "behavior time not a positive integer", "behavior 1"),
    (8, "hist_ts", "1000|-1040", "behavior time not a positive integer", "got '-1040'"),
    (8, "hist_items", "i0", "sequence fields differ in length", "1 behaviors but"),
    (8, "hist_cats", "c0|c1|c2", "sequence fields differ in length", "column 'hist_cats'"),
    (8, "hist_items", "i0|", "sequence element is empty", "behavior 2 is empty"),
]


@pytest.mark.parametrize("event,column,value,reason,says", BAD, ids=[f"{b[1]}={b[2]!r}" for b in BAD])
def test_bad_row_raises(tmp_path, event, column, value, reason, says):
    rows = make_rows()
    rows[file_row(event) - 1][column] = value
    csv = write_csv(tmp_path / "bad.csv", rows)
    schema = load_schema(write_schema(tmp_path))
    with pytest.raises(BadRowError) as e:
        prepare_table(schema, [csv], tmp_path / "out")
    msg = str(e.value)
    r = file_row(event)
    assert f"bad.csv: row {r} (line {r + 1}): " in msg, msg
    assert f"'{column}'" in msg and says in msg, msg
    assert not (tmp_path / "out" / "meta.json").exists()
    # skip mode drops that one row and counts it under its reason
    rep = prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    assert rep["bad_rows_skipped"] == {reason: 1}
    assert rep["rows_read"] == N == rep["rows_written"] + 1


def test_malformed_and_blank_lines(tmp_path):
    rows = make_rows()
    schema = load_schema(write_schema(tmp_path))
    csv = write_csv(tmp_path / "bad.csv", rows)
    lines = csv.read_text().splitlines()
    lines[5] = "u1,i1,c1"  # row 5: too few columns
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRowError, match=r"bad.csv: row 5 \(line 6\): malformed row: expected 10 columns, got 3"):
        prepare_table(schema, [csv], tmp_path / "out")
    # a later bad row is still named by its own row: the malformed one counts as a row
    rows[file_row(2) - 1]["clicked"] = "7"
    csv = write_csv(tmp_path / "bad.csv", rows)
    lines = csv.read_text().splitlines()
    lines[5] = "u1,i1,c1"
    csv.write_text("\n".join(lines) + "\n\n")  # and a blank line at the end
    rep = prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")
    assert rep["bad_rows_skipped"] == {"malformed row (wrong number of columns)": 1, "label not 0/1": 1,
                                       "empty row": 1}
    assert rep["rows_read"] == N + 1 == rep["rows_written"] + 3
    lines[5] = lines[6]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRowError, match=rf"row {file_row(2)} \(line {file_row(2) + 1}\): field 'clicked'"):
        prepare_table(schema, [csv], tmp_path / "out")


def test_skip_mode_counts_every_reason(tmp_path):
    rows = make_rows()
    for event, column, value in [(1, "clicked", "2"), (3, "clicked", "yes"), (5, "ts", "-1"), (6, "price", "x"),
                                 (9, "hist_items", "i1"), (10, "hist_ts", "1020|abc"), (13, "ts", "")]:
        rows[file_row(event) - 1][column] = value
    rows[file_row(11) - 1]["clicked"] = "3"  # two problems: counted once, under the first
    rows[file_row(11) - 1]["price"] = "nan"
    csv = write_csv(tmp_path / "data.csv", rows)
    rep = prepare_table(load_schema(write_schema(tmp_path)), [csv], tmp_path / "out", on_bad_row="skip")
    assert rep["bad_rows_skipped"] == {"label not 0/1": 3, "timestamp not positive": 1, "timestamp missing": 1,
                                       "numeric field not a finite number": 1,
                                       "sequence fields differ in length": 1,
                                       "behavior time not a positive integer": 1}
    written = sum(s["rows"] for s in rep["splits"].values())
    assert rep["rows_read"] == N == written + sum(rep["bad_rows_skipped"].values())
    assert written == rep["rows_written"] == 12
    assert "label not 0/1: 3" in (tmp_path / "out" / "report.md").read_text()


def test_missing_column(tmp_path):
    csv = write_csv(tmp_path / "data.csv", make_rows(), drop=("price",))
    with pytest.raises(MissingColumnError, match=r"data.csv: unknown column 'price' \(the schema's field 'price'\)"):
        prepare_table(load_schema(write_schema(tmp_path)), [csv], tmp_path / "out")
    pq.write_table(pa.table({"user": ["u1"]}), tmp_path / "data.parquet")
    with pytest.raises(MissingColumnError, match=r"data.parquet: unknown column 'clicked'"):
        prepare_table(load_schema(write_schema(tmp_path)), [tmp_path / "data.parquet"], tmp_path / "out")


def test_rerun_is_a_noop_until_an_input_changes(tmp_path, clean):
    schema, csv = clean
    out = tmp_path / "out"
    assert prepare_table(schema, [csv], out) is not None
    assert prepare_table(schema, [csv], out) is None
    assert prepare_table(schema, [csv], out, on_bad_row="skip") is not None  # other options: redo
    assert prepare_table(schema, [csv], out, on_bad_row="skip") is None
    rows = make_rows()
    rows[0]["price"] = "123.25"
    write_csv(csv, rows)
    st = csv.stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert prepare_table(schema, [csv], out, on_bad_row="skip") is not None
    assert prepare_table(schema, [csv], out, on_bad_row="skip", force=True) is not None



def test_the_same_inputs_rewritten_are_the_same_preparation(tmp_path, clean):
    """The fingerprint reads contents, not times: the same bytes written again (a fresh checkout, a remounted share)
    neither prepare again nor stop an interrupted run from resuming; one changed byte does prepare again."""
    schema, csv = clean
    out = tmp_path / "out"
    assert prepare_table(schema, [csv], out) is not None
    fp = json.loads((out / "meta.json").read_text())["fingerprint"]
    data = csv.read_bytes()
    csv.write_bytes(data)
    st = csv.stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert prepare_table(schema, [csv], out) is None
    csv.write_bytes(data.replace(b"\n", b"\r\n", 1))
    assert prepare_table(schema, [csv], out) is not None
    assert json.loads((out / "meta.json").read_text())["fingerprint"] != fp


def _same(a, b):
    ra, rb = PreparedDataset(a), PreparedDataset(b)
    for s in ("train", "valid", "test"):
        n = len(ra.split(s))
        assert n == len(rb.split(s))
        ga, gb = ra.gather(s, np.arange(n), 5), rb.gather(s, np.arange(n), 5)
        assert ga.keys() == gb.keys()
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k], err_msg=f"{s}.{k}")
    for v in ("user_id", "item_id", "cat"):
        assert (a / "vocab" / f"{v}.json").read_text() == (b / "vocab" / f"{v}.json").read_text()
    assert ra.report["splits"] == rb.report["splits"]


def test_parquet_tsv_and_several_files_match_csv(tmp_path, clean):
    schema, csv = clean
    prepare_table(schema, [csv], tmp_path / "csv")
    rows = make_rows()
    cols = {c: [r[c] for r in rows] for c in HEADER}
    native = {**cols, "price": pa.array([float(x) for x in cols["price"]]),
              "clicked": pa.array([int(x) for x in cols["clicked"]], pa.int8()),
              "ts": pa.array([int(x) for x in cols["ts"]])}
    pq.write_table(pa.table(native), tmp_path / "d.parquet")
    prepare_table(schema, [tmp_path / "d.parquet"], tmp_path / "pq")
    _same(tmp_path / "csv", tmp_path / "pq")
    listed = {**native, "hist_items": pa.array([x.split("|") if x else [] for x in cols["hist_items"]]),
              "hist_cats": pa.array([x.split("|") if x else None for x in cols["hist_cats"]]),
              "hist_ts": pa.array([[int(t) for t in x.split("|")] if x else [] for x in cols["hist_ts"]])}
    pq.write_table(pa.table(listed), tmp_path / "l.parquet")
    prepare_table(schema, [tmp_path / "l.parquet"], tmp_path / "list")
    _same(tmp_path / "csv", tmp_path / "list")
    write_csv(tmp_path / "d.tsv", rows, sep="\t")
    prepare_table(schema, [tmp_path / "d.tsv"], tmp_path / "tsv")
    _same(tmp_path / "csv", tmp_path / "tsv")
    write_csv(tmp_path / "a.csv", rows[:7])
    pq.write_table(pa.table(native).slice(7), tmp_path / "b.parquet")
    prepare_table(schema, [tmp_path / "a.csv", tmp_path / "b.parquet"], tmp_path / "two")
    _same(tmp_path / "csv", tmp_path / "two")


def test_row_numbers_are_per_file(tmp_path, clean):
    schema, _ = clean
    rows = make_rows()
    rows[10]["clicked"] = "5"
    write_csv(tmp_path / "a.csv", rows[:7])
    write_csv(tmp_path / "b.csv", rows[7:])
    with pytest.raises(BadRowError, match=r"b.csv: row 4 \(line 5\): field 'clicked'"):
        prepare_table(schema, [tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out")
    pq.write_table(pa.table({c: [r[c] for r in rows[7:]] for c in HEADER}), tmp_path / "b.parquet")
    with pytest.raises(BadRowError, match=r"b.parquet: row 4: field 'clicked': expected 0 or 1, got '5'"):
        prepare_table(schema, [tmp_path / "a.csv", tmp_path / "b.parquet"], tmp_path / "out")


def test_min_freq_makes_rare_values_oov(tmp_path):
    # train (events 0..15) has c0 6 times, c1 and c2 5 times each
    csv = write_csv(tmp_path / "data.csv", make_rows())
    rep = prepare_table(load_schema(write_schema(tmp_path, min_freq=6)), [csv], tmp_path / "out")
    assert rep["vocab_sizes"]["cat"] == 3
    ds = PreparedDataset(tmp_path / "out")
    g = ds.gather("train", np.arange(16), 3)
    assert decode(ds, "cat", g["sparse"][:, 2]) == ["c0" if i % 3 == 0 else "<oov>" for i in range(16)]
    assert decode(ds, "cat", g["hist"][12, :, 1]) == ["c0", "<oov>", "<oov>"]  # shared vocabulary


def test_split_column_and_request_key(tmp_path):
    rows = make_rows()
    for r in rows:
        r["req"] = "r-" + r["user"] if r["ts"] in (str(T0), str(T0 + 10)) else "r" + r["ts"]
    schema_path = write_schema(tmp_path)
    schema_path.write_text(schema_path.read_text().replace("time: ts\n", "time: ts\nrequest_key: req\n", 1))
    HEADER.append("req")
    try:
        csv = write_csv(tmp_path / "data.csv", rows)
    finally:
        HEADER.pop()
    rep = prepare_table(load_schema(schema_path), [csv], tmp_path / "out", split="fold")
    assert {s: r["rows"] for s, r in rep["splits"].items()} == {"train": 14, "valid": 3, "test": 3}
    ds = PreparedDataset(tmp_path / "out")
    req = ds.split("train").column("request")
    assert req[0] != req[1] and len(set(req.tolist())) == 14
    rows[file_row(3) - 1]["fold"] = "holdout"
    with pytest.raises(BadRowError, match=rf"row {file_row(3)} .*field 'fold': expected train, valid or test, "
                                          rf"got 'holdout'"):
        prepare_table(load_schema(write_schema(tmp_path)), [write_csv(tmp_path / "d2.csv", rows)],
                      tmp_path / "o2", split="fold")


def test_content_table_from_schema_file(tmp_path):
    (tmp_path / "schema").mkdir()
    (tmp_path / "data").mkdir()
    schema_path = write_schema(tmp_path / "schema", extra="content: {path: emb.npy, dim: 4, key: item_id}\n")
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "schema" / "emb.npy", table)
    csv = write_csv(tmp_path / "data" / "data.csv", make_rows(item=lambda i: str(i % 5 + 3)))
    rep = prepare_from_schema_file(schema_path, [csv], tmp_path / "out")
    assert rep["content"]["keys_without_vector"] == 0
    ds = PreparedDataset(tmp_path / "out")
    content = ds.content()
    item_vocab = ds.vocab("item_id")
    assert content.shape == (len(item_vocab), 4) and not content[:2].any()
    for i, raw in enumerate(item_vocab.values.tolist()):
        np.testing.assert_array_equal(content[i + 2], table[int(raw)])
    assert prepare_from_schema_file(schema_path, [csv], tmp_path / "out") is None
    # non-integer content keys are an error, not a silent zero vector
    bad = write_csv(tmp_path / "data" / "bad.csv", make_rows())
    with pytest.raises(ValueError, match=r"bad.csv: row \d+ .*field 'item_id': the content table .* raw integer"):
        prepare_from_schema_file(schema_path, [bad], tmp_path / "out2")
    # prepare_table resolves a relative content path against the first input's directory
    with pytest.raises(FileNotFoundError, match="emb.npy"):
        prepare_table(load_schema(schema_path), [csv], tmp_path / "out3")


def test_report_is_json_and_no_rows_is_an_error(tmp_path, clean):
    schema, csv = clean
    prepare_table(schema, [csv], tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["inputs"] == [str(csv)] and rep["split_mode"] == "time"
    rows = make_rows()
    for r in rows:
        r["clicked"] = "9"
    with pytest.raises(ValueError, match="no rows left"):
        prepare_table(schema, [write_csv(tmp_path / "all_bad.csv", rows)], tmp_path / "o2", on_bad_row="skip")


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Read 64 bytes (whole lines) of a CSV and 4 Parquet rows at a time, hand the writer 3 rows at a time."""
    from ctrscale.data import generic, table_reader
    monkeypatch.setattr(table_reader, "BLOCK_BYTES", 64)
    monkeypatch.setattr(table_reader, "PARQUET_BATCH", 4)
    monkeypatch.setattr(generic, "CHUNK_ROWS", 3)


def test_blocks_and_chunks_do_not_change_the_result(tmp_path, clean, request):
    schema, csv = clean
    rows = make_rows()
    for event, column, value in [(1, "clicked", "2"), (9, "hist_items", "i1"), (13, "ts", "")]:
        rows[file_row(event) - 1][column] = value
    bad = write_csv(tmp_path / "bad.csv", rows)
    pq.write_table(pa.table({c: [r[c] for r in make_rows()] for c in HEADER}), tmp_path / "d.parquet")
    cases = {"csv": [csv], "bad": [bad], "pq": [tmp_path / "d.parquet"], "two": [bad, tmp_path / "d.parquet"]}
    whole = {k: prepare_table(schema, v, tmp_path / f"{k}-whole", on_bad_row="skip") for k, v in cases.items()}
    request.getfixturevalue("tiny_blocks")
    for k, v in cases.items():
        rep = prepare_table(schema, v, tmp_path / f"{k}-blocks", on_bad_row="skip")
        _same(tmp_path / f"{k}-whole", tmp_path / f"{k}-blocks")
        for key in ("bad_rows_skipped", "rows_read", "lines_read", "rows_written", "history_checks"):
            assert rep[key] == whole[k][key], (k, key)


def test_rows_in_later_blocks_are_named_by_their_file_row(tmp_path, tiny_blocks):
    schema = load_schema(write_schema(tmp_path))
    rows = make_rows()
    rows[file_row(2) - 1]["clicked"] = "7"  # near the end of the file: several blocks in
    with pytest.raises(BadRowError, match=rf"bad.csv: row {file_row(2)} \(line {file_row(2) + 1}\): field 'clicked'"):
        prepare_table(schema, [write_csv(tmp_path / "bad.csv", rows)], tmp_path / "out")
    csv = write_csv(tmp_path / "bad.csv", make_rows())
    lines = csv.read_text().splitlines()
    lines[15] = "u1,i1,c1"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRowError, match=r"bad.csv: row 15 \(line 16\): malformed row: expected 10 columns, got 3"):
        prepare_table(schema, [csv], tmp_path / "out")
    lines = csv.read_bytes().splitlines()
    lines[15] = lines[16].replace(b"u", b"\xff", 1)
    csv.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(BadRowError, match=r"bad.csv: row 15 \(line 16\): not valid UTF-8 \(byte 0xff at byte 1 "):
        prepare_table(schema, [csv], tmp_path / "out")
    lines[15] = lines[16].replace(b",i", b',"i', 1)
    csv.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"bad.csv: row 15 \(line 16\): a quoted value opens at character 4"):
        prepare_table(schema, [csv], tmp_path / "out", on_bad_row="skip")


def test_inputs_named_by_split_match_a_split_column(tmp_path, capsys, monkeypatch):
    from ctrscale.cli import main
    schema_path = write_schema(tmp_path)
    rows = make_rows()
    by = {s: [r for r in rows if r["fold"] == s] for s in ("train", "valid", "test")}
    parts = {"a": by["train"][:5], "b": by["train"][5:], "v": by["valid"], "t": by["test"]}
    for name, part in parts.items():
        write_csv(tmp_path / f"{name}.csv", part)
    whole = write_csv(tmp_path / "whole.csv", [r for part in parts.values() for r in part])  # the same row order
    prepare_table(load_schema(schema_path), [whole], tmp_path / "by-column", split="fold")
    # two files for train; the order of the items does not matter (train, valid, test files are read in that order)
    args = ["data", "prepare", "--schema", str(schema_path), "--out", str(tmp_path / "by-file"), "--input",
            f"test={tmp_path / 't.csv'}", f"train={tmp_path / 'a.csv'}", f"valid={tmp_path / 'v.csv'}",
            f"train={tmp_path / 'b.csv'}"]
    assert main(args) == 0
    _same(tmp_path / "by-column", tmp_path / "by-file")
    rep = PreparedDataset(tmp_path / "by-file").report
    assert {s: r["rows"] for s, r in rep["splits"].items()} == {"train": 14, "valid": 3, "test": 3}
    assert rep["split_mode"] == "files" and rep["inputs"][0] == f"train={tmp_path / 'a.csv'}"
    capsys.readouterr()
    assert main(args) == 0 and "already prepared" in capsys.readouterr().out
    # a file moved to another split is another preparation
    assert main([*args[:-1], f"valid={tmp_path / 'b.csv'}"]) == 0
    assert PreparedDataset(tmp_path / "by-file").report["splits"]["valid"]["rows"] == 3 + len(parts["b"])
    # a file whose name holds '=' is read as a plain path (split by time)
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train=x.csv", rows)
    assert main(["data", "prepare", "--schema", str(schema_path), "--input", "train=x.csv",
                 "--out", str(tmp_path / "plain")]) == 0
    assert PreparedDataset(tmp_path / "plain").report["split_mode"] == "time"


@pytest.mark.parametrize("inputs, extra, says", [
    (["train=a.csv", "b.csv", "valid=b.csv", "test=b.csv"], [],
     "--input mixes 'b.csv', a plain path, with 'train=a.csv', a file named by its split; name the split of every "
     "input"),
    (["train=a.csv", "valid=b.csv", "test=c.csv"], ["--split", "fold"],
     "--split fold (split='fold') and inputs named by split (train=PATH ...) both say which split a row goes to; "
     "drop --split, or give the inputs as plain paths"),
    (["train=a.csv", "valid=b.csv", "test=c.csv"], ["--split", "time"], "drop --split"),
    (["train=a.csv", "test=c.csv"], [],
     "inputs by split: no valid file; give valid=PATH too (every split needs rows), or give plain paths"),
    (["train=a.csv", "valid=b.csv", "test=a.csv"], [], "inputs by split: a.csv is given twice (train and test)"),
    (["trian=a.csv", "valid=b.csv", "test=c.csv"], [],
     "--input 'trian=a.csv': no such file; to name a split write train=PATH, valid=PATH or test=PATH"),
])
def test_inputs_named_by_split_refusals(tmp_path, capsys, monkeypatch, inputs, extra, says):
    from ctrscale.cli import main
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "c"):
        write_csv(tmp_path / f"{name}.csv", make_rows())
    args = ["data", "prepare", "--schema", str(write_schema(tmp_path)), "--out", "out", "--input", *inputs, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrscale data: error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()
