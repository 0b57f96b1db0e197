"""`make demo`: the main job end to end on an embedded default.

1. A real `modmerge merge` of a small generated example (a tiny BERT base and three perturbed
   copies) with the bundled recipe ``examples/ties-tiny.yaml``, inspected and loaded back with
   transformers.
2. The MERGE offline stage on the synthetic ``tiny`` zoo (built in seconds): static baselines,
   then a budget-limited surrogate-assisted search, printing the Table I-style summary.

Routing, the expert library and serving (the on-demand stage) are not built yet; when they are,
the demo will run on the ``vision`` zoo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from click.testing import CliRunner

EXAMPLE_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "ties-tiny.yaml"


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


def main() -> int:
    from modmerge.cli import main as cli

    root = Path(os.environ.get("MODMERGE_DEMO_DIR", Path.home() / ".cache" / "modmerge" / "demo"))
    build_tiny_example(root / "tiny")
    runner = CliRunner()
    # the bundled recipe names the default demo directory; point it at the one in use
    recipe = root / "ties-tiny.yaml"
    recipe.write_text(EXAMPLE_RECIPE.read_text().replace("~/.cache/modmerge/demo", str(root)))
    steps = [
        ["inspect", str(root / "tiny" / "base")],
        ["merge", str(recipe), str(root / "merged"), "--overwrite"],
        ["inspect", str(root / "merged"), "--granularity", "layer"],
    ]
    for args in steps:
        print(f"$ modmerge {' '.join(args)}", flush=True)
        result = runner.invoke(cli, args, catch_exceptions=False)
        print(result.output, end="")
        if result.exit_code != 0:
            return result.exit_code
    import transformers

    model = transformers.AutoModel.from_pretrained(root / "merged")
    n = sum(p.numel() for p in model.parameters())
    print(f"transformers loaded {root / 'merged'}: {type(model).__name__}, {n:,} parameters")

    search_recipe = root / "search-tiny.yaml"
    search_recipe.write_text(
        "zoo: tiny\nmethod: task_arithmetic\nbudget: 40\npopulation: 10\n"
        "validation_limit: 128\nbaselines: baselines/baselines.json\n"
    )
    cache = ["--cache", str(root / "cache")]
    for args in (
        ["zoo", "build", "tiny", *cache],
        ["baselines", "tiny", "--out", str(root / "baselines"), "--points", "3", *cache],
        ["search", str(search_recipe), "--out", str(root / "search"), *cache],
    ):
        print(f"$ modmerge {' '.join(args)}", flush=True)
        result = runner.invoke(cli, args, catch_exceptions=False)
        print(result.output, end="")
        if result.exit_code != 0:
            return result.exit_code
    print(f"outputs: {root / 'merged'}, {root / 'baselines'}, {root / 'search'} (pareto.json, summary.md, pareto.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
