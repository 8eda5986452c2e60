"""Reference-compatible entry point: `python eval_llava_med.py --model_id_or_ckpt ... --slake_root ...`.

Accepts the reference toolkit's flags; the work is done by `slakevqa eval`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from slakevqa.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["eval", *sys.argv[1:]]))
