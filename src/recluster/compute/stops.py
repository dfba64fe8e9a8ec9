"""Why a node of the cluster tree has no children: a code per stopping rule and its sentence.

:class:`StopReason` is the closed list of codes (``stop_code`` in ``tree.json``); each code
writes its own sentence from the facts that triggered it (``stop_reason`` in ``tree.json``, the
terminal and the report), so that no rule spells a reason by hand. A :class:`Stop` is one such
decision: the code and its sentence. The rules themselves live where the evidence is
(:mod:`recluster.compute.tree`, :mod:`recluster.compute.node`, the pipeline's per-child checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StopReason(StrEnum):
    """A stopping rule. ``StopReason.X.stop(**facts)`` gives the :class:`Stop` with its sentence;
    the facts each code needs are the fields of its template in :data:`SENTENCES`."""

    MAX_DEPTH = "max_depth"
    TOO_SMALL = "too_small"
    SMALL_SHARE = "small_share"
    SMALL_SAMPLE = "small_sample"
    NO_STRUCTURE = "no_structure"
    NOT_REPRODUCIBLE = "not_reproducible"
    ARTEFACT_SPLIT = "artefact_split"
    SMALL_CHILDREN = "small_children"
    NO_STABLE_STRUCTURE = "no_stable_structure"
    UNSTABLE = "unstable"
    ARTEFACT = "artefact"
    NOT_REACHED = "not_reached"

    def stop(self, **facts: object) -> Stop:
        """This rule's decision, its sentence written from ``facts``.

        Raises
        ------
        KeyError naming the missing fact when ``facts`` lacks one the sentence needs.
        """
        for fact, (threshold, places) in _AGAINST.items():
            if isinstance(facts.get(fact), (int, float)) and fact in facts and threshold in facts:
                facts[fact] = score_text(float(facts[fact]), float(facts[threshold]), places)
        return Stop(self, SENTENCES[self].format(**facts))


#: Facts a sentence compares with a threshold (also a fact): the threshold's name and the
#: decimals shown, more where these would put the value on the threshold's other side.
_AGAINST = {"stability": ("stable", 3), "ari": ("min_split_agreement", 3),
            "share": ("min_node_share", 4)}


#: One sentence per code (``str.format`` templates over the facts of the decision).
SENTENCES: dict[StopReason, str] = {
    StopReason.MAX_DEPTH: "max_depth {max_depth} reached",
    StopReason.TOO_SMALL: ("too small to segment: {rows} rows is below recursion.min_node_rows="
                           "{min_node_rows}, the smallest node recluster splits"),
    StopReason.SMALL_SHARE: "share {share} is below recursion.min_node_share={min_node_share}",
    StopReason.SMALL_SAMPLE: "sample of {rows} rows is below the {need} the embedding needs",
    StopReason.NO_STRUCTURE: "no sub-structure: {what}",
    StopReason.NOT_REPRODUCIBLE: ("no reproducible sub-structure: held-out ARI {ari} is below "
                                  "recursion.min_split_agreement={min_split_agreement}"),
    StopReason.ARTEFACT_SPLIT: ("artefact split: every cluster is one level of a discrete column "
                                "({artefacts}), which the other features do not separate"),
    StopReason.SMALL_CHILDREN: ("fewer than 2 children would reach recursion.min_child_rows="
                                "{min_child_rows} (sample sizes {sizes})"),
    StopReason.NO_STABLE_STRUCTURE: ("no stable sub-structure: fewer than 2 of the clusters reach "
                                     "stability.stable={stable} under resampling ({scores})"),
    StopReason.UNSTABLE: "unstable: stability {stability} is below stability.stable={stable}",
    StopReason.ARTEFACT: ("artefact split: {artefact} (the other features do not separate it); "
                          "not zoomed into"),
    StopReason.NOT_REACHED: "not reached",
}


@dataclass(frozen=True)
class Stop:
    """One stopping decision: the rule (``code``) and its sentence (``text``, also ``str()``)."""

    code: StopReason
    text: str

    def __str__(self) -> str:
        return self.text

    def record(self) -> dict[str, str]:
        """The ``tree.json`` keys: ``stop_reason`` (the sentence) and ``stop_code``."""
        return {"stop_reason": self.text, "stop_code": self.code.value}


def score_text(value: float, threshold: float, places: int = 2) -> str:
    """``value`` with ``places`` decimals, or as many more as it takes for the text to stay on
    the same side of ``threshold`` as the value itself: a stability of 0.746 judged below 0.75
    was printed "0.75" next to "stability.stable=0.75"."""
    for p in range(places, 17):
        text = f"{value:.{p}f}"
        if (float(text) >= threshold) == (value >= threshold):
            return text
    return repr(value)
