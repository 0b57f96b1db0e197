"""Every `modmerge` command shown in README.md, run on the `tiny` zoo, so none breaks unseen.

The commands run as README.md shows them, with tiny sizes: one baselines report, one search and
one library are shared by the cases that read them. README.md's code blocks are parsed, and a
README command (or one of its options) without a case here fails
:func:`test_every_readme_command_has_a_smoke_case`. Only `serve` (a child process) is `slow`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from battery_support import REPO, invoke, spawn

from modmerge.cli import main
from modmerge.library import Library
from modmerge.zoo.suite_export import write_suite

README = REPO / "README.md"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TASK = "has_color"

# One smoke case per README use, as `modmerge` arguments; {work}, {cache}, {models}, {port} are
# filled in by the fixtures. Sizes are tiny; the options README.md shows are all here.
CASES: dict[str, list[str]] = {
    "zoo list": ["zoo", "list", "--cache", "{cache}"],
    "zoo build": ["zoo", "build", "tiny", "--cache", "{cache}"],
    "suite check": ["suite", "check", "{suite}"],
    "baselines": ["baselines", "tiny", "--out", "{work}/tiny-base", "--cache", "{cache}", "--methods",
                  "Individual,Task Arithmetic", "--val-limit", "16", "--test-limit", "16", "--points", "2"],
    "search": ["search", "{work}/search.yaml", "--out", "{work}/run", "--cache", "{cache}"],
    "library build": ["library", "build", "{work}/run", "{work}/lib", "--cache", "{cache}", "--router-per-task", "16",
                      "--router-epochs", "1", "--router-test-limit", "16"],
    "library ls": ["library", "ls", "{work}/lib"],
    "library verify": ["library", "verify", "{work}/lib"],
    "evaluate": ["evaluate", "{work}/lib", "--budget", "0.5", "--budget", "1.0", "--limit", "16", "--cache", "{cache}"],
    "predict": ["predict", "{work}/lib", "--budget", "1.0", "--input", "{work}/in.jsonl", "--output",
                "{work}/out.jsonl"],
    "export": ["export", "{work}/lib", "--config", "c0", "--task", TASK, "{work}/exported"],
    "serve": ["serve", "{work}/lib", "--budget", "1.0", "--port", "{port}"],
    "merge": ["merge", "{models}/ties-bert.yaml", "{work}/merged"],
    "merge --dry-run": ["merge", "{models}/ties-bert.yaml", "{work}/dry", "--dry-run"],
    "inspect": ["inspect", "{models}/base"],
    "inspect --json": ["inspect", "{models}/base", "--json"],
    "methods": ["methods"],
    "methods NAME": ["methods", "ties"],
    "extract-lora": ["extract-lora", "{models}/base", "{models}/task0", "{work}/task0-lora", "--rank", "16"],
    "extract-lora --energy": ["extract-lora", "{models}/base", "{models}/task0", "{work}/task0-lora", "--rank", "64",
                              "--energy", "0.9", "--dtype", "bfloat16", "--overwrite"],
}


def command_path(args: list[str]) -> str:
    """`zoo list`, `library build`, `merge`: the (sub)command ``args`` start with."""
    command = main.commands.get(args[0])
    return " ".join(args[:2]) if isinstance(command, click.Group) else args[0]


def readme_commands() -> list[list[str]]:
    """The arguments of every `modmerge ...` line in README.md's code blocks (comments dropped)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = [shlex.split(line, comments=True) for block in blocks for line in block.splitlines()]
    return [words[1:] for words in lines if words[:1] == ["modmerge"]]


