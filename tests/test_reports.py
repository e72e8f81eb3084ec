"""ctrscale.reports: the one Markdown table format and the off-screen figures every report uses."""
from __future__ import annotations

from ctrscale.reports import markdown_table, plot_epoch_curves, pyplot, save_figure


def test_markdown_table_layout():
    text = markdown_table([["mlp", "0.7100"], ["din", "0.7250"]], ["model", "AUC"])
    assert text.splitlines() == ["| model | AUC |", "|---|---|", "| mlp | 0.7100 |", "| din | 0.7250 |"]
    assert markdown_table([], ["a", "b", "c"]) == "| a | b | c |\n|---|---|---|"


def test_epoch_curves_are_a_png_and_leave_no_figure_open(tmp_path):
    curves = {f"model{i}": [{"epoch": e, "valid_auc": 0.7 + e / 100, "valid_gauc": 0.6 + e / 100} for e in (1, 2, 3)]
              for i in range(12)}  # more labels than the colour cycle
    plot_epoch_curves(curves, tmp_path / "curves.png", ("auc", "gauc"))
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert pyplot().get_fignums() == []


def test_one_epoch_curves_become_bars_of_the_final_values(tmp_path, monkeypatch):
    import ctrscale.reports as reports
    drawn, save = [], reports.save_figure
    monkeypatch.setattr(reports, "save_figure", lambda fig, path, tight=True: (drawn.append(fig), save(fig, path)))
    row = lambda e, auc, gauc: {"epoch": e, "valid_auc": auc, "valid_gauc": gauc}  # noqa: E731
    one = {"mlp": [row(1, 0.7012, 0.6421)], "din": [row(1, 0.7158, 0.6502)], "suan": [row(1, 0.7233, 0.6611)]}
    plot_epoch_curves(one, tmp_path / "bars.png", ("auc", "gauc"))
    auc, gauc = drawn[0].axes
    assert [round(b.get_height(), 4) for b in auc.patches] == [0.7012, 0.7158, 0.7233] and not auc.lines
    assert [t.get_text() for t in gauc.texts] == ["0.6421", "0.6502", "0.6611"]  # the value on each bar
    assert [t.get_text() for t in auc.get_xticklabels()] == ["mlp", "din", "suan"]
    low, high = auc.get_ylim()
    assert 0.69 < low < 0.7012 and 0.7233 < high < 0.74  # zoomed to the values, not from 0
    assert "final epoch" in drawn[0].get_suptitle()
    plot_epoch_curves({"mlp": [row(1, 0.70, 0.64), row(2, 0.71, 0.65)], "din": one["din"]}, tmp_path / "lines.png",
                      ("auc", "gauc"))
    assert len(drawn[1].axes[0].lines) == 2 and not drawn[1].axes[0].patches  # two epochs somewhere: curves
    for name in ("bars.png", "lines.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pyplot().get_fignums() == []


def test_save_figure_writes_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.png", tight=False)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and plt.get_fignums() == []


def test_preparation_report_tables_use_the_shared_format(tmp_path):
    from ctrscale.data.store import report_markdown
    split = {"rows": 1200, "positives": 30, "mean_history_len": {"50": 3.5}, "max_history_len": 9,
             "history_len_histogram": {"[0,1)": 2, "[1,10)": 1198}}
    text = report_markdown({"dataset": "toy", "splits": {"train": split, "valid": split},
                            "bad_rows_skipped": {}, "vocab_sizes": {"item_id": 12}})
    assert "| split | rows | positives | mean history (by max_len) | max history |\n|---|---|---|---|---|\n" \
           "| train | 1,200 | 30 | 50: 3.50 | 9 |" in text
    assert "| bucket | train | valid |\n|---|---|---|\n| [0,1) | 2 | 2 |\n| [1,10) | 1198 | 1198 |" in text
