"""`yard jobs ...` and `yard worker` in-process: submit, ls, show, logs -f, cancel, the Kubernetes manifest,
and one-line errors for bad input that change nothing."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from modelyard.config import load_settings
from modelyard.core import Platform, create_token
from modelyard.core._models import AuditRecord, Job
from modelyard.errors import ConfigError
from modelyard.testing import JOB_RECIPE, FakeCluster, Yard, actor
from modelyard.training import _jobs, _k8s

RECIPE = JOB_RECIPE
# A real but trivial job process (the queue machinery is what is tested here, not `yard train`).
PRINTER = """
import sys, time
for i in range(int(sys.argv[1])):
    print('line', i, flush=True)
    time.sleep(0.03)
"""


@pytest.fixture
def home_with_data(platform: Platform, tmp_path: Path) -> Platform:
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    write_dataset(tmp_path / "normalise", 40, seed=1)
    add_version(platform, platform.context(), tmp_path / "normalise", "normalise")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return platform


def _jobs_count(platform: Platform) -> int:
    with platform.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_submit_ls_show_cancel(yard: Yard, home_with_data: Platform) -> None:
    r = yard(
        "jobs", "submit", "recipe.yaml", "--cpus", "2", "--gpus", "0", "--memory", "8G", "--priority", "high"
    )
    assert r.code == 0, r.err
    job_id = int(r.out.strip())
    assert f"job {job_id} queued: train recipe.yaml (priority high)" in r.err
    r = yard("jobs", "submit", "recipe.yaml", "-c", "tune", "--max-retries", "0", "--", "--trials", "4")
    assert r.code == 0, r.err
    second = int(r.out.strip())
    listed = yard("jobs", "ls", "--json").json()
    assert [j["id"] for j in listed] == [second, job_id]
    first = listed[1]
    assert (first["status"], first["priority"], first["cpus"], first["memory"]) == (
        "QUEUED",
        "high",
        2.0,
        "8G",
    )
    assert listed[0]["args"] == ["--trials", "4"] and listed[0]["command"] == "tune"
    assert listed[0]["max_retries"] == 0
    table = yard("jobs", "ls")
    assert table.code == 0 and "recipe.yaml" in table.out and "2/0/8G" in table.out
    shown = yard("jobs", "show", str(job_id), "--json").json()
    assert shown["submitted_by"] and "recipe" not in shown
    assert yard("jobs", "show", str(job_id)).code == 0
    r = yard("jobs", "cancel", str(job_id))
    assert r.code == 0 and f"job {job_id} cancelled" in r.out
    assert [j["id"] for j in yard("jobs", "ls", "-s", "cancelled", "--json").json()] == [job_id]
    r = yard("jobs", "cancel", str(job_id))
    assert r.code == 2 and "already CANCELLED" in r.error


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["jobs", "submit", "recipe.yaml", "--memory", "8X"], 2, "memory '8X' is not a size"),
        (["jobs", "submit", "recipe.yaml", "--memory", "-1G"], 2, "is not a size"),
        (["jobs", "submit", "recipe.yaml", "--cpus", "-1"], 2, "cpus -1.0 is out of range"),
        (["jobs", "submit", "recipe.yaml", "--cpus", "two"], 2, "Invalid value for '--cpus'"),
        (["jobs", "submit", "recipe.yaml", "--gpus", "-2"], 2, "gpus -2 is out of range"),
        (["jobs", "submit", "recipe.yaml", "--priority", "highest"], 2, "unknown priority 'highest'"),
        (["jobs", "submit", "recipe.yaml", "-c", "shell"], 2, "unknown job command 'shell'"),
        (["jobs", "submit", "recipe.yaml", "--backend", "slurm"], 2, "unknown backend 'slurm'"),
        (["jobs", "submit", "recipe.yaml", "--dry-run"], 2, "--dry-run is an option of --backend kubernetes"),
        (["jobs", "submit", "nope.yaml"], 2, "recipe 'nope.yaml' not found"),
        (["jobs", "submit", "bad.yaml"], 2, "bogus"),
        (["jobs", "submit", "nodata.yaml"], 1, "normalise@9"),
        (["jobs", "show", "99"], 1, "job 99 not found in project 'default'"),
        (["jobs", "show", "abc"], 2, "'abc' is not a job id"),
        (["jobs", "cancel", "\u00b2"], 2, "'\u00b2' is not a job id"),
        (["jobs", "submit", "recipe.yaml", "--memory", "9" * 400], 2, "is out of range"),
        (["jobs", "cancel", "99"], 1, "job 99 not found"),
        (["jobs", "logs", "99"], 1, "job 99 not found"),
        (["jobs", "ls", "--status", "DONE"], 2, "unknown job status 'DONE'"),
        (["worker", "--cpus", "-1"], 2, "worker cpus -1.0 is out of range"),
        (["worker", "--memory", "lots"], 2, "is not a size"),
        (["worker", "--max-jobs", "0"], 2, "max jobs 0"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    yard: Yard, home_with_data: Platform, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "bad.yaml").write_text(RECIPE + "bogus: 1\n")
    (tmp_path / "nodata.yaml").write_text(RECIPE.replace("normalise@1", "normalise@9"))
    r = yard(*args)
    assert r.code == code, r.err
    assert message in r.error
    assert _jobs_count(home_with_data) == 0


def test_roles_through_tokens(yard: Yard, home_with_data: Platform) -> None:
    admin = home_with_data.context()
    actor(home_with_data, admin, "vic", "viewer")
    _, token = create_token(home_with_data, admin, "vic")
    r = yard("jobs", "submit", "recipe.yaml", env={"YARD_TOKEN": token})
    assert r.code == 1 and "needs the scientist role" in r.error
    r = yard("worker", "--exit-when-idle", env={"YARD_TOKEN": token})
    assert r.code == 1 and "needs the engineer role" in r.error
    assert yard("jobs", "ls", env={"YARD_TOKEN": token}).code == 0
    assert _jobs_count(home_with_data) == 0


def test_worker_exits_when_idle(yard: Yard, home_with_data: Platform) -> None:
    r = yard("worker", "--cpus", "2", "--gpus", "0", "--memory", "4G", "--exit-when-idle", "--name", "w1")
    assert r.code == 0, r.err
    assert "worker w1: project default, 2 cpus, 0 gpus, 4G memory" in r.err
    assert "stopped after 0 job(s)" in r.err


def test_a_recipe_name_cannot_send_escape_sequences_to_the_workers_terminal(
    yard: Yard, home_with_data: Platform, tmp_path: Path
) -> None:
    """Any scientist names the recipe file; the worker's operator reads it in the worker's log lines. An
    OSC sequence there set their terminal's title (or clipboard) and ANSI ones recoloured the log."""
    evil = "x\x1b]0;PWNED\x07\x1b[31mred.yaml"
    (tmp_path / evil).write_text(RECIPE)
    r = yard("jobs", "submit", evil, "--", "--help")  # `yard train FILE --help`: a quick real job
    assert r.code == 0, r.err
    assert "\x1b" not in r.err and "x\\x1b]0;PWNED\\x07\\x1b[31mred.yaml" in r.err
    r = yard("worker", "--cpus", "1", "--gpus", "0", "--exit-when-idle")
    assert r.code == 0, r.err
    assert "\x1b" not in r.err and "\x07" not in r.err
    assert "started train x\\x1b]0;PWNED\\x07\\x1b[31mred.yaml" in r.err
    r = yard("jobs", "ls")
    assert "\x1b" not in r.out


