"""``python -m raydistill.cli <stage> ...`` (same as the ``raydistill`` command)."""
import sys

from raydistill.cli.commands import main

sys.exit(main())
