"""``python -m glmft_client`` runs the command line."""

import sys

from glmft_client.cli import main

sys.exit(main())
