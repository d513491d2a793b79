"""`python -m voxfast` runs the CLI (also the entry point for `torchrun -m voxfast`)."""

import sys

from voxfast.cli import main

sys.exit(main())
