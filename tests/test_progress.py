"""What a run prints while it trains: a tqdm bar on a terminal, progress lines everywhere else."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from ctrscale.train.config import load_config
from ctrscale.train.progress import ProgressLines, progress_bar


def test_progress_lines_where_no_terminal_is(capsys):
    cfg = load_config(None, ["data.batch_size=100"])
    bar = progress_bar(cfg, total=10, initial=2, desc="epoch 1/3")  # pytest's captured stderr is no terminal
    assert isinstance(bar, ProgressLines)
    bar.every = 0.0  # a line on every step
    bar.set_postfix(loss="0.6931")
    bar.update(1)
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"epoch 1/3: step 3/10, ~[\d,]+ impressions/s, loss 0\.6931, \S+ left in the epoch", line)
    assert progress_bar(load_config(None, ["train.progress=false"]), 10, 0, "x") is None


def test_a_logged_training_run_shows_its_progress(tmp_path):
    """A run whose output goes to a file prints progress lines between its epoch lines."""
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        r = subprocess.run([sys.executable, "-m", "ctrscale.cli", "train", "model.name=mlp",
                            "data.options.impressions=6000", f"out_dir={tmp_path}", "train.epochs=1",
                            "data.batch_size=512"], stdout=out, stderr=subprocess.STDOUT, timeout=300,
                           env={**os.environ, "CTRSCALE_PROGRESS_SECONDS": "0"})
    text = log.read_text()
    assert r.returncode == 0, text
    assert re.search(r"epoch 1/1: step \d+/\d+, ~[\d,]+ impressions/s, loss [\d.]+", text)
