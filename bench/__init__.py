"""Benchmarks, each run as a script.

A package so type checkers tell bench.workspace apart from the workspace app.
"""
