"""Retrieval evaluation: metrics as pure functions, and the tools that run them.

- :mod:`eval.metrics`, :mod:`eval.answers`: Recall@k, all-relevant recall, MRR@k, nDCG@k, answer match;
- :mod:`eval.bootstrap`: 95% confidence intervals over queries;
- :mod:`eval.fusion`: reciprocal rank fusion and score interpolation of a dense and a BM25 ranking
  (re-exported from :mod:`retriever.fusion`, which the indexer and server use too);
- :mod:`eval.evalset`, :mod:`eval.retrieve`, :mod:`eval.client`: data sets and runs (model, index,
  BM25, server);
- :mod:`eval.evaluate`, :mod:`eval.runner`, :mod:`eval.report`: metrics with CIs, the table and the
  JSON report behind ``dpr eval``;
- :mod:`eval.bench_recall` (with :mod:`eval.bench_data`, :mod:`eval.bench_plot`): the recall benchmark
  behind ``dpr bench recall``.

Nothing heavy is imported here: ``import eval.metrics`` does not load torch.
"""
