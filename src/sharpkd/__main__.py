"""``python -m sharpkd ...`` is the ``sharpkd`` command; under torchrun it runs distributed training:
``torchrun --nproc_per_node=N -m sharpkd train teacher --data ... --out ...``."""

import sys

from sharpkd.cli import main

sys.exit(main())
