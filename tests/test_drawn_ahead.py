"""Samples and explanation rows drawn ahead: the pass before the one that would read every
column for them draws them in the same read (the validation pass the root's sample, each
assignment pass the next level's samples and the explanation rows of the nodes it split). A
run with them gives the outputs of a run that reads for each (ggplot2 diamonds, depth 2, small
samples so that every draw is a real thinning), and says which samples were drawn ahead."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import write_table
from tables import diamonds

from recluster.config import parse_config
from recluster.pipeline import run
from recluster.progress import Progress

pytestmark = pytest.mark.timeout(600)


class _Stages(Progress):
    """Each stage's counters, by stage name."""

    def __init__(self):
        super().__init__(lambda line: None)
        self.counts: dict[str, dict] = {}

    def stage_finished(self, name, seconds, status, counts, error=None) -> None:
        self.counts[name] = dict(counts)


def _run(client, url: str, out: str) -> tuple[dict, pd.DataFrame, dict]:
    cfg = parse_config({
        "input": {"path": url, "id_column": "stone", "categorical": ["cut", "color", "clarity"]},
        "output": {"path": out}, "seed": 3, "recursion": {"max_depth": 2},
        "sample": {"size": 2_000, "min_node_size": 300},
        "explain": {"train_rows": 2_500, "shap_rows": 500, "n_estimators": 20},
        "stability": {"resamples": 1}})
    stages = _Stages()
    manifest = run(cfg, client, echo=stages)
    labels = pd.read_parquet(f"{out}/labels").sort_values("stone").reset_index(drop=True)
    return manifest, labels, stages.counts


def test_drawn_ahead_gives_the_outputs_of_reading_for_each(client, tmp_path, monkeypatch):
    import recluster.job.growth as growth
    import recluster.pipeline as pipeline

    url = str(tmp_path / "in")
    write_table(diamonds(12_000), url, 4, row_group_rows=1_000)
    ahead, ahead_labels, stages = _run(client, url, str(tmp_path / "ahead"))
    samples = {name: c for name, c in stages.items() if ": sample " in name}
    assert len(samples) == 2 and all(c.get("drawn_ahead") == 1 for c in samples.values()), stages
    assert ahead["levels"] == 2 and ahead["nodes"] > 4

    with monkeypatch.context() as m:  # no sample drawn ahead, no explanation rows drawn early
        m.setattr(pipeline, "root_ahead_bounds", lambda *a: {})
        m.setattr(growth, "_ahead_bounds", lambda *a: {})
        m.setattr(growth, "draw_spec", lambda *a: {})
        read, read_labels, read_stages = _run(client, url, str(tmp_path / "read"))
    assert not any(c.get("drawn_ahead") for c in read_stages.values())
    with monkeypatch.context() as m:  # bounds that fall short: each level reads after all
        m.setattr(growth, "ahead_bound", lambda t, rows: t / 2)
        short, short_labels, short_stages = _run(client, url, str(tmp_path / "short"))
    assert not any(c.get("drawn_ahead") for c in short_stages.values())

    def published(manifest: dict) -> dict:
        return {k: v for k, v in manifest["sha256"].items() if k != "report.html"}

    for other, other_labels in ((read, read_labels), (short, short_labels)):
        assert published(other) == published(ahead)
        pd.testing.assert_frame_equal(other_labels, ahead_labels)
        assert json.dumps(other["nodes"]) == json.dumps(ahead["nodes"])


def test_a_sample_drawn_ahead_is_let_go_once_thinned(client, tmp_path, monkeypatch):
    """The workers hold each level's sample drawn ahead until that level has thinned it, not
    through the levels after (the root's, drawn by the validation pass, was held by the run
    until the whole tree had grown)."""
    import time

    from distributed import futures_of

    import recluster.job.growth as growth

    url = str(tmp_path / "in")
    write_table(diamonds(12_000), url, 4, row_group_rows=1_000)
    drawn: dict[int, set] = {}  # level -> keys of the sample drawn ahead for it
    held_later: dict[int, set] = {}  # level -> keys of earlier levels' draws still held then
    fit_level = growth._fit_level

    def spy(client, feats, state, level, *args):
        ahead = args[-1]
        if ahead is not None:
            drawn[level] = {f.key for f in futures_of(ahead[1])}
        earlier = set().union(*(keys for lv, keys in drawn.items() if lv < level))
        for _ in range(50):  # releases reach the workers asynchronously
            held_later[level] = earlier & {k for ks in client.has_what().values() for k in ks}
            if not held_later[level]:
                break
            time.sleep(0.1)
        return fit_level(client, feats, state, level, *args)

    monkeypatch.setattr(growth, "_fit_level", spy)
    manifest, _, stages = _run(client, url, str(tmp_path / "out"))
    assert manifest["levels"] == 2 and set(drawn) == {1, 2}, stages
    assert held_later == {1: set(), 2: set()}
