"""``python -m lnorm.diagnose path/to/file.py:function``: see :mod:`lnorm.diagnose.cli`."""

import sys

from lnorm.diagnose.cli import main

sys.exit(main())
