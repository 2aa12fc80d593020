"""Evaluation: ranking metrics, collapse diagnostics, content metrics, reports and plots."""
