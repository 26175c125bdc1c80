"""The evaluation library: data sets, runs, metrics with confidence intervals, and ``dpr eval``.

- :mod:`eval.evalset`: queries, graded qrels and answers from an nq_oracle file or a BEIR folder;
- :mod:`eval.retrieve`, :mod:`eval.client`: runs from a model, an index (dense, its BM25, its hybrid),
  BM25 over a knowledge base, or a running server;
- :mod:`eval.evaluate`, :mod:`eval.bootstrap`: the metrics of :mod:`common.metrics` with bootstrap
  intervals over queries, and paired tests between systems (:mod:`eval.compare`);
- :mod:`eval.runner`, :mod:`eval.report`, :mod:`eval.trec`: one evaluation from options to its JSON
  report, TREC run and qrels files.

Nothing heavy is imported here.
"""