def test_logs_follow_prints_everything_to_the_end(yard: Yard, home_with_data: Platform) -> None:
    platform = home_with_data
    job_id = int(yard("jobs", "submit", "recipe.yaml").out)
    fast = Platform(platform.settings.model_copy(update={"job_poll_s": 0.1, "job_heartbeat_s": 0.2}))
    worker = _jobs.Worker(
        fast,
        fast.context(),
        cpus=1,
        memory="1G",
        exit_when_idle=True,
        executor=lambda job, recipe: [sys.executable, "-c", PRINTER, "40"],
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        r = yard("jobs", "logs", str(job_id), "-f")
    finally:
        thread.join(timeout=60)
    assert r.code == 0, r.err
    assert r.out.splitlines() == [f"line {i}" for i in range(40)]
    assert f"job {job_id} SUCCEEDED" in r.err
    again = yard("jobs", "logs", str(job_id))  # without -f: what is stored, at once
    assert again.out == r.out


# -- Kubernetes ---------------------------------------------------------------------------------------------
CLUSTER = [
    "--cluster-database-url",
    "postgresql+psycopg://yard:hunter2@db.internal:5432/yard?sslmode=require",
    "--cluster-artifact-uri",
    "s3://models/yard",
]


def _validate(manifest: dict[str, object]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    # strict: unknown fields are errors too. The schemas ship inside the package: nothing is downloaded.
    kv.validate(manifest, kv.latest_version(), strict=True)


def test_kubernetes_dry_run_manifest_is_a_valid_job_with_secrets_by_reference(
    yard: Yard, home_with_data: Platform, tmp_path: Path
) -> None:
    r = yard(
        "jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "--cpus", "2", "--gpus",
        "1", "--memory", "8G", "--priority", "urgent", "--image", "registry.example/modelyard:0.1",
        "--max-retries", "3", "--namespace", "ml", "--secret", "yard-secrets", *CLUSTER, "--", "--nproc", "1",
    )  # fmt: skip
    assert r.code == 0, r.err
    manifest = yaml.safe_load(r.out)
    _validate(manifest)
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["namespace"] == "ml" and manifest["spec"]["backoffLimit"] == 3
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/modelyard:0.1"
    assert container["command"] == [
        "python", "-m", "modelyard.cli", "train", "/etc/modelyard/recipe.yaml", "--nproc", "1",
    ]  # fmt: skip
    assert container["resources"] == {  # limits = requests; the job's 8G plus 256Mi for the pod's worker
        "requests": {"cpu": "2", "memory": "8448Mi", "ephemeral-storage": "20Gi"},  # /work's sizeLimit
        "limits": {"cpu": "2", "memory": "8448Mi", "nvidia.com/gpu": "1"},
    }
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["YARD_DATABASE_URL"]["value"] == "postgresql+psycopg://yard@db.internal:5432/yard?sslmode=require"
    )
    assert env["YARD_ARTIFACT_URI"]["value"] == "s3://models/yard"
    for name, key in [
        ("YARD_MASTER_KEY", "master-key"),
        ("YARD_TOKEN", "token"),
        ("PGPASSWORD", "database-password"),
    ]:
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "yard-secrets",
            "key": key,
            "optional": name == "PGPASSWORD",
        }
    # No secret value anywhere: not the database password, not the master key.
    assert "hunter2" not in r.out
    key_file = home_with_data.settings.resolved_key_file
    assert key_file.read_text().strip() not in r.out
    # The recipe travels in the pod's annotation and is mounted as the file the command reads.
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["modelyard.dev/recipe"] == RECIPE
    assert pod["volumes"][0]["downwardAPI"]["items"][0]["path"] == "recipe.yaml"
    assert _jobs_count(home_with_data) == 0  # a dry run records nothing

    out = tmp_path / "job.yaml"
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "-o", out, *CLUSTER)
    assert r.code == 0 and r.out == "" and f"wrote {out}" in r.err
    # --json: the manifest as JSON on stdout (it was YAML, or nothing with -o), which kubectl takes too.
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "--json", *CLUSTER)
    assert r.json()["kind"] == "Job"
    r = yard(
        "jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "--json", "-o", out, *CLUSTER
    )  # fmt: skip
    assert r.json() == yaml.safe_load(out.read_text())
    cpu_only = yaml.safe_load(out.read_text())
    _validate(cpu_only)
    resources = cpu_only["spec"]["template"]["spec"]["containers"][0]["resources"]
    # Without --memory, 4 GiB per CPU asked for: a runaway job is held to that, not free to take the node.
    expected = {"cpu": "1", "memory": "4352Mi"}  # 4Gi for the job, 256Mi for the pod's worker
    assert resources == {"requests": {**expected, "ephemeral-storage": "20Gi"}, "limits": expected}
    assert "tolerations" not in cpu_only["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # the job never calls the Kubernetes API
    victim = tmp_path / "victim"  # a link planted at -o is replaced, not written through
    victim.write_text("keep me")
    out.unlink()
    out.symlink_to(victim)
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "-o", out, *CLUSTER)
    assert r.code == 0 and victim.read_text() == "keep me"
    assert yaml.safe_load(out.read_text())["kind"] == "Job"
    r = yard(
        "jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", "-o", tmp_path, *CLUSTER
    )
    assert r.code == 2 and "cannot write --output" in r.error  # a directory: was an unexpected error


