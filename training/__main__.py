"""`python -m training ...`: the training job (see training/job/train.py for the flags)."""

from __future__ import annotations

import sys

from training.job.train import main

if __name__ == "__main__":
    sys.exit(main())
