"""Reference-compatible entry point: `python slake_to_llava_sft.py --data_root DIR --output_dir OUT`.

Same flags as the reference toolkit's script (--data_root, --output_dir, --use_hf,
--mm_use_im_start_end); the work is done by `slakevqa convert-sft`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from slakevqa.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["convert-sft", *sys.argv[1:]]))
