import pytest


@pytest.fixture(scope="session")
def digits_data():
    from studio.core.data import digits

    return digits()


@pytest.fixture(scope="session")
def demo_cnn():
    from studio.core import zoo

    return zoo.load("cnn")


@pytest.fixture(scope="session")
def demo_mlp():
    from studio.core import zoo

    return zoo.load("mlp")
