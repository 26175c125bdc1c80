"""Retrieval evaluation: metrics as pure functions, and the tools that run them.

- :mod:`common.metrics`, :mod:`common.answers`: Recall@k, all-relevant recall, MRR@k, nDCG@k, answer match;
- :mod:`eval.bootstrap`: 95% confidence intervals over queries;
- :mod:`common.fusion`: reciprocal rank fusion and score interpolation of a dense and a BM25 ranking
  (re-exported from :mod:`common.fusion`, which the indexer and server use too);
- :mod:`eval.evalset`, :mod:`eval.retrieve`, :mod:`eval.client`: data sets and runs (model, index,
  BM25, server);
- :mod:`eval.evaluate`, :mod:`eval.runner`, :mod:`eval.report`: metrics with CIs, the table and the
  JSON report behind ``dpr eval``;
- :mod:`bench.recall` (with :mod:`bench.recall_data`, :mod:`bench.plot`): the recall benchmark
  behind ``dpr bench recall``.

Nothing heavy is imported here: ``import common.metrics`` does not load torch.
"""
