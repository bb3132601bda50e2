"""The image on two hosts: two containers on one Docker network, reachable as algo-1 and algo-2, each with the
/opt/ml tree SageMaker lays out (resourceconfig.json naming both, network_interface_name eth0)."""

import json
import uuid
from pathlib import Path
from typing import List

import pytest

from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.docker_helpers import ensure_cpu_image, remove_container, run
from tests.synthetic import LEARNING_HYPERPARAMETERS, all_background_miou, write_opt_ml

pytestmark = [pytest.mark.slow, pytest.mark.docker]

HOSTS = ("algo-1", "algo-2")


@pytest.fixture
def network():
    """A Docker network of our own (the containers resolve each other by alias on it), removed after."""
    name = f"segmaker-multihost-{uuid.uuid4().hex[:8]}"
    run(["docker", "network", "create", name])
    yield name
    run(["docker", "network", "rm", name], check=False)


def opt_ml(base: Path, host: str, hyperparameters: dict) -> Paths:
    paths = write_opt_ml(base, num_classes=2, train=16, validation=4, hyperparameters=hyperparameters)
    resources = {"current_host": host, "hosts": list(HOSTS), "network_interface_name": "eth0"}
    paths.resource_config_file.write_text(json.dumps(resources))
    return paths


def start_hosts(image: str, network: str, trees: List[Paths]) -> List[str]:
    names = []
    for host, paths in zip(HOSTS, trees):
        name = f"{network}-{host}"
        run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                network,
                "--network-alias",
                host,
                "--hostname",
                host,
                "-v",
                f"{paths.base}:/opt/ml",
                image,
                "train",
            ]
        )
        names.append(name)
    return names


def test_two_containers_train_to_the_learning_bar(tmp_path, network):
    """Proves: the image's `train` starts the parameter server across two containers found by name, both
    exit 0, and algo-1 leaves a model that learned (best mIOU above all-background by 0.15, as the
    one-host learning test asks), while algo-2 leaves no model."""
    image = ensure_cpu_image()
    hyperparameters = dict(
        LEARNING_HYPERPARAMETERS,
        use_pretrained_model="False",
        validation_mini_batch_size=2,
        data_workers=1,
        seed=3,
    )
    trees = [opt_ml(tmp_path / host, host, hyperparameters) for host in HOSTS]
    names = start_hosts(image, network, trees)
    try:
        codes = [int(run(["docker", "wait", name], timeout=1500).stdout.strip()) for name in names]
        logs = [run(["docker", "logs", name], check=False).stdout[-4000:] for name in names]
        assert codes == [0, 0], logs
    finally:
        for name in names:
            remove_container(name)
    main, other = trees
    best = max(record.mIOU for record in read_metrics(main.output_data_dir))
    assert best > all_background_miou(main) + 0.15
    assert (main.model_dir / "model_algo-1").is_file() and not (other.model_dir / "model_algo-1").exists()
