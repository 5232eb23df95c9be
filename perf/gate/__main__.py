import sys

from perf.gate.upgrade import main

sys.exit(main())
