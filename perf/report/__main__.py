"""``python -m perf.report RECORDS_DIR``: the report of a run's records (``perf.report.report``)."""

from perf.report.report import main

raise SystemExit(main())
