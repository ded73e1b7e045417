"""Benchmark analysis: eval curves of many runs, bootstrap intervals, IQM, performance profiles
(``curves``), and bundled published reference curves (``reference``)."""
