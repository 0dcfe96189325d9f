"""Copy a trained adapter (adapter_config.json, bf16 safetensors, padellm.json) into the package."""
import shutil
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
if not (src / "adapter_config.json").is_file() or not (src / "padellm.json").is_file():
    sys.exit(f"{src} is not a trained adapter folder (adapter_config.json and padellm.json expected)")
if dst.exists():
    shutil.rmtree(dst)
dst.mkdir(parents=True)
for name in ("adapter_config.json", "adapter_model.safetensors", "padellm.json"):
    shutil.copy2(src / name, dst / name)
print(f"{src} -> {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 1e6:.1f} MB)")
print("new weights: rerun project/scripts/int8_calibrate.py for dtype int8's maxima (int8_maxima.safetensors)")