def test_kubernetes_manifest_of_fractional_cpus_validates(home_with_data: Platform, tmp_path: Path) -> None:
    platform = home_with_data
    manifest, info = _jobs.submit_kubernetes_job(
        platform, platform.context(), tmp_path / "recipe.yaml", cpus=0.5, memory="1536M", dry_run=True,
        database_url="postgresql://yard@db/yard", artifact_uri="s3://b/p",
    )  # fmt: skip
    _validate(manifest)
    assert info is None
    resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "500m", "memory": "1792Mi"}
    assert resources["requests"] == {**resources["limits"], "ephemeral-storage": "20Gi"}


def test_a_kubernetes_job_without_memory_is_recorded_and_limited_with_the_default(
    home_with_data: Platform, tmp_path: Path, k8s: FakeCluster
) -> None:
    """The row says the memory the pod is limited to (`jobs show`), and the pod's worker holds the job to it
    with the same clear reason as a local worker (before the container's cgroup would)."""
    platform = home_with_data
    for cpus, memory, expected in ((0.5, None, "2G"), (0.1, None, "1G"), (2, "0", "8G"), (1, "3G", "3G")):
        manifest, info = _jobs.submit_kubernetes_job(
            platform, platform.context(), tmp_path / "recipe.yaml", cpus=cpus, memory=memory,
            database_url="postgresql://yard@db/yard", artifact_uri="s3://b/p",
        )  # fmt: skip
        resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
        job_memory = _jobs.parse_memory(expected)
        pod_memory = f"{(job_memory + _k8s.WORKER_MEMORY) >> 20}Mi"  # with room for the pod's own worker
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == pod_memory
        assert info is not None and info.memory == job_memory
        _validate(manifest)


