"""Reference-compatible entry point: `python train_llava_med.py --model_id ... --slake_root ...`.

Accepts the reference toolkit's flags; the work is done by `slakevqa train`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from slakevqa.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
