"""`torchrun --nproc-per-node N -m executor plan.json --steps 5 --report run.json` (see executor.run)."""
import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