def test_a_kubernetes_jobs_work_directory_is_bounded_and_the_bound_recorded(
    home_with_data: Platform, tmp_path: Path, k8s: FakeCluster
) -> None:
    """/work was an emptyDir without a sizeLimit: a job could fill its node's disk. It is bounded by
    YARD_JOB_WORK_DISK, and the bound is in the submission's audit record as the memory is."""
    platform = home_with_data
    manifest, info = _jobs.submit_kubernetes_job(
        platform, platform.context(), tmp_path / "recipe.yaml", database_url="postgresql://yard@db/yard",
        artifact_uri="s3://b/p",
    )  # fmt: skip
    _validate(manifest)
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"]["emptyDir"] == {"sizeLimit": "20Gi"}  # the default
    assert info is not None
    with platform.db.read() as s:
        detail = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.resource == f"job:{info.id}", AuditRecord.action == "job.write"
            )
        ).one()
    assert json.loads(detail)["work_disk"] == 20 << 30
    assert load_settings(home=platform.settings.home, job_work_disk="512M").job_work_disk == 512 << 20
    small = Platform(platform.settings.model_copy(update={"job_work_disk": 512 << 20}))
    manifest, _ = _jobs.submit_kubernetes_job(
        small, small.context(), tmp_path / "recipe.yaml", database_url="postgresql://yard@db/yard",
        artifact_uri="s3://b/p", dry_run=True,
    )  # fmt: skip
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"]["emptyDir"] == {"sizeLimit": "512Mi"}
    # The scheduler is told the disk too: it placed the pod as if /work took none of its node's disk.
    resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == "512Mi"
    assert "ephemeral-storage" not in resources["limits"]
    for bad in ("lots", "0"):
        with pytest.raises(ConfigError, match="YARD_JOB_WORK_DISK"):
            load_settings(home=platform.settings.home, job_work_disk=bad)