def test_every_readme_command_has_a_smoke_case():
    commands = readme_commands()
    assert len(commands) >= 15, commands  # the parse found README's command blocks
    covered: dict[str, set[str]] = {}
    for args in CASES.values():
        covered.setdefault(command_path(args), set()).update(a for a in args if a.startswith("--"))
    for args in commands:
        path = command_path(args)
        assert args[0] in main.commands, f"README.md shows `modmerge {' '.join(args)}`, which is no command"
        assert path in covered, f"README.md's `modmerge {path}` has no smoke case in CASES"
        options = set(re.findall(r"--[a-z][a-z-]*", " ".join(args)))
        assert options <= covered[path], f"`modmerge {path}` options {sorted(options - covered[path])} untested"


def test_the_readme_merge_recipe_is_the_example_file():
    """README.md shows examples/ties-bert.yaml inline; the file and the text must not drift apart."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    shown = next(b for b in blocks if b.startswith("# examples/"))
    name = shown.splitlines()[0].removeprefix("# ")
    assert yaml.safe_load(shown) == yaml.safe_load((REPO / name).read_text())


def _args(case: str, paths: dict[str, Path | int]) -> list[str]:
    return [a.format(**paths) for a in CASES[case]]


def run(case: str, paths: dict[str, Path | int]) -> str:
    """Run one smoke case in this process; it must succeed. Returns its output."""
    result = invoke(_args(case, paths))
    assert result.exit_code == 0, f"modmerge {' '.join(_args(case, paths))}\n{result.output}\n{result.exception!r}"
    return result.output


def _readme_search_recipe(baselines: Path) -> dict:
    """README.md's search recipe, cut to the tiny zoo and a tiny budget."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    recipe = yaml.safe_load(next(b for b in blocks if b.startswith("zoo:")))
    return {**recipe, "zoo": "tiny", "budget": 4, "population": 2, "runs": 1, "validation_limit": 16,
            "test_limit": 16, "baselines": str(baselines)}


def _model_dirs(zoo, root: Path) -> Path:
    """The examples' ./base, ./task0.. from the tiny zoo, its PEFT adapters, and the recipes beside them."""
    import peft
    import torch
    import transformers

    shutil.copytree(zoo.root / zoo.manifest.backbone.path, root / "base")
    for i, task in enumerate(zoo.tasks[:3]):
        shutil.copytree(zoo.root / zoo.entry(task).body, root / f"task{i}")
    torch.manual_seed(0)
    for name, config in (("lora-task0", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])),
                         ("ia3-task1", peft.IA3Config(target_modules=["key", "value"], feedforward_modules=[]))):
        adapted = peft.get_peft_model(transformers.BertModel.from_pretrained(root / "base"), config)
        with torch.no_grad():  # fresh adapters are identities
            for param_name, param in adapted.named_parameters():
                if "lora_" in param_name or "ia3_" in param_name:
                    param.add_(0.05 * torch.randn(param.shape))
        adapted.save_pretrained(root / name)
    for example in EXAMPLES:  # paths are relative to the recipe; the demo's recipe names the demo's folder
        text = example.read_text().replace("~/.cache/modmerge/demo/tiny", str(root))
        (root / example.name).write_text(text)
    return root


@pytest.fixture(scope="module")
def paths(tiny_zoo, tmp_path_factory) -> dict[str, Path | int]:
    work = tmp_path_factory.mktemp("readme")
    (work / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in (
        {"text": "the red cat is near my bread", "id": "routed"},
        {"text": "a hammer and a saw", "task": TASK, "id": "oracle"},
    )))
    with socket.socket() as sock:  # a free port for serve (a race with other processes is unlikely)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    suite = tiny_zoo.root / "suite" / "suite.yaml"
    if not suite.is_file():  # the session's tiny zoo is built without the registry's suite export
        write_suite(tiny_zoo)
    return {"work": work, "cache": tiny_zoo.root.parent.parent, "port": port, "suite": suite,
            "models": _model_dirs(tiny_zoo, tmp_path_factory.mktemp("readme_models"))}


