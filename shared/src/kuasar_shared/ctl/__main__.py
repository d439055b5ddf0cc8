"""``python -m kuasar_shared.ctl`` runs kuasar-ctl."""
import sys

from kuasar_shared.ctl.cli import main

sys.exit(main())