def test_a_kubernetes_pod_runs_as_a_numeric_non_root_user_that_can_write_work(
    home_with_data: Platform, tmp_path: Path
) -> None:
    """runAsNonRoot alone: the kubelet refuses to start an image whose USER is a name ("cannot verify user
    is non-root"). The pod names numeric ids, and fsGroup makes /work writable by them."""
    for update, ids in (
        ({}, (1000, 1000, 1000)),
        ({"job_run_as_user": 65532, "job_run_as_group": 0}, (65532, 0, 0)),
    ):
        platform = Platform(home_with_data.settings.model_copy(update=update))
        manifest, _ = _jobs.submit_kubernetes_job(
            platform, platform.context(), tmp_path / "recipe.yaml", database_url="postgresql://yard@db/yard",
            artifact_uri="s3://b/p", dry_run=True,
        )  # fmt: skip
        _validate(manifest)
        context = manifest["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == ids
    with pytest.raises(ConfigError, match="YARD_JOB_RUN_AS_USER"):  # root cannot be non-root
        load_settings(home=home_with_data.settings.home, job_run_as_user=0)


def test_kubernetes_manifest_passes_arguments_as_given_and_bounds_the_recipe_in_bytes(
    yard: Yard, home_with_data: Platform, tmp_path: Path
) -> None:
    # Kubernetes would expand $(YARD_MASTER_KEY) in the command from the Secret; $$ is its escape for $.
    r = yard(
        "jobs",
        "submit",
        "recipe.yaml",
        "--backend",
        "kubernetes",
        "--dry-run",
        *CLUSTER,
        "--",
        "a $(YARD_MASTER_KEY) $$ $x",
    )
    assert r.code == 0, r.err
    command = yaml.safe_load(r.out)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1] == "a $$(YARD_MASTER_KEY) $$$$ $$x"
    # 70,000 characters, but 210,000 bytes of UTF-8: more than the annotation can carry.
    (tmp_path / "big.yaml").write_text(RECIPE + "# " + "\u20ac" * 70_000 + "\n", encoding="utf-8")
    r = yard("jobs", "submit", "big.yaml", "--backend", "kubernetes", "--dry-run", *CLUSTER)
    assert r.code == 2 and "bytes; a Kubernetes job carries at most 200000" in r.error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs a PostgreSQL metadata store that the cluster can reach, not sqlite"),
        (CLUSTER[:2], "needs an S3-compatible artifact store"),
        (
            ["--cluster-database-url", "postgresql://u@h/d?password=x", *CLUSTER[2:]],
            "put the database password",
        ),
        (
            ["--cluster-database-url", "postgresql://u@h/d?sslpassword=x", *CLUSTER[2:]],
            "put the database password",
        ),
        (
            [*CLUSTER[:2], "--cluster-artifact-uri", "s3://b/p?token=x"],
            "needs an S3-compatible artifact store",
        ),
        (  # the refusals quoted the URI whole, password included
            [*CLUSTER[:2], "--cluster-artifact-uri", "s3://AKIA:S3CRET@b/p"],
            "not 's3://AKIA:***@b/p'",
        ),
        (
            ["--cluster-database-url", "postgres ql://u:S3CRET@h/d", *CLUSTER[2:]],
            "database URL 'postgres ql://u:***@h/d' is not a URL",
        ),
        ([*CLUSTER, "--namespace", "Bad_NS"], "namespace 'Bad_NS' is not a valid Kubernetes name"),
        ([*CLUSTER, "--image", "bad image"], "image 'bad image' is not a valid container image"),
        # Past the dry run these were Jobs the API server refused (a Secret name of empty DNS labels) or
        # whose pod waited for ever in InvalidImageName (a repository in upper case, an empty tag).
        ([*CLUSTER, "--secret", "yard..secrets"], "secret 'yard..secrets' is not a valid Kubernetes Secret"),
        ([*CLUSTER, "--secret", "yard.-secrets"], "secret 'yard.-secrets' is not a valid Kubernetes Secret"),
        ([*CLUSTER, "--image", "ModelYard:1.0"], "image 'ModelYard:1.0' is not a valid container image"),
        ([*CLUSTER, "--image", "reg.example/Team/yard"], "image 'reg.example/Team/yard' is not a valid"),
        ([*CLUSTER, "--image", "yard:"], "image 'yard:' is not a valid container image"),
        ([*CLUSTER, "--image", "yard@sha256:abc"], "image 'yard@sha256:abc' is not a valid container image"),
        ([*CLUSTER, "--image", "yard:a+b"], "image 'yard:a+b' is not a valid container image"),
        ([*CLUSTER, "--image", "r.example/" + "y" * 250], "is not a valid container image"),  # > 255
        ([*CLUSTER, "--gpus", "-1"], "gpus -1 is out of range"),
    ],
)
def test_kubernetes_bad_input(yard: Yard, home_with_data: Platform, extra: list[str], message: str) -> None:
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", *extra)
    assert r.code == 2, r.err
    assert message in r.error


