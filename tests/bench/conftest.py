import pytest

from tests.bench.corpus import make_tiny_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Made once for every benchmark test module."""
    return make_tiny_corpus(tmp_path_factory.mktemp("bench_corpus"))
