"""Build a small example of a user's own models and data, as they have them: a bare pretrained BERT directory, task models
saved by ``BertForSequenceClassification.save_pretrained`` (``bert.`` prefix, pooler, head), JSONL
split files, and a suite file naming them. Task models are briefly fine-tuned so merges differ
from the pretrained model in a way the metrics see.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "apple", "bread", "rice", "hammer", "saw", "drill",
         "the", "a", "and", "with", "near", "big", "small", "old"]
GROUPS = {"color": WORDS[0:3], "animal": WORDS[3:6], "food": WORDS[6:9], "tool": WORDS[9:12]}
TASKS = {  # task -> (labeller(words) -> label, number of labels)
    "has_animal": (lambda ws: int(any(w in GROUPS["animal"] for w in ws)), 2),
    "count_color": (lambda ws: min(sum(w in GROUPS["color"] for w in ws), 2), 3),
}


def _tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


def _rows(task: str, n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    labeller = TASKS[task][0]
    rows = []
    for _ in range(n):
        words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (int(torch.randint(3, 9, (1,), generator=g)),),
                                                       generator=g)]
        rows.append({"text": " ".join(words), "label": labeller(words)})
    return rows


def build_own_models(root: Path, *, steps: int = 30) -> Path:
    """Write the pretrained dir, task model dirs, JSONL splits and ``suite.yaml`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    base_dir = root / "models" / "base"
    base_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(base_dir)
    config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=20,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    base = transformers.BertModel(config).eval()
    base.save_pretrained(base_dir)
    suite = {"pretrained": "models/base", "tasks": {}}
    for t, (task, (_, n_labels)) in enumerate(TASKS.items()):
        data = root / "data" / task
        data.mkdir(parents=True, exist_ok=True)
        for s, (split, n) in enumerate({"train": 64, "validation": 40, "test": 48}.items()):
            with (data / f"{split}.jsonl").open("w") as fh:
                for row in _rows(task, n, seed=100 * t + s):
                    fh.write(json.dumps(row) + "\n")
        model = transformers.BertForSequenceClassification.from_pretrained(base_dir, num_labels=n_labels)
        model.config.id2label = {i: f"{task}-{i}" for i in range(n_labels)}
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
        _fine_tune(model, tokenizer, _rows(task, 64, seed=100 * t), steps=steps, seed=t)
        out = root / "models" / task
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        suite["tasks"][task] = {"model": f"models/{task}",
                                "data": {s: f"data/{task}/{s}.jsonl" for s in ("train", "validation", "test")},
                                "input": "text", "label": "label", "metric": "accuracy"}
    import yaml

    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return root / "suite.yaml"


def _fine_tune(model, tokenizer, rows: list[dict], *, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([r["label"] for r in rows])
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "work"
    print(build_own_models(target))