@pytest.fixture(scope="module")
def search_run(paths) -> Path:
    run("baselines", paths)
    baselines = paths["work"] / "tiny-base" / "baselines.json"
    assert {row["name"] for row in json.loads(baselines.read_text())["methods"]} == {"Individual", "Task Arithmetic"}
    (paths["work"] / "search.yaml").write_text(yaml.safe_dump(_readme_search_recipe(baselines)))
    output = run("search", paths)
    assert "MERGE-" in output and "wrote" in output
    return paths["work"] / "run"


@pytest.fixture(scope="module")
def library(paths, search_run) -> Library:
    output = run("library build", paths)
    assert "router: test accuracy" in output
    return Library.open(paths["work"] / "lib")


def test_zoo_list_and_build(paths, tiny_zoo):
    assert "tiny" in run("zoo list", paths)
    assert all(task in run("zoo build", paths) for task in tiny_zoo.tasks)  # already built: nothing to do


def test_suite_check(paths, tiny_zoo):
    output = run("suite check", paths)
    assert all(task in output for task in tiny_zoo.tasks)


def test_search_writes_the_readme_outputs(search_run):
    for name in ("pareto.json", "history.json", "summary.md", "pareto.png", "hypervolume.png"):
        assert (search_run / name).is_file(), name


def test_library_ls_and_verify(paths, library):
    assert all(c.id in run("library ls", paths) for c in library.configurations)
    assert f"ok: {library.blob_count} blobs verified" in run("library verify", paths)


def test_evaluate(paths, library):
    assert "routed P" in run("evaluate", paths)


def test_predict(paths, library):
    run("predict", paths)
    rows = [json.loads(line) for line in (paths["work"] / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["routed", "oracle"] and rows[1]["task"] == TASK


def test_export(paths, library):
    run("export", paths)
    assert (paths["work"] / "exported" / "config.json").is_file()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_merge_every_example(paths, example):
    out = paths["work"] / "merged-examples" / example.stem
    result = invoke(["merge", paths["models"] / example.name, out])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() or any(out.glob("model-*.safetensors"))


def test_merge_and_dry_run(paths):
    assert "wrote" in run("merge", paths)
    assert "weight_averaging" in run("merge --dry-run", paths) and not (paths["work"] / "dry").exists()


def test_inspect_and_methods(paths):
    assert "total" in run("inspect", paths)
    assert json.loads(run("inspect --json", paths))["architecture"] == "bert"
    assert "ties:" in run("methods", paths) and "density" in run("methods NAME", paths)


def test_extract_lora(paths):
    assert "relative Frobenius error" in run("extract-lora", paths)
    config = json.loads((paths["work"] / "task0-lora" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["peft_type"] == "LORA"
    assert "wrote" in run("extract-lora --energy", paths)  # --overwrite replaces the first
    config = json.loads((paths["work"] / "task0-lora" / "adapter_config.json").read_text())
    assert config["rank_pattern"] and config["r"] < 64


def _get(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def server(paths, library, tmp_path) -> Iterator[str]:
    """`modmerge serve` in a child process on 127.0.0.1; stopped with SIGINT (Ctrl-C) afterwards."""
    log = tmp_path / "serve.log"
    proc = spawn(_args("serve", paths), log)
    url = f"http://127.0.0.1:{paths['port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve not up after 120 s:\n{log.read_text()}"
            try:
                _get(f"{url}/healthz")
                break
            except OSError:
                time.sleep(0.2)
        yield url
        # Ctrl-C: uvicorn shuts down, then re-raises the interrupt, which click reports as
        # "Aborted!" with exit 1; what matters here is that it stops, promptly and cleanly
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # a child Python that imports torch, loads the library and shuts down: ~15 s on 2 cores
def test_serve_answers_a_bounded_request_then_stops(server, library):
    assert _get(f"{server}/healthz")["status"] == "ok"
    answer = _get(f"{server}/v1/predict", {"inputs": [{"text": "the red cat"}, {"text": "a saw"}]})
    assert answer["config"] == library.select(1.0).id and len(answer["outputs"]) == 2
