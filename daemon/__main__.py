import sys

from stagewatch.daemon.cli import main

sys.exit(main())
