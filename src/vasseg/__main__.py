"""``python -m vasseg ...`` (what ``torchrun`` launches) runs the same CLI as ``vasseg``."""

import sys

from vasseg.cli import main

sys.exit(main())
