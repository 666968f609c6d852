"""Evaluation: held-out MI bound, verifiable principles, degeneration guard, judge win rates, GSM8K, reports.

The driver calls `runner.evaluate_iteration(...)` with any object that has the `policy.Policy` protocol.
"""