@pytest.mark.parametrize(
    "image",
    [
        "yard",
        "localhost/yard:dev",
        "Registry.Example:5000/team/yard_x__y-z.1:v1.2-rc_3",  # a registry host may have capitals
        "ghcr.io/org/yard@sha256:" + "a" * 64,
        "ghcr.io/org/yard:1.0@sha256:" + "b" * 64,
    ],
)
def test_kubernetes_valid_images_are_taken(yard: Yard, home_with_data: Platform, image: str) -> None:
    r = yard(
        "jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--dry-run", *CLUSTER, "--image", image
    )
    assert r.code == 0, r.err
    assert yaml.safe_load(r.out)["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_kubernetes_apply_without_the_client_is_a_clear_error(
    yard: Yard, home_with_data: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if not installed: importing it fails
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", *CLUSTER)
    assert r.code == 1 and "pip install 'modelyard[k8s]'" in r.error
    assert _jobs_count(home_with_data) == 0


@pytest.mark.slow
def test_the_pods_command_runs_the_real_job_and_exits_with_its_status(
    yard: Yard, home_with_data: Platform, k8s: FakeCluster
) -> None:
    """What a recorded Kubernetes job's container runs, `yard worker --job ID`, with the real job command
    (`yard train` given an option it does not know: exit 2 in seconds). No cluster here: its API is a
    fake that the real client talks to; the pod's process is the real one."""
    submit = ["jobs", "submit", "recipe.yaml", "--backend", "kubernetes", "--max-retries", "0", *CLUSTER]
    r = yard(*submit, "--", "--no-such-option")
    assert r.code == 0, r.err
    job_id = int(r.out.strip())
    assert f"job {job_id} kubernetes job default/yard-train-{job_id}" in r.err
    assert yard("jobs", "show", str(job_id), "--json").json()["status"] == "SUBMITTED"
    assert list(k8s.jobs) == [f"default/yard-train-{job_id}"]
    pod = k8s.waiting_pod(f"default/yard-train-{job_id}", "ErrImagePull", "pull access denied")
    waiting = yard("jobs", "logs", str(job_id))
    assert waiting.code == 0 and waiting.out == ""
    assert f"has not started in Kubernetes yet (pod {pod}: ErrImagePull: pull access denied)" in waiting.err
    assert f"kubectl describe job/yard-train-{job_id} -n default" in waiting.err
    for bad, message in (
        (["--job", "x"], "is not a job id"),
        (["--job", str(job_id), "--cpus", "2"], "runs it with the resources it asked for: drop --cpus"),
    ):
        r = yard("worker", *bad)
        assert r.code == 2 and message in r.error
    r = yard("worker", "--job", str(job_id), "--name", "yard-train-7-abcde")
    assert r.code == 2, r.err  # the pod fails as its job did: the cluster counts it (backoffLimit)
    assert "No such option: --no-such-option" in r.out  # the job's output, for kubectl logs
    assert f"job {job_id} only" in r.err
    shown = yard("jobs", "show", str(job_id), "--json").json()
    assert (shown["status"], shown["exit_code"], shown["attempts"]) == ("FAILED", 2, 1)
    assert shown["worker"] == "yard-train-7-abcde"
    logs = yard("jobs", "logs", str(job_id), "-f")
    assert logs.code == 0 and "No such option: --no-such-option" in logs.out
    again = yard("worker", "--job", str(job_id))  # the cluster starting it again runs nothing
    assert again.code == 0 and f"job {job_id} is not waiting to run" in again.err
    local = int(yard("jobs", "submit", "recipe.yaml").out)
    r = yard("worker", "--job", str(local))
    assert r.code == 2 and "local job: workers claim it from the queue" in r.error
    assert yard("jobs", "show", str(local), "--json").json()["status"] == "QUEUED"


def test_cancel_while_the_cluster_fails_takes_effect_and_says_how_the_job_is_deleted(
    yard: Yard, home_with_data: Platform, k8s: FakeCluster
) -> None:
    r = yard("jobs", "submit", "recipe.yaml", "--backend", "kubernetes", *CLUSTER)
    assert r.code == 0, r.err
    job_id = int(r.out.strip())
    k8s.refused["jobs"] = 503
    r = yard("jobs", "cancel", str(job_id))
    assert r.code == 0 and f"job {job_id} cancelled" in r.out and "is not deleted yet" in r.out
    assert f"kubectl delete job yard-train-{job_id} -n default" in r.err
    shown = yard("jobs", "show", str(job_id), "--json").json()
    assert shown["status"] == "CANCELLED"
    del k8s.refused["jobs"]
    reason = f"cancelled by {shown['submitted_by']} while SUBMITTED"
    assert yard("jobs", "ls", "--json").json()[0]["reason"] == reason
    assert k8s.deleted == [f"default/yard-train-{job_id}"]
