"""``python -m orchestrator.compare ...``"""

import sys

from orchestrator import cli
from orchestrator.compare.cli import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
