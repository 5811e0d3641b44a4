"""The CLI surface: help, version, list, eval, and one-line exit-2 errors for bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from zoft import __version__
from zoft.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["train", "--help"], ["eval", "-h"], ["list", "--help"],
                                  ["estimate-memory", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_help_has_panels():
    text = runner.invoke(app, ["train", "--steps", "2", "--help"], terminal_width=200).output
    for panel in ("Model", "Data", "ZO algorithm", "Training", "Checkpointing", "Hardware"):
        assert panel in text


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch():
    code = "import sys; from zoft.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "zoft", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_list_json_matches_registries():
    from zoft.algos import ALGORITHMS
    from zoft.tasks import TASKS

    result = runner.invoke(app, ["list", "--json"])
    data = json.loads(result.output)
    assert [a["name"] for a in data["algorithms"]] == list(ALGORITHMS)
    assert [t["name"] for t in data["tasks"]] == [*TASKS, "custom"]
    assert any(r["path"].endswith(".yaml") for r in data["recipes"])
    assert all(r["description"] for r in data["recipes"])


def test_list_gives_state_bytes_on_a_model_equal_to_the_real_optimizers(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    from zoft.algos import ALGORITHMS, trainable_parameters

    result = runner.invoke(app, ["list", "--model", str(tiny_model_dirs["llama"]), "--json"])
    assert result.exit_code == 0, result.output
    rows = {a["name"]: a for a in json.loads(result.output)["algorithms"]}
    named = trainable_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]))
    for name, cls in ALGORITHMS.items():
        assert rows[name]["state_bytes"] == cls(named).state_bytes(), name
    assert rows["mezo"]["state_bytes"] == 0
    assert rows["zo-adam"]["state_bytes"] == 2 * rows["zo-sgd-mmt"]["state_bytes"] == 8 * rows["mezo"]["trainable_params"]
    assert rows["tezo-adam"]["state_breakdown"]["moments"] < rows["zo-adam"]["state_bytes"] / 10


def test_list_with_a_missing_model_is_a_usage_error():
    result = runner.invoke(app, ["list", "--model", "./nowhere"])
    assert result.exit_code == 2 and "--model ./nowhere" in result.output


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("args,needle", [
    (["--task", "mnli9"], "--task mnli9"),
    (["--algo", "adamzo"], "--algo adamzo"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--eps", "0"], "--eps must be > 0"),
    (["--steps", "0"], "--steps must be > 0"),
    (["--task", "custom"], "--data-file"),
    (["--task", "custom", "--data-file", "nope.jsonl", "--verbalizer", "0=a,1=b"], "nope.jsonl"),
    (["--data-dir", "/no/such/dir"], "/no/such/dir"),
    (["--model", "./no-such-model"], "--model ./no-such-model"),
    (["--overwrite", "--resume"], "contradict"),
    (["--dtype", "float8"], "float8"),
    (["--hessian-smooth", "1e-4"], "--hessian-smooth applies to --algo hizoo"),
    (["--algo", "hizoo", "--hessian-smooth", "0"], "--allow-degenerate"),
    (["--algo", "hizoo", "--hessian-schedule", "5:1e-4"], "step 0"),
    (["--algo", "hizoo-l", "--hessian-estimator", "exact"], "code or paper"),
    (["--algo", "hizoo-l", "--hessian-estimator", "centred"], "centred applies to --algo hizoo"),
    (["--algo", "hizoo-l", "--hessian-warmup", "5"], "--hessian-warmup applies to --algo hizoo"),
    (["--algo", "hizoo", "--hessian-block", "64"], "--hessian-granularity block"),
    (["--algo", "hizoo", "--hessian-estimator", "centred", "--offload", "cpu"], "--offload cpu with --hessian-est"),
    (["--rank", "8"], "--rank applies to --algo tezo or tezo-m or tezo-adam, not mezo"),
    (["--algo", "tezo", "--momentum", "0.9"], "--momentum applies to --algo zo-sgd-mmt"),
    (["--algo", "tezo", "--rank", "0"], "--rank must be >= 1"),
    (["--algo", "tezo", "--rank-mode", "dynamic"], "fixed or spectrum"),
    (["--algo", "tezo-m", "--tezo-scale", "half"], "sqrt-r or none"),
    (["--algo", "tezo", "--rank-min", "9", "--rank-max", "8"], "--rank-min 9 exceeds --rank-max 8"),
    (["--algo", "zo-adam", "--beta2", "1"], "--beta2 must lie in [0, 1)"),
    (["--algo", "zo-sgd-mmt", "--momentum", "-0.1"], "--momentum must lie in [0, 1)"),
    (["--algo", "tezo-adam", "--adam-eps", "0"], "--adam-eps must be > 0"),
    (["--algo", "tezo", "--tezo-factors", "disk"], "cache or regenerate"),
    (["--noise", "uniform"], "--noise uniform: choose table or randn or philox"),
    (["--exact-bf16", "--stochastic-rounding"], "contradict"),
    (["--exact-bf16", "--dtype", "float32"], "--exact-bf16 applies to bfloat16 weights"),
    (["--exact-bf16", "--device", "cpu"], "--exact-bf16 applies to bfloat16 weights"),
    (["--noise", "philox", "--device", "cpu"], "--noise philox: the fused Triton kernel cannot run here"),
])
def test_bad_inputs_exit_2_with_one_line(args, needle, tmp_path):
    result = runner.invoke(app, ["train", "--steps", "2", *args, "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    if "error:" in result.output:
        assert len(result.output.strip().splitlines()) == 1


def test_custom_missing_column_lists_available(tmp_path):
    data = _write(tmp_path / "d.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    result = runner.invoke(app, ["train", "--steps", "2", "--task", "custom", "--data-file", str(data), "--label-field", "lbl",
                                 "--verbalizer", "0=bad,1=good", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "lbl" in result.output and "label, sentence" in result.output


def test_existing_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["train", "--steps", "2", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "o" / "keep.txt").read_text() == "precious"


def test_recipe_errors_name_the_key(tmp_path):
    bad_key = _write(tmp_path / "a.yaml", "lrr: 1e-6\n")
    result = runner.invoke(app, ["train", "--steps", "2", str(bad_key)])
    assert result.exit_code == 2 and "'lrr'" in result.output and "'lr'" in result.output
    bad_type = _write(tmp_path / "b.yaml", "steps: many\n")
    result = runner.invoke(app, ["train", "--steps", "2", str(bad_type)])
    assert result.exit_code == 2 and "'steps'" in result.output


def test_custom_task_trains_and_eval_scores_run_dir(tiny_model_dirs, tmp_path):
    rows = "".join(json.dumps({"text": f"movie number {i} was {'good' if i % 2 else 'bad'}", "y": i % 2}) + "\n"
                   for i in range(40))
    data = _write(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "custom", "--data-file", str(data), "--text-field", "text", "--label-field", "y",
        "--verbalizer", "0=bad,1=good", "--template", "{text}. Verdict:", "--model", str(tiny_model_dirs["opt"]),
        "--num-train", "16", "--num-dev", "8", "--num-eval", "8", "--batch-size", "4", "--steps", "2",
        "--lr", "1e-3", "--output-dir", str(out), "--json"])
    assert result.exit_code == 0, result.output
    (out / "eval.json").unlink()
    result = runner.invoke(app, ["eval", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "custom" and report["num_eval"] == 8 and report["checkpoint"].endswith("best")


def test_eval_zero_shot_of_a_base_model(tiny_model_dirs):
    result = runner.invoke(app, ["eval", str(tiny_model_dirs["llama"]), "--task", "sst2", "--data-dir", "builtin",
                                 "--num-eval", "12", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_eval"] == 12 and 0 <= report["eval_accuracy"] <= 1


_BAD_FILES = {
    "broken.jsonl": b'{"text": "fine", "label": 0}\n{"text": "broken", "label": \n',
    "ragged.csv": b"text,label\nfine,0\ntoo,many,cells\n",
    "header_only.csv": b"text,label\n",
    "latin1.jsonl": '{"text": "caf\xe9", "label": 0}\n'.encode("latin-1"),
    "labels.jsonl": b'{"text": "a", "label": 0}\n{"text": "b", "label": 7}\n',
    "ok.jsonl": b"".join(b'{"text": "row %d", "label": %d}\n' % (i, i % 2) for i in range(20)),
    "notes.txt": b"just text\n",
}


@pytest.mark.parametrize("extra,needle", [
    (["--data-file", "{broken.jsonl}", "--verbalizer", "0=a,1=b"], "line 2 is not valid JSON"),
    (["--data-file", "{ragged.csv}", "--verbalizer", "0=a,1=b"], "data row 2 (line 3) has more cells"),
    (["--data-file", "{header_only.csv}", "--verbalizer", "0=a,1=b"], "has no data rows"),
    (["--data-file", "{latin1.jsonl}", "--verbalizer", "0=a,1=b"], "not UTF-8 text"),
    (["--data-file", "{labels.jsonl}", "--verbalizer", "0=a,1=b"], "has label 7, which --verbalizer does not map"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--template", "{text} {mood}"],
     "--template field 'mood' is not a column"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--label-field", "y"], "available columns: label, text"),
    (["--data-file", "{notes.txt}", "--verbalizer", "0=a,1=b"], "unsupported file type '.txt'"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a"], "at least two labels"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--batch-size", "64", "--num-train", "12",
      "--num-dev", "4"], "--batch-size 64 exceeds the 12 train examples"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--num-dev", "4"], "no rows of"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--mode", "adapter"], "--mode adapter: unknown mode"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--max-bad-steps", "0"], "--max-bad-steps must be > 0"),
    (["--data-file", "{ok.jsonl}", "--verbalizer", "0=a,1=b", "--load-in-8bit", "--load-in-4bit"], "contradict"),
])
def test_hostile_custom_inputs_exit_2_and_write_nothing(extra, needle, tiny_model_dirs, tmp_path):
    for name, data in _BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    extra = [str(tmp_path / x[1:-1]) if x.startswith("{") and x.endswith("}") and "." in x else x for x in extra]
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--steps", "2", "--task", "custom", "--model", str(tiny_model_dirs["opt"]), "--device",
                                 "cpu", "--output-dir", str(out), *extra])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert needle in text
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    assert not out.exists()


def test_resume_with_another_algorithm_or_model_is_refused(tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--data-dir", "builtin", "--num-train", "16", "--num-dev", "4", "--num-eval", "4",
            "--batch-size", "4", "--steps", "2", "--eval-every", "0", "--save-every", "1", "--device", "cpu",
            "--output-dir", str(out)]
    assert runner.invoke(app, [*base, "--model", str(tiny_model_dirs["opt"])]).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for extra, needle in ((["--model", str(tiny_model_dirs["opt"]), "--algo", "zo-adam"], "algo ('mezo' in the run"),
                          (["--model", str(tiny_model_dirs["llama"])], "model (")):
        result = runner.invoke(app, [*base, *extra, "--resume", "--steps", "4"])
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_train_help_groups_each_algorithms_options_under_it():
    from zoft.algos import option_table

    text = runner.invoke(app, ["train", "--steps", "2", "--help"], env={"COLUMNS": "250"}).output  # rich truncates narrow columns
    for name, (option, algos) in option_table().items():
        assert f"Options of {', '.join(algos)}" in text, name
        assert option.flag in text
    assert "--no-exact-bf16" in text and "--no-stochastic-rounding" in text
    assert "zo-sgd-sign" in text and "--sign-mode" in text  # the registry fills the algorithm list and panels


def test_a_no_flag_overrides_a_recipes_true(tiny_model_dirs, tmp_path):
    import yaml

    recipe = _write(tmp_path / "r.yaml", "exact_bf16: true\ndtype: float32\n")
    common = ["--model", str(tiny_model_dirs["llama"]), "--data-dir", "builtin", "--num-train", "8", "--num-dev",
              "4", "--num-eval", "4", "--batch-size", "4", "--steps", "1", "--eval-every", "0", "--device", "cpu"]
    refused = runner.invoke(app, ["train", "--steps", "2", str(recipe), *common, "--output-dir", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--exact-bf16 applies to bfloat16 weights" in refused.output
    result = runner.invoke(app, ["train", "--steps", "2", str(recipe), *common, "--no-exact-bf16", "--output-dir", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["exact_bf16"] is False


def test_estimate_memory_takes_the_algorithms_options(tiny_model_dirs):
    path = str(tiny_model_dirs["llama"])
    small, large = (json.loads(runner.invoke(app, ["estimate-memory", path, "--algo", "tezo-adam", "--rank", r,
                                                   "--json"]).output) for r in ("2", "8"))
    assert small["options"]["rank"] == 2 and large["options"]["rank"] == 8
    assert small["components"]["optimizer state"] < large["components"]["optimizer state"]
    bad = runner.invoke(app, ["estimate-memory", path, "--algo", "zo-sgd-sign", "--sign-mode", "both"])
    assert bad.exit_code == 2 and "--sign-mode both: choose scalar or elementwise" in bad.output


def test_the_summary_title_names_an_adapter_mode(monkeypatch):
    from rich.console import Console

    import zoft.cli

    summary = {"zero_shot": {}, "metric": "accuracy", "config": {"algo": "mezo", "task": "sst2", "mode": "lora"},
               "output_dir": "runs/x", "elapsed_s": 3.0, "best_step": 4, "best_dev_accuracy": 0.7,
               "eval": {"eval_accuracy": 0.6}}
    console = Console(record=True, width=200)
    monkeypatch.setattr(zoft.cli, "out", console)
    zoft.cli._print_summary(summary)
    assert "zoft mezo (lora) on sst2" in console.export_text()


@pytest.mark.parametrize("args,needle", [
    ([], "--steps not given: on a CPU, MeZO's 20,000 steps would take many hours; pass --steps N"),
    (["--steps", "2", "--task", "sst-2"], "--task sst-2: unknown task (did you mean sst2?)"),
    (["--steps", "2", "--mode", "lore"], "--mode lore: unknown mode (did you mean lora?)"),
    (["--steps", "2", "--algo", "mezzo"], "--algo mezzo: unknown algorithm (did you mean mezo?)"),
])
def test_a_newcomers_first_commands_get_one_line_that_says_what_to_do(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--device", "cpu", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_algorithm_names_take_any_case_and_underscores():
    from zoft.algos import TeZOAdam, get_algorithm

    assert get_algorithm("TeZO-Adam") is get_algorithm("tezo_adam") is TeZOAdam


def test_env_reports_what_a_bug_report_needs():
    import torch

    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["packages"]["torch"] == torch.__version__ and data["packages"]["transformers"]
    assert data["cuda"]["available"] == torch.cuda.is_available() and "cache_dir" in data
    table = runner.invoke(app, ["env"])
    assert table.exit_code == 0 and "bitsandbytes" in table.output and "cache dir" in table.output
