"""Offline evaluation of recommendations, in data-flow order.

- splits: cut an interaction log into train / valid / test (per-user time, global time,
  leave-last), optionally holding out cold items; written atomically with split.json.
- metrics: Recall, NDCG, MRR, Hit and Precision at K per test user (RecBole's definitions).
- evaluator: one run's recommendations against a test log: metrics, cold-start and
  history-length slices, coverage, popularity bias.
- compare: two runs per test user: deltas, paired bootstrap intervals, paired t-test.
- summary: the terminal tables; report: the self-contained HTML report.

Tested in tests/test_splits.py, tests/test_evaluation.py and tests/test_evaluate_cli.py.
"""
