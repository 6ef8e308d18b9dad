import sys

from tuner.bench.cli import main

sys.exit(main())
