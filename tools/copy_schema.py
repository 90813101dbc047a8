"""Copy the contracts' schema module into the Slicer module: ``python tools/copy_schema.py``.

The Slicer module runs in Slicer's Python without lnnode installed, so it carries a byte copy of
``src/lnnode/contracts/schema.py`` (the schemas, validators and the constants both sides must agree on)
as ``LymphNodeReviewLib/schema.py``; ``tests/slicer/test_slicer_lib.py`` fails while the two differ.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "lnnode" / "contracts" / "schema.py"
COPY = REPO / "slicer_module" / "LymphNodeReview" / "LymphNodeReviewLib" / "schema.py"

if __name__ == "__main__":
    shutil.copyfile(SOURCE, COPY)
    print(f"copied {SOURCE.relative_to(REPO)} to {COPY.relative_to(REPO)}")
