"""The tail average of kept LoRA folders (``bat_app.train.tail_average``), after the training:
the LoRAs a ``shapes_personalize.py --keep-loras --save-every`` run kept at its last steps,
averaged exactly into one (rank n r, alpha n alpha), to judge without training again. The trainer
does the same in memory with ``TrainConfig.tail_average``.

    python scripts/shapes_step_average.py /tmp/l0 --steps 200 250 300 --out /tmp/l0-avg
    python scripts/shapes_personalize.py --judge /tmp/l0-avg --out /tmp/avg.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bat_app.export import DIFFUSERS_FILE
from bat_app.train.tail_average import average_lora, average_vectors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kept", type=Path, help="a shapes_personalize.py --keep-loras --save-every folder")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="the steps to average (the final one "
                   "is the folder itself)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    record = json.loads((args.kept / "record.json").read_text())
    final = record["summary"]["train"]["steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in record["subjects"]:
        folders = [args.kept / name if s == final else args.kept / name / "steps" / f"step-{s:06d}"
                   for s in args.steps]
        average_lora_folders(folders, args.out / name)
    record["summary"]["averaged_steps"] = args.steps
    (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", args.out)
    return 0


def average_lora_folders(folders: list[Path], out: Path) -> Path:
    """Write into ``out`` the mean of the diffusers LoRAs (and trigger embeddings) in ``folders``."""
    out.mkdir(parents=True, exist_ok=True)
    tensors, metas = [], []
    for folder in folders:
        with safe_open(str(folder / DIFFUSERS_FILE), "pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
            metas.append(f.metadata())
    n = len(folders)
    merged = average_lora(tensors)
    meta = json.loads(metas[0]["lora_adapter_metadata"])
    for key in [k for k in meta if k.endswith(".r")]:
        prefix = key[: -len("r")]
        meta[key] *= n
        meta[prefix + "lora_alpha"] = meta[prefix + "lora_alpha"] * n
    save_file(merged, out / DIFFUSERS_FILE, metadata={**metas[0], "lora_adapter_metadata": json.dumps(meta)})
    embeddings = sorted(folders[0].glob("*.safetensors"))
    for emb in [e for e in embeddings if e.name != DIFFUSERS_FILE and "kohya" not in e.name]:
        with safe_open(str(emb), "pt") as f:
            emb_meta = f.metadata()
            keys = list(f.keys())
        vectors = average_vectors([{k: _tensor(folder / emb.name, k) for k in keys} for folder in folders])
        save_file(vectors, out / emb.name, metadata=emb_meta)
    for extra in ("README.md",):
        if (folders[-1] / extra).is_file():
            shutil.copy(folders[-1] / extra, out / extra)
    return out


def _tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(key)


if __name__ == "__main__":
    raise SystemExit(main())
