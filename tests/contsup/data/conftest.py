import pytest

import contsup.data


@pytest.fixture(autouse=True)
def _no_system_fashion_mnist(tmp_path, monkeypatch):
    # Never read a real /usr/share/datasets/fashion-mnist; tests that want one write it here.
    monkeypatch.setattr(contsup.data.mnist, "SYSTEM_FASHION_MNIST", tmp_path / "system")
