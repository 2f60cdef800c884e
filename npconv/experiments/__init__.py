"""Many runs: sweeps over grids of settings, studies and their reports, comparisons.

In dependency order:

================  ==========================================================
``results.py``    a sweep's ``results.csv`` and ``results.md``
``estimate.py``   how long a sweep will take
``executors.py``  where runs train: this process, local processes, a Dask cluster
``sweep.py``      grids, run keys, ``run_sweep``
``report/``       a study's ``REPORT.md``: statistics, verdicts, figures, Markdown
``study.py``      study files (TOML) and ``run_study``
``compare.py``    ``npconv compare``: runs side by side
================  ==========================================================
"""
