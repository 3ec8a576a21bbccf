"""Test setup: quiet TF logs and two logical CPU devices (for MirroredStrategy tests)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:  # already initialised (e.g. a plugin imported TF first)
    pass


# The slowest test files (`pytest --durations=0` on 2 cores, 2026-12-04: 333 s down to 37 s each), run first so
# that under pytest-xdist (`make test`: whole files per worker, `--no-loadscope-reorder`) no long file starts last
# while the other worker sits idle. The other files keep their order after these.
SLOWEST_FIRST = (
    "tests/export/test_tflite.py", "tests/test_distribute.py", "tests/convert/test_importer.py",
    "tests/cli/test_precision_and_xla.py", "tests/test_packaging.py", "tests/test_model.py",
    "tests/export/test_saved_model.py", "tests/cli/test_resume.py", "tests/cli/test_inference_precision.py",
    "tests/cli/test_multi_worker.py", "tests/cli/test_cli_e2e.py", "tests/convert/test_training_parity.py",
    "tests/convert/test_parity.py", "tests/cli/test_weights.py", "tests/test_sync_bn.py",
    "tests/export/test_c_api.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep order
