"""The stages of one job, built on :mod:`recluster.compute`, :mod:`recluster.parallel` and
:mod:`recluster.storage`: what :mod:`recluster.pipeline` (``run``) and ``score`` sequence.

* :mod:`~recluster.job.inputs`: plan the input (footers, schema, pieces), fingerprint the run,
  check the locations, decide about a run already published, validate the rows.
* :mod:`~recluster.job.growth`: grow the tree level by level (sample, fit, stability, assign).
* :mod:`~recluster.job.outputs`: write models, explanations, labels, ``tree.json``, segments, the
  report and assemble the manifest.
"""
