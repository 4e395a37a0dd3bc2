"""The cluster examples: valid against their schemas (when the `examples` extra is installed),
and their batch commands parse into the shard they mean, under the scheduler's environment."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch.cli import build_parser
from batch.run.config import JobConfig, load_config

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).parent.parent / "examples"


def config_from(argv: list[str], environ: dict[str, str], tmp_path: Path) -> JobConfig:
    """What `python -m batch ARGV` would run with, its input replaced by an empty file."""
    args = vars(build_parser().parse_args(argv))
    assert args.pop("command") == "run"
    args.pop("verbose")
    args.pop("job_file")
    args["input"] = tmp_path / "in.jsonl"
    args["input"].touch()
    return load_config(args, environ)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_kubernetes_manifests_match_their_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate")
    for path in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        for doc in documents(path):
            validate.validate(doc, "1.30.0", strict=True)


def test_the_indexed_job_runs_one_shard_per_completion(tmp_path: Path) -> None:
    [job] = documents(EXAMPLES / "kubernetes" / "label-job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    last = str(spec["completions"] - 1)
    config = config_from(container["args"], {**env, "JOB_COMPLETION_INDEX": last}, tmp_path)
    assert config.sharding.shard == f"{last}/{spec['completions']}"
    assert len(config.serving.hosts) == 2


def test_the_slurm_script_runs_one_shard_per_array_task(tmp_path: Path) -> None:
    script = EXAMPLES / "slurm" / "label-array.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    first, last = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", text).groups())  # type: ignore[union-attr]
    [command] = [line for line in text.splitlines() if line.startswith("python -m batch run")]
    task = {
        "SLURM_ARRAY_TASK_ID": str(last),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_COUNT": str(last - first + 1),
        "OLLAMA_HOST": "127.0.0.1:11441",
    }
    argv = shlex.split(command.replace("$OLLAMA_HOST", task["OLLAMA_HOST"]))[3:]
    config = config_from(argv, task, tmp_path)
    assert config.sharding.shard == f"{last - first}/{last - first + 1}"
    assert config.serving.hosts == ("http://127.0.0.1:11441#4",)


def test_the_github_workflow_matches_its_schema_and_covers_every_shard(tmp_path: Path) -> None:
    path = EXAMPLES / "github-actions" / "label.yml"
    pytest.importorskip("check_jsonschema")
    schema = ["--builtin-schema", "vendor.github-workflows"]
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *schema, str(path)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    workflow = documents(path)[0]
    shards = workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    [step] = [s for s in workflow["jobs"]["shard"]["steps"] if "batch run" in s.get("run", "")]
    for k in shards:
        command = step["run"].replace("${{ matrix.shard }}", str(k))
        config = config_from(shlex.split(command)[3:], {}, tmp_path)
        assert config.sharding.shard == f"{k}/{len(shards)}"


def test_the_nightly_cronjob_pushes_its_metrics_and_logs_json(tmp_path: Path) -> None:
    [cron] = documents(EXAMPLES / "kubernetes" / "label-cronjob.yaml")
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config = config_from(container["args"], env, tmp_path)
    assert config.observe.pushgateway == "http://pushgateway.monitoring:9091"
    assert config.observe.metrics_job == "nightly-labels"
    assert config.observe.log_format == "json"


def test_the_systemd_service_writes_a_textfile_and_its_timer_runs_nightly(tmp_path: Path) -> None:
    service = (EXAMPLES / "systemd" / "batch-label.service").read_text()
    timer = (EXAMPLES / "systemd" / "batch-label.timer").read_text()
    assert "OnCalendar=*-*-* 01:30:00" in timer and "Persistent=true" in timer
    [start] = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(start.removeprefix("ExecStart="))
    assert argv[1:3] == ["-m", "batch"]
    config = config_from(argv[3:], {}, tmp_path)
    assert config.observe.metrics_textfile == Path("/var/lib/prometheus/node-exporter/batch.prom")
    assert "SuccessExitStatus=1 3" in service  # rows failed, a budget met: results, not faults


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="Debian's promtool (prometheus) is not installed"
)


@needs_promtool
def test_the_alerting_rules_pass_promtool_check_and_their_unit_tests() -> None:
    rules = EXAMPLES / "prometheus"
    for command in (
        ["check", "rules", "batch-alerts.yml"],
        ["test", "rules", "batch-alerts.test.yml"],
    ):
        checked = subprocess.run(["promtool", *command], cwd=rules, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout


@needs_promtool
def test_the_alerting_rules_read_only_metrics_batch_exports(tmp_path: Path) -> None:
    """Every metric an alert reads is one batch writes (a renamed metric would silence it)."""
    from batch.testing import FakeOllama
    from tests.conftest import run_cli, write_rows

    rules = (EXAMPLES / "prometheus" / "batch-alerts.yml").read_text()
    named = set(re.findall(r"\b(batch_[a-z_]+)\b", rules))
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    rows = write_rows(tmp_path / "in.jsonl", 2)
    textfile = tmp_path / "batch.prom"
    with FakeOllama(models=["m"]) as server:
        assert run_cli(rows, server.url, "--metrics-textfile", str(textfile)) == 0
    written = set(re.findall(r"^(batch_[a-z_]+)", textfile.read_text(), re.MULTILINE))
    assert named and named <= written, named - written
