# SPDX-License-Identifier: AGPL-3.0-or-later
"""``python -m bench.network``: see :mod:`bench.network`."""

import sys

from bench.network.cli import main

if __name__ == "__main__":
    sys.exit(main())
