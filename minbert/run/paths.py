"""Where the default model and the data sets live: one folder, `shared`, holding
models/all-MiniLM-L6-v2 and data/. $MINBERT_SHARED names it; without it, it is the folder
`shared` beside the repository (../shared from the repository root). A copy of the
repository made anywhere (a student copy, a fresh clone) finds them through the variable."""
import os
from pathlib import Path

SHARED_ENV = "MINBERT_SHARED"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def shared_dir() -> Path:
    """$MINBERT_SHARED, else <repository>/../shared."""
    return Path(os.environ.get(SHARED_ENV) or Path(__file__).resolve().parents[3] / "shared").expanduser()


def default_model() -> Path:
    return shared_dir() / "models" / DEFAULT_MODEL_NAME


def where_hint() -> str:
    """The sentence every "not found" error of the default model or data ends with."""
    return (f"pass --model PATH (a folder with config.json and model.safetensors) or a hub id, or set "
            f"{SHARED_ENV} to the folder that holds models/{DEFAULT_MODEL_NAME} and data/ "
            f"(now {shared_dir()}{'' if os.environ.get(SHARED_ENV) else ', ../shared beside the repository'})")
