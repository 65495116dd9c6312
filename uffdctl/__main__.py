"""``python -m uffdctl`` is ``uffdctl``."""
import sys

from .cli import main

sys.exit(main())
