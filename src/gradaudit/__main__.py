"""``python -m gradaudit``: the ``gradaudit`` command."""

import sys

from gradaudit.cmdline import main

sys.exit(main())
