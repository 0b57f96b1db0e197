"""`make demo`: the whole MERGE pipeline end to end on the ``vision`` zoo.

0. A real `modmerge merge` of a small generated example (a tiny BERT base and three perturbed
   copies) with the bundled recipe ``examples/ties-tiny.yaml`` (seconds).
1. `modmerge zoo build vision`: the self-pretrained ViT and its 7 fine-tuned task models
   (cached; ~5-10 minutes the first time on 2 cores).
2. `modmerge baselines vision`: every static baseline, tuned on a small validation subset.
3. `modmerge search`: MERGE-TA's surrogate-assisted NSGA-II with a reduced budget (40 real
   evaluations, population 10, 100 validation examples per task).
4. `modmerge library build`: the Pareto set's modules stored once, with the task router.
5. `modmerge evaluate`: routed prediction on the test splits at three budgets along the front.
6. `modmerge predict` on PNG files of test images, the way a user calls it.

Everything lands under ``$MODMERGE_DEMO_DIR`` (default ``~/.cache/modmerge/demo``); the zoo under
the usual cache (``$MODMERGE_CACHE``). Every step is resumable: a second `make demo` reuses the
zoo and redoes the rest in a few minutes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from click.testing import CliRunner

EXAMPLE_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "ties-tiny.yaml"
SEARCH_RECIPE = """\
# MERGE-TA on the vision zoo with a demo-sized budget (the paper's default is 300 evaluations).
zoo: vision
method: task_arithmetic
parameters: {scaling: 0.2}
quantization: {bits: 8, granularity: tensor, mode: conditional}
granularity: component
budget: 40
population: 10
validation_limit: 100
test_limit: 500
baselines: BASELINES
"""
PNG_PER_TASK = 5


def build_tiny_example(root: Path, n_tasks: int = 3, seed: int = 0) -> Path:
    """Write ``root/base`` and ``root/task{i}``: a tiny BERT and perturbed copies (idempotent)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    if (root / "DONE").exists():
        return root
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(root / "base")
    weights = load_file(root / "base" / "model.safetensors")
    for t in range(n_tasks):
        gen = torch.Generator().manual_seed(seed + 1 + t)
        out = root / f"task{t}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text((root / "base" / "config.json").read_text())
        noisy = {k: (v + 0.01 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in weights.items()}
        save_file(noisy, out / "model.safetensors", metadata={"format": "pt"})
    (root / "DONE").write_text("ok")
    return root


def write_png_inputs(zoo, out: Path, per_task: int = PNG_PER_TASK) -> Path:
    """PNG files of the first test images of each task and an ``inputs.jsonl`` naming them."""
    import torch
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for task in zoo.tasks:
        test = zoo.task_data(task)["test"]
        for i in range(per_task):
            path = out / f"{task}-{i}.png"
            pixels = (test["inputs"][i] * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # stored in [0, 1]
            Image.fromarray(pixels).save(path)
            # the id carries the true task and label, so predictions.jsonl can be checked by eye
            lines.append(json.dumps({"image": path.name, "id": f"{task}-{i} (label {int(test['labels'][i])})"}))
    (out / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    return out / "inputs.jsonl"


def _run(runner: CliRunner, cli, args: list[str]) -> int:
    print(f"\n$ modmerge {' '.join(args)}", flush=True)
    started = time.perf_counter()
    result = runner.invoke(cli, args, catch_exceptions=False)
    print(result.output, end="")
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    return result.exit_code


def main() -> int:
    from modmerge.cli import main as cli

    started = time.perf_counter()
    root = Path(os.environ.get("MODMERGE_DEMO_DIR", Path.home() / ".cache" / "modmerge" / "demo"))
    runner = CliRunner()
    build_tiny_example(root / "tiny")
    recipe = root / "ties-tiny.yaml"
    # the bundled recipe names the default demo directory; point it at the one in use
    recipe.write_text(EXAMPLE_RECIPE.read_text().replace("~/.cache/modmerge/demo", str(root)))
    # the demo's own folder: --force also replaces a merge written before outputs were marked
    if _run(runner, cli, ["merge", str(recipe), str(root / "merged"), "--force"]):
        return 1

    search_recipe = root / "search-vision.yaml"
    search_recipe.write_text(SEARCH_RECIPE.replace("BASELINES", str(root / "baselines" / "baselines.json")))
    steps = [
        ["zoo", "build", "vision"],
        ["baselines", "vision", "--out", str(root / "baselines"), "--val-limit", "100", "--test-limit", "500",
         "--points", "2"],
        ["search", str(search_recipe), "--out", str(root / "search"), "--overwrite"],  # a rerun starts afresh
        # router features from the pretrained body's first 2 layers: same routing accuracy here, far cheaper
        ["library", "build", str(root / "search"), str(root / "library"), "--router-per-task", "500",
         "--router-test-limit", "500", "--router-feature-layers", "2"],
        ["library", "ls", str(root / "library")],
        ["evaluate", str(root / "library"), "--limit", "500", "--out", str(root / "budgets.json")],
    ]
    for args in steps:
        if _run(runner, cli, args):
            return 1

    from modmerge.zoo.store import ZooStore

    inputs = write_png_inputs(ZooStore.default().load("vision"), root / "inputs")
    if _run(runner, cli, ["predict", str(root / "library"), "--budget", "1.0", "--input", str(inputs),
                          "--output", str(root / "predictions.jsonl")]):
        return 1
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min. Outputs under {root}:")
    print(f"  baselines/baselines.md   the static baselines (Table IV shape)\n"
          f"  search/summary.md        MERGE-TA's representatives G1-G3 and the front (pareto.png)\n"
          f"  library/                 the expert library (`modmerge library ls {root / 'library'}`)\n"
          f"  budgets.json             the budget table printed above\n"
          f"  predictions.jsonl        routed predictions for inputs/inputs.jsonl (PNG test images)\n"
          f"The vision backbone is a ViT pretrained INSIDE this project (no public checkpoint offline).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
