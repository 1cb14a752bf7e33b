import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo's model compiler writes MUJOCO_LOG.TXT into the working directory: keep it out of the repo."""
    monkeypatch.chdir(tmp_path)
